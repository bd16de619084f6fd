"""The training loop: Megatron-Core schedules, DDP and optimizer; Model Optimizer distillation.

`train(job)` is collective (every rank under torchrun, or one process). The same loop does
knowledge distillation (a teacher is given: logit KL, optionally + LM loss and intermediate
losses) and teacher correction / plain LM training (no teacher).

Global batch ``B`` is split over ``DP`` data-parallel ranks and ``B / (DP * micro)`` gradient-
accumulation micro-batches. Sample ``k`` of step ``t`` is always global sample ``t*B + k``, so
the loss curve does not depend on the parallel layout and a resumed run sees the same data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.transformer.module import Float16Module
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

from minitron.conversion import nemo_checkpoint as nemo
from minitron.conversion.convert import load_megatron_from_nemo
from minitron.data import DataConfig, prepare, samples
from minitron.data.tokenizer import tokenizer_hash
from minitron.errors import MinitronError
from minitron.runtime import cpu_compat, distributed, host_memory
from minitron.runtime.inference import lm_loss, position_ids
from minitron.runtime.launch import job_main
from minitron.runtime.precision import resolve as resolve_precision
from minitron.training import checkpoint
from minitron.training.config import TrainConfig
from minitron.training.kd_loss import ChunkedLogitsKLLoss
from minitron.training.shared_teacher import TeacherLogits


@dataclass
class TrainJob:
    student: str                 # NeMo checkpoint to train
    output: str                  # checkpoints/, nemo/ (final student), metrics.jsonl, tensorboard/
    data: DataConfig
    train: TrainConfig
    teacher: str | None = None   # NeMo checkpoint; None = LM-loss training (teacher correction)
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    max_steps_this_run: int | None = None  # stop early (tests: simulate a crash between checkpoints)


# ---- setup ----------------------------------------------------------------------------------------
def _distillation_model(student, teacher, cfg: TrainConfig):
    import modelopt.torch.distill as mtd
    from modelopt.torch.distill.plugins.megatron import (
        DistillationConfig, adjust_distillation_model_for_mcore, setup_distillation_config)

    kd = DistillationConfig(intermediate_layer_pairs=[tuple(p) for p in cfg.kd.intermediate_pairs],
                            skip_lm_loss=not cfg.kd.lm_loss, kd_loss_scale=cfg.kd.kd_loss_scale,
                            logit_kl_temperature=cfg.kd.temperature, logit_kl_topk=cfg.kd.top_k)
    kd = setup_distillation_config(kd, student.config, teacher.config)
    logits = tuple(kd.logit_layers)
    if cfg.kd.chunk_tokens and cfg.kd.top_k is None and logits in kd.criterion:  # the last pipeline stage
        kd.criterion[logits] = ChunkedLogitsKLLoss(student.config, temperature=cfg.kd.temperature,
                                                   chunk_tokens=cfg.kd.chunk_tokens)
    model = mtd.convert(student, mode=[("kd_loss", {"teacher_model": teacher, "criterion": kd.criterion,
                                                    "loss_balancer": kd.loss_balancer})])
    adjust_distillation_model_for_mcore(model, kd)
    _lm_loss_on_a_copy(model, skipped_in_training=not cfg.kd.lm_loss)
    return model


def _lm_loss_on_a_copy(model, skipped_in_training: bool) -> None:
    """Megatron's cross entropy subtracts the max and exponentiates its logits in place (its `.float()`
    copies bf16 logits, not fp32 ones), and those logits are the very tensor Model Optimizer's hook keeps for
    the logit KL. In fp32, wherever the student's LM loss is computed (validation; training with
    kd.lm_loss) the KL would read exp(logits - max): give the LM loss a copy."""
    own = model.compute_language_model_loss

    def compute(labels, logits):
        computed = not (skipped_in_training and model.training)  # Model Optimizer returns zeros otherwise
        return own(labels, logits.clone() if computed and logits.dtype == torch.float32 else logits)

    model.compute_language_model_loss = compute


def _check_compatible(job: TrainJob, student_arch, teacher_arch) -> None:
    if student_arch.vocab_size != teacher_arch.vocab_size:
        raise MinitronError(f"student vocab {student_arch.vocab_size} != teacher vocab {teacher_arch.vocab_size}; "
                            "distillation needs the same vocabulary")
    s_tok, t_tok = nemo.tokenizer_dir(job.student), nemo.tokenizer_dir(job.teacher)
    if tokenizer_hash(s_tok) != tokenizer_hash(t_tok):
        raise MinitronError(f"{s_tok} and {t_tok} hold different tokenizers; student and teacher must share one")


def _wrap(model, cfg: TrainConfig, bf16: bool):
    """Megatron's own mixed precision: bf16 weights (Float16Module) + fp32 master weights in the
    optimizer, fp32 gradient reduction. On CPU the same classes run through `cpu_compat`."""
    model.config.bf16 = bf16
    # What pipeline stages send each other: the residual stream's dtype.
    model.config.pipeline_dtype = torch.bfloat16 if bf16 and not model.config.fp32_residual_connection \
        else torch.float32
    wrapped = Float16Module(model.config, model) if bf16 else model
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=torch.cuda.is_available())
    ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=wrapped)
    with cpu_compat.device_scope():  # the optimizer allocates its loss scale on "cuda" literally
        opt = get_megatron_optimizer(OptimizerConfig(
            optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_eps=cfg.adam_eps, clip_grad=cfg.clip_grad,
            use_distributed_optimizer=torch.cuda.is_available(), bf16=bf16,
            params_dtype=torch.bfloat16 if bf16 else torch.float32), [ddp])
    sched = OptimizerParamScheduler(opt, init_lr=0.0, max_lr=cfg.lr, min_lr=cfg.min_lr,
                                    lr_warmup_steps=cfg.warmup_steps, lr_decay_steps=cfg.steps,
                                    lr_decay_style="cosine", start_wd=cfg.weight_decay, end_wd=cfg.weight_decay,
                                    wd_incr_steps=cfg.steps, wd_incr_style="constant")
    model.config.finalize_model_grads_func = finalize_model_grads
    model.config.no_sync_func = ddp.no_sync
    return ddp, opt, sched


def _fused_adam_on_cpu(opt) -> None:
    """Without Transformer Engine or Apex, Megatron builds torch's AdamW, whose CPU default is the
    per-tensor loop (a dozen passes over every parameter and state); its fused CPU kernel does one."""
    if torch.cuda.is_available():
        return
    for chained in getattr(opt, "chained_optimizers", [opt]):
        inner = chained.optimizer
        if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            for group in inner.param_groups:
                group.update(fused=True, foreach=False)


# ---- one step ---------------------------------------------------------------------------------------
def _token_mean(x):
    """Model Optimizer's per-token losses -> scalar (summing vocab shards over TP where asked)."""
    if isinstance(x, tuple):
        x, tp_reduce, _ = x
    else:
        tp_reduce = False
    loss = x.float().mean()
    return reduce_from_tensor_model_parallel_region(loss) if tp_reduce else loss


def _loss_func(model, distilling: bool, per_token_lm_loss):
    lm = per_token_lm_loss.float().mean()
    if not distilling:
        return lm, {"loss": lm.detach().clone(), "lm_loss": lm.detach().clone()}
    losses = model.compute_kd_loss(student_loss=lm, loss_reduction_fn=_token_mean)
    total = losses["kd_loss"]
    return total, {"loss": total.detach().clone(), "kd_loss": losses["logits_loss"].detach().clone(),
                   "lm_loss": lm.detach().clone()}


def _run_batches(ddp, model, rows: torch.Tensor, cfg: TrainConfig, distilling: bool, forward_only: bool):
    """forward(+backward) over `rows` (this DP rank's share) in micro-batches; mean metrics."""
    micro = [rows[i:i + cfg.micro_batch_size] for i in range(0, len(rows), cfg.micro_batch_size)]
    device = next(model.parameters()).device
    seq = rows.shape[1] - 1

    def step(data_iterator, stage_model):
        batch = next(data_iterator).to(device)
        tokens, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        output = stage_model(tokens, position_ids(tokens), None, labels=labels)
        return output, partial(_loss_func, model, distilling)

    adjust = None
    if distilling and parallel_state.get_pipeline_model_parallel_world_size() > 1:
        from modelopt.torch.distill.plugins.megatron import get_tensor_shapes_adjust_fn_for_distillation

        adjust = get_tensor_shapes_adjust_fn_for_distillation(
            model, seq_length=seq, micro_batch_size=cfg.micro_batch_size, decoder_seq_length=seq)
    kwargs = {"adjust_tensor_shapes_fn": adjust} if adjust else {}
    reports = get_forward_backward_func()(
        forward_step_func=step, data_iterator=iter(micro), model=[ddp], num_microbatches=len(micro),
        seq_length=seq, micro_batch_size=cfg.micro_batch_size, forward_only=forward_only, **kwargs)
    return _average_metrics(reports, device)


def _average_metrics(reports: list[dict], device) -> dict[str, float]:
    """Mean over micro-batches and data-parallel ranks, known on every rank.

    The student's LM loss comes first (what Megatron/NeMo report as validation loss, comparable across
    teacher, pruned and distilled models); `kd_loss` is the logit KL; `loss` is the objective optimized
    (= kd_loss when distilling without LM loss, = lm_loss when not distilling).
    """
    keys = ("lm_loss", "kd_loss", "loss")
    local = torch.zeros(len(keys) + 1, device=device)
    if parallel_state.is_pipeline_last_stage() and reports:
        for r in reports:
            for i, k in enumerate(keys):
                local[i] += r.get(k, torch.tensor(float("nan"))).float().to(device)
        local[-1] = len(reports)
    torch.distributed.all_reduce(local, group=parallel_state.get_data_parallel_group())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(local, parallel_state.get_pipeline_model_parallel_last_rank(),
                                    group=parallel_state.get_pipeline_model_parallel_group())
    return {k: (local[i] / local[-1]).item() for i, k in enumerate(keys)}


def _my_rows(all_rows, step: int, cfg: TrainConfig) -> torch.Tensor:
    dp, rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    per_rank = cfg.global_batch_size // dp
    start = step * cfg.global_batch_size + rank * per_rank
    return torch.stack([all_rows[i] for i in range(start, start + per_rank)])


# ---- the loop -----------------------------------------------------------------------------------------
def train(job: TrainJob) -> dict:
    """Train one job (collective: every rank of its layout)."""
    return train_together([job])[0]


@dataclass
class _Student:
    """One student's training state in `train_together`."""
    job: TrainJob
    arch: object
    model: object      # the distillation model (or the student itself for LM training)
    ddp: object
    opt: object
    sched: object
    start_step: int
    log: "_Logger"
    last_val: dict | None = None
    initial_val: dict | None = None  # before the first step (None when resumed)


def train_together(jobs: list[TrainJob]) -> list[dict]:
    """Train `jobs` step by step side by side; with a teacher, one teacher forward serves them all (without
    one, LM loss only, they train one after another).

    The jobs share teacher, data, training settings and layout (the recipe's students distilled from
    one teacher); each keeps its own hidden-state pairs (`kd.intermediate_pairs`). Each micro-batch's teacher logits are computed once, while the first student trains
    (`TeacherLogits`), and replayed to the others, so n students cost one teacher pass instead of n.
    Each student keeps its own checkpoints, metrics and export, exactly as when trained alone.
    """
    _check_together(jobs)
    if len(jobs) > 1 and jobs[0].teacher is None:
        # LM-loss training (no teacher): no forward to share, so side by side would only hold n models at once
        return [train_together([j])[0] for j in jobs]
    if len({_resume_step(j) for j in jobs}) > 1:
        # Killed between two students' checkpoints of the same step: they cannot run in step; one by one.
        return [train_together([j])[0] for j in jobs]
    first = jobs[0]
    cfg, data_cfg = first.train, first.data
    if not torch.cuda.is_available():
        host_memory.keep_freed_memory()
    distributed.initialize(first.tensor_parallel, first.pipeline_parallel, seed=cfg.seed)
    precision = resolve_precision(cfg.precision, distributed.device())
    cfg = _resolve_micro_batch(cfg)
    teacher = _load_teacher(first)
    prepared = prepare(data_cfg, nemo.tokenizer_dir(first.student))
    train_rows = samples(prepared, "train", data_cfg.seq_length, cfg.steps * cfg.global_batch_size, seed=data_cfg.seed)
    val_rows = torch.stack(list(samples(prepared, "validation", data_cfg.seq_length, cfg.eval_samples)))
    teacher_val = None
    if teacher is not None:
        teacher_val = lm_loss(teacher, [val_rows[i:i + cfg.micro_batch_size]
                                        for i in range(0, len(val_rows), cfg.micro_batch_size)])
    # The teacher modules the replaying students' hidden-state losses read (each student keeps its own pairs).
    replayed = [pair[1] for job in jobs[1:] for pair in job.train.kd.intermediate_pairs]
    shared = TeacherLogits(teacher, replayed) if teacher is not None and len(jobs) > 1 else None
    students = [_start(job, dataclasses.replace(cfg, kd=job.train.kd),
                       teacher if shared is None or i == 0 else shared.stand_in(), precision, i)
                for i, job in enumerate(jobs)]
    start = students[0].start_step
    stop = cfg.steps if first.max_steps_this_run is None else min(cfg.steps, start + first.max_steps_this_run)
    distilling = teacher is not None
    if start == 0:  # where training starts from: the first point of the recovery curve
        for s in _in_turn(students, shared):
            s.initial_val = _validate(s.ddp, s.model, val_rows, cfg, distilling)
        if shared:
            shared.clear()
    for step in range(start, stop):
        rows = _my_rows(train_rows, step, cfg)
        for s in _in_turn(students, shared):
            _train_step(s, rows, step, cfg, distilling)
        done = step + 1
        if done % cfg.eval_interval == 0 or done == cfg.steps:
            for s in _in_turn(students, shared):
                s.last_val = _validate(s.ddp, s.model, val_rows, cfg, distilling)
                s.log.metrics.update({f"val_{k}": v for k, v in s.last_val.items()})
        if shared:
            shared.clear()
        for s in students:
            s.log.flush_step()
            if done % cfg.save_interval == 0 or done == cfg.steps:
                checkpoint.save(Path(s.job.output) / "checkpoints", s.model, s.opt, s.sched, done, cfg.keep_last)
    return [_finish(s, cfg, data_cfg, stop, teacher_val, precision) for s in students]


def _in_turn(students: list[_Student], shared: TeacherLogits | None):
    """The students in order, each over the same micro-batches; with a shared teacher the first one's pass
    records the teacher logits and the others' passes replay them."""
    for i, s in enumerate(students):
        if shared and i == 0:
            shared.record()
        elif shared:
            shared.replay()
        yield s


def _check_together(jobs: list[TrainJob]) -> None:
    first = jobs[0]

    def shared_settings(job: TrainJob) -> tuple:  # all but each student's own hidden-state pairs
        train = dataclasses.replace(job.train, kd=dataclasses.replace(job.train.kd, intermediate_pairs=[]))
        return job.teacher, job.data, train, job.tensor_parallel, job.pipeline_parallel, job.max_steps_this_run

    for job in jobs[1:]:
        same = shared_settings(job) == shared_settings(first)
        if not same:
            raise MinitronError(f"{job.output}: students trained together need one teacher, data, training settings "
                                f"and layout (distill them separately: distill.share_teacher=false)")
    if len(jobs) > 1 and first.pipeline_parallel > 1:
        # Recipe.check says so before anything runs; job files written by hand meet it here.
        raise MinitronError("distill.share_teacher needs pipeline_parallel 1 (the students replay the teacher's "
                            "last-stage logits); set distill.share_teacher=false")


def _resume_from(job: TrainJob) -> tuple[int, Path] | None:
    """(step, folder) of the checkpoint `job` continues from, if any."""
    return checkpoint.newest(Path(job.output) / "checkpoints") if job.train.resume == "auto" else None


def _resume_step(job: TrainJob) -> int:
    found = _resume_from(job)
    return found[0] if found else 0


def _resolve_micro_batch(cfg: TrainConfig) -> TrainConfig:
    dp = parallel_state.get_data_parallel_world_size()
    if cfg.global_batch_size % (cfg.micro_batch(dp) * dp):
        raise MinitronError(f"global_batch_size={cfg.global_batch_size} is not divisible by "
                            f"micro_batch_size={cfg.micro_batch(dp)} x data_parallel={dp}")
    return dataclasses.replace(cfg, micro_batch_size=cfg.micro_batch(dp))


def _load_teacher(job: TrainJob):
    if not job.teacher:
        return None
    # training_layers: fused attention and an fp32 residual stream where Transformer Engine is absent.
    teacher, _ = load_megatron_from_nemo(job.teacher, dtype=torch.float32, training_layers=True)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _start(job: TrainJob, cfg: TrainConfig, teacher, precision, position: int) -> _Student:
    """Load the student, wrap it for distillation (when there is a teacher), Megatron's DDP and
    optimizer; resume from its newest complete checkpoint."""
    student, arch = load_megatron_from_nemo(job.student, dtype=torch.float32, training_layers=True)
    if job.teacher:
        _check_compatible(job, arch, nemo.read_context(job.teacher)[0])
    model = _distillation_model(student, teacher, cfg) if teacher is not None else student
    ddp, opt, sched = _wrap(model, cfg, bf16=precision.name == "bf16")
    start_step = 0
    found = _resume_from(job)
    if found:
        start_step = checkpoint.load(found[1], model, opt, sched)
        if distributed.is_rank0():
            print(f"resumed from {found[1]} (step {start_step})", flush=True)
    _fused_adam_on_cpu(opt)  # after loading: a checkpoint's param groups would bring their own flags
    log = _Logger(Path(job.output), start_step, cfg, distributed.is_rank0(), position)
    return _Student(job, arch, model, ddp, opt, sched, start_step, log)


def _train_step(s: _Student, rows: torch.Tensor, step: int, cfg: TrainConfig, distilling: bool) -> None:
    t0 = time.perf_counter()
    s.ddp.train()
    s.ddp.zero_grad_buffer()
    s.opt.zero_grad()
    metrics = _run_batches(s.ddp, s.model, rows, cfg, distilling, False)
    fwd_bwd = time.perf_counter() - t0
    if not math.isfinite(metrics["loss"]):
        last = checkpoint.newest(Path(s.job.output) / "checkpoints")
        raise MinitronError(f"loss is {metrics['loss']} at step {step + 1}; stopped. Last good checkpoint: "
                            f"{last[1] if last else 'none'} (lower train.lr or check the data)")
    with cpu_compat.device_scope():
        ok, grad_norm, _ = s.opt.step()
    s.sched.step(increment=1)
    seconds = time.perf_counter() - t0
    tokens = cfg.global_batch_size * s.job.data.seq_length
    s.log.metrics = dict(metrics, step=step + 1, lr=s.opt.param_groups[0]["lr"], grad_norm=float(grad_norm or 0.0),
                         skipped=not ok, seconds=seconds, fwd_bwd_seconds=fwd_bwd, tokens_per_second=tokens / seconds)


def _finish(s: _Student, cfg: TrainConfig, data_cfg, stop: int, teacher_val, precision) -> dict:
    s.log.close()
    out = Path(s.job.output)
    tokens_per_step = cfg.global_batch_size * data_cfg.seq_length
    result = {"steps": stop, "tokens": stop * tokens_per_step, "validation": s.last_val,
              "initial_validation": s.initial_val,
              "teacher_validation_loss": teacher_val, "metrics": str(out / "metrics.jsonl"),
              "precision": precision.to_dict()}
    if stop == cfg.steps:
        _export_student(s.job, s.model, s.arch, out / "nemo")
        result["nemo"] = str(out / "nemo")
    return result


def _validate(ddp, model, val_rows, cfg: TrainConfig, distilling: bool) -> dict[str, float]:
    ddp.eval()
    with torch.no_grad():
        metrics = _run_batches(ddp, model, val_rows, cfg, distilling, forward_only=True)
    ddp.train()
    return metrics


def _export_student(job: TrainJob, model, arch, target: Path) -> None:
    """The trained student as a NeMo checkpoint (teacher hidden), written atomically."""
    _, dtype, hf_config = nemo.read_context(job.student)
    partial_dir = target.with_name(f".{target.name}.partial")
    if distributed.is_rank0():
        shutil.rmtree(partial_dir, ignore_errors=True)
        nemo.write_context(partial_dir, arch, dtype, hf_config, nemo.tokenizer_dir(job.student))
    torch.distributed.barrier()
    nemo.save_weights(model, partial_dir)
    torch.distributed.barrier()
    if distributed.is_rank0():
        # A longer rerun replaces the student an earlier, shorter run exported.
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        partial_dir.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    torch.distributed.barrier()


class _Logger:
    """metrics.jsonl + TensorBoard (when installed) + a progress bar with rate and ETA (rank 0)."""

    def __init__(self, out: Path, start: int, cfg: TrainConfig, active: bool, position: int = 0):
        self.active, self.cfg, self.metrics = active, cfg, {}
        if not active:
            return
        from tqdm import tqdm

        out.mkdir(parents=True, exist_ok=True)
        self.file = (out / "metrics.jsonl").open("a")
        name = out.name.removesuffix(".work")
        self.bar = tqdm(total=cfg.steps, initial=start, desc=f"train {name}", unit="step", dynamic_ncols=True,
                        position=position)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            self.tb = None

    def flush_step(self) -> None:
        """Log the step's metrics (training, plus validation when it ran)."""
        self.step(self.metrics)

    def step(self, m: dict) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(m) + "\n")
        self.file.flush()
        if self.tb:
            for k, v in m.items():
                if isinstance(v, float):
                    self.tb.add_scalar(k, v, m["step"])
        # Model Optimizer skips the student's LM loss in training when kd.lm_loss is false (it reads 0 then).
        shown = {"lm": f"{m['lm_loss']:.4f}"} if m["lm_loss"] > 0 else {}
        if math.isfinite(m["kd_loss"]):
            shown["kd"] = f"{m['kd_loss']:.4f}"
        if "val_lm_loss" in m:
            shown["val_lm"] = f"{m['val_lm_loss']:.4f}"
        self.bar.set_postfix(**shown, tok_s=f"{m['tokens_per_second']:.0f}")
        self.bar.update(1)

    def close(self) -> None:
        if self.active:
            self.bar.close()
            self.file.close()
            if self.tb:
                self.tb.close()


if __name__ == "__main__":
    sys.exit(job_main(train_together, TrainJob, "training jobs on every rank, side by side (written by a training "
                                                "stage; one job, or students sharing a teacher)", many=True))
