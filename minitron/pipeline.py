"""`minitron run`: execute a recipe's stages in order, skipping those already complete.

A stage is complete when ``<output_root>/<name>/<stage>/summary.json`` exists; the stage
folder is written to a temporary sibling and renamed, so a killed run never leaves a folder
that looks complete, and a rerun resumes at the first unfinished stage. ``eval`` and ``report``
are refreshed on every run instead (so new checkpoints join them); eval caches each
measurement, so a refresh only measures what is new.
"""

from __future__ import annotations

import json
import time

from minitron.errors import MinitronError
from minitron.io import atomic_output_dir, write_json_atomic
from minitron.recipe import Recipe
from minitron.stages import evaluate, import_model, prune_student, train_model, verify_conversion

#: Stages rebuilt on every run (their inputs can grow), replacing the previous output atomically.
REFRESHED = ("eval", "report")


def planned_stages(recipe: Recipe) -> list[tuple[str, object]]:
    """(stage folder name, runner) in order; `prune` becomes one stage per selected student."""
    plan = []
    for stage in recipe.stages:
        if stage == "prune":
            for student in recipe.prune.selected():
                plan.append((f"prune-{student.name}",
                             lambda r, out, s=student: prune_student.run(r, out, s)))
        elif stage == "distill":
            for name in recipe.distilled_students():
                plan.append((f"distill-{name}", lambda r, out, n=name: train_model.run_stage(r, out, f"distill-{n}")))
        elif stage == "teacher_correction":
            plan.append((stage, lambda r, out: train_model.run_stage(r, out, "teacher_correction")))
        elif stage == "eval":
            plan.append((stage, lambda r, out: evaluate.run(r, out, r.stage_dir("eval.work"))))
        elif stage == "report":
            plan.append((stage, _write_report))
        else:
            plan.append((stage, {"import": import_model.run, "verify": verify_conversion.run}[stage]))
    return plan


def preflight(recipe: Recipe) -> None:
    """Check every student's target against the teacher before any stage runs."""
    for stage in ("teacher_correction", "distill"):
        if stage in recipe.stages:
            train_model.load_train_config(getattr(recipe, stage))  # config errors before any work
    if "prune" not in recipe.stages:
        return
    from minitron.models import resolve_hf_source
    from minitron.pruning.prune import check_target
    from minitron.runtime.llama import LlamaArch

    from minitron.data import check_tokenizer_matches

    hf_dir = resolve_hf_source(recipe.model.source)
    arch = LlamaArch.from_hf_dir(hf_dir)
    check_tokenizer_matches(hf_dir, arch.vocab_size)
    problems = []
    for student in recipe.prune.selected():
        problems += check_target(student, arch, recipe.prune, recipe.parallel.tensor_parallel,
                                 recipe.parallel.pipeline_parallel)
    if problems:
        raise MinitronError("; ".join(dict.fromkeys(problems)))


def read_summary(recipe: Recipe, stage: str) -> dict:
    path = recipe.stage_dir(stage) / "summary.json"
    if not path.is_file():
        raise MinitronError(f"{path}: missing; run stage {stage!r} first (add it to `stages`)")
    return json.loads(path.read_text())


def _write_report(recipe: Recipe, out) -> dict:
    from minitron.evaluation import report

    return report.write(recipe, out)


def run(recipe: Recipe) -> dict:
    preflight(recipe)
    results = {}
    for stage, runner in planned_stages(recipe):
        out = recipe.stage_dir(stage)
        if stage in REFRESHED:
            results[stage] = run_stage(recipe, stage, runner, out, replace=True)
            continue
        if (out / "summary.json").is_file():
            print(f"[{stage}] done already: {out}")
            results[stage] = read_summary(recipe, stage)
            continue
        if out.exists():  # an earlier attempt died before finishing: its folder is incomplete
            raise MinitronError(f"{out}: incomplete output of an earlier run; remove it to redo stage {stage!r}")
        results[stage] = run_stage(recipe, stage, runner, out)
    return results


def run_stage(recipe: Recipe, stage: str, runner, out, replace: bool = False) -> dict:
    """Run one stage into its folder (written beside it, renamed when complete); `replace` swaps out an old one."""
    print(f"[{stage}] running -> {out}")
    start = time.perf_counter()
    with atomic_output_dir(out, replace=replace) as tmp:
        summary = runner(recipe, tmp)
        summary = _retarget(summary, str(tmp), str(out))
        summary["stage_seconds"] = round(time.perf_counter() - start, 2)
        write_json_atomic(tmp / "summary.json", summary)
    print(f"[{stage}] finished in {summary['stage_seconds']} s")
    return summary


def _retarget(obj, old: str, new: str):
    """Rewrite paths in a summary from the temporary stage folder to its final name."""
    if isinstance(obj, str):
        return obj.replace(old, new)
    if isinstance(obj, dict):
        return {k: _retarget(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_retarget(v, old, new) for v in obj]
    return obj
