"""Stage `teacher_correction`: fine-tune the teacher on the distillation data before pruning.

Minitron's "teacher correction": the teacher never saw the distillation corpus, so it is first
trained on it with the plain LM loss; when the recipe lists this stage, prune and distill use the
corrected teacher (`RunFolder.teacher_nemo`).
"""

from __future__ import annotations

from pathlib import Path

from minitron.run_folder import RunFolder
from minitron.training.stage import train_stage


def run(folder: RunFolder, stage: str, out: Path) -> dict:
    return train_stage(folder, stage, out)
