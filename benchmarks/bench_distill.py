"""Distillation on CPU: exact parallelism, throughput, and recovery of the pruned SmolLM2 student.

Run: make bench-distill   (or: .venv/bin/python benchmarks/bench_distill.py [--output DIR] [--skip-recovery])
     .venv/bin/python benchmarks/bench_distill.py --teacher-correction   (KD vs LM, Minitron's protocol)

1. Exact parallelism: the same 10 KD steps (fp32) at TP=1, PP=2 and DP=2 under torchrun, same
   global batch; max relative loss difference per step vs TP=1. The SmolLM2 width student (3 KV
   groups, FFN 1024) admits no TP > 1; TP=2 exactness is checked on a Llama-3.1-shaped model in
   tests/test_training.py.
2. Throughput of KD steps in bf16 and fp32 (tokens/s) and the share of step time spent outside
   the forward/backward schedule (teacher forward + student forward/backward).
3. Recovery: the width student distilled with the CPU recipe (KD), trained with plain LM loss, and
   with KD + LM loss, all on the same tokens; fraction of the (pruned - teacher) loss gap recovered,
   every model scored on the same held-out tokens.
4. With --teacher-correction: the same KD vs LM comparison after correcting the teacher on the
   distillation data first (the Minitron protocol: prune and distil from the corrected teacher).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def recipe(out: Path, *overrides: str):
    from minitron.recipe import load_recipe

    return load_recipe(None, list(overrides), output=str(out / "runs"))


def pruned_width(out: Path):
    from minitron import pipeline

    r = recipe(out, "stages=[import, prune]", "prune.only=[width]")
    pipeline.run(r)
    return r


def job_for(r, out: Path, name: str, teacher: bool, **train):
    from minitron.run_folder import RunFolder
    from minitron.training.loop import TrainJob

    folder = RunFolder(r)
    cfg = dataclasses.replace(r.distill.train_config(), **train)
    return TrainJob(student=folder.summary("prune-width")["nemo"],
                    teacher=str(folder.teacher_nemo()) if teacher else None, output=str(out / name),
                    data=dataclasses.replace(r.data), train=cfg)


def torchrun(job, nproc: int, path: Path) -> list[dict]:
    from minitron import config

    config.save(job, path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "minitron.training.loop", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        sys.exit(f"{path.name} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (Path(job.output) / "metrics.jsonl").read_text().splitlines()]


def exact_parallelism(r, out: Path, lr: float) -> dict:
    """Also runs TP1 with micro-batch 1 (same math, other summation order): the fp32 noise floor."""
    curves = {}
    short = dict(steps=10, warmup_steps=2, micro_batch_size=2, global_batch_size=8, precision="fp32",
                 eval_interval=10, save_interval=10, eval_samples=2, lr=lr, min_lr=lr / 10)
    for name, tp, pp, dp in (("TP1", 1, 1, 1), ("TP1-micro1", 1, 1, 1), ("PP2", 1, 2, 1), ("DP2", 1, 1, 2)):
        job = job_for(r, out, f"parallel-{name}-lr{lr:g}", True,
                      **{**short, "micro_batch_size": 1 if name == "TP1-micro1" else 2})
        job.tensor_parallel, job.pipeline_parallel = tp, pp
        job.data.seq_length = 64
        curves[name] = [m["loss"] for m in torchrun(job, tp * pp * dp, out / f"job-{name}.json")]
        print(f"  {name}: " + " ".join(f"{x:.5f}" for x in curves[name]), flush=True)
    ref = curves["TP1"]
    return {k: {"losses": v, "max_rel_diff": max(abs(a - b) / abs(b) for a, b in zip(v, ref))}
            for k, v in curves.items()}


def throughput(r, out: Path) -> dict:
    from minitron.training.loop import train

    rows = {}
    for precision in ("bf16", "fp32"):
        job = job_for(r, out, f"speed-{precision}", True, steps=6, warmup_steps=1, precision=precision,
                      eval_interval=1000, save_interval=1000, eval_samples=2)
        train(job)
        metrics = [json.loads(x) for x in (Path(job.output) / "metrics.jsonl").read_text().splitlines()][1:]
        step = sum(m["seconds"] for m in metrics)
        fb = sum(m["fwd_bwd_seconds"] for m in metrics)
        tokens = sum(m["tokens_per_second"] * m["seconds"] for m in metrics)
        rows[precision] = {"tokens_per_second": tokens / step, "outside_fwd_bwd_share": 1 - fb / step}
        print(f"  {precision}: {rows[precision]['tokens_per_second']:.0f} tok/s, "
              f"{100 * rows[precision]['outside_fwd_bwd_share']:.1f}% of step time outside fwd/bwd", flush=True)
    return rows


def recovery(r, out: Path, mix: bool = True) -> dict:
    from minitron import pipeline
    from minitron.run_folder import RunFolder
    from minitron.training.loop import train

    start = time.perf_counter()
    pipeline.run(recipe(out, f"stages=[{', '.join(r.stages)}]", "prune.only=[width]", "distill.students=[width]"))
    kd_seconds = time.perf_counter() - start
    kd = RunFolder(r).summary("distill-width")
    start = time.perf_counter()
    lm = train(job_for(r, out, "lm-baseline", False))
    lm_seconds = time.perf_counter() - start
    if mix:
        mix_job = job_for(r, out, "kd-lm-mix", True)
        mix_job.train.kd.lm_loss = True  # KD plus the student's own LM loss (balanced by Model Optimizer)
        train(mix_job)
    pruned, teacher = kd["pruned_validation_loss"], kd["teacher_validation_loss"]
    gap = pruned - teacher
    return {"teacher": teacher, "pruned": pruned, "tokens": kd["tokens"],
            "kd": {"val_lm_loss": kd["validation"]["lm_loss"], "gap_recovered": (pruned - kd["validation"]["lm_loss"]) / gap,
                   "wall_seconds": round(kd_seconds, 1)},
            "lm": {"val_lm_loss": lm["validation"]["lm_loss"], "gap_recovered": (pruned - lm["validation"]["lm_loss"]) / gap,
                   "wall_seconds": round(lm_seconds, 1)}}


def heldout(r, out: Path) -> dict:
    """Teacher, pruned, KD and LM students on the same held-out tokens (the prune stage's validation set)."""
    import torch

    from minitron.conversion.convert import load_megatron_from_nemo
    from minitron import data
    from minitron.run_folder import RunFolder
    from minitron.runtime import distributed
    from minitron.runtime.inference import lm_loss

    folder = RunFolder(r)
    prepared = data.prepare(r.data, folder.imported_teacher()["hf"])
    rows = torch.stack(list(data.samples(prepared, "validation", r.data.seq_length, r.prune.validation_samples)))
    batches = [rows[i:i + 8] for i in range(0, len(rows), 8)]
    distributed.initialize(1, 1)
    corrected = folder.stage_dir("teacher_correction") / "nemo"
    models = {"teacher": folder.imported_teacher()["nemo"],
              **({"teacher-corrected": corrected} if "teacher_correction" in r.stages else {}),
              "pruned": folder.summary("prune-width")["nemo"],
              "kd": folder.summary("distill-width")["nemo"], "lm": out / "lm-baseline/nemo",
              "kd+lm": out / "kd-lm-mix/nemo"}
    models = {k: v for k, v in models.items() if Path(v).exists()}
    losses = {k: lm_loss(load_megatron_from_nemo(v, dtype=torch.float32)[0].eval(), batches) for k, v in models.items()}
    teacher = "teacher-corrected" if "teacher-corrected" in losses else "teacher"  # the one that taught
    gap = losses["pruned"] - losses[teacher]
    return {"tokens": int(rows[:, :-1].numel()), "losses": losses, "gap_relative_to": teacher,
            "gap_recovered": {k: (losses["pruned"] - losses[k]) / gap for k in losses
                              if k not in ("teacher", "teacher-corrected", "pruned")}}


def main() -> None:
    from minitron.runtime import cpu_runtime

    cpu_runtime.use_tuned_runtime()  # as `minitron` runs: Intel OpenMP / tcmalloc where installed
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--skip-recovery", action="store_true", help="skip the ~20-minute recovery runs")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--heldout-only", action="store_true",
                        help="only re-score the models of an earlier run in --output on the same held-out tokens")
    parser.add_argument("--teacher-correction", action="store_true",
                        help="recovery only, Minitron's protocol: correct the teacher first (LM fine-tune on the "
                             "distillation data), prune it, then KD vs LM from that pruned student")
    parser.add_argument("--parallel-lr", type=float, nargs="+", default=[1e-4, 3e-4],
                        help="learning rates for the exact-parallelism runs")
    args = parser.parse_args()
    out = args.output or Path(tempfile.mkdtemp(prefix="bench_distill-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.teacher_correction:
        r = recipe(out, "stages=[import, teacher_correction, prune, distill]", "prune.only=[width]")
        print("recovery with teacher correction (CPU recipe budget):", flush=True)
        rec = recovery(r, out, mix=False)
        print(f"  {rec['tokens']} tokens; KD wall {rec['kd']['wall_seconds']} s (incl. correction and pruning), "
              f"LM wall {rec['lm']['wall_seconds']} s")
        h = heldout(r, out)
        print(f"  same held-out tokens ({h['tokens']}): " + ", ".join(f"{k} {v:.4f}" for k, v in h["losses"].items()))
        print(f"  gap (pruned - {h['gap_relative_to']}) recovered: "
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in h["gap_recovered"].items()))
        (out / "bench_distill_corrected.json").write_text(json.dumps({"recovery": rec, "heldout": h}, indent=2) + "\n")
        return
    r = pruned_width(out)
    if args.heldout_only:
        h = heldout(r, out)
        print(f"held-out ({h['tokens']} tokens): " + ", ".join(f"{k} {v:.4f}" for k, v in h["losses"].items()))
        print("gap recovered: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in h["gap_recovered"].items()))
        (out / "bench_distill_heldout.json").write_text(json.dumps(h, indent=2) + "\n")
        return
    result = {}
    if not args.skip_throughput:
        print("throughput (KD, SmolLM2 teacher -> width student, 2 cores):", flush=True)
        result["throughput"] = throughput(r, out)
    result["parallel"] = {}
    for lr in args.parallel_lr:
        print(f"exact parallelism (10 KD steps, fp32, global batch 8 x 64 tokens, lr {lr:g}):", flush=True)
        result["parallel"][f"lr={lr:g}"] = par = exact_parallelism(r, out, lr)
        for k, v in par.items():
            print(f"  {k}: max relative difference vs TP1 = {v['max_rel_diff']:.2e}")
    if not args.skip_recovery:
        print("recovery (CPU recipe budget):", flush=True)
        result["recovery"] = rec = recovery(recipe(out, "stages=[import, prune, distill]"), out)
        print(f"  teacher {rec['teacher']:.4f}, pruned {rec['pruned']:.4f}, {rec['tokens']} tokens")
        for k in ("kd", "lm"):
            print(f"  {k}: val LM loss {rec[k]['val_lm_loss']:.4f}, gap recovered {100 * rec[k]['gap_recovered']:.1f}%, "
                  f"wall {rec[k]['wall_seconds']} s")
        result["heldout"] = h = heldout(r, out)
        print(f"  same held-out tokens ({h['tokens']}): " + ", ".join(f"{k} {v:.4f}" for k, v in h["losses"].items()))
        print("  gap recovered: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in h["gap_recovered"].items()))
    (out / "bench_distill.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out / 'bench_distill.json'}")


if __name__ == "__main__":
    main()
