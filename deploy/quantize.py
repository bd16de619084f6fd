"""FP8 post-training quantization with NVIDIA Model Optimizer (``mtq.quantize``).

FP8 (E4M3) per-tensor scales for every Linear's weight and input, calibrated with the max
algorithm over real text from the data pipeline's *train* split (the split a model may see; the
held-out splits stay for evaluation). ``lm_head`` stays in BF16 (Model Optimizer's default).
Optionally the KV cache is FP8 too (scales of the K and V outputs). On CPU the quantizers run as
fake-quant (quantize-dequantize in BF16), so the same code calibrates on a laptop and on a GPU;
the export turns the calibrated amax values into real FP8 weights and scaling factors.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from minitron.conversion.hf_checkpoint import SafetensorsReader
from minitron.conversion.llama_mapping import hf_shapes
from minitron.data import check_tokenizer_matches, prepare, samples
from minitron.errors import MinitronError
from minitron.runtime.llama import LlamaArch


def load_llama(hf_dir: str | Path, dtype: torch.dtype = torch.bfloat16):
    """A transformers LlamaForCausalLM, after checking its config and weight shapes agree.

    Non-Llama configs and checkpoints whose tensors contradict config.json fail here with one
    line, before any export work starts.
    """
    from transformers import AutoModelForCausalLM

    hf_dir = Path(hf_dir)
    arch = LlamaArch.from_hf_dir(hf_dir)
    SafetensorsReader(hf_dir).check_shapes(hf_shapes(arch), hf_dir / "config.json")
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
    if torch.cuda.is_available():  # real FP8-capable GPUs calibrate much faster; exports copy to CPU
        model = model.cuda()
    # Model Optimizer's exporters read the architecture name from the config.
    model.config.architectures = ["LlamaForCausalLM"]
    return model, arch


def calibration_tokens(hf_dir: str | Path, data_cfg, num_samples: int, seq_length: int) -> torch.Tensor:
    """[num_samples, seq_length] token ids from the train split (Megatron-packed, seeded)."""
    if num_samples < 1 or seq_length < 2:
        raise MinitronError(f"calibration needs >= 1 sample of >= 2 tokens, got {num_samples} x {seq_length}")
    check_tokenizer_matches(hf_dir, vocab_size=LlamaArch.from_hf_dir(hf_dir).vocab_size)
    prepared = prepare(data_cfg, hf_dir)
    rows = samples(prepared, "train", seq_length, num_samples, seed=data_cfg.seed)
    return torch.stack([rows[i][:-1] for i in range(len(rows))])


def fp8_config(kv_cache: bool = False) -> dict:
    """Model Optimizer's FP8_DEFAULT_CFG, plus FP8 K/V output quantizers when `kv_cache`."""
    import modelopt.torch.quantization as mtq

    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    if kv_cache:
        # FP8_KV_CFG's own "default: disabled" entry must not switch the weight/input quantizers off.
        kv = {k: v for k, v in mtq.FP8_KV_CFG["quant_cfg"].items() if k != "default"}
        cfg["quant_cfg"].update(copy.deepcopy(kv))
    return cfg


@torch.no_grad()
def quantize_fp8(model, tokens: torch.Tensor, batch_size: int = 4, kv_cache: bool = False) -> dict:
    """Insert FP8 quantizers and calibrate them on `tokens`; the model is changed in place."""
    import modelopt.torch.quantization as mtq

    def forward_loop(m):
        for batch in tokens.split(batch_size):
            m(input_ids=batch.to(next(m.parameters()).device))

    start = time.perf_counter()
    mtq.quantize(model, fp8_config(kv_cache), forward_loop)
    quantizers = [m for name, m in model.named_modules() if name.endswith("_quantizer")]
    enabled = [q for q in quantizers if getattr(q, "is_enabled", False)]
    if not enabled:
        raise MinitronError("Model Optimizer enabled no FP8 quantizer; is this a Llama model with nn.Linear layers?")
    return {"algorithm": "max", "format": "fp8_e4m3", "kv_cache_fp8": kv_cache,
            "calibration_samples": int(tokens.shape[0]), "calibration_seq_length": int(tokens.shape[1]),
            "enabled_quantizers": len(enabled), "seconds": round(time.perf_counter() - start, 2)}
