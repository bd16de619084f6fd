"""Precision chosen from the hardware (minitron.runtime.precision) and the chunked KD loss."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from minitron import config
from minitron.errors import MinitronError
from minitron.recipe import Recipe
from minitron.runtime import precision
from minitron.training.config import TrainConfig
from minitron.training.kd_loss import chunk_tokens_for, chunked_forward_kl


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """An AVX2-only CPU, as most laptops and older cloud VMs are."""
    precision.cpu_bf16_native.cache_clear()
    precision._warn_slow_bf16.cache_clear()
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: (False, "CPU capability AVX2, no AVX512-BF16 or AMX"))
    monkeypatch.setattr(precision, "bf16_slowdown", lambda: 480.0)
    yield
    precision._warn_slow_bf16.cache_clear()


def test_auto_follows_what_this_cpu_reports():
    native, why = precision.cpu_bf16_native()
    choice = precision.resolve("auto", "cpu")
    assert choice.name == ("bf16" if native else "fp32") and choice.reason == why
    assert choice.dtype == (torch.bfloat16 if native else torch.float32)
    record = choice.to_dict()
    assert record["requested"] == "auto" and record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["openmp"] in ("intel (libiomp5)", "gnu (libgomp)")  # torch is loaded: its OpenMP is known


def test_auto_is_bf16_on_gpus():
    assert precision.resolve("auto", "cuda").name == "bf16"
    assert precision.resolve("fp32", "cuda").name == "fp32"


def test_auto_is_fp32_without_native_bf16_and_explicit_bf16_warns_with_the_slowdown(cpu_without_bf16):
    assert precision.resolve("auto", "cpu").name == "fp32"
    assert precision.resolve("float32", "cpu").name == "fp32"
    with pytest.warns(UserWarning, match=r"bf16 on this CPU is slow .*480x the fp32 time"):
        assert precision.resolve("bf16", "cpu").name == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process, not on every model load
        precision.resolve("bfloat16", "cpu")


@pytest.mark.parametrize("var, value", [("DNNL_MAX_CPU_ISA", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")])
def test_an_isa_limit_below_bf16_means_emulated_bf16(monkeypatch, var, value):
    """`make demo CPU=avx2` runs the AVX2-only path on a newer CPU: auto must then choose fp32."""
    precision.cpu_bf16_native.cache_clear()
    monkeypatch.setenv(var, value)
    try:
        native, why = precision.cpu_bf16_native()
        assert not native and f"{var}={value.upper()}" in why
    finally:
        precision.cpu_bf16_native.cache_clear()


def test_pytorch_held_to_avx2_chooses_fp32(tmp_path):
    """ATEN_CPU_CAPABILITY=avx2 (a real process, as `make demo CPU=avx2` starts it)."""
    code = ("from minitron.runtime import precision; c = precision.resolve('auto', 'cpu'); "
            "print(c.name, c.to_dict()['cpu_capability'])")
    env = {k: v for k, v in os.environ.items() if "CPU_ISA" not in k}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "ATEN_CPU_CAPABILITY": "avx2"},
                         capture_output=True, text=True, check=True)
    name, capability = out.stdout.split()
    assert name == "fp32" and capability in ("AVX2", "DEFAULT")  # DEFAULT: a CPU without AVX2
    assert "[precision] auto -> fp32" in out.stderr


def test_measured_probe_compares_bf16_with_fp32():
    ratio = precision.bf16_slowdown(n=64, repeats=1)
    assert ratio > 0 and ratio == precision.bf16_slowdown(n=64, repeats=1)  # measured once


@pytest.mark.parametrize("override, key", [("eval.dtype=half", "eval.dtype"),
                                           ("eval.lm_eval.dtype=fp16", "eval.lm_eval.dtype"),
                                           ("eval.throughput.dtype=int8", "eval.throughput.dtype")])
def test_bad_eval_dtype_is_one_line_listing_the_choices(tmp_path, override, key):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\n")
    with pytest.raises(MinitronError) as e:
        config.load(Recipe, path, [override])
    assert f"{key}=" in str(e.value) and "['auto', 'bf16', 'bfloat16', 'float32', 'fp32']" in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_training_precision_is_refused():
    with pytest.raises(MinitronError, match=r"precision='fp16' must be one of \['auto', 'bf16', 'fp32'\]"):
        config.build(TrainConfig, {"precision": "fp16"})
    with pytest.raises(MinitronError, match="auto"):
        precision.resolve("half")


def _reference_kl(student, teacher, temperature):
    """Model Optimizer's LogitsKLLoss arithmetic (TP=1): forward KL per token on fp32 log-softmaxes."""
    p = F.log_softmax(student.float() / temperature, dim=-1)
    q = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(p, q, reduction="none", log_target=True).sum(-1)


@pytest.mark.parametrize("temperature, chunk", [(1.0, 16), (2.0, 5), (1.0, 1000), (1.0, "auto"), (0.5, 1)])
def test_chunked_kl_equals_the_unchunked_loss_and_gradient(temperature, chunk):
    torch.manual_seed(0)
    student = (torch.randn(2, 37, 3001) * 4).requires_grad_()
    teacher = torch.randn(2, 37, 3001) * 4
    weights = torch.rand(2, 37)  # a non-uniform upstream gradient (loss masks, token means)
    ref = _reference_kl(student, teacher, temperature)
    (ref * weights).sum().backward()
    ref_grad, student.grad = student.grad.clone(), None
    got = chunked_forward_kl(student, teacher, temperature, chunk)
    (got * weights).sum().backward()
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=1e-5)  # fp32 rounding of 3,001-term sums
    torch.testing.assert_close(student.grad, ref_grad, rtol=1e-5, atol=1e-8)
    with torch.no_grad():  # validation: the loss alone
        torch.testing.assert_close(chunked_forward_kl(student, teacher, temperature, chunk), ref.detach(),
                                   rtol=2e-5, atol=1e-5)


def test_auto_chunks_are_sized_from_the_vocabulary_and_device():
    assert chunk_tokens_for(49152, torch.device("cpu")) == 42 and chunk_tokens_for(128256, torch.device("cpu")) == 16
    assert chunk_tokens_for(128256, torch.device("cuda")) == 523 and chunk_tokens_for(10 ** 7, torch.device("cpu")) == 1
