"""Stage `import`: bring the teacher in as a NeMo 2 checkpoint.

``model.source`` is an HF checkpoint (converted to NeMo; the HF folder stays where it is, in
the cache or the user's folder) or a NeMo 2 checkpoint, such as one NeMo's ``llm.import_ckpt``
wrote (re-saved into the run, with its HF twin under ``hf/``, which later stages compare with).
"""

from __future__ import annotations

from pathlib import Path

from minitron.conversion.convert import hf_to_nemo, nemo_to_hf, resave_nemo
from minitron.models import is_nemo_checkpoint, resolve_hf_source
from minitron.run_folder import RunFolder


def run(folder: RunFolder, stage: str, out: Path) -> dict:
    source = folder.recipe.model.source
    if is_nemo_checkpoint(source):
        summary = resave_nemo(Path(source).expanduser(), out / "nemo")
        export = nemo_to_hf(out / "nemo", out / "hf")
        return {**summary, "source_format": "nemo2", "hf": str(out / "hf"), "nemo": str(out / "nemo"),
                "export_seconds": export["seconds"]}
    hf_dir = resolve_hf_source(source)
    summary = hf_to_nemo(hf_dir, out / "nemo")
    return {**summary, "source_format": "hf", "hf": str(hf_dir), "nemo": str(out / "nemo")}
