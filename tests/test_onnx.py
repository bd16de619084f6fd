"""ONNX Runtime export (deploy/onnx_export.py, onnxruntime-genai's builder) run in ONNX Runtime GenAI against
transformers on the same ids."""

import json
from pathlib import Path

import pytest

from conftest import write_tiny_llama
from minitron.errors import MinitronError

pytest.importorskip("onnxruntime_genai", reason="ONNX Runtime check needs onnxruntime-genai (make setup installs it)")
from minitron.deploy.onnx_export import export_onnx  # noqa: E402
from minitron.deploy.runtime_check import compare_onnx  # noqa: E402

PROMPT = list(range(3, 40))
# fp32 graph vs transformers' fp32: kernel summation order only (measured ~7e-7 on these models): 100x that.
FP32_TOLERANCE = 1e-4

SHAPES = {
    # Llama 3.1-shaped: untied, llama3 RoPE scaling (theta 500000), GQA 4/2, head_dim 32 != hidden 64 / 4 heads
    "llama3.1-untied": dict(head_dim=32, num_attention_heads=4, num_key_value_heads=2),
    # SmolLM2-shaped: tied embeddings, plain RoPE, GQA 8/2, head_dim 16 != 64 / 8
    "tied-plain-rope": dict(tied=True, rope_scaling=None, rope_theta=10000.0, num_key_value_heads=2, head_dim=16),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    hf = write_tiny_llama(root / "hf", **SHAPES[request.param])
    return hf, export_onnx(hf, root / "onnx")


def test_onnx_runtime_matches_transformers(exported):
    hf, summary = exported
    result = compare_onnx(summary["output"], hf, PROMPT, new_tokens=12)
    assert result["greedy_match"] and result["argmax_agree"] == result["positions"]
    assert result["max_abs_dlogprob_generated"] < FP32_TOLERANCE
    assert result["max_abs_dlogprob_prompt"] < FP32_TOLERANCE
    model = json.loads((Path(summary["output"]) / "genai_config.json").read_text())["model"]
    config = json.loads((hf / "config.json").read_text())
    assert model["decoder"]["head_size"] == config["head_dim"]
    assert model["decoder"]["num_key_value_heads"] == config["num_key_value_heads"]
    assert summary["files"]["model.onnx.data"] > 0 and summary["bytes"] == sum(summary["files"].values())


def test_a_rope_mismatch_fails_the_check(exported, tmp_path):
    """The comparison is not blind: the same weights with another RoPE base (a setting converters lose, e.g.
    when transformers 5 moved rope_theta under rope_parameters) fall outside the fp32 tolerance (random tiny
    models attend almost uniformly, so RoPE moves them less than a trained model)."""
    import shutil

    hf, summary = exported
    other = tmp_path / "other"
    shutil.copytree(hf, other)
    config = json.loads((other / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] *= 4
    (other / "config.json").write_text(json.dumps(config))
    result = compare_onnx(summary["output"], other, PROMPT, new_tokens=4)
    assert result["max_abs_dlogprob_prompt"] > FP32_TOLERANCE


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    odd = write_tiny_llama(tmp_path / "hd24")  # head_dim 24
    with pytest.raises(MinitronError, match="head_dim 24 is not a multiple of 16"):
        export_onnx(odd, tmp_path / "a")
    clash = write_tiny_llama(tmp_path / "clash", head_dim=32)  # q_proj: 8 heads x 32 = 256 = vocab
    with pytest.raises(MinitronError, match="q_proj has 256 outputs, the vocabulary size"):
        export_onnx(clash, tmp_path / "b")
    with pytest.raises(MinitronError, match="supports fp32, int4"):
        export_onnx(odd, tmp_path / "c", precision="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clash", "hd24"]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    ok = write_tiny_llama(tmp_path / "ok", **SHAPES["tied-plain-rope"])
    with pytest.raises(MinitronError, match="exists and is not empty; pass --overwrite"):
        export_onnx(ok, taken)
    assert (taken / "keep.txt").read_text() == "mine"
