"""Stage `teacher_correction`: fine-tune the teacher on the distillation data before pruning.

Minitron's "teacher correction": the teacher never saw the distillation corpus, so it is first trained
on it with the plain LM loss; when the recipe lists this stage (or it was run into the folder), prune and
distill use the corrected teacher (model ``teacher-corrected``, `RunFolder.teacher_nemo`). Writes
``nemo/``, ``hf/``, ``metrics.jsonl``, ``loss.png`` and ``summary.json``; the job, launch and export are
the ones both training stages share (`minitron.stages.training`).
"""

from __future__ import annotations

from pathlib import Path

from minitron.run_folder import RunFolder
from minitron.stages.training import train_stage


def run(folder: RunFolder, stage: str, out: Path) -> dict:
    return train_stage(folder, stage, out)
