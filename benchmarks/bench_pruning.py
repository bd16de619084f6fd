"""Does Minitron pruning work? SmolLM2-135M on the embedded corpus, before any retraining.

Run: make bench-pruning   (or: .venv/bin/python benchmarks/bench_pruning.py [--output DIR])

Prints, all on the same held-out validation tokens:
  * width (hidden 576->384, FFN 1536->1024, heads 9->6): activation vs magnitude vs random;
  * depth (30->16 layers): importance vs contiguous vs lm_loss vs tail;
  * calibration overhead: importance collection vs a plain forward over the same tokens;
  * wall time of the CPU recipe for the width and the depth student (`minitron run`, fresh output).
Writes bench_pruning.json and bench_pruning.png into the output folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WIDTH = dict(hidden_size=384, ffn_hidden_size=1024, num_attention_heads=6)
DEPTH = dict(num_layers=16)


def method_comparison(out: Path) -> tuple[list[dict], dict]:
    from safetensors.torch import load_file

    from minitron import pipeline
    from minitron.pruning import importance as imp
    from minitron.pruning.config import StudentConfig
    from minitron.pruning.prune import PruneJob, _load_teacher, _minitron_config, run_job
    from minitron.recipe import load_recipe
    from minitron.run_folder import RunFolder
    from minitron.runtime.inference import forward_only
    from minitron.stages import prune as prune_stage

    recipe = load_recipe(None, ["stages=[import]"], output=str(out / "runs"))
    pipeline.run(recipe)
    folder = RunFolder(recipe)
    teacher = folder.imported_teacher()["nemo"]
    tokens = out / "tokens.safetensors"
    digest = prune_stage.write_tokens(recipe, folder.imported_teacher()["hf"], tokens)
    scores = prune_stage.scores_dir(folder, teacher, digest)
    scores.parent.mkdir(parents=True, exist_ok=True)

    variants = [("width", dict(WIDTH, importance=m)) for m in ("activation", "magnitude", "random")]
    variants += [("depth", dict(DEPTH, depth_method=m)) for m in ("importance", "contiguous", "lm_loss", "tail")]
    rows = []
    for kind, student in variants:
        label = f"{kind}/{student.get('importance', student.get('depth_method'))}"
        job = PruneJob(teacher=str(teacher), output=str(out / "students" / label.replace("/", "-")),
                       scores=str(scores), tokens=str(tokens),
                       student=StudentConfig(name=label, **student), prune=recipe.prune)
        start = time.perf_counter()
        r = run_job(job)
        rows.append({"variant": label, "validation_loss": r["validation_loss"],
                     "teacher_validation_loss": r["teacher_validation_loss"], "parameters": r["parameters"],
                     "layers_dropped": r["layers_dropped"], "seconds": round(time.perf_counter() - start, 1)})
        print(f"  {label:<18} val loss {r['validation_loss']:.4f}  ({r['parameters'] / 1e6:.1f}M params)", flush=True)

    # Calibration overhead: the same batches, plain forward vs forward with importance hooks.
    calib = load_file(str(tokens))["calibration"]
    batches = [calib[i:i + recipe.prune.calibration_batch_size]
               for i in range(0, len(calib), recipe.prune.calibration_batch_size)]
    job = PruneJob(teacher=str(teacher), output="", scores="", tokens="", student=StudentConfig(num_layers=16),
                   prune=recipe.prune)
    timings = {}
    for trial in range(2):  # second round: warm caches for both
        model, _ = _load_teacher(job, recipe.prune)
        start = time.perf_counter()
        forward_only(model, batches)
        timings["plain_forward_seconds"] = time.perf_counter() - start
        model, _ = _load_teacher(job, recipe.prune)
        start = time.perf_counter()
        imp.calibrate(model, lambda m: forward_only(m, batches), _minitron_config(recipe.prune))
        timings["calibration_seconds"] = time.perf_counter() - start
    timings["tokens"] = int(calib[:, :-1].numel())
    timings["overhead_ratio"] = timings["calibration_seconds"] / timings["plain_forward_seconds"]
    return rows, timings


def recipe_wall_times(out: Path) -> dict:
    """`make prune-width` / `make prune-depth` as a user runs them, into a fresh output folder.

    The data cache ($MINITRON_CACHE/data) is warm after the comparison above, as on any second run.
    """
    times = {}
    for student in ("width", "depth"):
        root = out / f"recipe-{student}"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "minitron.cli", "run", "--output",
                               str(root), "stages=[import, prune]", f"prune.only=[{student}]"],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            sys.exit(f"recipe {student} failed:\n{proc.stderr[-3000:]}")
        times[student] = round(time.perf_counter() - start, 1)
    return times


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [r["variant"] for r in rows]
    ax.bar(labels, [r["validation_loss"] for r in rows],
           color=["tab:green" if r["variant"].endswith(("activation", "importance")) else "tab:gray" for r in rows])
    ax.axhline(rows[0]["teacher_validation_loss"], color="k", linestyle="--", label="teacher")
    ax.set_ylabel("validation loss (nats/token), no retraining")
    ax.set_title("SmolLM2-135M pruned to the same shapes: Minitron vs baselines")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", type=Path, default=None, help="keep results here (default: a temp folder)")
    args = parser.parse_args()
    out = args.output or Path(tempfile.mkdtemp(prefix="bench_pruning-"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    print("pruning variants (same calibration, same validation tokens):", flush=True)
    rows, timings = method_comparison(out)
    walls = recipe_wall_times(out)
    result = {"variants": rows, "calibration": timings, "recipe_wall_seconds": walls}
    (out / "bench_pruning.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, out / "bench_pruning.png")
    teacher = rows[0]["teacher_validation_loss"]
    print(f"\nteacher validation loss: {teacher:.4f}")
    print(f"{'variant':<20} {'val loss':>9} {'params (M)':>11} {'layers dropped'}")
    for r in rows:
        print(f"{r['variant']:<20} {r['validation_loss']:>9.4f} {r['parameters'] / 1e6:>11.1f} {r['layers_dropped']}")
    print(f"\ncalibration: {timings['tokens']} tokens, plain forward {timings['plain_forward_seconds']:.1f} s, "
          f"with importance hooks {timings['calibration_seconds']:.1f} s, "
          f"overhead {timings['overhead_ratio']:.3f}x")
    print(f"CPU recipe wall time (minitron run, fresh output, warm data cache): "
          f"width {walls['width']} s, depth {walls['depth']} s")
    print(f"results: {out / 'bench_pruning.json'}, {out / 'bench_pruning.png'}")


if __name__ == "__main__":
    main()
