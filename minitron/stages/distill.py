"""Stage `distill` (`distill-<student>`): the pruned student learns the teacher's output distribution.

Student: ``prune-<student>/nemo``. Teacher: the corrected teacher when the run corrects it, the imported
one for the ``distill-<student>@uncorrected`` comparison. Loss: Model Optimizer's logit KL (Minitron:
forward KL at temperature 1, no LM loss; `kd` in the training YAML). With ``distill.share_teacher`` the
students of one teacher train side by side on one teacher forward per micro-batch. Writes ``nemo/``,
``hf/``, ``metrics.jsonl``, ``loss.png`` and ``summary.json``; the job, launch and export are the ones
both training stages share (`minitron.stages.training`).
"""

from __future__ import annotations

from pathlib import Path

from minitron.run_folder import RunFolder
from minitron.stages.training import train_stage


def run(folder: RunFolder, stage: str, out: Path) -> dict:
    return train_stage(folder, stage, out)
