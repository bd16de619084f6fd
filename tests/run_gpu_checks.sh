#!/usr/bin/env bash
# The GPU checks, as run on a lent GPU machine (see README "GPU"). Installs carried wheels
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
