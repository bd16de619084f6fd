"""Closed-form repair after pruning (minitron/pruning/repair.py) on tiny Llamas, against the teacher's own outputs."""

import pytest
import torch
from safetensors.torch import save_file
from torch.testing import assert_close

from conftest import tokens, write_tiny_llama
from minitron import config
from minitron.conversion.convert import hf_to_nemo, load_megatron_from_nemo
from minitron.errors import MinitronError
from minitron.pruning.config import PruneConfig, StudentConfig
from minitron.pruning.prune import PruneJob, run_job
from minitron.pruning.repair import repair
from minitron.runtime import distributed
from minitron.runtime.inference import forward_logits

HEAD_DIM, GROUPS = 24, 4


def duplicated_teacher(path):
    """A tiny Llama whose odd query heads copy their group's even head and whose upper half of MLP neurons copy
    the lower half (same gate and up rows; own output columns): dropping the copies loses nothing a re-fitted
    output projection cannot put back exactly."""
    from transformers import LlamaForCausalLM

    hf = write_tiny_llama(path, num_hidden_layers=3)
    model = LlamaForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            q = layer.self_attn.q_proj.weight.view(GROUPS, 2, HEAD_DIM, -1)
            q[:, 1] = q[:, 0]
            for w in (layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight):
                w[48:] = w[:48]
    model.save_pretrained(hf)
    return model


def sliced_student(teacher, path):
    """What pruning keeps: the even heads and the lower half of the neurons, weights copied unchanged."""
    from transformers import LlamaForCausalLM

    cfg = teacher.config.to_dict() | {"num_attention_heads": GROUPS, "intermediate_size": 48}
    student = LlamaForCausalLM(type(teacher.config).from_dict(cfg)).eval()
    state = {}
    for name, w in teacher.state_dict().items():
        if name.endswith("q_proj.weight"):
            w = w.view(GROUPS, 2, HEAD_DIM, -1)[:, 0].reshape(-1, w.shape[-1])
        elif name.endswith("o_proj.weight"):
            w = w.view(w.shape[0], GROUPS, 2, HEAD_DIM)[:, :, 0].reshape(w.shape[0], -1)
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            w = w[:48]
        elif name.endswith("down_proj.weight"):
            w = w[:, :48]
        state[name] = w.clone()
    student.load_state_dict(state)
    student.save_pretrained(path)
    (path / "tokenizer.json").write_bytes((teacher_path(path) / "tokenizer.json").read_bytes())
    return path


def teacher_path(student_path):
    return student_path.parent / "teacher"


@pytest.fixture(scope="module")
def duplicated(tmp_path_factory):
    root = tmp_path_factory.mktemp("duplicated")
    teacher = duplicated_teacher(root / "teacher")
    sliced_student(teacher, root / "student")
    for name in ("teacher", "student"):
        hf_to_nemo(root / name, root / f"{name}-nemo")
    return root


def load(nemo_dir):
    distributed.initialize(1, 1)
    model, _ = load_megatron_from_nemo(nemo_dir)
    return model.eval()


def calibration(batches=8, seed=3):
    return [tokens(n=33, batch=8, seed=seed + i) for i in range(batches)]


def test_dropped_duplicate_heads_and_neurons_are_repaired_exactly(duplicated):
    teacher, student = load(duplicated / "teacher-nemo"), load(duplicated / "student-nemo")
    held_out = tokens(n=40, batch=4, seed=99)[:, :-1]
    want = forward_logits(teacher, held_out)
    assert (forward_logits(student, held_out) - want).abs().max() > 1e-2  # pruning alone loses the copies' output
    report = repair(student, teacher, calibration(), ridge=1e-9)
    assert_close(forward_logits(student, held_out), want, atol=2e-4, rtol=1e-4)
    summary = report.summary()
    assert summary["calibration_error_before"] > 1e-2 and summary["calibration_error_after"] < 1e-5
    # the readers of unchanged inputs were exact already and are left alone
    assert all(not r["taken"] for r in report.layers if "linear_qkv" in r["layer"] or "linear_fc1" in r["layer"])


def prune_job(teacher_nemo, out, token_file, repair_mode="least_squares", **student):
    cfg = PruneConfig(hidden_size_divisor=16, ffn_hidden_size_divisor=16, calibration_batch_size=8,
                      calibration_samples=32, repair=repair_mode, repair_ridge=1e-3)
    return PruneJob(teacher=str(teacher_nemo), output=str(out / "nemo"), scores=str(out / "scores"),
                    tokens=str(token_file), student=StudentConfig(name="s", **student), prune=cfg,
                    unrepaired=str(out / "unrepaired") if repair_mode != "none" else "")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokens.safetensors"
    save_file({"calibration": tokens(n=33, batch=32, seed=3), "validation": tokens(n=33, batch=8, seed=4)}, str(path))
    return path


@pytest.mark.parametrize("student", [dict(hidden_size=48, ffn_hidden_size=64, num_attention_heads=4),
                                     dict(num_layers=2), dict(hidden_size=48, num_layers=3)],
                         ids=["width", "depth", "width+depth"])
def test_repair_never_increases_calibration_error(student, tiny_nemo, token_file, tmp_path):
    result = run_job(prune_job(tiny_nemo, tmp_path, token_file, **student))
    fits = result["repair"]["layers"]
    assert fits and all(f["error_after"] <= f["error_before"] for f in fits)
    assert any(f["taken"] for f in fits) and any(f["error_after"] < 0.99 * f["error_before"] for f in fits)
    assert result["repair"]["calibration_error_after"] < result["repair"]["calibration_error_before"]
    # same shapes as Model Optimizer's slice: the repaired student loads as the unrepaired one does
    repaired, unrepaired = load(tmp_path / "nemo"), load(tmp_path / "unrepaired")
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items() if torch.is_tensor(v)}  # noqa: E731
    assert shapes(repaired) == shapes(unrepaired)
    changed = [k for k, v in repaired.state_dict().items() if torch.is_tensor(v) and k.endswith("weight")
               and not torch.equal(v, unrepaired.state_dict()[k])]
    assert changed and all("embedding" not in k and "output_layer" not in k for k in changed)


def test_repair_none_leaves_model_optimizers_slice(tiny_nemo, token_file, tmp_path):
    result = run_job(prune_job(tiny_nemo, tmp_path, token_file, repair_mode="none", num_layers=2))
    assert result["repair"] is None
    assert result["validation_loss"] == result["unrepaired_validation_loss"]
    assert not (tmp_path / "unrepaired").exists()


def test_a_student_of_another_teacher_is_refused(duplicated, tiny_nemo):
    with pytest.raises(MinitronError, match="not a slice of the teacher") as err:
        repair(load(duplicated / "student-nemo"), load(tiny_nemo), calibration(), ridge=1e-3)
    assert "\n" not in str(err.value)


def test_too_little_calibration_names_the_minimum(duplicated):
    # widest re-fitted layer: 4 heads x 24 = 96 inputs; one batch of 2 rows x 32 tokens is too few
    with pytest.raises(MinitronError, match=r"repair_samples >= 3\b") as err:
        repair(load(duplicated / "student-nemo"), load(duplicated / "teacher-nemo"), [tokens(n=33, batch=2, seed=3)],
               ridge=1e-3)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("ridge", [0.0, -1e-3])
def test_non_positive_ridge_is_refused(ridge, duplicated):
    with pytest.raises(MinitronError, match="repair_ridge"):
        repair(load(duplicated / "student-nemo"), load(duplicated / "teacher-nemo"), calibration(), ridge=ridge)
    with pytest.raises(MinitronError, match=f"prune.repair_ridge={ridge} must be > 0"):
        config.build(PruneConfig, {"repair_ridge": ridge}, "prune")


def test_repair_samples_must_be_positive():
    with pytest.raises(MinitronError, match="prune.repair_samples=0 must be >= 1"):
        config.build(PruneConfig, {"repair_samples": 0}, "prune")


def test_unknown_repair_method_lists_the_allowed_ones():
    with pytest.raises(MinitronError) as err:
        config.build(PruneConfig, {"repair": "svd"}, "prune")
    message = str(err.value)
    assert "\n" not in message and "least_squares" in message and "none" in message and "svd" in message
