"""The project's KD loop vs a plain transformers + PyTorch KD loop, side by side on this machine.

Run: make bench-kd-loop   (or: .venv/bin/python benchmarks/bench_kd_loop.py [--steps N] [--precision auto|bf16|fp32])

Both loops distil the demo's pruned SmolLM2 width student from its teacher (the import and
prune stages of recipes/smollm2-135m_minitron_cpu.yaml run first, into --output), one after the
other in this process, on exactly the same token rows (the recipe's packed train split, same order),
with the same batch (global and micro), precision, AdamW settings, warmup + cosine schedule, gradient
clipping and loss (forward KL at temperature 1, mean over tokens):

* **minitron**: `minitron.training.loop.train_together` (Megatron-Core schedules, DDP and optimizer, Model
  Optimizer distillation, the chunked KL of `minitron.training.kd_loss`);
* **plain**: `transformers.LlamaForCausalLM` teacher and student, `torch.optim.AdamW`,
  `torch.autocast` for bf16, `F.kl_div` on the full logits: what one would write by hand.

Printed: tokens/s of both (steps after the first, which includes warm-up; its time is printed too),
their ratio, the fraction
of this machine's measured matmul peak each reaches (model FLOPs: 6 x student + 2 x teacher
parameters per token, the output layer included, plus attention), and the held-out LM loss of both
trained students on the same validation rows (HF model, fp32). The KD loss of the first step (before any
update) shows that both loops compute the same objective: equal to rounding in fp32. The CPU capability, the chosen
precision, the OpenMP runtime and the allocator are printed with every number. Like `minitron`, the
bench re-runs itself under Intel OpenMP and tcmalloc where installed (`minitron.runtime.cpu_runtime`),
so both loops run under the same runtime; `MINITRON_CPU_RUNTIME=default` keeps PyTorch's own. A third
row runs the plain loop once more the way a user runs their own script: in a fresh process with
PyTorch's defaults (GNU OpenMP, glibc malloc untouched), the comparison a new user makes.

The second table is the demo's own workload: the width and the depth student distilled from one teacher.
`minitron` trains them step by step on one teacher forward (`train_together`, as `distill.share_teacher`
does); a plain loop, written for one student, runs once per student. Its tokens/s are student tokens (two
per token of data); "of peak" counts the FLOPs each loop actually runs (one teacher pass or two).
"""

from __future__ import annotations

import argparse
import functools
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


def matmul_peak(dtype, n: int = 2048, repeats: int = 3, device: str = "cpu") -> float:
    """Best GFLOP/s of an n^3 matmul in `dtype` on `device`."""
    import torch

    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn, device: str = "cpu") -> float:
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def flops_per_token(arch, seq: int) -> float:
    """Forward FLOPs per token: 2 x parameters in matmuls (output layer included) + attention scores/values."""
    layer = arch.hidden_size * arch.head_dim * (2 * arch.num_attention_heads + 2 * arch.num_query_groups) \
        + 3 * arch.hidden_size * arch.ffn_hidden_size
    matmul_params = arch.num_layers * layer + arch.vocab_size * arch.hidden_size
    attention = 2 * arch.num_layers * seq * arch.num_attention_heads * arch.head_dim  # QK^T and AV, causal half
    return 2 * matmul_params + attention


STUDENTS = ("width", "depth")   # the recipe's pruned students, distilled from one teacher in the demo


def prepare_run(out: Path, students: tuple[str, ...] = STUDENTS, overrides: tuple[str, ...] = ()):
    from minitron import pipeline
    from minitron.recipe import load_recipe
    from minitron.run_folder import RunFolder

    recipe = load_recipe(None, ["stages=[import, prune]", f"prune.only=[{', '.join(students)}]", *overrides],
                         output=str(out / "runs"))
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


def read_metrics(path: Path) -> tuple[dict, list[dict]]:
    """A run's metrics.jsonl: its first step (includes warm-up, not timed) and the timed steps after it."""
    first, *timed = [json.loads(line) for line in path.read_text().splitlines()]
    return first, timed


def minitron_loop(recipe, folder, cfg, work: Path, names: tuple[str, ...]) -> dict:
    """The project's loop on the students `names` together (one teacher forward serves them all)."""
    from minitron.conversion.convert import nemo_to_hf
    from minitron.training.loop import TrainJob, train_together

    out = work / ("minitron_" + "+".join(names))
    jobs = [TrainJob(student=folder.summary(f"prune-{n}")["nemo"], teacher=str(folder.teacher_nemo()),
                     output=str(out / n), data=recipe.data, train=cfg) for n in names]
    train_together(jobs)
    seconds = first_seconds = tokens = 0.0
    result = {"hf": {}, "losses": {}, "first_loss": {}}
    for n in names:
        # Each student's metrics time its own share of a step: the first one's includes the teacher forward.
        first, metrics = read_metrics(out / n / "metrics.jsonl")
        seconds += sum(m["seconds"] for m in metrics)
        first_seconds += first["seconds"]
        tokens += len(metrics) * cfg.global_batch_size * recipe.data.seq_length
        nemo_to_hf(out / n / "nemo", out / n / "hf")
        result["hf"][n], result["losses"][n] = out / n / "hf", [m["loss"] for m in metrics]
        result["first_loss"][n] = first["loss"]
    return result | {"seconds": seconds, "tokens": tokens, "first_step_seconds": first_seconds}


def plain_loop(teacher_hf, student_hf, rows, cfg, bf16: bool, out: Path) -> dict:
    """Distillation as written by hand with transformers and PyTorch (the baseline), one student."""
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
    student.save_pretrained(out)
    return {"seconds": sum(times[1:]), "tokens": (cfg.steps - 1) * cfg.global_batch_size * (rows[0].numel() - 1),
            "first_step_seconds": times[0], "hf": str(out), "losses": losses[1:], "first_loss": losses[0]}


def plain_students(teacher_hf, students_hf, names, rows, cfg, bf16: bool, work: Path) -> dict:
    """The plain loop once per student, one after the other: {name: its result}."""
    return {n: plain_loop(teacher_hf, students_hf[n], rows, cfg, bf16, work / f"plain/{n}") for n in names}


def combined(runs: dict, names) -> dict:
    """Student tokens/s, first-step time, HF dirs and losses of `names` run one after the other."""
    picked = [runs[n] for n in names]
    return {"seconds": sum(r["seconds"] for r in picked), "tokens": sum(r["tokens"] for r in picked),
            "first_step_seconds": sum(r["first_step_seconds"] for r in picked),
            "hf": {n: runs[n]["hf"] for n in names}, "losses": {n: runs[n]["losses"] for n in names},
            "first_loss": {n: runs[n]["first_loss"] for n in names}}


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
    """The run folder (import + prune), the loops' training settings, their token rows and held-out rows."""
    import dataclasses

    recipe, folder = prepare_run(args.output)
    cfg = dataclasses.replace(recipe.distill.train_config(), steps=args.steps,
                              precision=args.precision, warmup_steps=1, eval_interval=10 ** 6, save_interval=10 ** 6)
    teacher_hf = folder.imported_teacher()["hf"]
    students_hf = {n: folder.summary(f"prune-{n}")["hf"] for n in STUDENTS}
    rows, val = train_rows(recipe, teacher_hf, cfg)
    return recipe, folder, cfg, teacher_hf, students_hf, rows, val


def plain_in_own_process(args, work: Path) -> dict:
    """The plain loop as a user runs their own script: a fresh process with PyTorch's defaults (GNU OpenMP,
    glibc malloc as configured by default), not this process's runtime and allocator settings."""
    from minitron.runtime import cpu_runtime

    result = work / "plain_own_process.json"
    # This run's own arguments; --output again, as it may be the temporary folder chosen here.
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--output", str(args.output), "--plain-only", str(result)],
                   env=cpu_runtime.pytorch_defaults(dict(os.environ)), check=True)
    return json.loads(result.read_text())


def plain_only(args) -> None:
    """Child of `plain_in_own_process`: the plain loop on every student, the results and runtime as JSON."""
    from minitron.runtime import cpu_runtime
    from minitron.runtime.precision import resolve

    recipe, folder, cfg, teacher_hf, students_hf, rows, val = setup(args)
    runs = plain_students(teacher_hf, students_hf, STUDENTS, rows, cfg, resolve(args.precision).name == "bf16",
                          args.plain_only.parent / "own_process")
    args.plain_only.write_text(json.dumps({"runs": runs, "runtime": cpu_runtime.active()}))


def table_row(result: dict, heldout, runtime: dict, flops_per_token: float, peak: float) -> dict:
    """One printed row: student tokens/s, share of the matmul peak, held-out loss per student (`heldout(hf)`)."""
    tokens_per_second = result["tokens"] / result["seconds"]
    students = len(result["hf"])
    return {"tokens_per_second": round(tokens_per_second, 1), "first_step_seconds": result["first_step_seconds"],
            "fraction_of_peak": tokens_per_second / students * flops_per_token / (peak * 1e9),
            "heldout_lm_loss": {n: heldout(str(hf)) for n, hf in result["hf"].items()},
            "step1_kd_loss": result["first_loss"],
            "train_losses": result["losses"], **runtime}


def print_table(title: str, table: dict) -> tuple[float, float]:
    """Print `table` (minitron's row first, then the plain loop in this process and in its own) and the two
    ratios; return them."""
    print(f"\n{title}")
    print(f"{'loop':<30} {'tokens/s':>9} {'of peak':>8} {'held-out LM loss':>22} {'step-1 KD loss':>20} "
          f"{'first step':>11}  runtime")
    for name, row in table.items():
        heldout, step1 = (" / ".join(f"{v:.4f}" for v in row[k].values()) for k in ("heldout_lm_loss", "step1_kd_loss"))
        print(f"{name:<30} {row['tokens_per_second']:>9.1f} {100 * row['fraction_of_peak']:>7.1f}% {heldout:>22} "
              f"{step1:>20} {row['first_step_seconds']:>10.1f}s  OpenMP {row['openmp']}, {row['allocator']}")
    mine, same, own = (row["tokens_per_second"] for row in table.values())
    print(f"minitron / plain: {mine / same:.2f}x in one process (same runtime), {mine / own:.2f}x against the plain "
          f"loop in its own process with PyTorch's defaults")
    return mine / same, mine / own


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

    recipe, folder, cfg, teacher_hf, students_hf, rows, val = setup(args)
    out, precision = args.output, resolve(args.precision)
    work = out / "loops"
    shutil.rmtree(work, ignore_errors=True)
    hw, here = hardware(), cpu_runtime.active()
    heldout = functools.cache(lambda hf: heldout_loss(hf, val))  # a student in both tables is evaluated once
    print(f"machine: {hw}; precision {precision.name} ({precision.reason})", flush=True)
    peak = matmul_peak(precision.dtype)
    seq = recipe.data.seq_length
    fwd = {n: flops_per_token(LlamaArch.from_hf_dir(hf), seq) for n, hf in students_hf.items()}
    teacher_fwd = flops_per_token(LlamaArch.from_hf_dir(teacher_hf), seq)
    one = STUDENTS[:1]
    # FLOPs per token of data each loop runs: 3 x forward per student (forward + backward), teacher forwards.
    flops = {"one": 3 * fwd[one[0]] + teacher_fwd, "shared": 3 * sum(fwd.values()) + teacher_fwd,
             "apart": 3 * sum(fwd.values()) + len(STUDENTS) * teacher_fwd}

    minitron_one = minitron_loop(recipe, folder, cfg, work, one)
    minitron_shared = minitron_loop(recipe, folder, cfg, work, STUDENTS)
    plain = plain_students(teacher_hf, students_hf, STUDENTS, rows, cfg, precision.name == "bf16", work)
    own = plain_in_own_process(args, work)
    single = {"minitron": table_row(minitron_one, heldout, here, flops["one"], peak),
              "plain": table_row(combined(plain, one), heldout, here, flops["one"], peak),
              "plain, own process": table_row(combined(own["runs"], one), heldout, own["runtime"], flops["one"], peak)}
    pair = {"minitron, one teacher pass": table_row(minitron_shared, heldout, here, flops["shared"], peak),
            "plain, one after the other": table_row(combined(plain, STUDENTS), heldout, here, flops["apart"], peak),
            "plain, own process": table_row(combined(own["runs"], STUDENTS), heldout, own["runtime"], flops["apart"],
                                            peak)}

    setting = (f"{cfg.steps} steps x {cfg.global_batch_size} x {seq} tokens (micro-batch {cfg.micro_batch(1)}), "
               f"precision {precision.name}, CPU {hw['cpu_capability']}, {torch.get_num_threads()} threads; "
               f"matmul peak {peak:.0f} GFLOP/s ({precision.name}, 2048^3); minitron kd.chunk_tokens={cfg.kd.chunk_tokens}")
    print(f"\nKD from the SmolLM2 teacher: {setting}")
    same, apart = print_table(f"{one[0]} student", single)
    same_pair, apart_pair = print_table(f"{' + '.join(STUDENTS)} students (tokens/s: student tokens)", pair)
    summary = {"precision": precision.to_dict(), "hardware": hw, "matmul_peak_gflops": peak,
               "flops_per_token": flops, "steps": cfg.steps, "ratio": same, "ratio_plain_own_process": apart,
               "ratio_shared_teacher": same_pair, "ratio_shared_teacher_plain_own_process": apart_pair,
               "loops": single, "loops_shared_teacher": pair}
    (out / "bench_kd_loop.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results: {out / 'bench_kd_loop.json'}")


if __name__ == "__main__":
    main()
