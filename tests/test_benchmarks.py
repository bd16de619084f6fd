"""`make bench-kd-loop` compares like with like: its hand-written baseline follows Megatron's LR schedule
step for step, and its share-of-peak FLOP count is the model's own matmuls."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kd_loop", REPO / "benchmarks/bench_kd_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("warmup,steps", [(1, 8), (3, 20), (0, 5)])
def test_plain_loop_lr_is_megatrons_schedule(bench, warmup, steps):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    cfg = SimpleNamespace(lr=3e-4, min_lr=3e-5, warmup_steps=warmup, steps=steps)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    # Built as minitron.training.loop builds it; the loop steps it once after every optimizer step.
    sched = OptimizerParamScheduler(opt, init_lr=0.0, max_lr=cfg.lr, min_lr=cfg.min_lr, lr_warmup_steps=warmup,
                                    lr_decay_steps=steps, lr_decay_style="cosine", start_wd=0.0, end_wd=0.0,
                                    wd_incr_steps=steps, wd_incr_style="constant")
    for step in range(steps):
        assert bench._lr(step, cfg) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), step
        sched.step(increment=1)


def test_flops_per_token_counts_the_models_matmuls(bench):
    from transformers import LlamaConfig, LlamaForCausalLM

    from minitron.runtime.llama import LlamaArch

    config = LlamaConfig(vocab_size=1000, hidden_size=96, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    arch = LlamaArch.from_hf_config(config.to_dict())
    seq = 64
    # Causal attention: each token's QK^T and AV cover seq/2 positions on average, 2 FLOPs per multiply-add.
    attention = config.num_hidden_layers * config.num_attention_heads * 2 * (2 * (seq // 2) * config.head_dim)
    assert bench.flops_per_token(arch, seq) == 2 * linear + attention
