"""The run report: ``report.md`` with one table per question, and the PNG plots it links.

Everything comes from what the stages wrote (``summary.json``, ``metrics.jsonl``, pruning
``report.json``, ``eval/results.json``); a number that was not measured is shown as "—"
with the reason in a note, never filled in.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from minitron.run_folder import RunFolder, is_training, stage_kind

DASH = "—"


def write(folder: RunFolder, out: Path) -> dict:
    stages = folder.summaries()
    results = stages.get("eval", {}).get("models", {})
    plots = [p for p in (_plot_recovery(stages, out), _plot_losses(stages, out), _plot_importance(stages, out),
                         _plot_tradeoff(results, out), _plot_width_vs_depth(results, out)) if p]
    text = "\n".join(_markdown(folder, stages, results, plots)) + "\n"
    (out / "report.md").write_text(text)
    return {"report": str(out / "report.md"), "plots": [str(out / p) for p in plots],
            "table": main_table(results)}


# ---- tables -----------------------------------------------------------------------------------
def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):  # not measured, or NaN (no such loss)
        return DASH
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def task_scores(result: dict) -> dict[str, str]:
    """task -> 'value' (or 'skipped', reasons listed under the table), from one model's lm-eval results."""
    return {task: "skipped" if "skipped" in r else f"{r['value']:.3f}"
            for task, r in (result.get("lm_eval") or {}).items()}


def skip_reasons(results: dict) -> dict[str, str]:
    return {task: r["skipped"] for res in results.values() for task, r in (res.get("lm_eval") or {}).items()
            if "skipped" in r}


def _row_speed(result: dict) -> dict:
    rows = (result.get("throughput") or {}).get("by_batch_size") or []
    return rows[-1] if rows else {}


def main_table(results: dict) -> list[dict]:
    """One row per model: size, quality and speed (largest batch size measured)."""
    table = []
    for name, r in results.items():
        speed = _row_speed(r)
        ppl = r.get("perplexity") or {}
        table.append({"model": name, "params_M": round(r["params"] / 1e6, 1),
                      "non_embedding_params_M": round(r["non_embedding_params"] / 1e6, 1),
                      "perplexity": ppl.get("perplexity"), **{f"lm_eval:{t}": v for t, v in task_scores(r).items()},
                      "prefill_tok_s": speed.get("prefill_tokens_per_s"),
                      "decode_tok_s": speed.get("decode_tokens_per_s"),
                      "decode_speedup": speed.get("decode_speedup"),
                      "prefill_speedup": speed.get("prefill_speedup"),
                      "ideal_flops_ratio": (r.get("throughput") or {}).get("ideal_flops_ratio"),
                      "batch_size": speed.get("batch_size")})
    return table


def _markdown_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _summary_table(results: dict) -> list[str]:
    tasks = list(dict.fromkeys(t for r in results.values() for t in (r.get("lm_eval") or {})))
    metric = {t: next((r["lm_eval"][t].get("metric", "") for r in results.values()
                       if t in (r.get("lm_eval") or {}) and "skipped" not in r["lm_eval"][t]), "") for t in tasks}
    header = ["model", "params (M)", "non-emb (M)", "perplexity"] + [f"{t} {metric[t]}".strip() for t in tasks] + \
             ["prefill tok/s", "decode tok/s", "speedup (prefill / decode)", "ideal FLOP ratio"]
    rows = []
    for row, r in zip(main_table(results), results.values()):
        scores = task_scores(r)
        rows.append([f"**{row['model']}**", _fmt(row["params_M"], 1), _fmt(row["non_embedding_params_M"], 1),
                     _fmt(row["perplexity"]), *[scores.get(t, DASH) for t in tasks],
                     _fmt(row["prefill_tok_s"], 1), _fmt(row["decode_tok_s"], 1),
                     f"{_fmt(row['prefill_speedup'])}× / {_fmt(row['decode_speedup'])}×"
                     if row["decode_speedup"] else DASH, _fmt(row["ideal_flops_ratio"])])
    return _markdown_table(header, rows)


def _speed_table(results: dict) -> list[str]:
    header = ["model", "batch", "prefill tok/s", "decode tok/s", "latency (s)", "ms / output token",
              "decode speedup", "weights (MiB)", "KV cache (MiB)"]
    rows = []
    for name, r in results.items():
        t = r.get("throughput")
        if not t:
            continue
        for row in t["by_batch_size"]:
            rows.append([name, row["batch_size"], _fmt(row["prefill_tokens_per_s"], 1),
                         _fmt(row["decode_tokens_per_s"], 1), _fmt(row["latency_s"], 3),
                         _fmt(row["ms_per_output_token"], 1), f"{_fmt(row.get('decode_speedup'))}×",
                         _fmt(t["memory"]["weights_mib"], 1), _fmt(t["memory"]["kv_cache_mib"], 2)])
    return _markdown_table(header, rows) if rows else ["(throughput not measured)"]


def _runtimes(folder: RunFolder) -> dict[str, dict]:
    """`minitron runtimes` results: model name -> runtimes.json (deploy/runtimes.py)."""
    paths = sorted((folder.root / "runtimes").glob("*/runtimes.json"),
                   key=lambda p: (p.parent.name != "teacher-corrected", p.parent.name))  # the reference first
    return {path.parent.name: json.loads(path.read_text()) for path in paths}


def _runtimes_table(folder: RunFolder) -> list[str]:
    measured = _runtimes(folder)
    if not measured:
        return ["(not measured: `minitron runtimes` exports the corrected teacher and the distilled students to "
                "every runtime format and checks and times each there)"]
    teacher = {(r["format"], r["dtype"]): r for r in measured.get("teacher-corrected", {}).get("rows", [])}
    header = ["model", "format", "size (MiB)", "load (s)", "greedy = transformers",
              "max \\|Δ logprob\\| generated / prompt", "prefill tok/s", "decode tok/s", "decode × teacher"]
    rows, skipped = [], []
    for model, result in measured.items():
        for r in result["rows"]:
            name = f"{r['format'].upper()} {r['dtype']}"
            if "skipped" in r:
                skipped.append(f"* {model} {name}: {r['skipped']}")
                continue
            base = teacher.get((r["format"], r["dtype"]))
            rows.append([model, name, _fmt(r["bytes"] / 2**20, 1), _fmt(r["load_seconds"], 2),
                         "yes" if r["greedy_match"] else f"no ({r['argmax_agree']}/{r['positions']} argmax)",
                         f"{r['max_abs_dlogprob_generated']:.1e} / {r['max_abs_dlogprob_prompt']:.1e}",
                         _fmt(r["prefill_tok_s"], 1), _fmt(r["decode_tok_s"], 1),
                         f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}×" if base and "skipped" not in base
                         else DASH])
    first = next(iter(measured.values()))
    speed = first["speed"]
    note = (f"Each export run in its runtime (llama.cpp through xllamacpp; ONNX Runtime GenAI) against transformers "
            f"at fp32 on the same ids: greedy continuation and max |Δ| over the runtime's top-10 log-probabilities. "
            f"Speed: batch {speed['batch']}, {speed['prompt_tokens']}-token prompt, {speed['new_tokens']} new "
            f"tokens, median of {speed['repeats']}, {first['threads']} threads ({first['cpu_capability']}).")
    return _markdown_table(header, rows) + ["", note] + ([""] + skipped if skipped else [])


def _hardware(stages: dict) -> list[str]:
    """Where the numbers were measured and in which precision (each stage records its choice)."""
    choices = {name: s["precision"] for name, s in stages.items() if is_training(name) and s.get("precision")}
    choices.update({f"eval {what}": p for what, p in (stages.get("eval", {}).get("precision") or {}).items()})
    if not choices:
        return []
    first = next(iter(choices.values()))
    runtime = f", OpenMP {first['openmp']}, {first['allocator']}" if first.get("openmp") else ""
    lines = [f"Hardware: CPU capability {first.get('cpu_capability')}, {first.get('cpu_threads')} threads{runtime}, "
             f"GPU {first.get('gpu') or 'none'}. Precision (`auto` follows the hardware):"]
    return lines + [f"* {name}: {p['precision']} (asked {p['requested']}: {p['reason']})" for name, p in choices.items()]


def _training_table(stages: dict) -> list[str]:
    rows = []
    for name, s in stages.items():
        if not is_training(name):
            continue
        val = s.get("validation") or {}
        rows.append([name, s.get("teacher_model") or DASH, s["steps"], _fmt(s["tokens"]),
                     (s.get("precision") or {}).get("precision", DASH),
                     # a student trained beside another (distill.share_teacher): its time is in that stage's
                     f"with {s['trained_with']}" if s.get("trained_with") else _fmt(s.get("seconds_this_run"), 0),
                     _fmt(s.get("tokens_per_second"), 0), _fmt(s.get("pruned_validation_loss"), 4),
                     _fmt(val.get("lm_loss"), 4), _fmt(s.get("teacher_validation_loss"), 4),
                     _fmt(val.get("kd_loss"), 4)])
    header = ["stage", "teacher", "steps", "tokens", "precision", "wall (s)", "tok/s", "val LM loss before",
              "val LM loss after", "teacher val LM loss", "val KD loss"]
    if not rows:
        return ["(no training stage in this run)"]
    table = _markdown_table(header, rows)
    pairs = {name: s["intermediate_pairs"] for name, s in stages.items()
             if is_training(name) and s.get("intermediate_pairs")}
    if pairs:  # what the logit KL had beside it (distill.intermediate_students)
        table += ["", "Hidden-state loss beside the logit KL (student layer -> the teacher layer whose output it "
                      "matches, from 0):", *[f"* {name}: {_pairs(p)}" for name, p in pairs.items()]]
    # A smaller token budget where bf16 is not native (cpu_budget): results are not comparable to bf16 runs'.
    budgets = {name: s for name, s in stages.items() if is_training(name) and s.get("budget")}
    if not budgets:
        return table
    reason = _reason(next(iter(budgets.values())))
    return table + ["", f"Token budget reduced to fit the time on this hardware (fp32 on CPU{reason}):",
                    *[f"* {name}: {s['budget']}" for name, s in budgets.items()]]


def _pairs(pairs: list[list[str]]) -> str:
    """[[decoder.layers.2, decoder.layers.6, cosine], ...] -> "2 -> 6 (cosine), ..." (cosine: Model Optimizer's
    default where a pair names no loss)."""
    return ", ".join(f"{p[0].rsplit('.', 1)[-1]} -> {p[1].rsplit('.', 1)[-1]} ({p[2] if len(p) > 2 else 'cosine'})"
                     for p in pairs)


def _teacher_correction_table(folder: RunFolder, stages: dict, results: dict) -> list[str]:
    """Minitron's teacher correction: the teacher before/after, and students distilled from each."""
    if "teacher_correction" not in stages:
        return []
    tasks = list(dict.fromkeys(t for r in results.values() for t in (r.get("lm_eval") or {})))
    # A teacher's validation LM loss as the distillation stages measured it (same validation rows as the students).
    teacher_loss = {s.get("teacher_model"): s.get("teacher_validation_loss") for name, s in stages.items()
                    if stage_kind(name) == "distill" and s.get("teacher_validation_loss") is not None}
    rows = []
    for model in ("teacher", "teacher-corrected"):
        r = results.get(model, {})
        rows.append([f"**{model}**", _fmt(teacher_loss.get(model), 4), _fmt(_perplexity(results, model)), DASH,
                     *[task_scores(r).get(t, DASH) for t in tasks]])
    model_of = {stage: model for model, stage in folder.model_stages().items()}
    for name, s in stages.items():
        if stage_kind(name) != "distill":
            continue
        model, r = model_of[name], results.get(model_of[name], {})
        closed = gap_closed(results, f"{s.get('student')}-pruned", model)
        rows.append([f"{model} (from {s.get('teacher_model')})", _fmt((s.get("validation") or {}).get("lm_loss"), 4),
                     _fmt(_perplexity(results, model)), DASH if closed is None else f"{100 * closed:.1f}%",
                     *[task_scores(r).get(t, DASH) for t in tasks]])
    tc = stages["teacher_correction"]
    return ["", "## Teacher correction", "",
            f"The teacher was fine-tuned on the distillation data ({_fmt(tc.get('tokens'))} tokens) before pruning; "
            "students are pruned from and distilled from the corrected teacher. A row marked `@uncorrected` is the "
            "same pruned student distilled from the uncorrected teacher, at the same tokens "
            "(`distill.from_uncorrected_teacher`). "
            "Gap closed: the share of the pruned student's held-out log-perplexity gap to the corrected teacher that "
            "distillation closed, (ln ppl pruned - ln ppl distilled) / (ln ppl pruned - ln ppl teacher-corrected).",
            "", *_markdown_table(["model", "val LM loss", "perplexity", "gap closed", *tasks], rows)]


def _perplexity(results: dict, model: str) -> float | None:
    return ((results.get(model) or {}).get("perplexity") or {}).get("perplexity")


def gap_closed(results: dict, pruned: str, distilled: str) -> float | None:
    """Share of the pruned -> reference log-perplexity gap that distillation closed (reference: the corrected
    teacher, else the teacher); None where a perplexity is missing."""
    ref = _perplexity(results, "teacher-corrected") or _perplexity(results, "teacher")
    before, after = _perplexity(results, pruned), _perplexity(results, distilled)
    if None in (ref, before, after) or before <= ref:
        return None
    return (math.log(before) - math.log(after)) / (math.log(before) - math.log(ref))


def _recovery_table(folder: RunFolder, stages: dict, results: dict) -> list[str]:
    """Per student: held-out perplexity pruned -> repaired -> distilled, against the (corrected) teacher."""
    reference = "teacher-corrected" if _perplexity(results, "teacher-corrected") else "teacher"
    ref = _perplexity(results, reference)
    students = [s.name for s in folder.recipe.prune.students if f"{s.name}-pruned" in results]
    if not ref or not students:
        return []

    def cell(model: str) -> str:
        ppl = _perplexity(results, model)
        return DASH if ppl is None else f"{_fmt(ppl)} ({ppl / ref:.1f}×)"

    rows = []
    for name in students:
        pruned, repaired, distilled = f"{name}-pruned", f"{name}-repaired", f"{name}-distilled"
        start = repaired if repaired in results else pruned
        gaps = [gap_closed(results, pruned, repaired), gap_closed(results, pruned, distilled),
                gap_closed(results, start, distilled)]
        tokens = (stages.get(f"distill-{name}") or {}).get("tokens")
        rows.append([f"**{name}**", cell(pruned), cell(repaired), cell(distilled), _fmt(tokens),
                     *(DASH if g is None else f"{100 * g:.1f}%" for g in gaps)])
    return ["", "## Recovery", "",
            f"Held-out perplexity (× {reference}, {_fmt(ref)}) of each student as Model Optimizer cut it, after "
            "closed-form repair (`prune.repair`) and after distillation. Gap closed: the share of the pruned "
            "student's log-perplexity gap to the teacher that repair, and everything, closed; the last column "
            "is distillation's share of what was left after repair. `recovery.png` plots the distillation's "
            "validation perplexity against tokens.", "",
            *_markdown_table(["student", "pruned", "repaired", "distilled", "distillation tokens",
                              "gap closed by repair", "gap closed in all", "… by distillation"], rows)]


def _reason(summary: dict) -> str:
    """"; <cpu_budget.reason>" of a stage summary that ran on a reduced budget, else ""."""
    return f"; {summary['budget_reason']}" if summary.get("budget_reason") else ""


def _pruning_table(stages: dict) -> list[str]:
    rows = []
    for name, s in stages.items():
        report_file = Path(s["_dir"]) / "report.json"
        if not stage_kind(name) == "prune" or not report_file.is_file():
            continue
        r = json.loads(report_file.read_text())
        p, loss, repair = r["parameters"], r["validation_loss"], r.get("repair") or {}
        rows.append([name, _fmt(p["teacher_total"]), _fmt(p["student_total"]),
                     f"{100 * p['non_embedding_fraction_kept']:.1f}%", _fmt(loss["teacher"], 4),
                     _fmt(loss.get("unrepaired", loss["student"]), 4),
                     _fmt(loss["student"], 4) if repair else DASH,
                     _fmt(repair.get("seconds"), 1) if repair else DASH, _fmt(s.get("stage_seconds"), 1),
                     ", ".join(map(str, r["layers_dropped"])) or DASH])
    header = ["student", "teacher params", "student params", "non-emb kept", "teacher val loss",
              "pruned val loss", "repaired val loss", "repair (s)", "stage (s)", "layers dropped"]
    if not rows:
        return ["(no pruning stage in this run)"]
    budget = next((s for name, s in stages.items() if stage_kind(name) == "prune" and s.get("budget")), None)
    return _markdown_table(header, rows) + ([] if budget is None else [
        "", f"Calibration reduced to fit the time on this hardware (fp32 on CPU{_reason(budget)}): "
            f"{budget['budget']}."])


def _markdown(folder: RunFolder, stages: dict, results: dict, plots: list[str]) -> list[str]:
    recipe = folder.recipe
    ev = stages.get("eval", {})
    lines = [f"# Minitron run `{recipe.name}`", "",
             f"Teacher: `{recipe.model.source}`. Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"from `{folder.root}`.", ""] + _hardware(stages) + ["", "## Models", ""]
    if results:
        lines += _summary_table(results)
        lines += ["", f"Perplexity: {_fmt(ev.get('perplexity_tokens'))} tokens of {ev.get('perplexity_text')}, "
                  "strided windows (see `minitron/evaluation/perplexity.py`). Tasks: lm-evaluation-harness, "
                  "accuracy. Speed: PyTorch, largest batch measured; the ideal FLOP ratio is the speedup "
                  "that forward FLOPs per token alone predict.", ""]
        if ev.get("budget"):  # cpu_budget: not comparable with runs on CPUs with native bf16
            lines += [f"Smaller measurements to fit the time on this hardware (fp32 on CPU{_reason(ev)}): "
                      + "; ".join(ev["budget"]) + ".", ""]
        lines += [f"* `{task}` skipped: {reason}" for task, reason in skip_reasons(results).items()]
        lines += ["", "## Speed", ""]
        lines += _speed_table(results)
    else:
        lines += ["(no eval stage output yet: add `eval` to the recipe's stages or run `make eval`)"]
    lines += ["", "## Runtimes", ""] + _runtimes_table(folder)
    lines += _recovery_table(folder, stages, results)
    lines += _teacher_correction_table(folder, stages, results)
    lines += ["", "## Pruning", ""] + _pruning_table(stages)
    lines += ["", "## Training", ""] + _training_table(stages)
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return lines


# ---- plots ------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recovery_curve(metrics: Path, initial_validation: dict | None, tokens_per_step: int) -> list[tuple[int, float]]:
    """(training tokens, validation perplexity) of one training run: the validation before step 1 (where it
    started), then every validation the loop logged to `metrics` (metrics.jsonl)."""
    last = {m["step"]: m for m in map(json.loads, metrics.read_text().splitlines())}
    points = [(0, (initial_validation or {}).get("lm_loss"))]
    points += [(step * tokens_per_step, last[step].get("val_lm_loss")) for step in sorted(last)]
    return [(t, math.exp(v)) for t, v in points if v is not None and math.isfinite(v)]


def _plot_recovery(stages: dict, out: Path) -> str | None:
    """Validation perplexity of each distilled student against distillation tokens, from where it started
    (the pruned, repaired student) to the end, with the teacher it learns from as a line."""
    curves = {}
    for name, s in stages.items():
        metrics = Path(s["_dir"]) / "metrics.jsonl"
        if stage_kind(name) != "distill" or not metrics.is_file() or not s.get("tokens_per_step"):
            continue
        points = recovery_curve(metrics, s.get("initial_validation"), s["tokens_per_step"])
        if len(points) > 1:
            curves[name] = (points, s.get("teacher_validation_loss"), s.get("teacher_model"))
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.4))
    teachers = {}
    for name, (points, teacher_loss, teacher_model) in curves.items():
        ax.plot(*zip(*points), "o-", label=name)
        if teacher_loss is not None:
            teachers[teacher_model] = math.exp(teacher_loss)
    for model, ppl in teachers.items():
        ax.axhline(ppl, linestyle="--", color="k" if model == "teacher-corrected" else "gray", label=model)
    ax.set_xlabel("distillation tokens")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title("Recovery: students during distillation")
    ax.legend(fontsize=8)
    return _save(plt, fig, out / "recovery.png")


def _plot_losses(stages: dict, out: Path) -> str | None:
    curves = {}
    for name, s in stages.items():
        metrics = Path(s["_dir"]) / "metrics.jsonl"
        if is_training(name) and metrics.is_file():
            last = {m["step"]: m for m in map(json.loads, metrics.read_text().splitlines())}
            curves[name] = [last[k] for k in sorted(last)]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, rows in curves.items():
        line, = ax.plot([m["step"] for m in rows], [m["loss"] for m in rows], label=f"{name} train", alpha=0.8)
        val = [(m["step"], m["val_lm_loss"]) for m in rows if "val_lm_loss" in m]
        if val:
            ax.plot(*zip(*val), "o--", color=line.get_color(), label=f"{name} val LM loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Teacher correction and distillation")
    ax.legend(fontsize=8)
    return _save(plt, fig, out / "loss_curves.png")


def _plot_importance(stages: dict, out: Path) -> str | None:
    reports = {}
    for name, s in stages.items():
        if stage_kind(name) == "prune" and (Path(s["_dir"]) / "report.json").is_file():
            reports[name] = json.loads((Path(s["_dir"]) / "report.json").read_text())
    if not reports:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(reports), 1, figsize=(9, 2.6 * len(reports)), squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], reports.items()):
        scores = {int(k): v for k, v in r["layer_scores"].items()}
        dropped = set(r["layers_dropped"])
        ax.bar(sorted(scores), [scores[k] for k in sorted(scores)],
               color=["tab:red" if k in dropped else "tab:blue" for k in sorted(scores)])
        ax.set_title(f"{name}: layer importance (red = dropped)", fontsize=10)
        ax.set_ylabel("1 - cos(in, out)")
    axes[-1, 0].set_xlabel("layer (1-indexed)")
    return _save(plt, fig, out / "layer_importance.png")


def _plot_tradeoff(results: dict, out: Path) -> str | None:
    points = {n: r for n, r in results.items() if r.get("perplexity")}
    if not points:
        return None
    plt = _pyplot()
    has_speed = any(r.get("throughput") for r in points.values())
    fig, axes = plt.subplots(1, 2 if has_speed else 1, figsize=(12 if has_speed else 6, 4.4), squeeze=False)
    ax = axes[0, 0]
    for name, r in points.items():
        x, y = r["params"] / 1e6, r["perplexity"]["perplexity"]
        ax.scatter(x, y)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.set_title("Size vs quality")
    if has_speed:
        ax = axes[0, 1]
        for name, r in points.items():
            if r.get("throughput"):
                row = _row_speed(r)
                ax.scatter(row["decode_tokens_per_s"], r["perplexity"]["perplexity"], s=r["params"] / 1e6)
                ax.annotate(name, (row["decode_tokens_per_s"], r["perplexity"]["perplexity"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(f"decode tokens/s (batch {_row_speed(next(iter(points.values()))).get('batch_size')})")
        ax.set_ylabel("held-out perplexity")
        ax.set_yscale("log")
        ax.set_title("Speed vs quality (marker area ~ params)")
    return _save(plt, fig, out / "params_quality_speed.png")


def _plot_width_vs_depth(results: dict, out: Path) -> str | None:
    students = sorted({n.rsplit("-", 1)[0] for n in results if n.endswith(("-pruned", "-distilled"))})
    if not students or "teacher" not in results:
        return None
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.35
    for i, kind in enumerate(("pruned", "distilled")):
        vals = [(results.get(f"{s}-{kind}") or {}).get("perplexity", {}).get("perplexity", float("nan"))
                for s in students]
        ax1.bar([k + (i - 0.5) * width for k in range(len(students))], vals, width, label=kind)
    teacher_ppl = (results["teacher"].get("perplexity") or {}).get("perplexity")
    if teacher_ppl:
        ax1.axhline(teacher_ppl, color="k", linestyle="--", label="teacher")
    ax1.set_xticks(range(len(students)), students)
    ax1.set_yscale("log")
    ax1.set_ylabel("held-out perplexity")
    ax1.set_title("Quality")
    ax1.legend()
    speed = [_row_speed(results.get(f"{s}-distilled") or results.get(f"{s}-pruned") or {}) for s in students]
    ax2.bar(range(len(students)), [r.get("prefill_speedup", float("nan")) for r in speed], width,
            label="prefill")
    ax2.bar([k + width for k in range(len(students))], [r.get("decode_speedup", float("nan")) for r in speed],
            width, label="decode")
    ax2.axhline(1.0, color="k", linestyle="--")
    ax2.set_xticks([k + width / 2 for k in range(len(students))], students)
    ax2.set_ylabel("speedup vs teacher")
    ax2.set_title("Speed")
    ax2.legend()
    return _save(plt, fig, out / "width_vs_depth.png")


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
