"""Checks that a conversion is exact: Megatron vs HF logits, and tensor-for-tensor equality."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from megatron.core import parallel_state
from safetensors import safe_open
from safetensors.torch import save_file

from minitron.conversion.convert import load_megatron_from_nemo
from minitron.conversion.hf_checkpoint import SafetensorsReader
from minitron.conversion.sample_text import SAMPLE_TEXT
from minitron.runtime import distributed
from minitron.io import write_json_atomic
from minitron.runtime.inference import forward_logits



def hf_logits(hf_dir: str | Path, tokens: torch.Tensor) -> torch.Tensor:
    """fp32 logits of the HF model with transformers' *eager* attention.

    Eager attention is the reference formulation, and on CPU Megatron's local spec reproduces it
    bit for bit. The default SDPA kernel reorders the same sums; its rounding noise (~1e-5 per
    layer, amplified in damaged pruned models to a few 1e-4) would hide real mapping errors.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(tokens).logits


def tokenize(hf_dir: str | Path, text: str = SAMPLE_TEXT) -> torch.Tensor:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)(text, return_tensors="pt").input_ids


def megatron_vs_hf(nemo_dir: str | Path, hf_dir: str | Path, tokens: torch.Tensor,
                   tensor_parallel: int = 1, pipeline_parallel: int = 1):
    """(max |logit difference|, Megatron logits) between the NeMo checkpoint run by Megatron at
    TP/PP and HF, in fp32.

    Collective: every rank calls it; the result comes back on the last pipeline stage (None
    elsewhere).
    """
    distributed.initialize(tensor_parallel, pipeline_parallel)
    model, _ = load_megatron_from_nemo(nemo_dir, dtype=torch.float32)
    model.eval()
    logits = forward_logits(model, tokens.to(distributed.device()))
    if logits is None:
        return None
    logits = logits.float().cpu()
    return (logits - hf_logits(hf_dir, tokens)).abs().max().item(), logits


def tensor_differences(hf_a: str | Path, hf_b: str | Path) -> list[str]:
    """Every tensor or config field in which two HF checkpoints differ (bit-level)."""
    a, b = SafetensorsReader(hf_a), SafetensorsReader(hf_b)
    diffs = [f"only in {hf_a}: {n}" for n in sorted(set(a.meta) - set(b.meta))]
    diffs += [f"only in {hf_b}: {n}" for n in sorted(set(b.meta) - set(a.meta))]
    for name in sorted(set(a.meta) & set(b.meta)):
        with safe_open(a.meta[name][0], "pt") as fa, safe_open(b.meta[name][0], "pt") as fb:
            ta, tb = fa.get_tensor(name), fb.get_tensor(name)
        if ta.dtype != tb.dtype or ta.shape != tb.shape or not torch.equal(ta.view(torch.uint8), tb.view(torch.uint8)):
            diffs.append(f"tensor {name} differs")
    ca = json.loads((Path(hf_a) / "config.json").read_text())
    cb = json.loads((Path(hf_b) / "config.json").read_text())
    for key in sorted(set(ca) | set(cb)):
        if ca.get(key) != cb.get(key):
            diffs.append(f"config {key}: {ca.get(key)!r} != {cb.get(key)!r}")
    return diffs


def verify_command(args) -> dict | None:
    """`minitron verify` (also under torchrun for TP*PP > 1): Megatron vs HF logits of one checkpoint."""
    tokens = tokenize(args.hf, args.text) if args.text else tokenize(args.hf)
    compared = distributed.distributed_entry(megatron_vs_hf)(args.nemo, args.hf, tokens, args.tp, args.pp)
    if compared is None:
        return None  # not the last pipeline stage: nothing to report
    diff, logits = compared
    result = {"tensor_parallel": args.tp, "pipeline_parallel": args.pp, "max_abs_logit_diff": diff}
    if parallel_state.get_tensor_model_parallel_rank() == 0:
        if args.logits_out:
            save_file({"logits": logits.contiguous()}, args.logits_out)
        if args.result_file:
            write_json_atomic(args.result_file, result)
    return result
