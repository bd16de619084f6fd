"""Stage `import`: bring the teacher in as an HF checkpoint and convert it to NeMo 2."""

from __future__ import annotations

from pathlib import Path

from conversion.convert import hf_to_nemo
from minitron.models import resolve_hf_source
from minitron.recipe import Recipe


def run(recipe: Recipe, out: Path) -> dict:
    hf_dir = resolve_hf_source(recipe.model.source)
    summary = hf_to_nemo(hf_dir, out / "nemo")
    # Later stages read the NeMo checkpoint; the HF folder stays where it is (cache or user's).
    return {**summary, "hf": str(hf_dir), "nemo": str(out / "nemo")}


def outputs(recipe: Recipe) -> dict:
    """Paths later stages use, from this stage's summary."""
    from minitron.pipeline import read_summary

    s = read_summary(recipe, "import")
    return {"hf": Path(s["hf"]), "nemo": Path(s["nemo"])}
