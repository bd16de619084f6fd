"""`make bench-kd-loop` compares like with like: its hand-written baseline trains as the project's loop does
(Megatron's LR schedule, the same KD losses step for step), and its share-of-peak FLOPs are the model's matmuls."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO
from test_training import make_job, models  # noqa: F401 (the tiny teacher and student, a pytest fixture)


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


def test_plain_baseline_trains_as_the_minitron_loop(bench, models, tmp_path):
    """Same teacher, student, tokens and settings, fp32: the hand-written baseline's KD losses match the project's
    loop step for step (steps 1-2 before any update, as warmup starts at LR 0; step 3 after one AdamW step), so
    the benchmark compares two implementations of one training run."""
    from minitron import data
    from minitron.training.loop import train

    job = make_job(models, tmp_path / "minitron", steps=3, eval_interval=3, save_interval=3)
    train(job)
    minitron_losses = [json.loads(line)["kd_loss"] for line in (tmp_path / "minitron/metrics.jsonl").read_text().splitlines()]
    prepared = data.prepare(job.data, models / "student_hf")
    rows = data.samples(prepared, "train", job.data.seq_length, job.train.steps * job.train.global_batch_size,
                        seed=job.data.seed)
    plain = bench.plain_loop(models / "teacher_hf", models / "student_hf", rows, job.train, False, tmp_path / "plain")
    assert [plain["first_loss"], *plain["losses"]] == pytest.approx(minitron_losses, rel=1e-5)


def _load(name: str):
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))  # the benches import each other as scripts do
    spec = importlib.util.spec_from_file_location(name, REPO / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("steps,lr,batch", [(None, None, 2), (None, 1e-3, 32), (400, None, None), (50, 3e-3, 4)])
def test_quality_arm_config_keeps_tokens_and_schedule_shape(steps, lr, batch):
    """bench-quality's arms: another batch size alone keeps the recipe's tokens; warmup keeps its share of the
    steps; min_lr keeps its ratio to the peak; the curve gets four points."""
    from minitron.training.config import TrainConfig

    recipe = TrainConfig(steps=100, global_batch_size=8, micro_batch_size=None, lr=1e-3, min_lr=1e-4,
                         warmup_steps=10, eval_interval=25)
    cfg = _load("bench_quality").arm_config(recipe, steps, lr, batch)
    if steps is None:
        assert cfg.steps * cfg.global_batch_size == 800
    assert cfg.global_batch_size == (batch or 8) and cfg.steps == (steps or 800 // (batch or 8))
    assert cfg.warmup_steps == round(10 * cfg.steps / 100)
    assert cfg.min_lr / cfg.lr == pytest.approx(0.1) and cfg.lr == (lr or 1e-3)
    assert cfg.eval_interval == cfg.steps // 4


def test_quality_general_arm_blends_general_english_into_training_only():
    """kd-general trains on the recipe's corpus blended with embedded:fortunes; its refusal names the data."""
    from minitron.data import DataConfig

    bench = _load("bench_quality")
    data = bench.general_data(DataConfig(seq_length=256), 0.25)
    assert data.blend == [0.75, "embedded:python-docs", 0.25, "embedded:fortunes"] and data.seq_length == 256
    with pytest.raises(SystemExit, match="the recipe's data is /data/web"):
        bench.general_data(DataConfig(source="/data/web"), 0.25)


def test_kd_settings_rows_change_one_setting_each():
    """bench-kd-settings: every row but the last differs from `plain` in exactly the setting it names; random
    windows are windows of the stream at seeded offsets."""
    from minitron.training.config import TrainConfig

    bench = _load("bench_kd_settings")
    cfg = TrainConfig(steps=12, lr=3e-4, min_lr=3e-5, warmup_steps=1, weight_decay=0.1, clip_grad=1.0)
    rows, windows = ["rows"], ["windows"]
    table = bench.variants(cfg, rows, windows, bf16=True)
    changed = {name: ({f.name for f in dataclasses.fields(c) if getattr(c, f.name) != getattr(cfg, f.name)},
                       r is windows, b)
               for name, (c, r, b) in table.items()}
    assert changed == {"plain": (set(), False, True),
                       "constant LR": ({"warmup_steps", "min_lr"}, False, True),
                       "weight decay 0.01": ({"weight_decay"}, False, True),
                       "no clipping": ({"clip_grad"}, False, True),
                       "random windows": (set(), True, True),
                       "fp32": (set(), False, False),
                       "as a user writes it": ({"warmup_steps", "min_lr", "weight_decay", "clip_grad"}, True, True)}
    assert "fp32" not in bench.variants(cfg, rows, windows, bf16=False)
    stream = torch.arange(1000)
    got = bench.random_windows(stream, 5, 257, seed=3)
    assert [w.tolist() for w in got] == [w.tolist() for w in bench.random_windows(stream, 5, 257, seed=3)]
    assert all(len(w) == 257 and torch.equal(w, torch.arange(int(w[0]), int(w[0]) + 257)) for w in got)


def test_quality_reuses_a_distill_stage_only_when_it_trained_with_the_arms_config(tmp_path):
    """bench-quality's kd arm is the run's own distill stage only when that stage's summary records the very config
    the arm would train with: a `--set distill.overrides=[...]` study must not score the recipe's run as its arm."""
    from minitron import config
    from minitron.recipe import load_recipe
    from minitron.run_folder import RunFolder
    from minitron.training.config import TrainConfig

    bench = _load("bench_quality")
    folder = RunFolder(load_recipe(None, [f"output_root={tmp_path}"]))
    assert bench.trained_with(folder, "distill-width") is None  # not run
    stage = folder.stage_dir("distill-width")
    stage.mkdir(parents=True)
    (stage / "summary.json").write_text(json.dumps({"nemo": "nemo"}))
    assert bench.trained_with(folder, "distill-width") is None  # run before summaries recorded their config
    ran = TrainConfig(steps=400, lr=1e-3, min_lr=1e-4)
    (stage / "summary.json").write_text(json.dumps({"nemo": "nemo", "train": config.to_dict(ran)}))
    assert bench.trained_with(folder, "distill-width") == config.to_dict(ran)
    assert bench.trained_with(folder, "distill-width") != config.to_dict(dataclasses.replace(ran, min_lr=0.0))
