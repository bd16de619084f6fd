"""Cut one student from a teacher with Model Optimizer's ``mcore_minitron`` mode.

`run_job` is collective: with pipeline parallelism it runs on every rank under torchrun
(``python -m minitron.pruning.prune JOB.json``; tensor parallelism must be 1, a Model Optimizer limit). Tokens for calibration and validation
arrive pre-tokenized in a safetensors file, so every rank sees identical batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from minitron.conversion import nemo_checkpoint as nemo
from minitron.conversion.convert import load_megatron_from_nemo
from minitron.errors import MinitronError
from minitron.pruning import importance as imp
from minitron.pruning.config import PruneConfig, StudentConfig
from minitron.pruning.modelopt_support import register_torch_rmsnorm
from minitron.runtime import cpu_compat, distributed
from minitron.runtime.inference import forward_only, lm_loss
from minitron.runtime.launch import job_main
from minitron.runtime.llama import LlamaArch

SHAPE_KEYS = {"hidden_size": "hidden_size", "ffn_hidden_size": "ffn_hidden_size",
              "num_attention_heads": "num_attention_heads", "num_layers": "num_layers"}


@dataclass
class PruneJob:
    teacher: str           # NeMo checkpoint of the teacher
    output: str            # where the pruned NeMo checkpoint goes (must not exist)
    scores: str            # importance folder: read if present, else calibrated and written
    tokens: str            # safetensors with "calibration" and "validation" [n, s+1] token rows
    student: StudentConfig
    prune: PruneConfig
    pipeline_parallel: int = 1
    result: str = ""       # JSON written by the last pipeline rank
    log: str = ""          # Model Optimizer's own output goes here (its per-layer lines); "" = the screen
    unrepaired: str = ""   # with prune.repair: where the student goes before repair (NeMo checkpoint)


def check_target(student: StudentConfig, arch: LlamaArch, cfg: PruneConfig, tensor_parallel: int,
                 pipeline_parallel: int) -> list[str]:
    """Everything wrong with a target shape, found before any heavy work."""
    problems = []
    if tensor_parallel != 1:
        problems.append("pruning needs parallel.tensor_parallel=1 (a Model Optimizer limit); "
                        "scale calibration with pipeline_parallel instead")
    grid = {"hidden_size": cfg.hidden_size_divisor, "ffn_hidden_size": cfg.ffn_hidden_size_divisor,
            "num_layers": cfg.num_layers_divisor}
    teacher = {"hidden_size": arch.hidden_size, "ffn_hidden_size": arch.ffn_hidden_size,
               "num_attention_heads": arch.num_attention_heads, "num_layers": arch.num_layers}
    for key, current in teacher.items():
        value = getattr(student, key)
        if value is None:
            continue
        if value > current:
            problems.append(f"student {student.name}: {key}={value} is larger than the teacher's {current}")
        elif key in grid and value != current and value % grid[key]:
            problems.append(f"student {student.name}: {key}={value} is not on the search grid "
                            f"(multiples of prune.{key}_divisor={grid[key]})")
    heads = student.num_attention_heads
    if heads is not None and heads % arch.num_query_groups:
        problems.append(f"student {student.name}: num_attention_heads={heads} is not a multiple of the "
                        f"{arch.num_query_groups} KV groups (groups are kept)")
    hidden, query_heads = student.hidden_size or arch.hidden_size, heads or arch.num_attention_heads
    if (student.hidden_size or heads) and hidden % query_heads:
        # transformers' LlamaConfig refuses it (even with head_dim given), so the student could not be exported.
        problems.append(f"student {student.name}: hidden_size={hidden} is not a multiple of num_attention_heads="
                        f"{query_heads}, which transformers' Llama needs; give a hidden size that is (e.g. "
                        f"{hidden - hidden % query_heads + query_heads}, with prune.hidden_size_divisor dividing it)")
    out_of_range = [n for n in student.drop_layers if n > arch.num_layers]
    if out_of_range:
        problems.append(f"student {student.name}: drop_layers {out_of_range} out of range: the teacher has layers "
                        f"1..{arch.num_layers} (1-indexed)")
    layers = student.target_layers(arch.num_layers)
    if student.drop_layers and student.num_layers is not None and student.num_layers != layers:
        problems.append(f"student {student.name}: num_layers={student.num_layers} but drop_layers leaves {layers} "
                        f"of {arch.num_layers}; give one of them, or make them agree")
    elif student.drop_layers and layers != arch.num_layers and layers % cfg.num_layers_divisor:
        problems.append(f"student {student.name}: drop_layers leaves {layers} layers, not on the search grid "
                        f"(multiples of prune.num_layers_divisor={cfg.num_layers_divisor})")
    if layers is not None and pipeline_parallel > 1 and layers < pipeline_parallel:
        problems.append(f"student {student.name}: num_layers={layers} < pipeline_parallel={pipeline_parallel}")
    if student.depth_method == "lm_loss" and layers is not None and pipeline_parallel > 1:
        problems.append(f"student {student.name}: depth_method=lm_loss needs pipeline_parallel=1")
    return problems


def _minitron_config(cfg: PruneConfig):
    from modelopt.torch.prune.plugins.mcore_minitron import get_mcore_minitron_config

    return get_mcore_minitron_config(hidden_size_divisor=cfg.hidden_size_divisor,
                                     ffn_hidden_size_divisor=cfg.ffn_hidden_size_divisor,
                                     num_layers_divisor=cfg.num_layers_divisor)


def _batches(rows: torch.Tensor, batch_size: int):
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def _load_teacher(job: PruneJob, cfg: PruneConfig):
    distributed.initialize(1, job.pipeline_parallel, seed=cfg.seed)
    register_torch_rmsnorm()
    model, arch = load_megatron_from_nemo(job.teacher, dtype=cfg.dtype)
    return model.eval(), arch


def calibrate_scores(job: PruneJob, cfg: PruneConfig, calibration: torch.Tensor) -> imp.ImportanceScores:
    """Activation scores for the teacher, from cache when the same calibration was done before."""
    folder = Path(job.scores)
    if (folder / "scores.json").is_file():
        return imp.ImportanceScores.load(folder)
    model, _ = _load_teacher(job, cfg)
    batches = _batches(calibration, cfg.calibration_batch_size)
    start = time.perf_counter()
    with cpu_compat.device_scope(), modelopt_output(job):  # it moves its broadcasts to "cuda" literally
        scores = imp.calibrate(model, lambda m: forward_only(m, batches), _minitron_config(cfg))
    scores.info.update(samples=int(calibration.shape[0]), seq_length=int(calibration.shape[1] - 1),
                       tokens=int(calibration[:, :-1].numel()), seconds=round(time.perf_counter() - start, 3),
                       pipeline_parallel=job.pipeline_parallel)
    if distributed.is_rank0():
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
        scores.save(tmp)
        tmp.rename(folder)
    torch.distributed.barrier()
    return scores


def _removal_losses(model, batches: list[torch.Tensor]) -> dict[int, float]:
    """LM loss with each layer removed in turn (1-indexed); needs PP=1."""
    layers = model.decoder.layers
    losses = {}
    for i in range(len(layers)):
        model.decoder.layers = torch.nn.ModuleList([lay for j, lay in enumerate(layers) if j != i])
        losses[i + 1] = lm_loss(model, batches)
    model.decoder.layers = layers
    return losses


def layer_ranking(student: StudentConfig, scores: imp.ImportanceScores, model, arch: LlamaArch,
                  selection) -> tuple[dict[int, float], dict]:
    """Scores that make Model Optimizer drop the layers `student.depth_method` chooses."""
    n, keep = arch.num_layers, student.target_layers(arch.num_layers) or arch.num_layers
    method = student.depth_method
    if student.drop_layers:  # named, as NeMo's tutorial and the published 4B-Depth model do
        return imp.scores_dropping(student.drop_layers, n), {"drop_layers": sorted(student.drop_layers)}
    if keep == n or method == "importance":
        return scores.layer_scores, {}
    if method == "tail":
        return imp.scores_dropping(imp.tail_layers(n, keep), n), {}
    if method == "contiguous":
        return imp.scores_dropping(imp.contiguous_block(scores.layer_scores, keep), n), {}
    losses = _removal_losses(model, selection)
    return losses, {"loss_without_layer": losses}


def run_job(job: PruneJob) -> dict:
    """Calibrate (or reuse scores), prune, save the student as NeMo; return what happened."""
    import modelopt.torch.prune as mtp

    cfg, student = job.prune, job.student
    tokens = load_file(job.tokens)
    validation = _batches(tokens["validation"], cfg.calibration_batch_size)
    # Choices (which layers, which searched shape) are scored on training text, never on the
    # validation text the students are reported on.
    selection = _batches(tokens["calibration"][: cfg.selection_samples], cfg.calibration_batch_size)
    scores = calibrate_scores(job, cfg, tokens["calibration"])
    model, arch = _load_teacher(job, cfg)
    teacher_loss = lm_loss(model, validation)
    layer_scores, depth_info = layer_ranking(student, scores, model, arch, selection)
    if student.importance == "activation":
        width = scores
    else:
        width = imp.width_baseline(model, student.importance, cfg.seed, layer_scores)
    state = imp.ImportanceScores(width.activations_per_rank, layer_scores, {}).modelopt_state()

    search = {"scores_path": None}
    if student.params is not None:
        constraints = {"params": student.params * arch.num_parameters()}
        search.update(score_func=lambda m: -lm_loss(m, selection), top_k=cfg.top_k)
    else:
        target = {key: getattr(student, key) for key in SHAPE_KEYS}
        target["num_layers"] = student.target_layers(arch.num_layers)  # num_layers, or what drop_layers leaves
        export = {key: value for key, value in target.items() if value is not None}
        constraints = {"export_config": export}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # Model Optimizer restores its searcher state from a pickle it wrote itself; this one is
        # written here, from our safetensors scores, and read back only by this process.
        search["scores_path"] = str(Path(tmp) / f"scores_rank{torch.distributed.get_rank()}.pth")
        torch.save(state, search["scores_path"])
        try:
            with cpu_compat.device_scope(), modelopt_output(job):
                model, _ = mtp.prune(model, mode=[("mcore_minitron", _minitron_config(cfg))],
                                     constraints=constraints, dummy_input=None, config=search)
        except AssertionError as e:
            raise MinitronError(f"Model Optimizer rejected student {student.name}: {e}") from None
    prune_seconds = time.perf_counter() - start
    pruned = _pruned_arch(model, arch)
    if distributed.is_rank0():
        print(f"  Model Optimizer cut {student.name}: hidden {arch.hidden_size}->{pruned.hidden_size}, FFN "
              f"{arch.ffn_hidden_size}->{pruned.ffn_hidden_size}, heads {arch.num_attention_heads}->"
              f"{pruned.num_attention_heads}, layers {arch.num_layers}->{pruned.num_layers} in {prune_seconds:.1f} s"
              + (f" (its log: {Path(job.log).name} in the stage folder)" if job.log else ""), flush=True)
    student_loss = lm_loss(model, validation)
    repaired = {}
    if cfg.repair != "none":
        if job.unrepaired:
            _save(model, pruned, job, Path(job.unrepaired))
        repaired = _repair(model, job, cfg, _batches(tokens["calibration"][: cfg.repair_samples],
                                                     cfg.calibration_batch_size))
        repaired["validation_loss"] = lm_loss(model, validation)
    _save(model, pruned, job, Path(job.output))
    kept = sorted(layer_scores, key=lambda k: -layer_scores[k])[: pruned.num_layers]
    result = {
        "student": student.name, "arch": pruned.to_dict(), "teacher_arch": arch.to_dict(),
        "parameters": pruned.num_parameters(), "teacher_parameters": arch.num_parameters(),
        "validation_loss": repaired.get("validation_loss", student_loss), "teacher_validation_loss": teacher_loss,
        "unrepaired_validation_loss": student_loss, "repair": repaired or None,
        "validation_tokens": int(tokens["validation"][:, :-1].numel()),
        "layer_scores": {str(k): v for k, v in scores.layer_scores.items()},
        "layers_kept": sorted(kept), "layers_dropped": sorted(set(layer_scores) - set(kept)),
        "importance": student.importance, "depth_method": student.depth_method,
        "calibration": scores.info, "prune_seconds": round(prune_seconds, 3), **depth_info,
    }
    if job.result and distributed.is_rank0():
        Path(job.result).write_text(json.dumps(result, indent=2))
    return result


def _save(model, arch: LlamaArch, job: PruneJob, out: Path) -> None:
    _, dtype, hf_config = nemo.read_context(job.teacher)
    if distributed.is_rank0():
        nemo.write_context(out, arch, dtype, hf_config, nemo.tokenizer_dir(job.teacher))
    torch.distributed.barrier()
    nemo.save_weights(model, out)


def _repair(model, job: PruneJob, cfg: PruneConfig, batches) -> dict:
    """Closed-form repair against a fresh copy of the teacher (minitron/pruning/repair.py)."""
    from minitron.pruning.repair import repair

    teacher, _ = _load_teacher(job, cfg)
    if torch.cuda.is_available():  # the repair's own peak: both models, its activations and fits
        torch.cuda.reset_peak_memory_stats()
    with cpu_compat.device_scope():
        report = repair(model.eval(), teacher, batches, cfg.repair_ridge)
    del teacher
    summary = report.summary()
    if torch.cuda.is_available():
        summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    if distributed.is_rank0():
        print(f"  repair of {job.student.name}: {summary['fits_taken']} of {summary['fits']} least-squares fits "
              f"taken, calibration error {summary['calibration_error_before']:.3g} -> "
              f"{summary['calibration_error_after']:.3g} in {summary['seconds']:.1f} s", flush=True)
    return summary


@contextlib.contextmanager
def modelopt_output(job: PruneJob):
    """Model Optimizer prints a line per sorted layer and search candidate: into the job's log, not the screen."""
    if not job.log:
        yield
        return
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "a", buffering=1) as log, contextlib.redirect_stdout(log):
        yield


def _pruned_arch(model, teacher: LlamaArch) -> LlamaArch:
    c = model.config
    return dataclasses.replace(teacher, hidden_size=c.hidden_size, ffn_hidden_size=c.ffn_hidden_size,
                               num_attention_heads=c.num_attention_heads, num_query_groups=c.num_query_groups,
                               head_dim=c.kv_channels, num_layers=c.num_layers)


if __name__ == "__main__":
    sys.exit(job_main(run_job, PruneJob, "one pruning job on every rank (written by the prune stage)"))
