"""Training checkpoints: torch_dist, written atomically, the newest K kept, resumable.

A checkpoint is written to ``.step_00000010.partial/`` and renamed to ``step_00000010/`` by
rank 0 once every rank has finished writing, so a folder named ``step_*`` is always complete
(a crash mid-save leaves only a ``.partial`` folder, which is ignored and cleaned up).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from torch.distributed.checkpoint.api import CheckpointException

from minitron.errors import MinitronError
from minitron.runtime import distributed

_NAME = re.compile(r"^step_(\d{8})$")


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found)


def newest(root: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def _state(model, optimizer, scheduler, step: int, is_loading: bool) -> dict:
    model_sd = model.sharded_state_dict()
    return {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading),
            "scheduler": scheduler.state_dict(), "step": step}


def save(root: Path, model, optimizer, scheduler, step: int, keep_last: int) -> Path:
    """Collective. Returns the final checkpoint folder."""
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".step_{step:08d}.partial"
    final = root / f"step_{step:08d}"
    if distributed.is_rank0():
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    torch.distributed.barrier()
    try:
        dist_checkpointing.save(_state(model, optimizer, scheduler, step, is_loading=False), str(partial))
    except (OSError, RuntimeError) as e:  # e.g. the disk filled up: the previous checkpoints stay untouched
        # A full disk reaches here as OSError or, from torch's zip writer in a save worker, as RuntimeError
        # "[enforce fail at inline_container.cc] unexpected pos": say how much room is left either way.
        free = shutil.disk_usage(root).free / 2 ** 20
        raise MinitronError(f"{partial}: saving the step-{step} checkpoint failed ({str(e).splitlines()[0]}); "
                            f"{free:,.1f} MiB free there; earlier checkpoints are intact") from None
    torch.distributed.barrier()
    if distributed.is_rank0():
        if final.exists():  # left by an earlier run (train.resume=never starts over in the same folder)
            stale = root / f".step_{step:08d}.replaced"
            shutil.rmtree(stale, ignore_errors=True)
            final.rename(stale)
            shutil.rmtree(stale)
        partial.rename(final)
        for _, old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".step_*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
    torch.distributed.barrier()
    return final


def load(path: Path, model, optimizer, scheduler) -> int:
    """Restore model, optimizer and LR schedule in place; return the step it was saved at."""
    try:
        state = dist_checkpointing.load(_state(model, optimizer, scheduler, 0, is_loading=True), str(path))
    except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MinitronError(f"{path}: this checkpoint does not fit the model being trained ({first}); "
                            "point the run at another output folder or set train.resume=never") from None
    hide = model.hide_teacher_model() if hasattr(model, "hide_teacher_model") else contextlib.nullcontext()
    with hide:
        model.load_state_dict(state["model"], strict=True)
    _check_same_schedule(path, state["scheduler"], scheduler)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def _check_same_schedule(path: Path, saved: dict, scheduler) -> None:
    """Resuming continues the same run: `steps` fixes the cosine decay length and the order of the
    training samples (drawn once for steps x global_batch_size), so a changed `steps` (or LR setting)
    would silently be a different run. Megatron's scheduler only asserts; say what to do instead."""
    changed = [f"{name}: checkpoint {saved[key]} vs now {getattr(scheduler, key)}"
               for name, key in (("steps", "lr_decay_steps"), ("warmup_steps", "lr_warmup_steps"),
                                 ("lr", "max_lr"), ("min_lr", "min_lr"))
               if key in saved and saved[key] != getattr(scheduler, key)]
    if changed:
        raise MinitronError(f"{path}: written by a run with other settings ({'; '.join(changed)}); the LR schedule "
                            "and data order follow them, so resuming would not give that run. Train into a new "
                            "output folder, or set train.resume=never to start over")
