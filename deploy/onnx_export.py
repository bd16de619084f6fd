"""Export a Llama HF checkpoint (a pruned student included) for ONNX Runtime, with onnxruntime-genai's builder.

`onnxruntime_genai.models.builder` (the model builder ONNX Runtime GenAI ships) writes a decoder graph with a
KV cache (`model.onnx` + `model.onnx.data`), `genai_config.json` and the tokenizer: what `onnxruntime_genai`
(and Foundry Local / Olive users) load. It reads head_dim, GQA, llama3 RoPE scaling and tied embeddings from
config.json itself. It runs as a child process (its own CLI), into a temporary folder renamed when complete.

Precisions for the CPU execution provider: fp32 (compared at fp32 rounding) and int4 (the builder's
block-wise int4 weights, the usual CPU deployment). ONNX Runtime's CPU GroupQueryAttention kernel needs a
head dimension divisible by 16 (the demo students' 64 and Llama 3.1's 128 are); others are refused before
building.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from minitron.errors import MinitronError
from minitron.runtime.llama import LlamaArch, read_json

ONNX_PRECISIONS = ("fp32", "int4")


def export_onnx(hf_dir: str | Path, output: str | Path, precision: str = "fp32", overwrite: bool = False) -> dict:
    """Write `hf_dir` as an onnxruntime-genai model folder; the summary (sizes, seconds)."""
    if precision not in ONNX_PRECISIONS:
        raise MinitronError(f"--onnx-precision {precision!r}: ONNX Runtime CPU export supports "
                            f"{', '.join(ONNX_PRECISIONS)}")
    hf_dir, output = Path(hf_dir), Path(output)
    arch = LlamaArch.from_hf_config(read_json(hf_dir / "config.json"), str(hf_dir / "config.json"))
    if arch.head_dim % 16:
        raise MinitronError(f"{hf_dir}: head_dim {arch.head_dim} is not a multiple of 16, which ONNX Runtime's CPU "
                            "GroupQueryAttention kernel needs; export GGUF for this model instead")
    # The builder finds lm_head as "a Linear with out_features == vocab_size" while walking the modules after the
    # last layer, so such a projection inside that layer would be taken for it (onnxruntime-genai 0.18).
    widths = {"q_proj": arch.num_attention_heads * arch.head_dim, "k_proj/v_proj": arch.num_query_groups * arch.head_dim,
              "gate_proj/up_proj": arch.ffn_hidden_size}
    clash = [name for name, width in widths.items() if width == arch.vocab_size]
    if clash:
        raise MinitronError(f"{hf_dir}: {clash[0]} has {arch.vocab_size} outputs, the vocabulary size, which "
                            "onnxruntime-genai's builder mistakes for the output layer; export GGUF for this model")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise MinitronError(f"{output}: exists and is not empty; pass --overwrite to replace it")
    try:
        import onnxruntime_genai  # noqa: F401  (the builder ships inside it)
    except ImportError:
        raise MinitronError("ONNX export needs onnxruntime-genai (pip install onnxruntime-genai; make setup "
                            "installs it)") from None
    start = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    log = output.with_name(f"{output.name}.build.log")
    try:
        with open(log, "w") as out:
            proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
                                   "-o", str(partial), "-p", precision, "-e", "cpu", "-c", str(partial / "cache")],
                                  stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
            raise MinitronError(f"onnxruntime-genai's builder failed on {hf_dir}: {' '.join(last)[:300]} "
                                f"(full log: {log})")
        shutil.rmtree(partial / "cache", ignore_errors=True)
        if output.exists():
            shutil.rmtree(output)
        os.replace(partial, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.unlink(missing_ok=True)
    files = {p.name: p.stat().st_size for p in sorted(output.iterdir())}
    return {"source": str(hf_dir), "output": str(output), "format": "onnx", "precision": precision,
            "bytes": sum(files.values()), "files": files, "seconds": round(time.perf_counter() - start, 2)}
