"""`minitron run` and the commands that run part of a recipe: execute stages in order, skipping done ones.

A stage is complete when ``<output_root>/<name>/<stage>/summary.json`` exists; the stage
folder is written to a temporary sibling and renamed (`RunFolder.write_stage`), so a killed run
never leaves a folder that looks complete, and a rerun resumes at the first unfinished stage.
``eval`` and ``report`` are refreshed on every run instead (so new checkpoints join them); eval
caches each measurement, so a refresh only measures what is new.
"""

from __future__ import annotations

import os
from pathlib import Path

from minitron.conversion import nemo_checkpoint
from minitron.data import check_tokenizer_matches, prepare
from minitron.errors import MinitronError
from minitron.models import EMBEDDED_DEFAULT, is_nemo_checkpoint, resolve_hf_source
from minitron.pruning.prune import check_target
from minitron.recipe import Recipe, load_recipe
from minitron.run_folder import REFRESHED, RunFolder
from minitron.runtime.llama import LlamaArch
from minitron.stages import STAGES
from minitron.stages.prune import prune_under_torchrun
from minitron.stages.training import train_under_torchrun


#: Stage kinds that write NeMo checkpoints (whose context NeMo's own code writes, where it is reachable).
WRITES_CHECKPOINTS = ("import", "teacher_correction", "prune", "distill")


def preflight(recipe: Recipe) -> None:
    """Every config problem and every student's target against the teacher, before any stage runs."""
    problems = recipe.check()
    for stage in ("teacher_correction", "distill"):
        if stage in recipe.stages:
            getattr(recipe, stage).train_config()  # its own errors, before any work
    nemo_source = is_nemo_checkpoint(recipe.model.source)
    if "prune" in recipe.stages or nemo_source:
        arch, tokenizer = teacher_source(recipe.model.source)
        check_tokenizer_matches(tokenizer, arch.vocab_size)
    if "prune" in recipe.stages:
        for student in recipe.prune.selected():
            layout = recipe.layout("prune")
            problems += check_target(student, arch, recipe.prune, layout.tensor_parallel, layout.pipeline_parallel)
    if problems:
        raise MinitronError("; ".join(dict.fromkeys(problems)))


def teacher_source(source: str) -> tuple[LlamaArch, Path]:
    """(architecture, tokenizer folder) of `model.source`, an HF or a NeMo 2 checkpoint, read without weights."""
    if is_nemo_checkpoint(source):
        path = Path(source).expanduser()
        return nemo_checkpoint.read_context(path)[0], nemo_checkpoint.tokenizer_dir(path)
    hf_dir = resolve_hf_source(source)
    return LlamaArch.from_hf_dir(hf_dir), hf_dir


def run(recipe: Recipe) -> dict:
    """Run the recipe's stages in order; {stage folder: summary}."""
    preflight(recipe)
    folder = RunFolder(recipe)
    if any(kind in WRITES_CHECKPOINTS and not folder.done(stage) for kind, stage in folder.planned()):
        nemo_checkpoint.start_nemo()  # NeMo imports in the background while the first stage works
    results = {}
    for kind, stage in folder.planned():
        if stage not in REFRESHED and folder.done(stage):
            print(f"[{stage}] done already: {folder.stage_dir(stage)}")
            results[stage] = folder.summary(stage)
            continue
        if stage not in REFRESHED and folder.stage_dir(stage).exists():
            raise MinitronError(f"{folder.stage_dir(stage)}: incomplete output of an earlier run; "
                                f"remove it to redo stage {stage!r}")
        results[stage] = folder.write_stage(stage, lambda tmp, k=kind, s=stage: STAGES[k](folder, s, tmp))
    return results


def compact(results: dict) -> dict:
    """What a person reads at the end of a run: each stage's time, and the report's table when written."""
    out = {stage: {"seconds": s.get("stage_seconds")} for stage, s in results.items()}
    if "report" in results:
        print(Path(results["report"]["report"]).read_text().split("\n## Speed")[0])
        out["report"] = results["report"]["report"]
    if "eval" in results:
        out["eval"] = {name: {"perplexity": (r.get("perplexity") or {}).get("perplexity"), "params": r["params"]}
                       for name, r in results["eval"]["models"].items()}
    return out


# ---- commands (minitron/cli.py dispatches here) ----------------------------------------------------
def run_command(args) -> dict:
    """`minitron run`: the whole recipe."""
    return compact(run(load_recipe(args.config, args.overrides, args.output)))


def eval_command(args) -> dict:
    """`minitron eval` / `minitron report`: measure / tabulate the models the run has so far."""
    recipe = load_recipe(args.config, args.overrides, args.output)
    for spec in getattr(args, "model", None) or []:  # `report` has no --model
        if "=" not in spec:
            raise MinitronError(f"--model {spec!r}: give NAME=HF_DIR, e.g. --model fp8=runs/export/fp8-hf")
        recipe.eval.extra_models.append(spec)
    recipe.stages = [args.command]
    return compact(run(recipe))


def train_command(args) -> dict | None:
    """`minitron prune` / `distill` / `teacher-correction`: the recipe up to that stage (done stages skip).

    Prune and distill go through teacher correction first when the recipe lists it (or it was run into
    the folder already): the corrected teacher is the one pruned and distilled from.

    Under an external torchrun (WORLD_SIZE > 1) every rank trains and the world size sets the data
    parallelism (prune: the world is the prune layout's PP ranks); otherwise training launches its own
    TP*PP*DP ranks (`nproc=N`) and pruning its PP ranks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and any(o.startswith("nproc=") for o in args.overrides):
        raise MinitronError("nproc=N launches its own ranks; under torchrun leave it out (the world size is N)")
    recipe = load_recipe(args.config, [*args.overrides, *([f"nproc={world}"] if world > 1 else [])], args.output)
    if args.command == "teacher-correction":
        recipe.stages = ["import", "teacher_correction"]
    else:  # the corrected teacher when the recipe lists teacher correction or it was run already
        corrects = RunFolder(recipe).corrects_teacher()
        upto = ("import", "teacher_correction", "prune") + (("distill",) if args.command == "distill" else ())
        recipe.stages = [s for s in upto if s != "teacher_correction" or corrects]
    if world > 1:
        problems = recipe.check()
        if problems:
            raise MinitronError("; ".join(problems))
        if args.command == "prune":
            return prune_under_torchrun(RunFolder(recipe))
        return train_under_torchrun(RunFolder(recipe))
    return compact(run(recipe))


def model_command(args) -> None:
    """`minitron model default`: the embedded model's HF folder (converted on first use). `minitron model newest
    [--config R] [--output ROOT]`: the HF folder of the product of the run's newest distillation, else the
    embedded model (what `make export` and `minitron serve` take by default)."""
    if args.which == "newest":
        print(RunFolder(load_recipe(args.config, args.overrides, args.output)).newest_or_default())
    else:
        print(resolve_hf_source(EMBEDDED_DEFAULT))


def data_command(args) -> dict:
    """`minitron data prepare --config R [--workers N] [--output DIR] [--tokenizer DIR] [key=value ...]`."""
    recipe = load_recipe(args.config, args.overrides)
    if args.workers is not None:
        if args.workers < 1:
            raise MinitronError(f"--workers {args.workers}: give 1 or more tokenizer processes")
        recipe.data.workers = args.workers
    if recipe.data.blend and args.output:
        raise MinitronError("data prepare --output writes one dataset from data.source; this recipe names a "
                            "data.blend (prepare each of its folders with data.blend=[] data.source=<text>)")
    tokenizer = Path(args.tokenizer) if args.tokenizer else teacher_source(recipe.model.source)[1]
    prepared = prepare(recipe.data, tokenizer, target=args.output)
    return prepared.summary()
