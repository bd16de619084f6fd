"""The ``deploy`` section of a recipe: how `minitron export` and `minitron build-engine` run.

Command-line flags override it; without ``--config`` the defaults below apply (sized for the
SmolLM2 demo; the Llama 3.1 recipes set their own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from minitron.config import at_least_one, doc
from minitron.runtime.precision import check as check_precision


@dataclass
class DeployConfig:
    dtype: Literal["bf16", "fp8"] = doc("fp8", "export precision: bf16, or fp8 (Model Optimizer PTQ)")
    tp: int = doc(1, "tensor-parallel ranks of the TensorRT-LLM checkpoint / engine")
    pp: int = doc(1, "pipeline-parallel ranks of the TensorRT-LLM checkpoint / engine")
    kv_cache_fp8: bool = doc(False, "also quantize the KV cache to FP8 (fp8 only)")
    calib_samples: int = doc(64, "FP8 calibration samples from the train split of `data`")
    calib_seq_length: int = doc(512, "tokens per calibration sample")
    calib_batch_size: int = doc(4, "calibration samples per forward pass")
    calib_dtype: str = doc("auto", "precision of the model while calibrating: auto|bf16|fp32 (auto: bf16 on GPUs and "
                                   "CPUs that compute it natively, fp32 elsewhere); the export is bf16 (+FP8) either way")
    max_batch_size: int = doc(8, "engine: largest batch (trtllm-build --max_batch_size)")
    max_input_len: int = doc(1024, "engine: longest prompt in tokens (--max_input_len)")
    max_seq_len: int = doc(2048, "engine: longest prompt + output in tokens (--max_seq_len)")
    max_num_tokens: Optional[int] = doc(None, "engine: tokens per scheduled batch (--max_num_tokens; "
                                              "null = trtllm-build's default)")

    def check(self) -> list[str]:
        problems = [] if self.dtype in ("bf16", "fp8") else [f"deploy.dtype={self.dtype!r} must be one of ['bf16', 'fp8']"]
        problems += at_least_one(self, ["tp", "pp", "calib_samples", "calib_seq_length", "calib_batch_size",
                                       "max_batch_size", "max_input_len", "max_seq_len"], "deploy.")
        if self.max_input_len > self.max_seq_len:
            problems.append(f"deploy.max_input_len {self.max_input_len} exceeds deploy.max_seq_len {self.max_seq_len}")
        problems += check_precision(self.calib_dtype, "deploy.calib_dtype")
        if self.kv_cache_fp8 and self.dtype != "fp8":
            problems.append("deploy.kv_cache_fp8 needs deploy.dtype fp8")
        return problems
