# Minitron recipes. Newcomers: `make demo` (runs everything, sets up as needed) and `make test`.
# Every target that runs a recipe takes RECIPE=recipes/<file>.yaml, OUT=<output root> and
# ARGS="key=value ...", passed straight to `minitron`.

PYTHON_BOOTSTRAP ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
# NeMo 2.7 in its own venv (its pins clash with the main one): NeMo's own code writes/reads the
# context (io.json) of NeMo checkpoints; `make test` builds it for the interop tests.
NEMO_VENV ?= .venv-nemo
NEMO_PY  := $(abspath $(NEMO_VENV))/bin/python
MINITRON := $(VENV)/bin/minitron
REQUIREMENTS ?= requirements/cpu.txt
RECIPE   ?= recipes/smollm2-135m_minitron_cpu.yaml
OUT      ?=
ARGS     ?=
OUT_FLAG  = $(if $(OUT),--output $(OUT),)
PYTEST_ARGS ?=
# CPU=avx2: run as an AVX2-only CPU would (no AVX512, no native bf16) on a newer one, to see that path's
# precision (auto -> fp32) and speed: oneDNN, MKL and PyTorch's own kernels are held to AVX2.
CPU      ?=
ifneq ($(filter-out avx2,$(CPU)),)
$(error CPU=$(CPU): use CPU=avx2 to run as an AVX2-only CPU, or leave CPU unset)
endif
ifeq ($(CPU),avx2)
export DNNL_MAX_CPU_ISA := AVX2
export MKL_ENABLE_INSTRUCTIONS := AVX2
export ATEN_CPU_CAPABILITY := avx2
endif

.PHONY: bench-data-prepare launch data-prepare docker-build docker-run nemo-env eval report export build-engine bench-fp8 bench-trtllm prune-width prune-depth prune distill teacher-correct bench-distill bench-kd-loop bench-kd-step bench-pruning setup demo run test test-unit test-fast convert-hf-to-nemo convert-nemo-to-hf model bench-conversion clean help

help:
	@echo "make demo            the whole pipeline on the embedded SmolLM2 on CPU (under 30 min on 2 cores), ending with its report (CPU=avx2: as an AVX2-only CPU)"
	@echo "make test            run the whole test suite (what CI runs)"
	@echo "make nemo-env        NeMo 2.7 in .venv-nemo; MINITRON_NEMO_PYTHON=.venv-nemo/bin/python makes every checkpoint NeMo-loadable"
	@echo "make run RECIPE=...  run any recipe; OUT=dir ARGS='k=v ...' pass through"
	@echo "make convert-hf-to-nemo IN=hf_dir OUT=nemo_dir   (and convert-nemo-to-hf)"
	@echo "make prune-width / prune-depth   Minitron-prune SmolLM2 on CPU (RECIPE= for Llama 3.1 on GPUs)"
	@echo "make distill / teacher-correct   distil the pruned SmolLM2 width and depth students (about 25 min on 2 cores)"
	@echo "make eval / report   perplexity, lm-eval tasks and speed of every model of the run; report.md + plots"
	@echo "make bench-conversion  time and peak memory of the SmolLM2 conversions"
	@echo "make bench-data-prepare  minitron data prepare throughput with 1..N tokenizer processes"
	@echo "make bench-pruning     activation vs baselines, calibration overhead, recipe wall time"
	@echo "make bench-kd-step     one KD step, logit KL chunked vs unchunked, on random SmolLM2- or Llama-3.1-8B-shaped models: tokens/s, share of peak (MFU), peak memory (CPU or GPU)"
	@echo "make bench-kd-loop     the KD loop vs a plain transformers + PyTorch KD loop (width student; width + depth on one teacher pass): tokens/s, share of peak, held-out loss"
	@echo "make serve             PyTriton + OpenAI API on 127.0.0.1 (MODEL=dir, BACKEND=tensorrt_llm, SERVE_ARGS=...)"
	@echo "make query             one chat request to the running server (PROMPT='...')"
	@echo "make bench-serving     64 concurrent clients vs one at a time against the CPU server (SmolLM2)"
	@echo "make export            FP8 TensorRT-LLM checkpoint of the newest distilled student (EXPORT_FORMAT=hf, EXPORT_DTYPE=bf16)"
	@echo "make build-engine      trtllm-build the export (TensorRT-LLM 1.2 + GPU; exit 3 without them)"
	@echo "make bench-fp8         SmolLM2 held-out perplexity, BF16 vs FP8 (Model Optimizer PTQ, CPU fake-quant)"
	@echo "make launch LAUNCH='--site launch/<cluster>.yaml --nodes 8' RECIPE=...   submit a recipe with NeMo-Run"
	@echo "make data-prepare RECIPE=... ARGS='data.source=...' OUT=dir   tokenize a corpus once (WORKERS=nproc)"
	@echo "make docker-build      the NeMo-based training image and the TensorRT-LLM deployment image (Docker daemon needed)"
	@echo "make docker-run CMD='minitron ...'   run a command in the training image with the usual GPU flags"
	@echo "make bench-trtllm      TensorRT-LLM tokens/s, teacher vs distilled students, BF16/FP8 (GPU + TensorRT-LLM 1.2)"

# Idempotent: reinstalls only when the pins or the package metadata change.
setup: $(VENV)/.installed
$(VENV)/.installed: $(REQUIREMENTS) requirements/launch.txt requirements/cpu-runtime.txt pyproject.toml
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(REQUIREMENTS)
	$(PY) -m pip install -q --no-deps -r requirements/launch.txt -r requirements/cpu-runtime.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

nemo-env: $(NEMO_VENV)/.installed
$(NEMO_VENV)/.installed: requirements/nemo.txt
	test -x $(NEMO_VENV)/bin/python || $(PYTHON_BOOTSTRAP) -m venv $(NEMO_VENV)
	$(NEMO_VENV)/bin/python -m pip install -q --no-deps -r requirements/nemo.txt
	touch $@

model: setup
	$(MINITRON) model default

demo: setup
	$(MINITRON) run --config recipes/smollm2-135m_minitron_cpu.yaml $(OUT_FLAG) $(ARGS)

run: setup
	$(MINITRON) run --config $(RECIPE) $(OUT_FLAG) $(ARGS)

# A recipe as a NeMo-Run experiment, one task per stage: LAUNCH="--site launch/<cluster>.yaml --nodes 8 [--dry-run]"
LAUNCH ?= --executor local
launch: setup
	$(MINITRON) launch $(LAUNCH) -- run --config $(RECIPE) $(OUT_FLAG) $(ARGS)

# Tokenize a corpus once into Megatron indexed datasets (for data.blend): ARGS="data.source=/data/raw/web" OUT=dir
data-prepare: setup
	$(MINITRON) data prepare --config $(RECIPE) --workers $(or $(WORKERS),$(shell nproc)) $(OUT_FLAG) $(ARGS)

# Minitron pruning (CPU recipe on SmolLM2 by default; RECIPE= for any other, e.g. the Llama 3.1 DGX ones).
# The teacher is corrected first when the recipe lists teacher_correction (Minitron prunes the corrected teacher).
prune-width: setup
	$(MINITRON) prune --config $(RECIPE) "prune.only=[width]" $(OUT_FLAG) $(ARGS)

prune-depth: setup
	$(MINITRON) prune --config $(RECIPE) "prune.only=[depth]" $(OUT_FLAG) $(ARGS)

prune: setup
	$(MINITRON) prune --config $(RECIPE) $(OUT_FLAG) $(ARGS)

# Evaluation and the report of a run: whatever models it has so far (RECIPE=, OUT=, ARGS= as above).
eval: setup
	$(MINITRON) eval --config $(RECIPE) $(OUT_FLAG) $(ARGS)

report: setup
	$(MINITRON) report --config $(RECIPE) $(OUT_FLAG) $(ARGS)

# Distillation of the pruned student(s) from the (optionally corrected) teacher.
distill: setup
	$(MINITRON) distill --config $(RECIPE) $(OUT_FLAG) $(ARGS)

teacher-correct: setup
	$(MINITRON) teacher-correct --config $(RECIPE) $(OUT_FLAG) $(ARGS)

# The KD loop vs a plain transformers + PyTorch KD loop (same tokens, batch, precision), then exactness,
# throughput and recovery of distillation. bench-kd-loop alone takes a few minutes.
bench-distill: bench-kd-loop
	$(PY) benchmarks/bench_distill.py

bench-data-prepare: setup
	$(PY) benchmarks/bench_data_prepare.py

bench-kd-loop: setup
	$(PY) benchmarks/bench_kd_loop.py $(ARGS)

bench-kd-step: setup
	$(PY) benchmarks/bench_kd_step.py $(ARGS)

# Deployment (deploy/README.md): export the newest distilled student of the default recipe, else the
# embedded SmolLM2. An existing export folder is reused; remove it (or set EXPORT_DIR) to redo it.
EXPORT_MODEL  ?= $(or $(shell ls -td runs/smollm2-135m_minitron_cpu/distill-*/hf 2>/dev/null | head -1),embedded:smollm2-135m-instruct)
EXPORT_FORMAT ?= trtllm
EXPORT_DTYPE  ?= fp8
EXPORT_ARGS   ?=
EXPORT_NAME    = $(if $(findstring embedded:,$(EXPORT_MODEL)),smollm2-135m-instruct,$(notdir $(patsubst %/hf,%,$(EXPORT_MODEL))))
EXPORT_DIR    ?= runs/export/$(EXPORT_NAME)-$(EXPORT_FORMAT)-$(EXPORT_DTYPE)
ENGINE_DIR    ?= $(EXPORT_DIR)-engine
ENGINE_ARGS   ?=

export: setup
	@if [ -f $(EXPORT_DIR)/export.json ]; then echo "$(EXPORT_DIR) exists (remove it to export again)"; else \
	  $(MINITRON) export --config $(RECIPE) --model $(EXPORT_MODEL) --format $(EXPORT_FORMAT) \
	    --dtype $(EXPORT_DTYPE) --output $(EXPORT_DIR) $(EXPORT_ARGS); fi

# Lengths, TP/PP and calibration come from the recipe's `deploy` section (ENGINE_ARGS="--max-seq-len N" to
# override). Exit status 3 (one line, no traceback) where there is no GPU / TensorRT-LLM 1.2: the checkpoint is valid.
build-engine: EXPORT_FORMAT = trtllm
build-engine: export
	$(MINITRON) build-engine --config $(RECIPE) --checkpoint $(EXPORT_DIR) --output $(ENGINE_DIR) $(ENGINE_ARGS)

bench-fp8: setup
	$(PY) benchmarks/bench_fp8.py $(ARGS)

# TensorRT-LLM tokens/s of the recipe's teacher vs its distilled students, BF16 and FP8 engines. Needs
# TensorRT-LLM 1.2 and a GPU (deploy/gpu_checks.sh runs it in the container); elsewhere it writes and
# validates the checkpoints, then exits 3.
bench-trtllm: setup
	$(PY) benchmarks/bench_trtllm.py --config $(RECIPE) $(ARGS)

bench-pruning: setup
	$(PY) benchmarks/bench_pruning.py

# Serving (deploy/README.md): no MODEL = newest distilled student of the default recipe, else the embedded
# SmolLM2. Everything binds 127.0.0.1; SERVE_ARGS="--host 0.0.0.0 --port 9000" to change that.
.PHONY: serve query bench-serving
MODEL      ?=
BACKEND    ?= pytorch
SERVE_ARGS ?=
PROMPT     ?= What is the capital of France?
QUERY_ARGS ?=

serve: setup
	$(MINITRON) serve $(if $(MODEL),--model $(MODEL),) --backend $(BACKEND) $(SERVE_ARGS)

query: setup
	$(MINITRON) query "$(PROMPT)" $(QUERY_ARGS)

bench-serving: setup
	$(PY) benchmarks/bench_serving.py

convert-hf-to-nemo: setup
	$(MINITRON) convert hf-to-nemo --input $(IN) $(OUT_FLAG)

convert-nemo-to-hf: setup
	$(MINITRON) convert nemo-to-hf --input $(IN) $(OUT_FLAG)

# The README's test command; CI (.ci/run) calls exactly this.
test: setup nemo-env
	MINITRON_TEST_NEMO_PYTHON=$(NEMO_PY) $(PY) -m pytest $(PYTEST_ARGS)

# Tiny random models only (seconds): no SmolLM2, no torchrun.
test-fast: setup
	$(PY) -m pytest -m "not smollm2 and not torchrun" $(PYTEST_ARGS)

bench-conversion: setup
	$(PY) benchmarks/bench_conversion.py

# GPU images (docker/). Needs a Docker daemon; GPU runs need the NVIDIA Container Toolkit. Exit 3 without one.
DOCKER       ?= docker
IMAGE        ?= minitron:nemo
DEPLOY_IMAGE ?= minitron-deploy:trtllm
CMD          ?= minitron --help
DOCKER_CHECK  = @$(DOCKER) info >/dev/null 2>&1 || { echo "$@: no Docker daemon reachable ($(DOCKER) info failed): start Docker, or set DOCKER="; exit 3; }

docker-build:
	$(DOCKER_CHECK)
	$(DOCKER) build -f docker/Dockerfile -t $(IMAGE) .
	$(DOCKER) build -f docker/Dockerfile.trtllm -t $(DEPLOY_IMAGE) .

docker-run:
	$(DOCKER_CHECK)
	$(DOCKER) run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
		-v $(CURDIR)/runs:/workspace/minitron/runs $(IMAGE) $(CMD)

clean:
	rm -rf runs .pytest_cache
