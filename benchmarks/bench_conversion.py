"""Time and peak memory of the SmolLM2-135M conversions (GGUF -> HF -> NeMo -> HF).

Run: make bench-conversion   (or: .venv/bin/python benchmarks/bench_conversion.py)

Each conversion runs in a fresh process so its peak resident memory is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
from minitron.conversion.convert import hf_to_nemo, nemo_to_hf
from minitron.conversion.gguf_to_hf import gguf_to_hf, fetch_default_gguf
import megatron.core, transformers, torch.distributed.checkpoint  # noqa: F401  (count imports in the baseline)
step, src, dst = sys.argv[1:4]
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
if step == "gguf-to-hf":
    gguf_to_hf(fetch_default_gguf(), dst)
elif step == "hf-to-nemo":
    hf_to_nemo(src, dst)
else:
    nemo_to_hf(src, dst)
print(json.dumps({"seconds": time.perf_counter() - t, "baseline_rss_mb": baseline,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps = [("gguf-to-hf", "", tmp / "hf"), ("hf-to-nemo", tmp / "hf", tmp / "nemo"),
                 ("nemo-to-hf", tmp / "nemo", tmp / "hf_back")]
        rows = []
        for step, src, dst in steps:
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", CHILD, step, str(src), str(dst)],
                                  capture_output=True, text=True, cwd=repo)
            if proc.returncode:
                sys.exit(f"{step} failed:\n{proc.stderr[-2000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["process_seconds"] = time.perf_counter() - start
            rows.append((step, result))
        size = sum(f.stat().st_size for f in (tmp / "hf").glob("*.safetensors")) / 2**20
    print(f"SmolLM2-135M-Instruct, fp32 weights {size:.0f} MiB, {sys.platform}")
    print("peak RSS includes the interpreter + torch/megatron/transformers imports (baseline) and the")
    print("file-backed pages of memory-mapped safetensors, which the kernel can drop under pressure.")
    print(f"{'step':<12} {'convert s':>10} {'process s':>10} {'peak RSS MiB':>13} {'baseline MiB':>13} {'peak-baseline':>14}")
    for step, r in rows:
        print(f"{step:<12} {r['seconds']:>10.2f} {r['process_seconds']:>10.2f} {r['peak_rss_mb']:>13.0f} "
              f"{r['baseline_rss_mb']:>13.0f} {r['peak_rss_mb'] - r['baseline_rss_mb']:>14.0f}")


if __name__ == "__main__":
    main()
