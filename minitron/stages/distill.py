"""Stage `distill` (`distill-<student>`): logit distillation of one pruned student from the teacher."""

from __future__ import annotations

from pathlib import Path

from minitron.run_folder import RunFolder
from minitron.training.stage import train_stage


def run(folder: RunFolder, stage: str, out: Path) -> dict:
    return train_stage(folder, stage, out)
