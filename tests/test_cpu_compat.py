"""The CPU compatibility layer: active only without CUDA, and Megatron's RNG semantics hold."""

import pytest
import torch

from minitron.runtime import cpu_compat, distributed

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")


def test_enabled_on_cpu_and_idempotent():
    distributed.initialize(1, 1)
    assert cpu_compat.enable() is True
    assert torch.cuda.current_device() == "cpu"


def test_cuda_literals_are_redirected_only_inside_the_scope():
    distributed.initialize(1, 1)
    with cpu_compat.device_scope():
        t = torch.zeros(3, device="cuda")
        assert t.device.type == "cpu"
        assert t.cuda() is t
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(3, device="cuda")


def test_rng_tracker_fork_is_reproducible_and_restores_state():
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    distributed.initialize(1, 1)
    model_parallel_cuda_manual_seed(123)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    with get_cuda_rng_tracker().fork():
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)  # outside the fork: untouched
    with get_cuda_rng_tracker().fork():
        b = torch.rand(4)
    assert not torch.equal(a, b)  # the forked stream advanced
    model_parallel_cuda_manual_seed(123, force_reset_rng=True)
    with get_cuda_rng_tracker().fork():
        assert torch.equal(torch.rand(4), a)  # same seed, same stream


def test_causal_mask_matches_megatron_definition():
    distributed.initialize(1, 1)
    from megatron.core.fusions import fused_softmax

    mask = fused_softmax.get_default_causal_mask(4)
    assert mask.device.type == "cpu" and mask.dtype == torch.bool
    assert torch.equal(mask, torch.ones(4, 4).triu(1).bool())
