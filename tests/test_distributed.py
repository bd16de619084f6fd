"""A checkpoint converted at TP=1/PP=1 loads at TP=2 and PP=2 under torchrun (gloo on CPU)."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO

pytestmark = pytest.mark.torchrun


def torchrun_verify(nemo, hf, tp, pp, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(tp * pp),
           "-m", "minitron.cli", "verify", "--nemo", str(nemo), "--hf", str(hf), "--tp", str(tp), "--pp", str(pp),
           "--logits-out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(out)["logits"]


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_parallel_layouts_give_the_same_logits(tiny_nemo, tiny_hf, tp, pp, tmp_path):
    reference = torchrun_verify(tiny_nemo, tiny_hf, 1, 1, tmp_path / "tp1.safetensors")
    logits = torchrun_verify(tiny_nemo, tiny_hf, tp, pp, tmp_path / "par.safetensors")
    assert logits.shape == reference.shape
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)


def test_indivisible_layout_fails_fast_on_every_rank(tiny_nemo, tiny_hf):
    # 4 layers cannot be split over 3 pipeline stages: every rank must exit, none may hang.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
           "-m", "minitron.cli", "verify", "--nemo", str(tiny_nemo), "--hf", str(tiny_hf), "--pp", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode != 0
    assert "num_layers=4 is not divisible by pipeline_parallel=3" in proc.stderr
