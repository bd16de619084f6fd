"""GPU path: NCCL process group, model on CUDA, CPU compat layer inactive. Skipped without a GPU."""

import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from conftest import REPO, tokens

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def no_tf32():
    # Exactness checks compare fp32 against fp32; TF32 matmuls would blur them.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def test_conversion_and_logits_on_gpu(tiny_hf, tmp_path):
    from minitron.conversion.convert import hf_to_nemo, load_megatron_from_nemo, nemo_to_hf
    from minitron.conversion.verify import hf_logits, tensor_differences
    from minitron.runtime import cpu_compat, distributed
    from minitron.runtime.inference import forward_logits

    hf_to_nemo(tiny_hf, tmp_path / "nemo")
    assert distributed.backend() == "nccl" and not cpu_compat._ENABLED
    assert isinstance(torch.cuda.current_device(), int)
    model, _ = load_megatron_from_nemo(tmp_path / "nemo", dtype=torch.float32)
    model.eval()
    assert next(model.parameters()).is_cuda
    tok = tokens()
    logits = forward_logits(model, tok.cuda())
    assert_close(logits.float().cpu(), hf_logits(tiny_hf, tok), atol=1e-4, rtol=0)
    nemo_to_hf(tmp_path / "nemo", tmp_path / "back")
    assert tensor_differences(tiny_hf, tmp_path / "back") == []


def test_bf16_model_on_gpu_tracks_fp32(tiny_hf, tmp_path):
    from minitron.conversion.convert import hf_to_nemo, load_megatron_from_nemo
    from minitron.runtime import distributed
    from minitron.runtime.inference import forward_logits

    hf_to_nemo(tiny_hf, tmp_path / "nemo")
    distributed.initialize(1, 1)
    tok = tokens().cuda()
    ref = forward_logits(load_megatron_from_nemo(tmp_path / "nemo", dtype=torch.float32)[0].eval(), tok)
    bf16 = forward_logits(load_megatron_from_nemo(tmp_path / "nemo", dtype=torch.bfloat16)[0].eval(), tok)
    assert bf16.dtype == torch.bfloat16
    assert (bf16.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_torchrun_nccl_verify(tiny_hf, tmp_path):
    from minitron.conversion.convert import hf_to_nemo

    hf_to_nemo(tiny_hf, tmp_path / "nemo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           "-m", "minitron.cli", "verify", "--nemo", str(tmp_path / "nemo"), "--hf", str(tiny_hf)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"max_abs_logit_diff"' in proc.stdout


def test_transformer_engine_spec_loads_local_spec_checkpoint(tiny_hf, tmp_path):
    pytest.importorskip("transformer_engine")
    from minitron.conversion.convert import hf_to_nemo, load_megatron_from_nemo
    from minitron.conversion.verify import hf_logits
    from minitron.runtime.inference import forward_logits

    hf_to_nemo(tiny_hf, tmp_path / "nemo")  # written from the local spec
    model, _ = load_megatron_from_nemo(tmp_path / "nemo", dtype=torch.float32, use_te=True)
    tok = tokens()
    assert_close(forward_logits(model.eval(), tok.cuda()).float().cpu(), hf_logits(tiny_hf, tok), atol=1e-4, rtol=0)
