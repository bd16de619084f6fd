"""HF <-> NeMo conversion on tiny random Llama models: logits parity and exact round trips."""

import json

import pytest
import torch
from torch.testing import assert_close

from conftest import tokens, write_tiny_llama
from minitron.conversion.convert import hf_to_nemo, load_megatron_from_nemo, nemo_to_hf
from minitron.conversion.verify import hf_logits, tensor_differences
from minitron.runtime import distributed
from minitron.runtime.inference import forward_logits, position_ids


def megatron_logits(nemo_dir, tok):
    distributed.initialize(1, 1)
    model, _ = load_megatron_from_nemo(nemo_dir, dtype=torch.float32)
    model.eval()
    tok = tok.to(distributed.device())  # runs on the GPU too (tests/run_gpu_checks.sh)
    with torch.no_grad():
        return model(tok, position_ids(tok), None).cpu(), forward_logits(model, tok).cpu()


@pytest.mark.parametrize("fixture", ["tiny_hf", "tiny_hf_tied"])
def test_megatron_logits_match_transformers(fixture, request, tmp_path):
    hf = request.getfixturevalue(fixture)
    hf_to_nemo(hf, tmp_path / "nemo")
    tok = tokens(vocab=256)
    direct, scheduled = megatron_logits(tmp_path / "nemo", tok)
    ref = hf_logits(hf, tok)
    assert_close(direct, ref, atol=1e-4, rtol=0)
    assert_close(scheduled, direct, atol=0, rtol=0)  # the schedule path is the same computation
    assert ref.abs().max() > 0.1  # a real signal, not all zeros


def test_llama3_rope_scaling_matters(tmp_path):
    """Long positions differ between scaled and unscaled RoPE; parity must hold past 8k/factor."""
    hf = write_tiny_llama(tmp_path / "hf", num_hidden_layers=1)
    hf_to_nemo(hf, tmp_path / "nemo")
    tok = tokens(n=1200, batch=1)
    direct, _ = megatron_logits(tmp_path / "nemo", tok)
    assert_close(direct, hf_logits(hf, tok), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_roundtrip_is_bit_exact(dtype, tmp_path):
    hf = write_tiny_llama(tmp_path / "hf", dtype=dtype)
    hf_to_nemo(hf, tmp_path / "nemo")
    summary = nemo_to_hf(tmp_path / "nemo", tmp_path / "back")
    assert summary["dtype"] == str(dtype)
    assert tensor_differences(hf, tmp_path / "back") == []
    assert json.loads((hf / "config.json").read_text()) == json.loads((tmp_path / "back/config.json").read_text())
    assert (tmp_path / "back/generation_config.json").is_file()


def test_tensor_differences_sees_a_single_flipped_bit(tmp_path, tiny_hf):
    from safetensors.torch import load_file, save_file
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_hf, copy)
    state = load_file(copy / "model.safetensors")
    t = state["model.layers.2.mlp.up_proj.weight"]
    t.view(torch.int32)[0, 0] ^= 1
    save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
    assert tensor_differences(tiny_hf, copy) == ["tensor model.layers.2.mlp.up_proj.weight differs"]


def test_sharded_checkpoints_stream_both_ways(tmp_path):
    # Tiny shards put q/k/v and gate/up of one layer in different files.
    hf = write_tiny_llama(tmp_path / "hf", max_shard_size="20KB")
    assert len(list(hf.glob("*.safetensors"))) > 3
    hf_to_nemo(hf, tmp_path / "nemo")
    nemo_to_hf(tmp_path / "nemo", tmp_path / "back", max_shard_bytes=30_000)
    index = json.loads((tmp_path / "back/model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    assert tensor_differences(hf, tmp_path / "back") == []
    from transformers import AutoModelForCausalLM

    tok = tokens()
    a = AutoModelForCausalLM.from_pretrained(hf).eval()(tok).logits
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()(tok).logits
    assert torch.equal(a, b)


def test_nemo_layout(tiny_nemo):
    weights = tiny_nemo / "weights"
    assert (weights / ".metadata").is_file() and (weights / "metadata.json").is_file()
    assert json.loads((weights / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    assert list(weights.glob("*.distcp"))
    assert (tiny_nemo / "context/minitron.yaml").is_file() and (tiny_nemo / "context/nemo_tokenizer").is_dir()
    # NeMo's key names: `module.` prefix, Transformer-Engine layernorm names.
    from torch.distributed.checkpoint import FileSystemReader

    keys = set(FileSystemReader(str(weights)).read_metadata().state_dict_metadata)
    assert "module.decoder.layers.self_attention.linear_qkv.layer_norm_weight" in keys
    assert "module.decoder.layers.mlp.linear_fc1.layer_norm_weight" in keys
    assert "module.embedding.word_embeddings.weight" in keys


def test_earlier_v1_checkpoints_still_load(tiny_nemo, tmp_path):
    """Checkpoints of this repository before NeMo's own context (context/model.yaml, format v1) still load."""
    import shutil

    import yaml

    from minitron.conversion import nemo_checkpoint as nemo

    old = tmp_path / "v1"
    shutil.copytree(tiny_nemo, old)
    doc = yaml.safe_load((old / "context/minitron.yaml").read_text())
    (old / "context/minitron.yaml").unlink()
    (old / "context/model.yaml").write_text(yaml.safe_dump({**doc, "format": "minitron/nemo2-llama/v1"}))
    assert nemo.read_context(old) == nemo.read_context(tiny_nemo)
    nemo_to_hf(old, tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_pruned_shapes_export_and_load_in_transformers(tmp_path, tiny_hf):
    """A NeMo checkpoint of another shape (as pruning writes) exports with explicit head_dim."""
    from minitron.conversion import nemo_checkpoint as nemo
    from minitron.runtime.llama import LlamaArch, build_gpt_model

    base_arch = LlamaArch.from_hf_dir(tiny_hf)
    pruned = LlamaArch(**{**base_arch.to_dict(), "hidden_size": 48, "ffn_hidden_size": 64,
                          "num_attention_heads": 4, "num_query_groups": 2, "num_layers": 2})
    distributed.initialize(1, 1)
    torch.manual_seed(0)
    model = build_gpt_model(pruned, torch.float32, use_te=False).eval()
    ckpt = tmp_path / "pruned_nemo"
    nemo.write_context(ckpt, pruned, torch.float32, json.loads((tiny_hf / "config.json").read_text()), tiny_hf)
    nemo.save_weights(model, ckpt)
    nemo_to_hf(ckpt, tmp_path / "pruned_hf")
    cfg = json.loads((tmp_path / "pruned_hf/config.json").read_text())
    assert (cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_heads"]) == (48, 24, 4)
    tok = tokens()
    dev_tok = tok.to(distributed.device())
    with torch.no_grad():
        ref = model(dev_tok, position_ids(dev_tok), None).cpu()
    assert_close(hf_logits(tmp_path / "pruned_hf", tok), ref, atol=1e-4, rtol=0)


def test_content_digest_follows_the_weights_not_the_path(tiny_nemo, tmp_path):
    """Pruning scores are keyed by this digest: a teacher re-written in place must get a new key."""
    import shutil

    from minitron.conversion import nemo_checkpoint as nemo

    ckpt = tmp_path / "teacher"
    shutil.copytree(tiny_nemo, ckpt)
    before = nemo.content_digest(ckpt)
    assert before == nemo.content_digest(tiny_nemo)  # same weights elsewhere: same key
    distributed.initialize(1, 1)
    model, _ = load_megatron_from_nemo(ckpt)
    with torch.no_grad():
        model.decoder.final_layernorm.weight.add_(1e-3)  # as a tiny correction step would
    shutil.rmtree(ckpt / "weights")
    nemo.save_weights(model, ckpt)
    assert nemo.content_digest(ckpt) != before
