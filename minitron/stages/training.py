"""What the training stages (`teacher_correction`, `distill-<student>`) share: the job, where it runs, the export.

A training stage builds a `TrainJob` (student, teacher, data, the recipe section's training config and
layout), trains it with `minitron.training.loop` here or on TP*PP*DP ranks under torchrun, exports the
result to HF and writes its summary and loss plot. Training works in ``<stage>.work/`` (checkpoints survive
a killed run, so rerunning the recipe resumes there); the stage folder itself appears only when training
finished, holding the trained model as ``nemo/`` and ``hf/``, ``metrics.jsonl``, ``loss.png`` and
``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import matplotlib

from minitron import config, cpu_budget
from minitron.conversion.convert import nemo_to_hf
from minitron.errors import MinitronError
from minitron.run_folder import RunFolder, is_training, stage_kind, stage_name, student_of
from minitron.runtime import distributed
from minitron.runtime.launch import run_module
from minitron.io import write_json_atomic
from minitron.training.loop import TrainJob, train_together

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def make_job(folder: RunFolder, stage: str) -> TrainJob:
    """The training job of stage `teacher_correction` or `distill-<student>` (the same on every rank)."""
    recipe = folder.recipe
    if stage == "teacher_correction":
        section, student, teacher = recipe.teacher_correction, folder.imported_teacher()["nemo"], None
        train = section.train_config()
    else:
        section = recipe.distill
        pruned = folder.summary(stage_name("prune", student_of(stage)))
        student, teacher = Path(pruned["nemo"]), folder.teacher_nemo(stage)
        _check_pruned_from(folder, stage, pruned)
        train = distill_config(section, student_of(stage), pruned, section.train_config())
    par = recipe.layout(stage_kind(stage))
    return TrainJob(student=str(student), teacher=str(teacher) if teacher else None,
                    output=str(folder.work_dir(stage)), data=recipe.data, train=train,
                    tensor_parallel=par.tensor_parallel, pipeline_parallel=par.pipeline_parallel)


def intermediate_pairs(dropped: list[int], student_layers: int, loss: str) -> list[list[str]]:
    """Hidden-state pairs ``[student module, teacher module, loss]`` of a student that kept `student_layers` of
    its teacher's layers and dropped the layer numbers `dropped` (Megatron's, from 1): after each block of dropped
    layers, the kept layer that follows it and the teacher layer it was copied from (module indices from 0).
    There, repair made the student's residual stream stand in for the teacher's after the whole block; the
    loss keeps it so while the logit KL trains the rest. A block at the very end pairs the two last layers."""
    gone = set(dropped)
    kept = [n for n in range(1, student_layers + len(gone) + 1) if n not in gone]
    assert len(kept) == student_layers, (dropped, student_layers)
    pairs = [[f"decoder.layers.{i}", f"decoder.layers.{n - 1}", loss] for i, n in enumerate(kept) if n - 1 in gone]
    if student_layers + len(gone) in gone:
        pairs.append([f"decoder.layers.{student_layers - 1}", f"decoder.layers.{student_layers + len(gone) - 1}",
                      loss])
    return pairs


def distill_config(section, student: str, pruned: dict, train):
    """`student`'s distillation config: `train` (the distill section's training config), with its hidden-state
    pairs where distill.intermediate_students names it (`pruned`: its prune stage's summary)."""
    if student not in section.intermediate_students:
        return train
    return _with_intermediate_pairs(train, student, pruned, section.intermediate_loss)


def _with_intermediate_pairs(train, student: str, pruned: dict, loss: str):
    if train.kd.intermediate_pairs:
        raise MinitronError(f"distill.intermediate_students names {student!r} and the training YAML sets "
                            f"kd.intermediate_pairs too; keep one of them")
    if not pruned.get("layers_dropped"):
        raise MinitronError(f"distill.intermediate_students: student {student!r} dropped no layers, so it has no "
                            f"hidden states to match; remove it from distill.intermediate_students")
    pairs = intermediate_pairs(pruned["layers_dropped"], pruned["arch"]["num_layers"], loss)
    return dataclasses.replace(train, kd=dataclasses.replace(train.kd, intermediate_pairs=pairs))


def _check_pruned_from(folder: RunFolder, stage: str, pruned: dict) -> None:
    """Minitron prunes the teacher it distils from: a student pruned before the teacher was corrected
    would be distilled from another model than the one whose importance chose its channels."""
    expected = folder.teacher_nemo()
    if pruned.get("teacher") and Path(pruned["teacher"]).absolute() != expected.absolute():
        prune_dir = folder.stage_dir(stage_name("prune", student_of(stage)))
        raise MinitronError(f"{prune_dir}: pruned from {pruned['teacher']}, but this run's teacher is now {expected} "
                            f"(corrected after pruning); remove {prune_dir} to prune the corrected teacher")


def trained_together(folder: RunFolder, stage: str) -> list[str]:
    """The distill stages trained side by side with `stage` (it first), sharing one teacher forward
    (`distill.share_teacher`): the planned, unfinished ones with the same teacher. [stage] otherwise."""
    recipe = folder.recipe
    if stage_kind(stage) != "distill" or not recipe.distill.share_teacher:
        return [stage]
    teacher = folder.teacher_model(stage)
    others = [s for kind, s in folder.planned() if kind == "distill" and s != stage and not folder.done(s)
              and folder.teacher_model(s) == teacher and not (folder.work_dir(s) / TRAINED).is_file()]
    return [stage, *others]


TRAINED = "trained.json"  # a student trained beside another one: its result, until its stage folder is written


def _train(job: TrainJob, folder: RunFolder, stage: str) -> tuple[dict, float]:
    """Run the job (with the students trained beside it) in this process, or on TP*PP*DP ranks under
    torchrun; (result, seconds)."""
    earlier = Path(job.output) / TRAINED
    if earlier.is_file():
        saved = json.loads(earlier.read_text())
        if saved["job"] == _job_key(job, folder):
            return saved["result"], 0.0
    group = trained_together(folder, stage)
    jobs = [job] + [make_job(folder, s) for s in group[1:]]
    nproc = folder.recipe.layout(stage_kind(stage)).world_size
    start = time.perf_counter()
    if nproc == 1:
        results = train_together(jobs)
    else:
        files = []
        for j in jobs:
            Path(j.output).mkdir(parents=True, exist_ok=True)
            config.save(j, Path(j.output) / "job.json")
            files.append(str(Path(j.output) / "job.json"))
        results = run_module(nproc, "minitron.training.loop", files)
    trained = _as_trained(group, results, time.perf_counter() - start)
    for j, (result, _) in zip(jobs[1:], trained[1:]):  # until their own stage folders are written
        write_json_atomic(Path(j.output) / TRAINED, {"job": _job_key(j, folder), "result": result})
    return trained[0]


def _as_trained(group: list[str], results: list[dict], seconds: float) -> list[tuple[dict, float]]:
    """(result, seconds) of each stage of a group trained together: the time counts once, in the first
    stage's summary; the others name the stage they trained with."""
    return [(r, seconds) if i == 0 else ({**r, "trained_with": group[0]}, 0.0) for i, r in enumerate(results)]


def _job_key(job: TrainJob, folder: RunFolder) -> dict:
    """The job as stored beside a result, its paths run-relative (the result still counts after a move)."""
    return folder.portable(json.loads(json.dumps(config.to_dict(job), default=str)))


def train_stage(folder: RunFolder, stage: str, out: Path, trained: tuple[dict, float] | None = None) -> dict:
    """Train (or take the result of ranks that trained under an external torchrun), then export."""
    job = make_job(folder, stage)
    work, teacher = Path(job.output), job.teacher
    work.mkdir(parents=True, exist_ok=True)
    result, seconds = trained or _train(job, folder, stage)
    for name in ("nemo", "metrics.jsonl", "tensorboard"):
        if (work / name).exists():
            shutil.move(str(work / name), str(out / name))
    (work / TRAINED).unlink(missing_ok=True)  # its export has moved: a rerun of this stage trains again
    export = nemo_to_hf(out / "nemo", out / "hf")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    _plot(metrics, out / "loss.png", "distillation" if teacher else "LM training")
    last = {m["step"]: m for m in metrics}  # a resumed run logs some steps twice: keep the last
    steps = sorted(last)
    summary = {"nemo": str(out / "nemo"), "hf": str(out / "hf"), "teacher": str(teacher) if teacher else None,
               "steps": result["steps"], "tokens": result["tokens"], "seconds_this_run": round(seconds, 1),
               "validation": result["validation"], "initial_validation": result.get("initial_validation"),
               "tokens_per_step": result["tokens"] // max(result["steps"], 1),
               "teacher_validation_loss": result["teacher_validation_loss"],
               "first_loss": last[steps[0]]["loss"], "final_loss": last[steps[-1]]["loss"],
               "tokens_per_second": sum(m["tokens_per_second"] for m in last.values()) / len(last),
               "checkpoints": str(work / "checkpoints"), "export_seconds": export["seconds"],
               "precision": result["precision"], "train": config.to_dict(job.train)}
    if job.train.kd.intermediate_pairs:
        summary["intermediate_pairs"] = job.train.kd.intermediate_pairs
    summary |= cpu_budget.summary_fields(folder.recipe, stage_kind(stage))
    if result.get("trained_with"):  # its time is counted in that stage's seconds_this_run
        summary["trained_with"] = result["trained_with"]
    summary["teacher_model"] = folder.teacher_model(stage) if teacher else None
    if stage_kind(stage) == "distill":
        summary["student"] = student_of(stage)
        summary["pruned_validation_loss"] = folder.summary(stage_name("prune", student_of(stage)))["validation_loss"]
    return summary


def train_under_torchrun(folder: RunFolder) -> dict | None:
    """Every rank trains each planned training stage; rank 0 then exports and writes the stage folder.

    Under an external torchrun (multi-node: torchrun's rendezvous) the earlier stages must be done
    already (`minitron run ... stages=[import, prune]`): they are single-process work, on a shared
    filesystem.
    """
    names = [name for _, name in folder.planned() if is_training(name)]
    rank0 = int(os.environ["RANK"]) == 0
    for stage in names:
        if folder.done(stage) or (folder.work_dir(stage) / TRAINED).is_file():
            continue
        group = trained_together(folder, stage)
        start = time.perf_counter()
        results = distributed.distributed_entry(train_together)([make_job(folder, s) for s in group])
        # Export and the stage folders are rank 0's alone, in a world of one (loading the trained
        # NeMo checkpoint is a collective); the other ranks wait for the summaries, as the next
        # stage reads them. If rank 0 fails, torchrun stops them.
        distributed.shutdown()
        if rank0:
            seconds = time.perf_counter() - start
            with distributed.single_process():
                for s, trained in zip(group, _as_trained(group, results, seconds)):
                    folder.write_stage(s, lambda tmp, s=s, t=trained: train_stage(folder, s, tmp, t))
        while not all(folder.done(s) for s in group):
            time.sleep(1)
    return {"stages": names, "output": str(folder.root)} if rank0 else None


def _plot(metrics: list[dict], path: Path, title: str) -> None:
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
