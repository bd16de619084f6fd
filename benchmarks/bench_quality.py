"""Recovery of the demo's students: held-out perplexity against distillation tokens, arm by arm.

Run: make bench-quality   (or: .venv/bin/python benchmarks/bench_quality.py [--steps N] [--output DIR])

Starts from the demo recipe's run folder (runs import, teacher_correction and prune there if they have not
run) and trains, for each distilled student of the recipe, on the same tokens in the same order:

  kd              the repaired student (prune.repair), logit KL from the corrected teacher: the recipe's arm
                  (the run's own distill-<student> stage when it has run with these steps)
  kd-unrepaired   Model Optimizer's plain slice, same KD
  lm              the repaired student trained on the tokens alone (LM loss, no teacher): the baseline KD
                  must beat at equal tokens
  kd-general      (only when asked for: --arms kd kd-general) the kd arm on the recipe's text blended with general
                  English, Debian's fortunes (embedded:fortunes, --general-share of the training samples); its
                  validation curve is on the blend's validation split, its scores on the same tokens as every arm

Prints, per student and arm, validation perplexity at each evaluation step (the curve), then the end of
each arm scored like the report does: held-out test perplexity (the data's test split, the recipe's
eval.perplexity settings) and perplexity on text outside the distillation domain (Debian's GPL-3 and
Apache-2.0 licence texts, /usr/share/common-licenses: the project never trains on them), each as × the
corrected teacher and the share of the pruned student's log-perplexity gap closed. Writes
bench_quality.json and bench_quality.png (one panel per student) to --output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
import warnings
from pathlib import Path

OOD_TEXTS = [Path("/usr/share/common-licenses/GPL-3"), Path("/usr/share/common-licenses/Apache-2.0")]
ARMS = ("kd", "kd-unrepaired", "lm", "kd-general")
DEFAULT_ARMS = ARMS[:3]
GENERAL_TEXT = "embedded:fortunes"


def prepared_run(steps: int | None, lr: float | None = None, batch: int | None = None, overrides=()):
    """The demo recipe (with `overrides`) with its students pruned (and repaired) and its teacher corrected."""
    from minitron import pipeline
    from minitron.recipe import load_recipe
    from minitron.run_folder import RunFolder

    recipe = load_recipe(None, list(overrides))
    pipeline.run(load_recipe(None, [*overrides, "stages=[import, teacher_correction, prune]"]))
    if recipe.prune.repair == "none":
        raise SystemExit("bench-quality compares repair on/off: the demo recipe has prune.repair=none")
    return recipe, RunFolder(recipe), arm_config(recipe.distill.train_config(), steps, lr, batch)


def arm_config(cfg, steps: int | None = None, lr: float | None = None, batch: int | None = None):
    """The recipe's training config with another step count, peak LR or global batch size.

    `batch` without `steps` keeps the recipe's tokens (steps x batch); the warmup keeps its share of the steps and
    the cosine schedule its shape (min_lr scales with the peak).
    """
    if batch:
        steps = steps or cfg.steps * cfg.global_batch_size // batch
        cfg = dataclasses.replace(cfg, global_batch_size=batch, micro_batch_size=None)
    if steps:
        cfg = dataclasses.replace(cfg, steps=steps, warmup_steps=max(1, round(cfg.warmup_steps * steps / cfg.steps)),
                                  save_interval=steps)
    if lr:
        cfg = dataclasses.replace(cfg, lr=lr, min_lr=cfg.min_lr * lr / cfg.lr)
    # four points on the curve, as the recipe's own distillation; the loop validates before step 1 as well
    return dataclasses.replace(cfg, eval_interval=max(1, cfg.steps // 4))


def unrepaired_nemo(folder, student: str, out: Path) -> Path:
    """Model Optimizer's slice as a NeMo checkpoint (the prune stage keeps it as HF only)."""
    from minitron.conversion.convert import hf_to_nemo

    target = out / f"{student}-unrepaired-nemo"
    if not target.is_dir():
        hf_to_nemo(folder.model_checkpoint(f"{student}-pruned"), target)
    return target


def general_data(data, share: float):
    """The recipe's data with general English blended into training: held-out splits are both corpora's."""
    if not data.source.startswith("embedded:") or data.blend:
        raise SystemExit(f"kd-general blends embedded corpora; the recipe's data is {data.blend or data.source}")
    return dataclasses.replace(data, blend=[1 - share, data.source, share, GENERAL_TEXT])


def train_arms(recipe, folder, cfg, out: Path, arms: tuple[str, ...] = DEFAULT_ARMS,
               general_share: float = 0.25) -> dict[tuple[str, str], Path]:
    """The KD arms on the recipe's data in one group (one teacher forward serves them), then the KD arms on the
    blend with general English, then the LM arms; (student, arm) -> folder."""
    from minitron import config
    from minitron.run_folder import stage_name
    from minitron.stages.training import distill_config
    from minitron.training.loop import TrainJob, train_together

    students = list(recipe.distill.students)
    # KD arms train as the recipe distils (with its hidden-state pairs where distill.intermediate_students says so)
    kd_cfg = {s: distill_config(recipe.distill, s, folder.summary(stage_name("prune", s)), cfg) for s in students}
    repaired = {s: Path(folder.summary(stage_name("prune", s))["nemo"]) for s in students}
    starts = {(s, arm): repaired[s] for s in students for arm in ("kd", "kd-general") if arm in arms}
    starts |= {(s, "lm"): repaired[s] for s in students if "lm" in arms}
    starts |= {(s, "kd-unrepaired"): unrepaired_nemo(folder, s, out) for s in students if "kd-unrepaired" in arms}
    outputs = {key: out / f"{key[0]}-{key[1]}" for key in starts}
    for s, stage in ((s, stage_name("distill", s)) for s in students):
        # the recipe's own distillation is the kd arm when it ran with this arm's training config
        if "kd" in arms and trained_with(folder, stage) == config.to_dict(kd_cfg[s]):
            outputs[(s, "kd")] = folder.stage_dir(stage)
    teacher = folder.teacher_nemo()
    groups = [(teacher, ("kd", "kd-unrepaired"), recipe.data)]
    if "kd-general" in arms:  # other data: the shared teacher forward serves one batch stream only
        groups.append((teacher, ("kd-general",), general_data(recipe.data, general_share)))
    groups.append((None, ("lm",), recipe.data))
    for teacher, arms, data in groups:
        keys = [k for k in starts if k[1] in arms and not (outputs[k] / "hf").is_dir()
                and not (outputs[k] / "nemo").is_dir()]
        if not keys:
            continue
        print(f"training {', '.join('-'.join(k) for k in keys)} ({cfg.steps} steps)", flush=True)
        results = train_together([TrainJob(student=str(starts[k]), output=str(outputs[k]), data=data,
                                           train=kd_cfg[k[0]] if teacher else cfg,
                                           teacher=str(teacher) if teacher else None) for k in keys])
        for key, result in zip(keys, results):
            (outputs[key] / "result.json").write_text(json.dumps(result, default=str) + "\n")
    return outputs


def trained_with(folder, stage: str) -> dict | None:
    """The training config a finished distill stage ran with (its summary's `train`); None if not run or not
    recorded. The recipe's config is not evidence: `--set` overrides change it after the stage ran."""
    return folder.summary(stage).get("train") if folder.done(stage) else None


def curve(output: Path, tokens_per_step: int) -> list[tuple[int, float]]:
    """(tokens, validation perplexity) from the loop's metrics, the start included (as the report plots it)."""
    from minitron.evaluation.report import recovery_curve

    saved = output / ("result.json" if (output / "result.json").is_file() else "summary.json")  # arm or stage
    return recovery_curve(output / "metrics.jsonl", json.loads(saved.read_text()).get("initial_validation"),
                          tokens_per_step)


def score(recipe, models: dict[str, Path], out: Path) -> dict[str, dict[str, float]]:
    """Held-out test perplexity and out-of-domain perplexity of each HF model, as the report measures."""
    from minitron.evaluation.perplexity import file_tokens, load_causal_lm, perplexity, split_tokens

    ppl = recipe.eval.perplexity
    tokenizer = models["teacher-corrected"]
    ood_file = out / "ood.txt"
    ood_file.write_text("\n\n".join(p.read_text() for p in OOD_TEXTS if p.is_file()))
    streams = {"test": split_tokens(recipe.data, tokenizer, ppl.split, ppl.max_tokens),
               "ood": file_tokens(ood_file, tokenizer, ppl.max_tokens)}
    scores = {}
    for name, hf in models.items():
        model = load_causal_lm(hf, recipe.eval.dtype)
        scores[name] = {k: perplexity(model, t, recipe.data.seq_length, ppl.stride, ppl.batch_size,
                                      progress=False).perplexity for k, t in streams.items()}
        print(f"  {name}: test {scores[name]['test']:.2f}, out-of-domain {scores[name]['ood']:.2f}", flush=True)
    return scores


def gap_closed(start: float, end: float, teacher: float) -> float:
    return (math.log(start) - math.log(end)) / (math.log(start) - math.log(teacher))


def plot(curves: dict, teacher: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = sorted({s for s, _ in curves})
    fig, axes = plt.subplots(1, len(students), figsize=(6 * len(students), 4.2), squeeze=False)
    for ax, student in zip(axes[0], students):
        for arm in ARMS:
            if (student, arm) in curves:
                ax.plot(*zip(*curves[(student, arm)]), "o-", label=arm, markersize=3)
        if teacher:  # validation perplexity of the corrected teacher (from a KD arm)
            ax.axhline(teacher, linestyle="--", color="k", label="teacher-corrected")
        ax.set(title=f"{student} student", xlabel="training tokens", ylabel="validation perplexity", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from minitron.runtime import cpu_runtime

    cpu_runtime.use_tuned_runtime()
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps per arm (default: the recipe's "
                        "distill steps; e.g. 2000 for 1M tokens at 2 x 256 per step)")
    parser.add_argument("--output", type=Path, default=None, help="folder for the arms and the results")
    parser.add_argument("--students", nargs="+", default=None, help="only these of the recipe's distilled students")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(DEFAULT_ARMS), help="which arms to train")
    parser.add_argument("--general-share", type=float, default=0.25, help="kd-general: share of training samples "
                        f"from {GENERAL_TEXT}")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate of every arm (default: the "
                        "recipe's; min_lr scales with it)")
    parser.add_argument("--global-batch-size", type=int, default=None, help="sequences per step (default: the "
                        "recipe's); without --steps the tokens stay the recipe's")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides of the demo recipe, "
                        "e.g. other students: 'prune.students=[{name: w9, hidden_size: 384, ffn_hidden_size: 896}]' "
                        "'distill.students=[w9]' (new students are pruned in the demo's run folder)")
    args = parser.parse_args()
    out = args.output or Path(tempfile.mkdtemp(prefix="bench_quality-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    recipe, folder, cfg = prepared_run(args.steps, args.lr, args.global_batch_size, args.set)
    if args.students:
        unknown = sorted(set(args.students) - set(recipe.distill.students))
        if unknown:
            raise SystemExit(f"--students {unknown}: the recipe distils {recipe.distill.students}")
        recipe.distill.students = list(args.students)
    if not 0 < args.general_share < 1:
        raise SystemExit(f"--general-share {args.general_share}: must be between 0 and 1")
    outputs = train_arms(recipe, folder, cfg, out, tuple(args.arms), args.general_share)
    tokens_per_step = cfg.global_batch_size * recipe.data.seq_length
    curves = {key: curve(path, tokens_per_step) for key, path in outputs.items()}
    from minitron.conversion.convert import nemo_to_hf

    models = {"teacher-corrected": folder.model_checkpoint("teacher-corrected")}
    for student in recipe.distill.students:
        models[f"{student}-pruned"] = folder.model_checkpoint(f"{student}-pruned")
        models[f"{student}-repaired"] = folder.model_checkpoint(f"{student}-repaired")
    for (student, arm), path in outputs.items():
        if not (path / "hf").is_dir():
            nemo_to_hf(path / "nemo", path / "hf")
        models[f"{student}-{arm}"] = path / "hf"
    print("scoring (test split and out-of-domain text):", flush=True)
    scores = score(recipe, models, out)
    teacher = scores["teacher-corrected"]
    print(f"\n{cfg.steps} steps x {tokens_per_step} tokens per arm, peak LR {cfg.lr:g}, min LR {cfg.min_lr:g}"
          + (f", recipe overrides {' '.join(args.set)}" if args.set else "") + "; "
          "× = perplexity / teacher-corrected; "
          "gap = share of the pruned student's log-perplexity gap closed")
    header = f"{'model':<26}{'test ppl':>10}{'×':>7}{'gap':>8}{'OOD ppl':>10}{'×':>7}{'gap':>8}"
    print(header + "\n" + "-" * len(header))
    rows = {}
    for name, s in scores.items():
        student = name.split("-")[0]
        base = scores.get(f"{student}-pruned")
        rows[name] = {k: {"perplexity": s[k], "x_teacher": s[k] / teacher[k],
                          "gap_closed": gap_closed(base[k], s[k], teacher[k]) if base and name != f"{student}-pruned"
                          else None} for k in ("test", "ood")}
        cells = "".join(f"{r['perplexity']:>10.2f}{r['x_teacher']:>7.2f}"
                        + (f"{100 * r['gap_closed']:>7.1f}%" if r["gap_closed"] is not None else f"{'—':>8}")
                        for r in rows[name].values())
        print(f"{name:<26}{cells}")
    print("\nvalidation perplexity during training (tokens: perplexity):")
    for (student, arm), points in curves.items():
        print(f"  {student}-{arm}: " + ", ".join(f"{t // 1000}K {p:.2f}" for t, p in points))
    saved = [json.loads((p / ("result.json" if (p / "result.json").is_file() else "summary.json")).read_text())
             for p in outputs.values()]
    teacher_loss = next((r["teacher_validation_loss"] for r in saved if r.get("teacher_validation_loss")), None)
    plot(curves, math.exp(teacher_loss) if teacher_loss else None, out / "bench_quality.png")
    (out / "bench_quality.json").write_text(json.dumps(
        {"steps": cfg.steps, "lr": cfg.lr, "min_lr": cfg.min_lr, "overrides": args.set,
         "tokens_per_step": tokens_per_step, "ood_texts": [str(p) for p in OOD_TEXTS],
         "general_text": GENERAL_TEXT if "kd-general" in args.arms else None, "general_share": args.general_share,
         "scores": rows, "curves": {f"{s}-{a}": c for (s, a), c in curves.items()},
         "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    print(f"\nresults: {out / 'bench_quality.json'}, {out / 'bench_quality.png'} "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
