"""Stage `prune` (`prune-<student>`): Minitron-prune the teacher into one student, then repair it.

Model Optimizer ranks and slices (`minitron.pruning.prune`); with ``prune.repair: least_squares`` the
student's weights are then re-fitted in closed form to the teacher's (`minitron.pruning.repair`). Writes
``nemo/`` and ``hf/`` (the student that distillation starts from), ``hf-unrepaired/`` (Model Optimizer's
plain slice, evaluated as ``<student>-pruned`` beside ``<student>-repaired``), ``report.json``,
``report.png`` and ``modelopt.log``. Importance scores are cached per teacher + calibration settings under
``<run>/importance/<key>/`` and re-used by every student of the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minitron import config, cpu_budget, data
from minitron.conversion.convert import load_megatron_from_nemo, nemo_to_hf
from minitron.conversion.nemo_checkpoint import content_digest
from minitron.conversion.verify import hf_logits
from minitron.errors import MinitronError
from minitron.pruning import report
from minitron.pruning.prune import PruneJob, run_job
from minitron.recipe import Recipe
from minitron.run_folder import RunFolder, student_of
from minitron.runtime import distributed
from minitron.runtime.inference import forward_logits
from minitron.runtime.launch import run_module


def scores_dir(folder: RunFolder, teacher: Path, token_digest: str) -> Path:
    """Importance scores depend on the teacher, the calibration tokens and the search grid.

    The teacher is keyed by its weights' content, not its path: a teacher corrected (or re-imported)
    into the same folder must not reuse the scores of the weights it replaced.
    """
    p, par = folder.recipe.prune, folder.recipe.layout("prune")
    key = json.dumps([content_digest(teacher), token_digest, p.hidden_size_divisor, p.ffn_hidden_size_divisor,
                      p.num_layers_divisor, p.dtype, p.calibration_batch_size, par.pipeline_parallel])
    return folder.importance_dir(hashlib.sha256(key.encode()).hexdigest()[:16])


def write_tokens(recipe: Recipe, hf_dir: Path, path: Path) -> str:
    """Calibration rows from the train split, validation rows from the held-out split.

    Calibration takes the *last* rows of one epoch of the train split in the order of prune.seed: training
    reads that order from the front (data.seed = prune.seed by default), so distillation does not begin on
    the rows repair was just fitted to (they would show it a loss far below its real one and teach it little).
    """
    prepared = data.prepare(recipe.data, hf_dir)
    seq = recipe.data.seq_length
    epoch = data.samples(prepared, "train", seq, seed=recipe.prune.seed)
    count = recipe.prune.calibration_samples
    if count > len(epoch):
        raise MinitronError(f"prune.calibration_samples={count} is more than the {len(epoch)} train samples of "
                            f"{seq + 1} tokens in {prepared.root}; ask for fewer or give it more text")
    calibration = torch.stack([epoch[i] for i in range(len(epoch) - count, len(epoch))])
    validation = torch.stack(list(data.samples(prepared, "validation", seq, recipe.prune.validation_samples)))
    save_file({"calibration": calibration.contiguous(), "validation": validation.contiguous()}, str(path))
    digest = hashlib.sha256(calibration.numpy().tobytes()).hexdigest()
    return digest


def make_job(folder: RunFolder, stage: str, where: Path) -> PruneJob:
    """The pruning job of stage `prune-<student>`: calibration tokens and the job's outputs go to `where`."""
    recipe = folder.recipe
    student = next(s for s in recipe.prune.students if s.name == student_of(stage))
    teacher = folder.teacher_nemo()
    tokens = where / "tokens.safetensors"
    digest = write_tokens(recipe, folder.imported_teacher()["hf"], tokens)
    scores = scores_dir(folder, teacher, digest)
    scores.parent.mkdir(parents=True, exist_ok=True)
    for partial in scores.parent.glob(".partial-*"):  # scores of a calibration killed before it finished
        shutil.rmtree(partial, ignore_errors=True)
    return PruneJob(teacher=str(teacher), output=str(where / "nemo"), scores=str(scores), tokens=str(tokens),
                    student=student, prune=recipe.prune, pipeline_parallel=recipe.layout("prune").pipeline_parallel,
                    result=str(where / "prune_result.json"), log=str(where / "modelopt.log"),
                    unrepaired=str(where / "nemo-unrepaired") if recipe.prune.repair != "none" else "")


def run(folder: RunFolder, stage: str, out: Path) -> dict:
    """Prune here (PP=1) or on PP ranks under torchrun started here, then export and report."""
    job = make_job(folder, stage, out)
    if job.pipeline_parallel == 1:
        result = run_job(job)
    else:
        config.save(job, out / "job.json")
        run_module(job.pipeline_parallel, "minitron.pruning.prune", [str(out / "job.json")], expect_result=False)
        result = json.loads((out / "prune_result.json").read_text())
    return finish(folder, out, job, result)


def finish(folder: RunFolder, out: Path, job: PruneJob, result: dict) -> dict:
    """Export the pruned student to HF, check the two agree, write the report; the stage's summary."""
    if Path(job.output) != out / "nemo":  # pruned by an external torchrun into the work folder
        shutil.move(job.output, out / "nemo")
        for name, target in ((job.log, "modelopt.log"), (job.unrepaired, "nemo-unrepaired")):
            if name and Path(name).exists():
                shutil.move(name, out / target)
    tokens = Path(job.tokens)
    export = nemo_to_hf(out / "nemo", out / "hf")
    parity = _hf_parity(out / "nemo", out / "hf", tokens)
    unrepaired = {}
    if job.unrepaired:  # Model Optimizer's own slice, for the report: what repair changed
        source = Path(job.unrepaired) if Path(job.unrepaired).is_dir() else out / "nemo-unrepaired"
        nemo_to_hf(source, out / "hf-unrepaired")
        shutil.rmtree(source)
        repair = result["repair"]
        unrepaired = {"hf_unrepaired": str(out / "hf-unrepaired"),
                      "unrepaired_validation_loss": result["unrepaired_validation_loss"],
                      "repair": {k: v for k, v in repair.items() if k != "layers"}}
    files = report.write(report.build(result), out)
    tokens.unlink()  # recreated from the data cache on demand; no need to keep a copy
    return {"student": job.student.name, "teacher": job.teacher, "teacher_model": folder.teacher_model(),
            "nemo": str(out / "nemo"), "hf": str(out / "hf"), **unrepaired, "scores": job.scores,
            "arch": result["arch"], "parameters": result["parameters"],
            "teacher_parameters": result["teacher_parameters"],
            "validation_loss": result["validation_loss"], "teacher_validation_loss": result["teacher_validation_loss"],
            "layers_dropped": result["layers_dropped"], "calibration": result["calibration"],
            "prune_seconds": result["prune_seconds"], "hf_vs_megatron_max_abs_logit_diff": parity,
            "export_seconds": export["seconds"], "report": files,
            **cpu_budget.summary_fields(folder.recipe, "prune")}


def prune_under_torchrun(folder: RunFolder) -> dict | None:
    """Every rank of an external torchrun (NeMo-Run's launcher: PP ranks on one node) prunes each planned
    student together; rank 0 prepares the job first and exports and writes the stage folder after.

    The stages before pruning (import, teacher correction) must be done already.
    """
    names = [name for kind, name in folder.planned() if kind == "prune"]
    earlier = [name for kind, name in folder.planned() if kind in ("import", "teacher_correction")]
    missing = [name for name in earlier if not folder.done(name)]
    if missing:
        raise MinitronError(f"prune under torchrun: run {missing} first (single-process stages; `minitron launch` "
                            "puts them in tasks of their own)")
    pp = folder.recipe.layout("prune").pipeline_parallel
    world = int(os.environ["WORLD_SIZE"])
    if world != pp:
        raise MinitronError(f"prune under torchrun: {world} ranks, but the prune layout has pipeline_parallel={pp}; "
                            f"start {pp} processes (Model Optimizer prunes at TP=1)")
    rank0 = int(os.environ["RANK"]) == 0
    for stage in names:
        if folder.done(stage):
            continue
        work, job = folder.work_dir(stage), [None]
        if rank0:  # alone: the data pipeline is collective under torch.distributed, and only rank 0 reads here
            shutil.rmtree(work, ignore_errors=True)  # leftovers of a killed run: the job is made afresh
            work.mkdir(parents=True)
            with distributed.single_process():
                job = [make_job(folder, stage, work)]
        distributed.initialize(1, pp)
        torch.distributed.broadcast_object_list(job, src=0)  # the same job (tokens, scores folder) everywhere
        result = distributed.distributed_entry(run_job)(job[0])
        distributed.shutdown()
        if rank0:
            with distributed.single_process():
                folder.write_stage(stage, lambda tmp: finish(folder, tmp, job[0], result))
            shutil.rmtree(work, ignore_errors=True)
        while not folder.done(stage):
            time.sleep(1)
    return {"stages": names, "output": str(folder.root)} if rank0 else None


def _hf_parity(nemo_dir: Path, hf_dir: Path, tokens_file: Path) -> float:
    """The exported HF student must compute what the pruned Megatron student computes."""
    tokens = load_file(str(tokens_file))["validation"][:2, :-1]
    distributed.initialize(1, 1)
    model, _ = load_megatron_from_nemo(nemo_dir, dtype=torch.float32)
    logits = forward_logits(model.eval(), tokens.to(distributed.device())).float().cpu()
    return (logits - hf_logits(hf_dir, tokens)).abs().max().item()
