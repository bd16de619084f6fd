#!/usr/bin/env bash
# TensorRT engines on an NVIDIA GPU: BF16 and FP8 builds of SmolLM2 with a greedy check, then
# TensorRT-LLM tokens/s of the teacher vs the distilled students. NOT YET RUN ON A GPU.
#
# 1) On any machine (CPU is fine), write and validate the TensorRT-LLM checkpoints:
#      make export EXPORT_DTYPE=bf16 EXPORT_MODEL=embedded:smollm2-135m-instruct
#      make export EXPORT_DTYPE=fp8  EXPORT_MODEL=embedded:smollm2-135m-instruct
#    (or leave EXPORT_MODEL out to take the newest distilled student; set MODEL_NAME below to match)
#    and, after `make demo` (or the recipe's distill stage), the benchmark's checkpoints and prompts:
#      make bench-trtllm        # exits 3 here: "engines not built ..."; runs/bench/trtllm is ready
# 2) On the GPU machine, in the TensorRT-LLM 1.2 container (the last release line with trtllm-build):
#      docker run --rm --gpus all -v "$PWD":/work -w /work nvcr.io/nvidia/tensorrt-llm/release:1.2.0 \
#        bash deploy/gpu_checks.sh
#    (or in the image of docker/Dockerfile.trtllm, which adds PyTriton for `minitron serve`)
#    Only deploy/, minitron/, benchmarks/ and runs/ are used there (torch and safetensors come with
#    the container); nothing is installed.
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MODEL_NAME=${MODEL_NAME:-smollm2-135m-instruct}
LENGTHS=${LENGTHS:---max-batch-size 8 --max-input-len 1024 --max-seq-len 2048}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import tensorrt_llm; print('tensorrt_llm', tensorrt_llm.__version__)"

for dtype in bf16 fp8; do
  ckpt="runs/export/${MODEL_NAME}-trtllm-${dtype}"
  engine="${ckpt}-engine"
  [ -f "$ckpt/config.json" ] || { echo "missing $ckpt: run 'make export EXPORT_DTYPE=$dtype' first"; exit 1; }
  rm -rf "$engine"
  start=$(date +%s)
  # shellcheck disable=SC2086
  python3 -m minitron.cli build-engine --checkpoint "$ckpt" --output "$engine" $LENGTHS
  echo "$dtype engine built in $(( $(date +%s) - start )) s: $(du -sh "$engine" | cut -f1)"
  # Greedy smoke test with the engine: SmolLM2 answers " Paris" (the tokenizer travels in the checkpoint).
  python3 - "$ckpt" "$engine" <<'EOF'
import sys

import torch
from tensorrt_llm.runtime import ModelRunner
from transformers import AutoTokenizer

ckpt, engine = sys.argv[1:3]
tok = AutoTokenizer.from_pretrained(ckpt)
ids = torch.tensor(tok("The capital of France is", add_special_tokens=False)["input_ids"], dtype=torch.int32)
runner = ModelRunner.from_dir(engine_dir=engine)
out = runner.generate([ids], max_new_tokens=8, end_id=tok.eos_token_id, pad_id=tok.eos_token_id)
text = tok.decode(out[0, 0, len(ids):].tolist(), skip_special_tokens=True)
print(f"{engine}: {text!r}")
assert "Paris" in text, text
EOF
done

# Teacher vs students, BF16 and FP8 engines, on the held-out prompts planned by `make bench-trtllm`.
if [ -f "${BENCH_DIR:=runs/bench/trtllm}/plan.json" ]; then
  python3 benchmarks/bench_trtllm.py --plan "$BENCH_DIR"
else
  echo "no $BENCH_DIR/plan.json: run 'make bench-trtllm' on any machine first for the teacher-vs-students table"
fi
