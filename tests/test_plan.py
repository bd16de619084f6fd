"""`minitron plan`: the memory model's arithmetic, refusals, and the 8B recipe sized from its numbers alone."""

from __future__ import annotations

import pytest

from conftest import REPO, run_minitron
from minitron.errors import MinitronError
from minitron.plan import GPU, GPUS, Layout, activation_bytes, params_per_gpu, plan, teacher_arch, train_memory
from minitron.recipe import load_recipe
from minitron.runtime.llama import LlamaArch

WIDTH = REPO / "recipes" / "llama3.1-8b_minitron-width_dgx.yaml"
ARCH = LlamaArch(vocab_size=1000, hidden_size=64, ffn_hidden_size=96, num_layers=4, num_attention_heads=8,
                 num_query_groups=4, head_dim=24, norm_eps=1e-5, rope_theta=1e4, rope_scaling_factor=None,
                 tie_word_embeddings=False, max_position_embeddings=512)


def test_one_gpu_holds_the_whole_model_and_shards_divide_it():
    whole = Layout(tp=1, pp=1, dp=1, micro_batch=1, seq=128, recompute=False)
    assert params_per_gpu(ARCH, whole) == ARCH.num_parameters() - ARCH.hidden_size  # all but the final norm
    tp2 = Layout(tp=2, pp=1, dp=1, micro_batch=1, seq=128, recompute=False)
    assert params_per_gpu(ARCH, tp2) == params_per_gpu(ARCH, whole) / 2
    memory = train_memory(ARCH, None, whole, precision_bytes=2)
    n = params_per_gpu(ARCH, whole) / 2 ** 30
    assert memory["weights"] == pytest.approx(2 * n) and memory["gradients"] == pytest.approx(4 * n)
    assert memory["optimizer"] == pytest.approx(12 * n)  # fp32 master + two Adam moments, DP=1
    dp4 = train_memory(ARCH, ARCH, Layout(1, 1, 4, 1, 128, False), precision_bytes=2)
    assert dp4["optimizer"] == pytest.approx(3 * n) and dp4["teacher_weights"] == pytest.approx(2 * n)


def test_recompute_keeps_only_layer_inputs():
    full = activation_bytes(ARCH, Layout(1, 2, 1, 2, 128, False), in_flight=2)
    assert full == 34 * 128 * 2 * 64 * 2 * 2  # 34·s·b·h per layer, 2 layers per stage, 2 micro-batches in flight
    assert activation_bytes(ARCH, Layout(1, 2, 1, 2, 128, True), in_flight=2) == full * 2 / 34


def test_llama31_8b_distillation_on_8x8_h100():
    recipe = load_recipe(WIDTH, [])  # the recipe's own layouts: prune PP=8, training TP=8
    result = plan(recipe, teacher_arch(recipe, "llama3.1-8b"), 8, 8, GPUS["h100-80gb"], 0.4, False)
    assert not result["problems"]
    distill = result["stages"]["distill-width"]
    assert distill["layout"] == {"tp": 8, "pp": 1, "dp": 8, "micro_batch": 1, "seq": 8192, "recompute": False}
    assert distill["tokens"] == 10000 * 1152 * 8192  # the published 94B tokens
    assert 0 < distill["total_gib"] < 80 and distill["memory_gib"]["teacher_weights"] > 0
    assert set(result["stages"]) == {"prune-width repair", "teacher_correction", "distill-width"}


def test_repair_memory_on_80gb_gpus():
    """Closed-form repair holds both models and, for every repair token, both residual streams and the teacher's
    targets, on every pipeline stage: at the 8B -> 4B-Width shape the recipe's 32 x 8192 tokens fit 80 GB GPUs at
    its PP=8; 64 x 8192 do not (measured: 84.1 GiB allocated with 8 of the 32 layers on an H200), nor does PP=1,
    and the plan names the knob."""
    teacher = teacher_arch(load_recipe(WIDTH, []), "llama3.1-8b")
    fits = plan(load_recipe(WIDTH, []), teacher, 1, 8, GPUS["h100-80gb"], 0.4, False)
    repair = fits["stages"]["prune-width repair"]
    assert not fits["problems"] and repair["tokens"] == 32 * 8192 and repair["layout"]["pp"] == 8
    gib = repair["memory_gib"]
    assert gib["teacher_weights"] < 2 * teacher.num_parameters() / 2 ** 30 / 4  # a stage holds an eighth
    assert 45 < gib["activations"] < 60 and repair["total_gib"] < 80
    for more in (["prune.repair_samples=64"], ["prune.parallel.pipeline_parallel=1"]):
        result = plan(load_recipe(WIDTH, more), teacher, 1, 8, GPUS["h100-80gb"], 0.4, False)
        assert any("prune-width repair: needs" in p and "prune.repair_samples" in p for p in result["problems"])
    h200 = plan(load_recipe(WIDTH, ["prune.parallel.pipeline_parallel=1"]), teacher, 1, 8, GPUS["h200-141gb"],
                0.4, False)
    assert not [p for p in h200["problems"] if "repair" in p]
    off = plan(load_recipe(WIDTH, ["prune.repair=none"]), teacher, 1, 8, GPUS["h100-80gb"], 0.4, False)
    assert "prune-width repair" not in off["stages"]


def test_layouts_that_cannot_run_are_refused():
    recipe = load_recipe(WIDTH, [])
    teacher = teacher_arch(recipe, "llama3.1-8b")
    with pytest.raises(MinitronError, match="12 GPUs .* not a multiple of teacher_correction's tensor_parallel x "
                                            "pipeline_parallel = 8 x 1"):
        plan(recipe, teacher, 3, 4, GPUS["h100-80gb"], 0.4, False)
    pp16 = plan(load_recipe(WIDTH, ["prune.parallel.pipeline_parallel=16"]), teacher, 2, 8, GPUS["h100-80gb"], 0.4, False)
    assert any("prune: pipeline_parallel=16 is more than the 8 GPUs of one node" in p for p in pp16["problems"])
    with pytest.raises(MinitronError, match="prune layout: .* tensor_parallel=1"):
        load_recipe(WIDTH, ["prune.parallel.tensor_parallel=2"])
    with pytest.raises(MinitronError, match="nodes=0"):
        plan(recipe, teacher, 0, 8, GPUS["h100-80gb"], 0.4, False)
    small = plan(recipe, teacher, 1, 8, GPU(memory_gib=16, bf16_tflops=989), 0.4, False)
    assert any("more than the 16 GiB there" in p for p in small["problems"])
    odd = plan(recipe, teacher, 5, 8, GPUS["h100-80gb"], 0.4, False)  # DP 5 does not divide 1152
    assert any("not divisible by micro_batch_size 1 x data_parallel 5" in p for p in odd["problems"])
    wide = plan(load_recipe(WIDTH, ["distill.parallel.tensor_parallel=16"]), teacher, 2, 8,
                GPUS["h100-80gb"], 0.4, False)
    assert any("spans nodes" in p for p in wide["problems"])


def test_plan_command_prints_the_table_and_refuses_in_one_line():
    ok = run_minitron("plan", "--config", str(WIDTH), "--nodes", "8", "--teacher", "llama3.1-8b")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| distill-width | 8/1/8 |" in ok.stdout
    bad = run_minitron("plan", "--config", str(WIDTH), "--nodes", "1", "--gpus-per-node", "6", "--teacher", "llama3.1-8b")
    assert bad.returncode != 0 and "not a multiple of" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    missing = run_minitron("plan", "--config", str(WIDTH), "--nodes", "1")
    assert missing.returncode != 0 and "--teacher llama3.1-8b" in missing.stderr


def test_side_by_side_students_are_sized_with_the_kept_teacher_logits():
    """distill.share_teacher: each student's stage also holds the other student's training state and one step's
    teacher logits (8 nodes x 8 H100, the 8B width recipe given a depth student too): 35 GiB more per GPU."""
    both = ["prune.students=[{name: width, hidden_size: 3072, ffn_hidden_size: 9216}, {name: depth, num_layers: 16}]"]
    teacher = teacher_arch(load_recipe(WIDTH, []), "llama3.1-8b")
    alone = plan(load_recipe(WIDTH, both), teacher, 8, 8, GPUS["h100-80gb"], 0.4, False)
    shared = plan(load_recipe(WIDTH, both + ["distill.share_teacher=true"]), teacher, 8, 8, GPUS["h100-80gb"], 0.4,
                  False)
    a, s = alone["stages"]["distill-width"]["memory_gib"], shared["stages"]["distill-width"]["memory_gib"]
    depth_state = sum(v for k, v in alone["stages"]["distill-depth"]["memory_gib"].items()
                      if k in ("weights", "gradients", "optimizer"))
    assert "other_students" not in a and s["other_students"] == pytest.approx(depth_state, abs=0.02)
    # 1152 sequences / DP 8 = 144 micro-batches x 8192 tokens x 128256 vocab / TP 8 x 2 bytes
    assert s["kept_teacher_logits"] == pytest.approx(144 * 8192 * 128256 / 8 * 2 / 2 ** 30, rel=1e-3)
    added = s["other_students"] + s["kept_teacher_logits"]
    assert shared["stages"]["distill-width"]["total_gib"] == pytest.approx(
        alone["stages"]["distill-width"]["total_gib"] + added, abs=0.1)
    on_40gb = plan(load_recipe(WIDTH, both + ["distill.share_teacher=true"]), teacher, 8, 8, GPU(40, 312), 0.4,
                   False)
    assert any("distill-width: needs" in p for p in on_40gb["problems"])
