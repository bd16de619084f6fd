"""GGUF export (deploy/gguf_export.py) run in a real llama.cpp (xllamacpp) against transformers on the same ids."""

import json

import pytest

from conftest import write_tiny_llama
from minitron.deploy import gguf_export
from minitron.deploy.gguf_export import export_gguf
from minitron.errors import MinitronError

xllamacpp = pytest.importorskip("xllamacpp", reason="llama.cpp check needs xllamacpp (make setup installs it)")
from minitron.deploy.runtime_check import compare_gguf  # noqa: E402

PROMPT = list(range(3, 40))
# Max |Δ log-prob| against transformers' fp32: F32 differs by kernel summation order only (measured ~5e-7 on
# these models); the others by their weight rounding: F16 keeps 11 significant bits (measured ~3e-4),
# BF16 8 (~3e-3), Q8_0 8-bit integers per 32-value block (~9e-3). Each bound is ~10x what was measured.
TOLERANCE = {"f32": 1e-4, "f16": 5e-3, "bf16": 3e-2, "q8_0": 1e-1}

SHAPES = {
    # Llama 3.1-shaped: untied, llama3 RoPE scaling (rope_freqs), GQA 8/4, head_dim 24 != hidden 64 / 8 heads
    "llama3.1-untied": dict(),
    # SmolLM2-shaped: tied embeddings, plain RoPE, GQA 8/2, head_dim 16
    "tied-plain-rope": dict(tied=True, rope_scaling=None, rope_theta=10000.0, num_key_value_heads=2, head_dim=16),
}
# Llama 3.1's RoPE scaling divides only frequencies whose wavelength exceeds 2,048 positions: it shows far
# into a sequence, so the planted-bug test reads there
LONG_PROMPT = [3 + (7 * i) % 250 for i in range(1200)]


@pytest.fixture(scope="module", params=list(SHAPES))
def tiny(request, tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp(request.param) / "hf", **SHAPES[request.param])


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_llama_cpp_matches_transformers(tiny, dtype, tmp_path):
    summary = export_gguf(tiny, tmp_path / "model.gguf", dtype)
    result = compare_gguf(tmp_path / "model.gguf", tiny, PROMPT, new_tokens=12)
    assert result["max_abs_dlogprob_generated"] < TOLERANCE[dtype]
    assert result["max_abs_dlogprob_prompt"] < TOLERANCE[dtype]
    if dtype == "f32":  # rounded weights may flip a near-tie of a random model; fp32 must not
        assert result["greedy_match"] and result["argmax_agree"] == result["positions"]
    config = json.loads((tiny / "config.json").read_text())
    assert summary["tied_embeddings"] == config["tie_word_embeddings"]
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    assert summary["rope_freqs"] == (rope.get("rope_type") == "llama3")


def read_fields(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}, \
        [t.name for t in reader.tensors]


def test_metadata_is_what_llama_cpp_reads(tmp_path):
    hf = write_tiny_llama(tmp_path / "hf")
    export_gguf(hf, tmp_path / "m.gguf", "f32")
    fields, tensors = read_fields(tmp_path / "m.gguf")
    assert fields["general.architecture"] == "llama"
    assert fields["llama.attention.key_length"] == fields["llama.attention.value_length"] == 24  # head_dim
    assert fields["llama.rope.dimension_count"] == 24 and fields["llama.embedding_length"] == 64
    assert fields["llama.attention.head_count"] == 8 and fields["llama.attention.head_count_kv"] == 4
    assert "rope_freqs.weight" in tensors and "output.weight" in tensors
    tied = write_tiny_llama(tmp_path / "tied", **SHAPES["tied-plain-rope"])
    export_gguf(tied, tmp_path / "t.gguf", "f32")
    _, tensors = read_fields(tmp_path / "t.gguf")
    assert "output.weight" not in tensors and "rope_freqs.weight" not in tensors


@pytest.mark.parametrize("plant", ["no q/k interleave", "no llama3 rope factors", "key_length = hidden/heads"])
def test_a_planted_mismatch_fails_the_check(plant, tmp_path, monkeypatch):
    """The comparison is not blind: each classic converter bug is caught, by llama.cpp refusing the file or by
    log-probabilities outside the F32 tolerance (random tiny models attend almost uniformly, so a RoPE error
    moves them less than it moves a trained model)."""
    hf = write_tiny_llama(tmp_path / "hf")  # head_dim 24, hidden 64 / 8 heads = 8
    if plant == "no q/k interleave":
        monkeypatch.setattr(gguf_export, "rope_interleave", lambda w, heads: w)
    elif plant == "no llama3 rope factors":
        monkeypatch.setattr(gguf_export, "llama3_rope_factors",
                            lambda arch, rope: gguf_export.np.ones(arch.head_dim // 2, dtype=gguf_export.np.float32))
    else:  # the pruned-model bug: head_dim taken as hidden/heads
        original = gguf_export._hyperparameters

        def wrong(writer, arch, name, dtype):
            original(writer, arch, name, dtype)
            for key in ("llama.attention.key_length", "llama.attention.value_length", "llama.rope.dimension_count"):
                writer.kv_data[0][key].value = arch.hidden_size // arch.num_attention_heads
        monkeypatch.setattr(gguf_export, "_hyperparameters", wrong)
    export_gguf(hf, tmp_path / "bad.gguf", "f32")
    try:
        result = compare_gguf(tmp_path / "bad.gguf", hf, LONG_PROMPT, new_tokens=4, prompt_positions=2)
    except RuntimeError as e:  # xllamacpp: the model failed to load
        assert "Failed to init server" in str(e)
        return
    assert result["max_abs_dlogprob_generated"] > TOLERANCE["f32"]  # the F32 check above would fail


def test_bad_requests_are_one_line_and_write_nothing(tiny_hf, tmp_path):
    with pytest.raises(MinitronError, match="supports f32, f16, bf16, q8_0"):
        export_gguf(tiny_hf, tmp_path / "m.gguf", "q4_k")
    with pytest.raises(MinitronError, match="ending in .gguf"):
        export_gguf(tiny_hf, tmp_path / "model", "f32")
    (tmp_path / "exists.gguf").write_bytes(b"keep me")
    with pytest.raises(MinitronError, match="pass --overwrite"):
        export_gguf(tiny_hf, tmp_path / "exists.gguf", "f32")
    assert (tmp_path / "exists.gguf").read_bytes() == b"keep me"
    config = json.loads((tiny_hf / "config.json").read_text())
    other = tmp_path / "mistral"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "model_type": "mistral",
                                                   "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(MinitronError, match="is not a Llama model") as err:
        export_gguf(other, tmp_path / "m.gguf", "f32")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.gguf", "mistral"]


def test_a_failed_write_leaves_no_file(tiny_hf, tmp_path, monkeypatch):
    def broken(*args):
        raise OSError("disk full")
    monkeypatch.setattr(gguf_export, "_add", broken)
    with pytest.raises(OSError):
        export_gguf(tiny_hf, tmp_path / "m.gguf", "f32")
    assert list(tmp_path.iterdir()) == []


def width_sliced_smollm2(smollm2_hf, out):
    """A width-student shape with query heads cut (hidden 384, 6 query heads x 64 in 3 KV groups, FFN 1024) by index
    from the real SmolLM2 weights: tied embeddings and the real BPE tokenizer with its merges and chat
    template (the tiny models above cover head_dim != hidden/heads and llama3 RoPE)."""
    import shutil

    from safetensors.torch import load_file, save_file

    cfg = json.loads((smollm2_hf / "config.json").read_text())
    hidden, heads, ffn, d = 384, 6, 1024, cfg["head_dim"]
    q_rows = [g * 3 * d + i for g in range(3) for i in range(2 * d)]  # the first 2 of 3 query heads per group
    cut = {"q_proj.weight": lambda w: w[q_rows], "o_proj.weight": lambda w: w[:, q_rows],
           "gate_proj.weight": lambda w: w[:ffn], "up_proj.weight": lambda w: w[:ffn],
           "down_proj.weight": lambda w: w[:, :ffn]}
    state = {}
    for f in smollm2_hf.glob("*.safetensors"):
        for name, w in load_file(str(f)).items():
            w = next((fn(w) for suffix, fn in cut.items() if name.endswith(suffix)), w)
            w = w[..., :hidden] if w.shape[-1] == cfg["hidden_size"] else w  # columns reading the hidden state
            if w.ndim == 2 and w.shape[0] == cfg["hidden_size"]:  # rows writing it (o_proj, down_proj)
                w = w[:hidden]
            state[name] = w.contiguous()
    out.mkdir()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps({**cfg, "hidden_size": hidden, "num_attention_heads": heads,
                                                 "intermediate_size": ffn}))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (smollm2_hf / name).is_file():
            shutil.copy(smollm2_hf / name, out / name)
    return out


@pytest.mark.smollm2
def test_a_pruned_smollm2_shape_runs_in_llama_cpp(smollm2_hf, tmp_path):
    from transformers import AutoTokenizer

    from minitron.conversion.sample_text import SAMPLE_TEXT

    hf = width_sliced_smollm2(smollm2_hf, tmp_path / "width")
    summary = export_gguf(hf, tmp_path / "width.gguf", "f32")
    assert summary["tokenizer_pre"] == "gpt-2" and summary["tied_embeddings"]
    prompt = AutoTokenizer.from_pretrained(hf)(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    result = compare_gguf(tmp_path / "width.gguf", hf, prompt, new_tokens=8)
    # 30 real layers: fp32 summation order moves log-probs by up to ~3e-4 (the distilled demo students measure
    # 2.2-2.7e-4; the project's own Megatron-vs-transformers check allows 2e-4 on logits)
    assert result["greedy_match"] and result["max_abs_dlogprob_generated"] < 1e-3
    import gguf

    fields = gguf.GGUFReader(str(tmp_path / "width.gguf")).fields
    assert fields["tokenizer.chat_template"].contents().startswith("{% for message in messages %}")
    assert len(fields["tokenizer.ggml.merges"].contents()) > 40000
