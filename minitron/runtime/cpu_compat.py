"""Let Megatron-Core (and Model Optimizer on top of it) run on a machine without CUDA.

Megatron-Core 0.16 is written for GPUs, but its *local* layer spec is plain PyTorch, so the
model itself runs on CPU. What stops it are a handful of hard-wired CUDA calls outside the math:

* ``torch.cuda.current_device()`` picks the device for rotary tables and p2p shape buffers;
* the CUDA RNG tracker (``model_parallel_cuda_manual_seed``, ``tracker.fork()``) reads and
  writes CUDA generator state;
* the default causal mask of the unfused softmax is built with ``device="cuda"``;
* with tied embeddings and PP > 1, the model syncs the output layer with ``Tensor.cuda()``;
* the pipeline schedules allocate counters with ``device="cuda"`` and call
  ``torch.cuda.synchronize()``; Model Optimizer calls ``Tensor.cuda()`` in places.

:func:`enable` redirects exactly those calls to the CPU. It is a no-op when CUDA is available,
so the same code runs unchanged on a GPU cluster. Nothing else in this repository needs to know
about it: :func:`minitron.runtime.distributed.initialize` calls it.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False


def cuda_absent() -> bool:
    return not torch.cuda.is_available()


class CudaToCpuMode(TorchFunctionMode):
    """Rewrite ``device="cuda"`` arguments and ``Tensor.cuda()`` calls to the CPU.

    Used only around Megatron's pipeline schedules (and Model Optimizer's searches), which
    allocate small bookkeeping tensors on ``"cuda"`` literally.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # Type checks written for GPUs ("torch.cuda.FloatTensor") see the CPU tensor as one.
            name = func(*args)  # (nested scopes see an already-rewritten name)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        device = kwargs.get("device")
        if device is not None and _is_cuda(device):
            kwargs = {**kwargs, "device": "cpu"}
        if func in (torch.Tensor.to,) and args[1:] and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _is_cuda(device) -> bool:
    if isinstance(device, int):
        return True  # an integer device index means a CUDA ordinal
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


def _cpu_rng_get(*_args, **_kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_rng_set(new_state, *_args, **_kwargs) -> None:
    torch.set_rng_state(new_state)


def _in_cpu_mode(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with CudaToCpuMode():
            return fn(*args, **kwargs)

    wrapper.__minitron_cpu_compat__ = True
    return wrapper


@functools.lru_cache(maxsize=8)
def _cpu_causal_mask(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _gloo_safe_all_gather(fn):
    @functools.wraps(fn)
    def wrapper(output_tensor, input_tensor, *args, **kwargs):
        if input_tensor.dim() == 0:
            input_tensor = input_tensor.reshape(1)
        return fn(output_tensor, input_tensor, *args, **kwargs)

    wrapper.__minitron_cpu_compat__ = True
    return wrapper


def _wrap_modelopt() -> None:
    """Model Optimizer's depth pruning moves its layer counters with ``Tensor.cuda()``."""
    try:
        from modelopt.torch.prune.plugins import mcore_minitron
    except ImportError:
        return
    fn = mcore_minitron.drop_mcore_language_model_layers
    if not getattr(fn, "__minitron_cpu_compat__", False):
        mcore_minitron.drop_mcore_language_model_layers = _in_cpu_mode(fn)


class _DropExpectedRngWarning(logging.Filter):
    # On CPU the "CUDA" RNG *is* the CPU RNG, so Megatron's check that a fork left the CPU
    # generator untouched always fires; it carries no information here.
    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def enable() -> bool:
    """Install the CPU redirections once. Returns True when they are active."""
    global _ENABLED
    if _ENABLED:
        return True
    if not cuda_absent():
        return False

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.get_rng_state = _cpu_rng_get
    torch.cuda.set_rng_state = _cpu_rng_set
    # Not torch.manual_seed: that calls torch.cuda.manual_seed_all, which must stay lazy.
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))

    from megatron.core.fusions import fused_softmax
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel import random as mp_random
    from megatron.core.transformer import utils as transformer_utils

    from megatron.core.models.common.language_module.language_module import LanguageModule

    LanguageModule.setup_embeddings_and_output_layer = _in_cpu_mode(
        LanguageModule.setup_embeddings_and_output_layer)
    fused_softmax.get_default_causal_mask = _cpu_causal_mask
    transformer_utils.get_default_causal_mask = _cpu_causal_mask

    mp_random._get_cuda_rng_state = _cpu_rng_get
    mp_random._set_cuda_rng_state = _cpu_rng_set
    logging.getLogger(mp_random.__name__).addFilter(_DropExpectedRngWarning())

    dist_all_gather = torch.distributed.all_gather_into_tensor
    if not getattr(dist_all_gather, "__minitron_cpu_compat__", False):
        torch.distributed.all_gather_into_tensor = _gloo_safe_all_gather(dist_all_gather)
    _wrap_modelopt()
    from megatron.core.optimizer import optimizer as mcore_optimizer

    for name in ("get_grad_norm_fp32", "clip_grad_by_total_norm_fp32", "count_zeros_fp32"):
        fn = getattr(mcore_optimizer, name)
        if not getattr(fn, "__minitron_cpu_compat__", False):
            setattr(mcore_optimizer, name, _in_cpu_mode(fn))
    for name in (
        "forward_backward_no_pipelining",
        "forward_backward_pipelining_without_interleaving",
        "forward_backward_pipelining_with_interleaving",
    ):
        fn = getattr(schedules, name)
        if not getattr(fn, "__minitron_cpu_compat__", False):
            setattr(schedules, name, _in_cpu_mode(fn))
    _ENABLED = True
    return True


def device_scope():
    """Context for third-party code that allocates on ``"cuda"`` literally (CPU only)."""
    return CudaToCpuMode() if _ENABLED else contextlib.nullcontext()
