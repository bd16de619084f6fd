"""Stage `report`: report.md and its plots from what the other stages wrote (rewritten on every run)."""

from __future__ import annotations

from pathlib import Path

from minitron.evaluation import report
from minitron.run_folder import RunFolder


def run(folder: RunFolder, stage: str, out: Path) -> dict:
    return report.write(folder, out)
