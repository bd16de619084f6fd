import pytest

from conftest import tiny_llama_config
from minitron.errors import MinitronError
from minitron.runtime.llama import LlamaArch


def test_llama31_config_fields_are_read():
    arch = LlamaArch.from_hf_config(tiny_llama_config().to_dict())
    assert (arch.num_attention_heads, arch.num_query_groups, arch.head_dim) == (8, 4, 24)
    assert arch.rope_scaling_factor == 8.0 and arch.rope_theta == 500000.0
    assert not arch.tie_word_embeddings


def test_legacy_rope_scaling_keys_are_understood():
    # Llama-3.1-8B's config.json on the hub (transformers 4 style).
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
           "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
           "rope_theta": 500000.0, "max_position_embeddings": 131072, "tie_word_embeddings": False,
           "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    arch = LlamaArch.from_hf_config(cfg)
    assert arch.head_dim == 128 and arch.rope_theta == 500000.0 and arch.rope_scaling_factor == 8.0
    assert arch.num_parameters() == 8_030_261_248  # Llama-3.1-8B's published count
    assert arch.to_hf_config(cfg) == cfg  # unchanged shape: the original config comes back as is


def test_pruned_shape_keeps_head_dim_explicit():
    base = tiny_llama_config().to_dict()
    arch = LlamaArch.from_hf_config(base)
    pruned = LlamaArch(**{**arch.to_dict(), "hidden_size": 48, "ffn_hidden_size": 64, "num_layers": 2})
    cfg = pruned.to_hf_config(base)
    assert cfg["hidden_size"] == 48 and cfg["head_dim"] == 24 and cfg["num_hidden_layers"] == 2
    assert cfg["bos_token_id"] == base["bos_token_id"]
    assert LlamaArch.from_hf_config(cfg) == pruned


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mistral"}, "not a Llama model"),
    ({"architectures": ["GPT2LMHeadModel"]}, "not a Llama model"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_key_value_heads": 3}, "not a multiple"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0,
                          "rope_theta": 1e4}}, "low_freq_factor"),
])
def test_unsupported_configs_are_rejected(change, message):
    cfg = {**tiny_llama_config().to_dict(), **change}
    with pytest.raises(MinitronError, match=message):
        LlamaArch.from_hf_config(cfg, "x/config.json")


def test_missing_field_is_named():
    cfg = tiny_llama_config().to_dict()
    del cfg["intermediate_size"]
    with pytest.raises(MinitronError, match="missing field 'intermediate_size'"):
        LlamaArch.from_hf_config(cfg)
