"""Stages `teacher_correction` and `distill-<student>`: the Megatron training loop on recipe data.

Training works in ``<stage>.work/`` (checkpoints survive a killed run, so rerunning the recipe
resumes there); the stage folder itself appears only when training finished, holding the
trained model as ``nemo/`` and ``hf/``, ``metrics.jsonl``, ``loss.png`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from conversion.convert import nemo_to_hf
from minitron import config
from minitron.recipe import Recipe, TrainingStageConfig
from minitron.runtime.launch import run_cli
from minitron.stages import import_model
from minitron.training.config import TrainConfig


def teacher_nemo(recipe: Recipe) -> Path:
    """The teacher of prune and distill: the corrected one when teacher correction is in the recipe."""
    if "teacher_correction" in recipe.stages:
        from minitron.pipeline import read_summary

        return Path(read_summary(recipe, "teacher_correction")["nemo"])
    return import_model.outputs(recipe)["nemo"]


REPO_ROOT = Path(__file__).resolve().parents[2]


def load_train_config(stage: TrainingStageConfig) -> TrainConfig:
    path = Path(stage.config)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path  # recipes name nemo_configs/... relative to the repository
    return config.load(TrainConfig, path, stage.overrides)


def make_job(recipe: Recipe, stage_name: str):
    """The training job of stage `teacher_correction` or `distill-<student>` (same on every rank)."""
    from minitron.pipeline import read_summary
    from minitron.training.loop import TrainJob

    if stage_name == "teacher_correction":
        stage, student, teacher = recipe.teacher_correction, import_model.outputs(recipe)["nemo"], None
    else:
        stage = recipe.distill
        student, teacher = Path(read_summary(recipe, f"prune-{stage_name[len('distill-'):]}")["nemo"]), \
            teacher_nemo(recipe)
    cfg = load_train_config(stage)
    par = recipe.parallel
    return TrainJob(student=str(student), teacher=str(teacher) if teacher else None,
                    output=str(recipe.stage_dir(f"{stage_name}.work")), data=dataclasses.asdict(recipe.data),
                    train=dataclasses.asdict(cfg), tensor_parallel=par.tensor_parallel,
                    pipeline_parallel=par.pipeline_parallel)


def _train(job, recipe: Recipe) -> tuple[dict, float]:
    """Run the job in this process, or on TP*PP*DP ranks under torchrun; (result, seconds)."""
    from minitron.training.loop import train

    par = recipe.parallel
    nproc = par.tensor_parallel * par.pipeline_parallel * par.data_parallel
    start = time.perf_counter()
    if nproc == 1:
        result = train(job)
    else:
        job.save(Path(job.output) / "job.json")
        result = run_cli(nproc, ["train-job", str(Path(job.output) / "job.json")])
    return result, time.perf_counter() - start


def run_training(recipe: Recipe, out: Path, stage_name: str, trained: tuple[dict, float] | None = None) -> dict:
    """Train (or take the result of ranks that trained under an external torchrun), then export."""
    job = make_job(recipe, stage_name)
    work, teacher = Path(job.output), job.teacher
    work.mkdir(parents=True, exist_ok=True)
    result, seconds = trained or _train(job, recipe)
    for name in ("nemo", "metrics.jsonl", "tensorboard"):
        if (work / name).exists():
            shutil.move(str(work / name), str(out / name))
    export = nemo_to_hf(out / "nemo", out / "hf")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    _plot(metrics, out / "loss.png", "distillation" if teacher else "LM training")
    last = {m["step"]: m for m in metrics}  # a resumed run logs some steps twice: keep the last
    steps = sorted(last)
    return {"nemo": str(out / "nemo"), "hf": str(out / "hf"), "teacher": str(teacher) if teacher else None,
            "steps": result["steps"], "tokens": result["tokens"], "seconds_this_run": round(seconds, 1),
            "validation": result["validation"], "teacher_validation_loss": result["teacher_validation_loss"],
            "first_loss": last[steps[0]]["loss"], "final_loss": last[steps[-1]]["loss"],
            "tokens_per_second": sum(m["tokens_per_second"] for m in last.values()) / len(last),
            "checkpoints": str(work / "checkpoints"), "export_seconds": export["seconds"]}


def _plot(metrics: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = {m["step"]: m for m in metrics}
    steps = sorted(last)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(steps, [last[s]["loss"] for s in steps], label="train loss")
    val = [(s, last[s]["val_lm_loss"]) for s in steps if "val_lm_loss" in last[s]]
    if val:
        ax.plot(*zip(*val), "o-", label="validation LM loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_stage(recipe: Recipe, out: Path, stage_name: str, trained: tuple[dict, float] | None = None) -> dict:
    """Stage `teacher_correction` or `distill-<student>`."""
    from minitron.pipeline import read_summary

    summary = run_training(recipe, out, stage_name, trained)
    if stage_name.startswith("distill-"):
        student = stage_name[len("distill-"):]
        summary["student"] = student
        summary["pruned_validation_loss"] = read_summary(recipe, f"prune-{student}")["validation_loss"]
    return summary
