#!/usr/bin/env bash
# The GPU checks, as run on a lent GPU machine (docs/benchmarks.md, "GPU checks"). Installs carried wheels
# (.whl/) when present, then runs the tests marked `gpu` plus the CPU-agnostic conversion tests.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, megatron.core, transformers; print('torch', torch.__version__, 'mcore', megatron.core.__version__, 'transformers', transformers.__version__)"
python3 -m pytest -p no:cacheprovider -q -m gpu tests/test_gpu.py "$@"
python3 -m pytest -p no:cacheprovider -q tests/test_conversion.py tests/test_mapping.py "$@"
# Pruning and training on the GPU: NCCL, Megatron's bf16 optimizer and distributed optimizer.
python3 -m pytest -p no:cacheprovider -q -m "not torchrun" tests/test_pruning.py tests/test_training.py "$@"
# The KD step on the GPU, logit KL chunked vs unchunked (tokens/s, MFU, peak memory): Llama 3.1 8B -> Minitron-4B
# width shapes with random weights, 4 layers, 8 x 4096 tokens a step in micro-batches of 2.
python3 benchmarks/bench_kd_step.py --shape llama3.1-8b --layers 4 --seq-length 4096 --global-batch-size 8 \
  --micro-batch-size 2 --steps 6 --output /tmp/bench_kd_step
# Closed-form repair at the Llama 3.1 8B -> Minitron-4B-Width shape (8 of the 32 layers, the 8B recipe's prune
# settings, 64 x 8192 calibration tokens): seconds, peak GPU memory against `minitron plan`, error before/after.
python3 benchmarks/bench_repair.py --shape llama3.1-8b --layers 8 --samples 64 --seq-length 8192 --output /tmp/bench_repair
