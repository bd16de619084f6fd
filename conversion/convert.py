"""HF <-> NeMo 2 conversion for Llama models, streamed shard by shard.

Memory: the Megatron model (1x) plus one HF shard, so Llama-3.1-8B in bf16 converts in about
1.3x its 16 GB size. Conversion always runs at TP=1/PP=1 on the local layer spec; the written
distributed checkpoint then loads at any TP/PP, with or without Transformer Engine.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from minitron.conversion import llama_mapping as table
from minitron.conversion import nemo_checkpoint as nemo
from minitron.conversion.gguf_to_hf import gguf_to_hf
from minitron.conversion.hf_checkpoint import SafetensorsReader, copy_sidecars, write_sharded
from minitron.errors import MinitronError
from minitron.io import atomic_output_dir, check_output_dir, write_json_atomic
from minitron.runtime import distributed
from minitron.runtime.llama import LlamaArch, build_gpt_model, read_json, torch_dtype


def read_hf_checkpoint(hf_dir: str | Path) -> tuple[LlamaArch, dict, SafetensorsReader]:
    """Validate an HF Llama folder (config vs weight headers) without loading any weights."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        what = "not an HF checkpoint folder (no config.json)" if hf_dir.is_dir() else "no such folder"
        raise MinitronError(f"{hf_dir}: {what}; give the folder that holds config.json, the *.safetensors weights "
                            "and the tokenizer")
    config = read_json(config_path)
    arch = LlamaArch.from_hf_config(config, str(config_path))
    reader = SafetensorsReader(hf_dir)
    reader.check_shapes(table.hf_shapes(arch), config_path)
    return arch, config, reader


def load_hf_into_megatron(model: torch.nn.Module, arch: LlamaArch, reader: SafetensorsReader) -> None:
    """Stream HF tensors into a TP=1/PP=1 Megatron model through the mapping table."""
    rules = table.expand(arch)
    slot_of = {hf: (rule, k) for rule in rules for k, hf in enumerate(rule.hf)}
    params = dict(model.named_parameters())
    pending: dict[str, dict[int, torch.Tensor]] = {}
    filled = set()
    for name, tensor in reader.tensors():
        if name not in slot_of:
            continue  # e.g. a stored rotary inv_freq buffer: recomputed, not a weight
        rule, k = slot_of[name]
        parts = pending.setdefault(rule.megatron, {})
        parts[k] = tensor
        if len(parts) < len(rule.hf):
            continue  # a merged tensor whose other parts are in a later shard
        merged = table.merge(rule, [parts[j] for j in range(len(rule.hf))], arch)
        param = params[rule.megatron]
        assert param.shape == merged.shape, f"{rule.megatron}: {tuple(param.shape)} vs {tuple(merged.shape)}"
        with torch.no_grad():
            param.copy_(merged)
        filled.add(rule.megatron)
        del pending[rule.megatron]
    unfilled = sorted(set(params) - filled)
    if unfilled:
        raise MinitronError(f"{reader.dir}: no weights for Megatron parameter {unfilled[0]} "
                            f"(and {len(unfilled) - 1} more)")


def megatron_to_hf_tensors(model: torch.nn.Module, arch: LlamaArch, dtype: torch.dtype):
    """Yield (hf_name, tensor) from a TP=1/PP=1 Megatron model, in table order, in `dtype`.

    The cast matters: Megatron's torch-norm layers keep fp32 weights even in a bf16 model, and
    a bf16 value survives bf16 -> fp32 -> bf16 exactly.
    """
    state = model.state_dict()
    for rule in table.expand(arch):
        for name, t in zip(rule.hf, table.split(rule, state[rule.megatron].detach(), arch)):
            yield name, t.cpu().to(dtype)


def hf_to_nemo(hf_dir: str | Path, nemo_dir: str | Path) -> dict:
    """Convert an HF Llama checkpoint to the NeMo 2 layout. Returns a summary."""
    start = time.perf_counter()
    check_output_dir(Path(nemo_dir))
    arch, config, reader = read_hf_checkpoint(hf_dir)
    if nemo.nemo_python() is not None:  # NeMo's context holds the tokenizer: say what is missing before NeMo does
        nemo.check_tokenizer_files(Path(hf_dir))
    dtype = reader.dtype()
    distributed.initialize(1, 1)
    model = build_gpt_model(arch, dtype, use_te=False, init_weights=False)
    load_hf_into_megatron(model, arch, reader)
    with atomic_output_dir(nemo_dir) as tmp:
        nemo.write_context(tmp, arch, dtype, config, Path(hf_dir))
        nemo.save_weights(model, tmp)
    return {"input": str(hf_dir), "output": str(nemo_dir), "dtype": str(dtype),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - start, 3)}


def resave_nemo(src: str | Path, nemo_dir: str | Path) -> dict:
    """Copy a NeMo 2 checkpoint (any writer: NeMo, Megatron-Bridge, minitron) through a Megatron model:
    its weights are loaded and checked against its config, then written with this repository's context."""
    start = time.perf_counter()
    check_output_dir(Path(nemo_dir))
    arch, dtype, hf_config = nemo.read_context(src)
    distributed.initialize(1, 1)
    model, _ = load_megatron_from_nemo(src, use_te=False)
    with atomic_output_dir(nemo_dir) as tmp:
        nemo.write_context(tmp, arch, dtype, hf_config, nemo.tokenizer_dir(src))
        nemo.save_weights(model, tmp)
    return {"input": str(src), "output": str(nemo_dir), "dtype": str(dtype),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - start, 3)}


def load_megatron_from_nemo(nemo_dir: str | Path, dtype: torch.dtype | str | None = None, **build_kwargs):
    """Build this rank's Megatron model and fill it from a NeMo checkpoint.

    Call :func:`minitron.runtime.distributed.initialize` first with the TP/PP to load at.
    """
    arch, ckpt_dtype, _ = nemo.read_context(nemo_dir)
    model = build_gpt_model(arch, torch_dtype(dtype) if dtype else ckpt_dtype, init_weights=False, **build_kwargs)
    nemo.load_weights(model, nemo_dir)
    return model, arch


def nemo_to_hf(nemo_dir: str | Path, hf_dir: str | Path, max_shard_bytes: int = 5 * 2**30) -> dict:
    """Convert a NeMo 2 Llama checkpoint (any shape, pruned included) to HF safetensors."""
    start = time.perf_counter()
    check_output_dir(Path(hf_dir))
    arch, dtype, hf_base = nemo.read_context(nemo_dir)
    distributed.initialize(1, 1)
    model, _ = load_megatron_from_nemo(nemo_dir, use_te=False)
    config = arch.to_hf_config(hf_base)
    if "torch_dtype" not in config and "dtype" not in config:
        config["torch_dtype"] = str(dtype).replace("torch.", "")
    with atomic_output_dir(hf_dir) as tmp:
        files = write_sharded(megatron_to_hf_tensors(model, arch, dtype), tmp, max_shard_bytes)
        write_json_atomic(tmp / "config.json", config)
        copy_sidecars(nemo.tokenizer_dir(nemo_dir), tmp)
    return {"input": str(nemo_dir), "output": str(hf_dir), "dtype": str(dtype), "files": files,
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - start, 3)}


def convert_command(args) -> dict:
    """`minitron convert {gguf-to-hf,hf-to-nemo,nemo-to-hf,nemo-context}`: one conversion (+ its summary.json)."""
    if args.direction == "nemo-context":
        return nemo.add_nemo_context(args.input)
    output = Path(args.output or Path("runs") / "convert" / f"{Path(args.input).stem}-{args.direction.split('-to-')[1]}")
    if args.direction == "gguf-to-hf":
        summary = gguf_to_hf(args.input, output, dtype=args.dtype)
    elif args.direction == "hf-to-nemo":
        summary = hf_to_nemo(args.input, output)
    else:
        summary = nemo_to_hf(args.input, output)
    write_json_atomic(output / "summary.json", summary)
    return summary
