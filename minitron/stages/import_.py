"""Stage `import`: bring the teacher in as an HF checkpoint and convert it to NeMo 2."""

from __future__ import annotations

from pathlib import Path

from minitron.conversion.convert import hf_to_nemo
from minitron.models import resolve_hf_source
from minitron.run_folder import RunFolder


def run(folder: RunFolder, stage: str, out: Path) -> dict:
    hf_dir = resolve_hf_source(folder.recipe.model.source)
    summary = hf_to_nemo(hf_dir, out / "nemo")
    # Later stages read the NeMo checkpoint; the HF folder stays where it is (cache or user's).
    return {**summary, "hf": str(hf_dir), "nemo": str(out / "nemo")}
