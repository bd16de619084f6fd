"""NeMo 2 checkpoint layout: ``context/`` (model config, tokenizer) + ``weights/`` (torch_dist).

``weights/`` is a Megatron-Core distributed checkpoint, so it loads at any TP/PP: every rank
asks only for its own shards. Keys carry NeMo's ``module.`` prefix and Transformer-Engine
layer names (Megatron's local spec maps onto them), as NeMo and Megatron-Bridge write them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from megatron.core import dist_checkpointing
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

from minitron.conversion.hf_checkpoint import copy_sidecars
from minitron.errors import MinitronError
from minitron.runtime.llama import LlamaArch, torch_dtype

CONTEXT, WEIGHTS, TOKENIZER = "context", "weights", "nemo_tokenizer"
MODEL_YAML = "model.yaml"
FORMAT = "minitron/nemo2-llama/v1"
PREFIX = "module."


def write_context(nemo_dir: Path, arch: LlamaArch, dtype: torch.dtype, hf_config: dict,
                  tokenizer_src: Path | None) -> None:
    ctx = Path(nemo_dir) / CONTEXT
    (ctx / TOKENIZER).mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "architecture": "llama", "dtype": str(dtype).replace("torch.", ""),
           "arch": arch.to_dict(), "hf_config": hf_config}
    (ctx / MODEL_YAML).write_text(yaml.safe_dump(doc, sort_keys=False))
    if tokenizer_src is not None:
        copy_sidecars(tokenizer_src, ctx / TOKENIZER)


def read_context(nemo_dir: str | Path) -> tuple[LlamaArch, torch.dtype, dict]:
    path = Path(nemo_dir) / CONTEXT / MODEL_YAML
    if not path.is_file():
        raise MinitronError(f"{path}: missing; {nemo_dir} is not a NeMo checkpoint written by this repo")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise MinitronError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MinitronError(f"{path}: unknown checkpoint format {doc.get('format') if isinstance(doc, dict) else doc!r}")
    return LlamaArch.from_dict(doc["arch"], str(path)), torch_dtype(doc["dtype"]), doc.get("hf_config") or {}


def tokenizer_dir(nemo_dir: str | Path) -> Path:
    return Path(nemo_dir) / CONTEXT / TOKENIZER


def save_weights(model: torch.nn.Module, nemo_dir: str | Path) -> None:
    """Collective over all ranks: each writes its own shards."""
    weights = Path(nemo_dir) / WEIGHTS
    weights.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(model.sharded_state_dict(prefix=PREFIX), str(weights))


def load_weights(model: torch.nn.Module, nemo_dir: str | Path) -> None:
    """Fill `model` (this rank's TP/PP piece) from a checkpoint written at any TP/PP."""
    weights = Path(nemo_dir) / WEIGHTS
    check_weights_complete(weights)
    try:
        state = dist_checkpointing.load(model.sharded_state_dict(prefix=PREFIX), str(weights))
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise MinitronError(f"{weights}: cannot load checkpoint into this model "
                            f"({type(e).__name__}: {first})") from None
    state = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state.items()}
    model.load_state_dict(state, strict=True)


def check_weights_complete(weights: Path) -> None:
    """Every shard file the checkpoint's metadata refers to must exist."""
    if not (weights / ".metadata").is_file():
        raise MinitronError(f"{weights}/.metadata: missing; the checkpoint is incomplete or not torch_dist")
    try:
        metadata = FileSystemReader(str(weights)).read_metadata()
    except Exception as e:
        raise MinitronError(f"{weights}/.metadata: unreadable ({type(e).__name__})") from None
    files = sorted({item.relative_path for item in (metadata.storage_data or {}).values()})
    for name in files:
        if not (weights / name).is_file():
            raise MinitronError(f"{weights / name}: checkpoint shard missing ({len(files)} expected); "
                                "the checkpoint is incomplete")
