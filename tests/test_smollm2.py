"""The embedded default model, SmolLM2-135M-Instruct, end to end on real text."""

import json

import pytest
import torch

from conftest import REPO, run_minitron, stage_summary
from minitron.conversion.sample_text import SAMPLE_TEXT

pytestmark = pytest.mark.smollm2


def test_gguf_import_gives_a_working_hf_checkpoint(smollm2_hf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = json.loads((smollm2_hf / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (30, 576, 1536)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (9, 3, 64)
    assert cfg["tie_word_embeddings"] and cfg["vocab_size"] == 49152 and cfg["rms_norm_eps"] == 1e-5
    assert "quantization_config" not in cfg
    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids.input_ids.shape[1]:]).startswith(" Paris")


def test_megatron_matches_transformers_on_real_text(smollm2_hf, tmp_path):
    from minitron.conversion.convert import hf_to_nemo
    from minitron.conversion.verify import megatron_vs_hf, tokenize

    hf_to_nemo(smollm2_hf, tmp_path / "nemo")
    tokens = tokenize(smollm2_hf, SAMPLE_TEXT)
    assert tokens.shape[1] > 40
    diff, logits = megatron_vs_hf(tmp_path / "nemo", smollm2_hf, tokens)
    assert diff <= 1e-4
    # The converted model still knows things: next token after "The capital of France is" is " Paris".
    prompt = tokenize(smollm2_hf, "The capital of France is")
    _, prompt_logits = megatron_vs_hf(tmp_path / "nemo", smollm2_hf, prompt)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(smollm2_hf).decode(prompt_logits[0, -1].argmax()) == " Paris"


@pytest.mark.torchrun
def test_demo_recipe_runs_and_resumes(tmp_path):
    args = ["run", "--config", str(REPO / "recipes/smollm2-135m_minitron_cpu.yaml"), "--output", str(tmp_path),
            "stages=[import, verify]", "verify.layouts=[[1, 1], [1, 2]]"]
    first = run_minitron(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = stage_summary(tmp_path / "smollm2-135m_minitron_cpu/verify")
    assert summary["roundtrip_identical"] is True
    assert [lay["pipeline_parallel"] for lay in summary["layouts"]] == [1, 2]
    assert all(lay["max_abs_logit_diff"] <= 1e-4 for lay in summary["layouts"])
    second = run_minitron(*args)
    assert second.returncode == 0
    assert "[import] done already" in second.stdout and "[verify] done already" in second.stdout
