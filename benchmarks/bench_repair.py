"""Closed-form repair at a real shape: seconds, share of the prune job, peak memory against `minitron plan`,
calibration error and validation loss before/after.

Run: make bench-repair   (or: .venv/bin/python benchmarks/bench_repair.py [--shape smollm2-135m|llama3.1-8b]
     [--layers N] [--samples N] [--seq-length N] [--output DIR])
On a GPU (the GPU check):
     python3 benchmarks/bench_repair.py --shape llama3.1-8b --layers 8 --samples 64 --seq-length 8192

The teacher is a random-weight Llama of a real shape (`--layers` keeps its first N layers: per-layer sizes, and
so the Gram matrices and the per-token activations, are the full model's), written as an HF folder and imported
with minitron's converter; the student is the recipe's width student (Llama 3.1 8B -> Llama-3.1-Minitron-4B-Width:
hidden 4096 -> 3072, FFN 14336 -> 9216, heads kept; SmolLM2-135M -> hidden 396, FFN 832, heads kept), cut by the
project's own prune job (`minitron.pruning.prune.run_job`: Model Optimizer's mcore_minitron on activation scores,
then `minitron/pruning/repair.py`) with the prune settings of that shape's recipe at pipeline_parallel 1. The
text is this Python's standard library source read byte by byte. Random weights say nothing about quality; what
this measures is what repair costs at that shape (time and memory do not depend on the weights) and that it
lowers the calibration error it fits.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from bench_kd_step import SHAPES, llama_config, write_corpus, write_random_llama

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"smollm2-135m": REPO / "recipes" / "smollm2-135m_minitron_cpu.yaml",
           "llama3.1-8b": REPO / "recipes" / "llama3.1-8b_minitron-width_dgx.yaml"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m",
                   help="teacher shape (student: its width prune)")
    p.add_argument("--layers", type=int, default=None, help="keep the first N layers of the teacher (default all)")
    p.add_argument("--samples", type=int, default=32, help="calibration (= repair) sequences")
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--output", type=Path, default=REPO / "runs" / "bench" / "repair")
    return p.parse_args()


def recipe_for(args):
    """The shape's recipe, its prune section at PP=1 and this run's calibration size."""
    from minitron.recipe import load_recipe

    n = args.samples
    overrides = ["prune.parallel=null", "parallel.pipeline_parallel=1", "parallel.tensor_parallel=1",
                 f"prune.calibration_samples={n}", f"prune.repair_samples={n}", f"prune.selection_samples={min(8, n)}",
                 f"data.seq_length={args.seq_length}", "prune.repair=least_squares"]
    recipe = load_recipe(RECIPES[args.shape], overrides, output=str(args.output / "runs"))
    recipe.prune.students = [s for s in recipe.prune.students if s.name == "width"]
    return recipe


def token_rows(corpus: Path, rows: int, seq: int, offset: int = 0) -> torch.Tensor:
    """[rows, seq+1] byte tokens of the corpus from `offset`, one row after another."""
    data = corpus.read_bytes()[offset: offset + rows * (seq + 1)]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long().view(rows, seq + 1)


def run(args) -> dict:
    from safetensors.torch import save_file

    from minitron.conversion.convert import hf_to_nemo
    from minitron.plan import repair_memory, student_arch, teacher_arch
    from minitron.pruning.prune import PruneJob, run_job
    from minitron.runtime.precision import hardware as machine

    recipe = recipe_for(args)
    out = args.output / f"{args.shape}_L{args.layers or 'all'}_{args.samples}x{args.seq_length}"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    hf = write_random_llama(out / "teacher_hf", llama_config(args.shape, False, args.layers), seed=1)
    nemo = out / "teacher_nemo"
    if not nemo.is_dir():
        hf_to_nemo(hf, nemo)
    validation = recipe.prune.validation_samples
    corpus = write_corpus(out / "stdlib.txt", (args.samples + validation) * (args.seq_length + 1))
    tokens = out / "tokens.safetensors"
    save_file({"calibration": token_rows(corpus, args.samples, args.seq_length),
               "validation": token_rows(corpus, validation, args.seq_length, args.samples * (args.seq_length + 1))},
              str(tokens))
    setup_seconds = time.perf_counter() - start

    student = recipe.prune.students[0]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    job = PruneJob(teacher=str(nemo), output=str(out / f"student-{stamp}"), scores=str(out / f"scores-{stamp}"),
                   tokens=str(tokens), student=student, prune=recipe.prune, log=str(out / "modelopt.log"))
    start = time.perf_counter()
    result = run_job(job)
    job_seconds = time.perf_counter() - start

    teacher = teacher_arch(recipe, str(hf))
    planned = repair_memory(teacher, student_arch(teacher, student), recipe)
    full = teacher_arch(recipe, "llama3.1-8b") if args.shape == "llama3.1-8b" else teacher
    planned_full = repair_memory(full, student_arch(full, student), recipe)
    repair, hardware = result["repair"], machine()
    return {
        "shape": args.shape, "layers": teacher.num_layers, "tokens": args.samples * args.seq_length,
        "samples": args.samples, "seq_length": args.seq_length, "dtype": recipe.prune.dtype,
        "device": hardware["gpu"] or f"CPU ({hardware['cpu_capability']})",
        "setup_seconds": round(setup_seconds, 1), "prune_job_seconds": round(job_seconds, 1),
        "repair_seconds": repair["seconds"], "repair_share": round(repair["seconds"] / job_seconds, 3),
        "fits": repair["fits"], "fits_taken": repair["fits_taken"],
        "calibration_error_before": repair["calibration_error_before"],
        "calibration_error_after": repair["calibration_error_after"],
        "validation_loss_teacher": result["teacher_validation_loss"],
        "validation_loss_pruned": result["unrepaired_validation_loss"],
        "validation_loss_repaired": result["validation_loss"],
        "peak_gpu_memory_gib": repair.get("peak_gpu_memory_gib"),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
        "planned_gib": round(sum(planned.values()), 2), "planned_gib_full_model": round(sum(planned_full.values()), 2),
        "full_model_layers": full.num_layers,
    }


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    row = run(args)
    print(f"\nRepair, {row['shape']} shape, {row['layers']} layers, random weights, {row['samples']} x "
          f"{row['seq_length']} calibration tokens, {row['dtype']}, on {row['device']}:")
    print(f"  repair {row['repair_seconds']:.1f} s of the {row['prune_job_seconds']:.1f} s prune job "
          f"({100 * row['repair_share']:.0f}%); {row['fits_taken']} of {row['fits']} fits taken")
    print(f"  calibration error {row['calibration_error_before']:.4g} -> {row['calibration_error_after']:.4g}; "
          f"validation loss teacher {row['validation_loss_teacher']:.4f}, pruned {row['validation_loss_pruned']:.4f}, "
          f"repaired {row['validation_loss_repaired']:.4f}")
    if row["peak_gpu_memory_gib"] is not None:
        print(f"  peak GPU memory during repair {row['peak_gpu_memory_gib']:.1f} GiB; minitron plan's estimate "
              f"{row['planned_gib']:.1f} GiB at {row['layers']} layers, {row['planned_gib_full_model']:.1f} GiB at "
              f"{row['full_model_layers']}")
    else:
        print(f"  peak RSS {row['peak_rss_gib']:.1f} GiB; minitron plan's GPU estimate {row['planned_gib']:.1f} GiB")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"bench_repair_{row['shape']}_L{row['layers']}.json"
    path.write_text(json.dumps(row, indent=2))
    print(f"  written: {path}")


if __name__ == "__main__":
    main()
