"""Process-group and model-parallel setup: NCCL on GPUs, gloo on CPU, same code under torchrun."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from minitron.errors import MinitronError
from minitron.runtime import cpu_compat


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def initialize(tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, seed: int = 1234):
    """Start (or reuse) the process group and Megatron's TP/PP/DP groups.

    Under ``torchrun`` the rendezvous comes from the environment (multi-node works as torchrun
    does); a plain ``python`` process becomes a world of one. Data parallel size is whatever
    is left: ``world_size / (TP * PP)``.
    """
    cpu_compat.enable()
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            _init_from_environment()
        else:
            # A world of one needs no rendezvous: an in-memory store, no port is opened.
            dist.init_process_group(backend(), store=dist.HashStore(), rank=0, world_size=1)
    world = dist.get_world_size()
    if tensor_parallel_size < 1 or pipeline_parallel_size < 1:
        raise MinitronError("tensor_parallel and pipeline_parallel must be >= 1")
    if world % (tensor_parallel_size * pipeline_parallel_size):
        raise MinitronError(
            f"world size {world} is not divisible by tensor_parallel ({tensor_parallel_size}) x "
            f"pipeline_parallel ({pipeline_parallel_size}); launch a multiple of their product"
        )
    if parallel_state.model_parallel_is_initialized():
        same = (
            parallel_state.get_tensor_model_parallel_world_size() == tensor_parallel_size
            and parallel_state.get_pipeline_model_parallel_world_size() == pipeline_parallel_size
        )
        if same:
            return
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel_size,
        pipeline_model_parallel_size=pipeline_parallel_size,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


_ENVIRONMENT_INITS = 0


def _init_from_environment() -> None:
    """torchrun's rendezvous; again (with a store prefix of its own) when a job has several stages.

    A second ``env://`` init in the same process reuses torch's store keys: its barrier waits forever, or
    gloo dials an address of the group before. Every rank inits as often (once per stage), so the n-th init
    has the same prefix everywhere.
    """
    global _ENVIRONMENT_INITS
    _ENVIRONMENT_INITS += 1
    if _ENVIRONMENT_INITS == 1:
        dist.init_process_group(backend())
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent serves the store
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size=None if agent else world,
                          is_master=rank == 0 and not agent)
    dist.init_process_group(backend(), store=dist.PrefixStore(f"minitron/init-{_ENVIRONMENT_INITS}", store),
                            rank=rank, world_size=world)


@contextlib.contextmanager
def single_process():
    """Run the block as a world of one although launched by torchrun (rank 0's own work after a job)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        shutdown()
        os.environ.update(saved)


def shutdown():
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def distributed_entry(fn):
    """Wrap a (possibly multi-rank) entry point so a crash on one rank ends all of them.

    A rank that raises while its peers wait in a collective would hang the job until the
    collective times out. Instead the failing rank prints its error and leaves with
    ``os._exit``; torchrun sees the non-zero exit and stops the other workers.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MinitronError:
            if dist.is_initialized() and dist.get_world_size() > 1:
                rank = dist.get_rank()
                print(f"error (rank {rank}): {sys.exc_info()[1]}", file=sys.stderr, flush=True)
                os._exit(2)
            raise
        except Exception:
            if dist.is_initialized() and dist.get_world_size() > 1:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            raise

    return wrapper
