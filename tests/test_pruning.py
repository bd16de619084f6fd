"""Minitron pruning on tiny random Llamas: shapes, exact export, score reuse, baselines, depth methods."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch.testing import assert_close

from conftest import REPO, stage_summary, tokens, write_tiny_llama
from minitron.conversion.convert import load_megatron_from_nemo, nemo_to_hf
from minitron.conversion.verify import hf_logits
from minitron import config
from minitron.errors import MinitronError
from minitron.pruning import importance as imp
from minitron.pruning.config import PruneConfig, StudentConfig
from minitron.pruning.prune import PruneJob, check_target, run_job
from minitron.runtime import distributed
from minitron.runtime.inference import lm_loss
from minitron.runtime.llama import LlamaArch

# Model Optimizer's own slice: repair (tests/test_repair.py) is off unless a test turns it on
CFG = PruneConfig(hidden_size_divisor=16, ffn_hidden_size_divisor=16, calibration_batch_size=4, repair="none")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokens.safetensors"
    save_file({"calibration": tokens(n=33, batch=8, seed=3), "validation": tokens(n=33, batch=4, seed=4)}, str(path))
    return path


def job(teacher, out, scores, token_file, cfg=CFG, **student):
    return PruneJob(teacher=str(teacher), output=str(out), scores=str(scores), tokens=str(token_file),
                    student=StudentConfig(name="s", **student), prune=cfg)



def reload_loss(nemo_dir, token_file):
    from safetensors.torch import load_file

    distributed.initialize(1, 1)
    model, arch = load_megatron_from_nemo(nemo_dir)
    val = load_file(str(token_file))["validation"]
    return lm_loss(model.eval(), [val[i:i + 4] for i in range(0, len(val), 4)]), arch


def test_width_student_is_exported_exactly(tiny_nemo, token_file, tmp_path):
    result = run_job(job(tiny_nemo, tmp_path / "nemo", tmp_path / "scores", token_file,
                         hidden_size=48, ffn_hidden_size=64, num_attention_heads=4))
    assert (result["arch"]["hidden_size"], result["arch"]["ffn_hidden_size"]) == (48, 64)
    assert (result["arch"]["num_attention_heads"], result["arch"]["num_query_groups"]) == (4, 4)
    assert result["arch"]["head_dim"] == 24  # head_dim survives hidden-size pruning
    loss, arch = reload_loss(tmp_path / "nemo", token_file)
    assert loss == pytest.approx(result["validation_loss"], abs=1e-6)  # what was saved is what was pruned
    assert result["parameters"] == arch.num_parameters() < result["teacher_parameters"]
    nemo_to_hf(tmp_path / "nemo", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf/config.json").read_text())
    assert (cfg["hidden_size"], cfg["head_dim"], cfg["num_key_value_heads"]) == (48, 24, 4)
    distributed.initialize(1, 1)
    model, _ = load_megatron_from_nemo(tmp_path / "nemo")
    tok = tokens()
    from minitron.runtime.inference import forward_logits

    assert_close(hf_logits(tmp_path / "hf", tok), forward_logits(model.eval(), tok), atol=1e-4, rtol=0)


def test_scores_are_reused_without_a_forward_pass(tiny_nemo, token_file, tmp_path):
    run_job(job(tiny_nemo, tmp_path / "a", tmp_path / "scores", token_file, num_layers=3))
    saved = (tmp_path / "scores/scores.json").read_text()
    # Token ids beyond the vocabulary would crash any calibration forward pass.
    bad = tmp_path / "bad.safetensors"
    save_file({"calibration": torch.full((8, 33), 10_000), "validation": tokens(n=33, batch=4, seed=4)}, str(bad))
    result = run_job(job(tiny_nemo, tmp_path / "b", tmp_path / "scores", bad, hidden_size=32))
    assert (tmp_path / "scores/scores.json").read_text() == saved
    assert result["arch"]["hidden_size"] == 32


def test_importance_scores_roundtrip(tiny_nemo, token_file, tmp_path):
    run_job(job(tiny_nemo, tmp_path / "a", tmp_path / "scores", token_file, num_layers=3))
    scores = imp.ImportanceScores.load(tmp_path / "scores")
    scores.save(tmp_path / "again")
    again = imp.ImportanceScores.load(tmp_path / "again")
    assert again.layer_scores == scores.layer_scores and len(scores.layer_scores) == 4
    for name, value in scores.activations_per_rank[0].items():
        other = again.activations_per_rank[0][name]
        if isinstance(value, dict):
            assert all(torch.equal(a, b) for a, b in zip(value.values(), other.values()))
        else:
            assert torch.equal(value, other)


def test_magnitude_keeps_the_largest_embedding_channels(tiny_nemo, token_file, tmp_path):
    run_job(job(tiny_nemo, tmp_path / "nemo", tmp_path / "scores", token_file, hidden_size=32,
                importance="magnitude"))
    distributed.initialize(1, 1)
    teacher, _ = load_megatron_from_nemo(tiny_nemo)
    student, _ = load_megatron_from_nemo(tmp_path / "nemo")
    emb = teacher.embedding.word_embeddings.weight.detach()
    top = set(emb.norm(dim=0).topk(32).indices.tolist())
    kept = student.embedding.word_embeddings.weight.detach()
    matched = {j for j in range(emb.shape[1]) for k in range(kept.shape[1]) if torch.equal(emb[:, j], kept[:, k])}
    assert matched == top


def test_random_baseline_depends_on_seed(tiny_nemo, token_file, tmp_path):
    def kept_columns(seed, folder):
        run_job(job(tiny_nemo, folder, tmp_path / "scores", token_file, dataclasses.replace(CFG, seed=seed),
                    hidden_size=32, importance="random"))
        model, _ = load_megatron_from_nemo(folder)
        return model.embedding.word_embeddings.weight.detach()

    a, b, a2 = kept_columns(1, tmp_path / "r1"), kept_columns(2, tmp_path / "r2"), kept_columns(1, tmp_path / "r3")
    assert torch.equal(a, a2) and not torch.equal(a, b)


@pytest.mark.parametrize("method", ["tail", "contiguous", "lm_loss", "importance"])
def test_depth_methods_drop_the_layers_they_promise(method, tiny_nemo, token_file, tmp_path):
    result = run_job(job(tiny_nemo, tmp_path / "nemo", tmp_path / "scores", token_file, num_layers=2,
                         depth_method=method))
    dropped = result["layers_dropped"]
    assert len(dropped) == 2 and result["arch"]["num_layers"] == 2
    scores = {int(k): v for k, v in result["layer_scores"].items()}
    if method == "tail":
        assert dropped == [3, 4]
    elif method == "contiguous":
        assert dropped == [dropped[0], dropped[0] + 1] and 1 not in dropped and 4 not in dropped
    elif method == "lm_loss":
        losses = {int(k): v for k, v in result["loss_without_layer"].items()}
        assert dropped == sorted(sorted(losses, key=losses.get)[:2])
    else:
        assert dropped == sorted(sorted(scores, key=scores.get)[:2])


def test_parameter_budget_search_respects_the_budget(tiny_nemo, token_file, tmp_path):
    result = run_job(job(tiny_nemo, tmp_path / "nemo", tmp_path / "scores", token_file, params=0.8))
    assert result["parameters"] <= 0.8 * result["teacher_parameters"]
    assert result["parameters"] > 0.5 * result["teacher_parameters"]


@pytest.mark.parametrize("student, tp, pp, message", [
    (dict(hidden_size=128), 1, 1, "larger than the teacher"),
    (dict(hidden_size=40), 1, 1, "not on the search grid"),
    (dict(num_attention_heads=6), 1, 1, "not a multiple of the 4 KV groups"),
    (dict(hidden_size=52), 1, 1, "hidden_size=52 is not a multiple of num_attention_heads=8, which transformers'"),
    (dict(num_layers=2), 2, 1, "tensor_parallel=1"),
    (dict(num_layers=2, depth_method="lm_loss"), 1, 2, "lm_loss needs pipeline_parallel=1"),
    (dict(drop_layers=[3, 5]), 1, 1, "drop_layers [5] out of range: the teacher has layers 1..4"),
    (dict(drop_layers=[3, 4], num_layers=3), 1, 1, "num_layers=3 but drop_layers leaves 2 of 4"),
])
def test_impossible_targets_are_refused_up_front(tiny_hf, student, tp, pp, message):
    arch = LlamaArch.from_hf_dir(tiny_hf)
    problems = check_target(StudentConfig(name="x", **student), arch, CFG, tp, pp)
    assert any(message in p for p in problems), problems


def test_drop_layers_reproduces_the_4b_depth_choice(tmp_path, token_file):
    """Llama-3.1-Minitron-4B-Depth drops layers 16..31 of 32 (1-indexed, as NeMo's tutorial and Model
    Optimizer number them): layers 1-15 and 32 remain, in order, with their weights unchanged."""
    from minitron.conversion.convert import hf_to_nemo

    teacher_hf = write_tiny_llama(tmp_path / "hf32", num_hidden_layers=32, hidden_size=32, intermediate_size=48,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    hf_to_nemo(teacher_hf, tmp_path / "nemo32")
    dropped = list(range(16, 32))
    result = run_job(job(tmp_path / "nemo32", tmp_path / "student", tmp_path / "scores", token_file,
                         drop_layers=dropped))
    assert result["arch"]["num_layers"] == 16 and result["layers_dropped"] == dropped
    assert result["layers_kept"] == [*range(1, 16), 32]
    nemo_to_hf(tmp_path / "student", tmp_path / "student_hf")
    from safetensors.torch import load_file

    teacher = {k: v for f in teacher_hf.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    student = {k: v for f in (tmp_path / "student_hf").glob("*.safetensors") for k, v in load_file(str(f)).items()}
    for new, old in enumerate([*range(1, 16), 32]):  # HF layers are 0-indexed
        for name in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(student[f"model.layers.{new}.{name}"], teacher[f"model.layers.{old - 1}.{name}"])


@pytest.mark.parametrize("student, message", [
    (dict(drop_layers=[2, 2, 3]), "drop_layers lists [2] more than once"),
    (dict(drop_layers=[0, 1]), "1-indexed"),
    (dict(drop_layers=[3], depth_method="tail"), "leave out depth_method='tail'"),
])
def test_bad_drop_layers_are_one_line_errors(student, message):
    with pytest.raises(MinitronError) as e:
        config.build(StudentConfig, {"name": "x", **student})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_student_config_validation():
    from minitron import config

    with pytest.raises(MinitronError, match="either params or a target shape"):
        config.build(StudentConfig, {"name": "x", "params": 0.5, "num_layers": 3})
    with pytest.raises(MinitronError, match="give a target shape"):
        config.build(StudentConfig, {"name": "x"})


@pytest.mark.torchrun
def test_pipeline_parallel_pruning(tiny_nemo, token_file, tmp_path):
    repaired = dataclasses.replace(CFG, repair="least_squares")
    j = job(tiny_nemo, tmp_path / "nemo", tmp_path / "scores", token_file, repaired, hidden_size=48, num_layers=3)
    j.pipeline_parallel, j.result = 2, str(tmp_path / "result.json")
    config.save(j, tmp_path / "job.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "minitron.pruning.prune", str(tmp_path / "job.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["calibration"]["pipeline_parallel"] == 2 and len(result["layer_scores"]) == 4
    loss, arch = reload_loss(tmp_path / "nemo", token_file)  # saved at PP=2, loaded at PP=1
    assert (arch.hidden_size, arch.num_layers) == (48, 3)
    assert loss == pytest.approx(result["validation_loss"], abs=1e-5)
    # repair (on by default) runs stage by stage, passing both residual streams on: same fits as at PP=1
    single = run_job(job(tiny_nemo, tmp_path / "pp1", tmp_path / "scores1", token_file, repaired, hidden_size=48,
                         num_layers=3))
    assert [f["layer"] for f in result["repair"]["layers"]] == [f["layer"] for f in single["repair"]["layers"]]
    assert result["repair"]["calibration_error_after"] == pytest.approx(single["repair"]["calibration_error_after"],
                                                                         rel=1e-3)
    assert result["validation_loss"] == pytest.approx(single["validation_loss"], abs=1e-4)


def write_recipe(tmp_path, hf, students: str):
    from conftest import write_tiny_recipe

    return write_tiny_recipe(tmp_path, hf, "[import, prune]", students)


def test_prune_stage_end_to_end(tiny_hf, tmp_path):
    from conftest import run_minitron

    recipe = write_recipe(tmp_path, tiny_hf, "[{name: width, hidden_size: 48, ffn_hidden_size: 64}, "
                                             "{name: depth, num_layers: 2, depth_method: contiguous}]")
    proc = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("width", "depth"):
        stage = tmp_path / f"runs/tiny/prune-{name}"
        summary = stage_summary(stage)
        assert summary["hf_vs_megatron_max_abs_logit_diff"] <= 1e-4
        assert (stage / "hf/config.json").is_file() and (stage / "report.png").stat().st_size > 10_000
        report = json.loads((stage / "report.json").read_text())
        assert report["parameters"]["student_total"] == summary["parameters"] < report["parameters"]["teacher_total"]
    # Both students share one calibration.
    assert len(list((tmp_path / "runs/tiny/importance").iterdir())) == 1


def test_calibration_rows_are_not_where_distillation_starts(tiny_hf, tmp_path):
    """Repair fits the student to its calibration rows; distillation must not begin on them (it would see a loss
    far below the real one): calibration takes the end of the train order that training reads from the front."""
    from collections import Counter

    from safetensors.torch import load_file

    from minitron import data
    from minitron.recipe import load_recipe
    from minitron.stages.prune import write_tokens

    path = write_recipe(tmp_path, tiny_hf, "[{name: w, hidden_size: 48}]")
    recipe = load_recipe(path, [], output=str(tmp_path / "runs"))
    write_tokens(recipe, tiny_hf, tmp_path / "tokens.safetensors")
    calibration = load_file(tmp_path / "tokens.safetensors")["calibration"]
    prepared = data.prepare(recipe.data, tiny_hf)
    seq = recipe.data.seq_length
    def rows(samples):  # as a multiset: the tiny corpus repeats itself, so equal rows occur
        return Counter(row.numpy().tobytes() for row in samples)

    epoch = len(data.samples(prepared, "train", seq, seed=recipe.data.seed))
    assert len(calibration) == recipe.prune.calibration_samples < epoch // 2
    # however long distillation runs short of an epoch, its rows and the calibration rows are different samples
    first = data.samples(prepared, "train", seq, epoch - len(calibration), seed=recipe.data.seed)
    assert rows(first) + rows(calibration) == rows(data.samples(prepared, "train", seq, seed=recipe.data.seed))
    with pytest.raises(MinitronError, match=f"prune.calibration_samples={epoch + 1} is more than the {epoch} train"):
        write_tokens(load_recipe(path, [f"prune.calibration_samples={epoch + 1}"], output=str(tmp_path / "runs")),
                     tiny_hf, tmp_path / "more.safetensors")


def test_impossible_target_fails_before_any_work(tiny_hf, tmp_path):
    from conftest import run_minitron

    recipe = write_recipe(tmp_path, tiny_hf, "[{name: bad, hidden_size: 40, num_attention_heads: 6}]")
    proc = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "not on the search grid" in line and "not a multiple of the 4 KV groups" in line and "\n" not in line
    assert not (tmp_path / "runs").exists()


def test_tensor_parallel_pruning_is_refused(tiny_hf, tmp_path):
    from conftest import run_minitron

    recipe = write_recipe(tmp_path, tiny_hf, "[{name: w, hidden_size: 48}]")
    proc = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"), "parallel.tensor_parallel=2")
    assert proc.returncode == 2 and "tensor_parallel=1" in proc.stderr
    assert not (tmp_path / "runs").exists()
