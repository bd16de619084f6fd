"""Inference speed of teacher and students on the same prompts (PyTorch / transformers).

For every model and batch size B, with prompts of P tokens cut from held-out text:

* prefill: one forward pass over B x P tokens (KV cache on), tokens/s = B*P / time;
* decode: ``generate`` of exactly N greedy tokens (EOS ignored); decode tokens/s =
  B*N / (generate time - prefill time);
* latency: the whole request (prefill + N tokens) at batch B, and per output token.

Each number is the median of ``repeats`` timed runs after one warm-up run. Models are measured
in turns (teacher, student, ..., teacher, student, ...) so a background load slows them alike
and the ratios stay fair. ``ideal_flops_ratio`` is the analytic ratio of forward FLOPs per token
(all matmuls incl. the LM head, plus attention over the context) that a perfect implementation
would turn into the same speedup.
"""

from __future__ import annotations

import statistics
import time

import torch

from minitron.errors import MinitronError
from minitron.evaluation.config import ThroughputSection


def flops_per_token(config, context: int) -> float:
    """Forward FLOPs per token of a Llama at a given context length (2 per multiply-add)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attn = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
    mlp = 3 * hidden * config.intermediate_size
    matmul_params = layers * (attn + mlp) + hidden * config.vocab_size  # LM head, tied or not
    return 2 * matmul_params + 4 * layers * heads * head_dim * context  # QK^T and AV


def memory_footprint(model, batch: int, tokens: int) -> dict:
    """Weight bytes and the KV cache of `batch` sequences of `tokens` tokens, in MiB."""
    c = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    elem = next(model.parameters()).element_size()
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * elem * batch * tokens
    return {"weights_mib": round(weights / 2**20, 1), "kv_cache_mib": round(kv / 2**20, 2),
            "kv_cache_for": f"batch {batch} x {tokens} tokens"}


def prompts(tokens: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """`batch` distinct prompts of `length` tokens, cut from a held-out token stream."""
    if len(tokens) < batch * length:
        raise MinitronError(f"throughput: need {batch * length} held-out tokens for batch {batch} x {length}, "
                            f"have {len(tokens)}")
    return tokens[: batch * length].view(batch, length).clone()


@torch.no_grad()
def _prefill_seconds(model, ids: torch.Tensor) -> float:
    start = time.perf_counter()
    model(input_ids=ids, use_cache=True)
    return time.perf_counter() - start


@torch.no_grad()
def _generate_seconds(model, ids: torch.Tensor, new_tokens: int) -> float:
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    seconds = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens, "generate stopped early despite min_new_tokens"
    return seconds


def measure(models: dict, tokens: torch.Tensor, cfg: ThroughputSection, progress: bool = True) -> dict:
    """Throughput of each model (name -> transformers causal LM) at each batch size, measured in turns."""
    from tqdm import tqdm

    timings = {(name, b): {"prefill": [], "generate": []} for name in models for b in cfg.batch_sizes}
    steps = [(r, b, name) for r in range(cfg.repeats + 1) for b in cfg.batch_sizes for name in models]
    for repeat, batch, name in tqdm(steps, desc="throughput", disable=not progress):
        ids = prompts(tokens, batch, cfg.prompt_tokens)
        prefill = _prefill_seconds(models[name], ids)
        generate = _generate_seconds(models[name], ids, cfg.new_tokens)
        if repeat > 0:  # the first turn warms up allocators and kernels
            timings[(name, batch)]["prefill"].append(prefill)
            timings[(name, batch)]["generate"].append(generate)
    return {name: _summarize(model, {b: timings[(name, b)] for b in cfg.batch_sizes}, cfg)
            for name, model in models.items()}


def _summarize(model, by_batch: dict, cfg: ThroughputSection) -> dict:
    rows = []
    for batch, t in by_batch.items():
        prefill, generate = statistics.median(t["prefill"]), statistics.median(t["generate"])
        decode = max(generate - prefill, 1e-9)
        rows.append({"batch_size": batch,
                     "prefill_tokens_per_s": round(batch * cfg.prompt_tokens / prefill, 1),
                     "decode_tokens_per_s": round(batch * cfg.new_tokens / decode, 1),
                     "latency_s": round(generate, 4),
                     "ms_per_output_token": round(1000 * decode / cfg.new_tokens, 2)})
    context = cfg.prompt_tokens + cfg.new_tokens
    return {"params": sum(p.numel() for p in model.parameters()),
            "flops_per_token": flops_per_token(model.config, context),
            "memory": memory_footprint(model, max(cfg.batch_sizes), context),
            "by_batch_size": rows}


def with_speedups(results: dict, reference: str) -> dict:
    """Add speedup vs `reference` (per batch size) and the ideal FLOP ratio to every model's results."""
    ref = results[reference]
    for res in results.values():
        res["ideal_flops_ratio"] = round(ref["flops_per_token"] / res["flops_per_token"], 3)
        for row, ref_row in zip(res["by_batch_size"], ref["by_batch_size"]):
            for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
                row[key.replace("tokens_per_s", "speedup")] = round(row[key] / ref_row[key], 3)
    return results
