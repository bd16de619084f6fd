"""The project's KD loop vs a plain transformers + PyTorch KD loop, side by side on this machine.

Run: make bench-kd-loop   (or: .venv/bin/python benchmarks/bench_kd_loop.py [--steps N] [--precision auto|bf16|fp32])

Both loops distil the demo's pruned SmolLM2 width student from its teacher (the import and
prune-width stages of recipes/smollm2-135m_minitron_cpu.yaml run first, into --output), one after the
other in this process, on exactly the same token rows (the recipe's packed train split, same order),
with the same batch (global and micro), precision, AdamW settings, warmup + cosine schedule, gradient
clipping and loss (forward KL at temperature 1, mean over tokens):

* **minitron**: `minitron.training.loop.train` (Megatron-Core schedules, DDP and optimizer, Model
  Optimizer distillation, the chunked KL of `minitron.training.kd_loss`);
* **plain**: `transformers.LlamaForCausalLM` teacher and student, `torch.optim.AdamW`,
  `torch.autocast` for bf16, `F.kl_div` on the full logits: what one would write by hand.

Printed: tokens/s of both (steps after the first, which includes warm-up; its time is printed too),
their ratio, the fraction
of this machine's measured matmul peak each reaches (model FLOPs: 6 x student + 2 x teacher
parameters per token, the output layer included, plus attention), and the held-out LM loss of both
trained students on the same validation rows (HF model, fp32). The CPU capability, the chosen
precision, the OpenMP runtime and the allocator are printed with every number. Like `minitron`, the
bench re-runs itself under Intel OpenMP and tcmalloc where installed (`minitron.runtime.cpu_runtime`),
so both loops run under the same runtime; `MINITRON_CPU_RUNTIME=default` keeps PyTorch's own. A third
row runs the plain loop once more the way a user runs their own script: in a fresh process with
PyTorch's defaults (GNU OpenMP, glibc malloc untouched), the comparison a new user makes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/smollm2-135m_minitron_cpu.yaml"


def matmul_peak(dtype, n: int = 2048, repeats: int = 3) -> float:
    """Best GFLOP/s of an n^3 matmul in `dtype` on this machine."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flops_per_token(arch, seq: int) -> float:
    """Forward FLOPs per token: 2 x parameters in matmuls (output layer included) + attention scores/values."""
    layer = arch.hidden_size * arch.head_dim * (2 * arch.num_attention_heads + 2 * arch.num_query_groups) \
        + 3 * arch.hidden_size * arch.ffn_hidden_size
    matmul_params = arch.num_layers * layer + arch.vocab_size * arch.hidden_size
    attention = 2 * arch.num_layers * seq * arch.num_attention_heads * arch.head_dim  # QK^T and AV, causal half
    return 2 * matmul_params + attention


def prepare_run(out: Path):
    from minitron import pipeline
    from minitron.recipe import load_recipe
    from minitron.run_folder import RunFolder

    recipe = load_recipe(RECIPE, ["stages=[import, prune]", "prune.only=[width]"], output=str(out / "runs"))
    pipeline.run(recipe)
    return recipe, RunFolder(recipe)


def train_rows(recipe, hf_dir, cfg):
    import torch

    from minitron import data

    prepared = data.prepare(recipe.data, hf_dir)
    rows = data.samples(prepared, "train", recipe.data.seq_length, cfg.steps * cfg.global_batch_size,
                        seed=recipe.data.seed)
    val = torch.stack(list(data.samples(prepared, "validation", recipe.data.seq_length, recipe.prune.validation_samples)))
    return rows, val


def minitron_loop(recipe, folder, cfg, work: Path) -> dict:
    from minitron.conversion.convert import nemo_to_hf
    from minitron.training.loop import TrainJob, train

    job = TrainJob(student=folder.summary("prune-width")["nemo"], teacher=str(folder.teacher_nemo()),
                   output=str(work / "minitron"), data=recipe.data, train=cfg)
    train(job)
    first, *metrics = [json.loads(x) for x in (work / "minitron/metrics.jsonl").read_text().splitlines()]
    seconds = sum(m["seconds"] for m in metrics)
    tokens = len(metrics) * cfg.global_batch_size * recipe.data.seq_length
    nemo_to_hf(work / "minitron/nemo", work / "minitron/hf")
    return {"tokens_per_second": tokens / seconds, "hf": work / "minitron/hf", "first_step_seconds": first["seconds"],
            "losses": [m["loss"] for m in metrics]}


def plain_loop(teacher_hf, student_hf, rows, cfg, bf16: bool, work: Path) -> dict:
    """Distillation as written by hand with transformers and PyTorch (the baseline)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_hf, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(student_hf, dtype=torch.float32).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    decay = [p for n, p in student.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in student.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    micro = cfg.micro_batch(1)
    accumulation = cfg.global_batch_size // micro
    times, losses = [], []
    for step in range(cfg.steps):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for k in range(accumulation):
            first = step * cfg.global_batch_size + k * micro
            tokens = torch.stack([rows[i] for i in range(first, first + micro)])[:, :-1]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                with torch.no_grad():
                    t_logits = teacher(tokens).logits
                s_logits = student(tokens).logits
            kl = F.kl_div(F.log_softmax(s_logits.float(), -1), F.log_softmax(t_logits.float(), -1),
                          reduction="none", log_target=True).sum(-1).mean()
            (kl / accumulation).backward()
            total += kl.item() / accumulation
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
        opt.step()
        times.append(time.perf_counter() - start)
        losses.append(total)
        print(f"  plain step {step + 1}/{cfg.steps}: loss {total:.4f}, {times[-1]:.1f} s", flush=True)
    student.save_pretrained(work / "plain/hf")
    tokens = (cfg.steps - 1) * cfg.global_batch_size * (rows[0].numel() - 1)
    return {"tokens_per_second": tokens / sum(times[1:]), "hf": work / "plain/hf", "first_step_seconds": times[0],
            "losses": losses[1:]}


def _lr(step: int, cfg) -> float:
    """Megatron's OptimizerParamScheduler: linear warmup from 0, then cosine to min_lr (step is 0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def heldout_loss(hf_dir, val) -> float:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(rows[:, :-1]).logits.flatten(0, 1), rows[:, 1:].flatten())
                  for rows in val.split(8)]
    return float(torch.stack(losses).mean())


def setup(args):
    """The run folder (import + prune-width), the loops' training settings, their token rows and held-out rows."""
    import dataclasses

    recipe, folder = prepare_run(args.output)
    cfg = dataclasses.replace(recipe.distill.train_config(), steps=args.steps, fp32_cpu_steps=None,
                              precision=args.precision, warmup_steps=1, eval_interval=10 ** 6, save_interval=10 ** 6)
    teacher_hf, student_hf = folder.imported_teacher()["hf"], folder.summary("prune-width")["hf"]
    rows, val = train_rows(recipe, teacher_hf, cfg)
    return recipe, folder, cfg, teacher_hf, student_hf, rows, val


def plain_in_own_process(args, work: Path) -> dict:
    """The plain loop as a user runs their own script: a fresh process with PyTorch's defaults (GNU OpenMP,
    glibc malloc as configured by default), not this process's runtime and allocator settings."""
    from minitron.runtime import cpu_runtime

    result = work / "plain_own_process.json"
    subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--precision", args.precision,
                    "--output", str(args.output), "--plain-only", str(result)],
                   env=cpu_runtime.pytorch_defaults(dict(os.environ)), check=True)
    return json.loads(result.read_text())


def plain_only(args) -> None:
    """Child of `plain_in_own_process`: the plain loop alone, its result as JSON."""
    from minitron.runtime import cpu_runtime
    from minitron.runtime.precision import resolve

    recipe, folder, cfg, teacher_hf, student_hf, rows, val = setup(args)
    work = args.plain_only.parent / "own_process"
    r = plain_loop(teacher_hf, student_hf, rows, cfg, resolve(args.precision).name == "bf16", work)
    args.plain_only.write_text(json.dumps({**r, "hf": str(r["hf"]), "heldout_lm_loss": heldout_loss(r["hf"], val),
                                           **cpu_runtime.active()}))


def main() -> None:
    from minitron.runtime import cpu_runtime

    cpu_runtime.use_tuned_runtime()  # as `minitron` runs: Intel OpenMP / tcmalloc where installed
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="optimizer steps of each loop (the first is not timed)")
    p.add_argument("--precision", default="auto", help="auto|bf16|fp32, for both loops")
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--plain-only", type=Path, help=argparse.SUPPRESS)  # internal: see plain_in_own_process
    args = p.parse_args()
    args.output = args.output or Path(tempfile.mkdtemp(prefix="bench_kd_loop-"))
    if args.plain_only:
        return plain_only(args)
    import torch

    from minitron.runtime.llama import LlamaArch
    from minitron.runtime.precision import hardware, resolve

    recipe, folder, cfg, teacher_hf, student_hf, rows, val = setup(args)
    out, precision = args.output, resolve(args.precision)
    work = out / "loops"
    shutil.rmtree(work, ignore_errors=True)
    hw = hardware()
    print(f"machine: {hw}; precision {precision.name} ({precision.reason})", flush=True)
    peak = matmul_peak(precision.dtype)
    seq = recipe.data.seq_length
    step_flops = 3 * flops_per_token(LlamaArch.from_hf_dir(student_hf), seq) \
        + flops_per_token(LlamaArch.from_hf_dir(teacher_hf), seq)
    results = {"minitron": minitron_loop(recipe, folder, cfg, work),
               "plain": plain_loop(teacher_hf, student_hf, rows, cfg, precision.name == "bf16", work)}
    table = {name: {"tokens_per_second": round(r["tokens_per_second"], 1), "first_step_seconds": r["first_step_seconds"],
                    "heldout_lm_loss": heldout_loss(r["hf"], val), "train_losses": r["losses"]}
             for name, r in results.items()}
    own = plain_in_own_process(args, work)
    table["plain, own process"] = {k: own[k] for k in ("tokens_per_second", "first_step_seconds", "heldout_lm_loss")} \
        | {"train_losses": own["losses"], "openmp": own["openmp"], "allocator": own["allocator"]}
    for row in table.values():
        row["fraction_of_peak"] = row["tokens_per_second"] * step_flops / (peak * 1e9)
    ratio = table["minitron"]["tokens_per_second"] / table["plain"]["tokens_per_second"]
    ratio_own = table["minitron"]["tokens_per_second"] / table["plain, own process"]["tokens_per_second"]
    print(f"\nKD, SmolLM2 teacher -> pruned width student, {cfg.steps} steps x {cfg.global_batch_size} x {seq} tokens "
          f"(micro-batch {cfg.micro_batch(1)}), precision {precision.name}, CPU {hw['cpu_capability']}, "
          f"{torch.get_num_threads()} threads; matmul peak {peak:.0f} GFLOP/s ({precision.name}, 2048^3)")
    print(f"{'loop':<20} {'tokens/s':>9} {'of peak':>8} {'held-out LM loss':>17} {'first step (untimed)':>21}  runtime")
    for name, row in table.items():
        runtime = f"OpenMP {row.get('openmp', hw['openmp'])}, {row.get('allocator', hw['allocator'])}"
        print(f"{name:<20} {row['tokens_per_second']:>9.1f} {100 * row['fraction_of_peak']:>7.1f}% "
              f"{row['heldout_lm_loss']:>17.4f} {row['first_step_seconds']:>20.1f}s  {runtime}")
    print(f"minitron loop: kd.chunk_tokens={cfg.kd.chunk_tokens}")
    print(f"minitron / plain (one process, same runtime): {ratio:.2f}x")
    print(f"minitron / plain in its own process with PyTorch's defaults: {ratio_own:.2f}x")
    summary = {"precision": precision.to_dict(), "matmul_peak_gflops": peak, "step_flops_per_token": step_flops,
               "steps": cfg.steps, "ratio": ratio, "ratio_plain_own_process": ratio_own, "loops": table}
    (out / "bench_kd_loop.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results: {out / 'bench_kd_loop.json'}")


if __name__ == "__main__":
    main()
