# Minitron recipes. Newcomers: `make demo` (runs everything, sets up as needed) and `make test`.
# Every target that runs a recipe takes RECIPE=recipes/<file>.yaml, OUT=<output root> and
# ARGS="key=value ...", passed straight to `minitron`.

PYTHON_BOOTSTRAP ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
MINITRON := $(VENV)/bin/minitron
REQUIREMENTS ?= requirements/cpu.txt
RECIPE   ?= recipes/smollm2-135m_minitron_cpu.yaml
OUT      ?=
ARGS     ?=
OUT_FLAG  = $(if $(OUT),--output $(OUT),)
PYTEST_ARGS ?=

.PHONY: prune-width prune-depth prune distill teacher-correct bench-distill bench-pruning setup demo run test test-unit test-fast convert-hf-to-nemo convert-nemo-to-hf model bench-conversion clean help

help:
	@echo "make demo            the whole pipeline on the embedded SmolLM2 on CPU (~15 min)"
	@echo "make test            run the whole test suite (what CI runs)"
	@echo "make run RECIPE=...  run any recipe; OUT=dir ARGS='k=v ...' pass through"
	@echo "make convert-hf-to-nemo IN=hf_dir OUT=nemo_dir   (and convert-nemo-to-hf)"
	@echo "make prune-width / prune-depth   Minitron-prune SmolLM2 on CPU (RECIPE= for Llama 3.1 on GPUs)"
	@echo "make distill / teacher-correct   distil the pruned SmolLM2 width student (about 15 min on 2 cores)"
	@echo "make bench-conversion  time and peak memory of the SmolLM2 conversions"
	@echo "make bench-pruning     activation vs baselines, calibration overhead, recipe wall time"

# Idempotent: reinstalls only when the pins or the package metadata change.
setup: $(VENV)/.installed
$(VENV)/.installed: $(REQUIREMENTS) pyproject.toml
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(REQUIREMENTS)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

model: setup
	$(MINITRON) model default

demo: setup
	$(MINITRON) run --config recipes/smollm2-135m_minitron_cpu.yaml $(OUT_FLAG) $(ARGS)

run: setup
	$(MINITRON) run --config $(RECIPE) $(OUT_FLAG) $(ARGS)

# Minitron pruning (CPU recipe on SmolLM2 by default; RECIPE= for any other, e.g. the Llama 3.1 DGX ones).
prune-width: setup
	$(MINITRON) run --config $(RECIPE) "stages=[import, prune]" "prune.only=[width]" $(OUT_FLAG) $(ARGS)

prune-depth: setup
	$(MINITRON) run --config $(RECIPE) "stages=[import, prune]" "prune.only=[depth]" $(OUT_FLAG) $(ARGS)

prune: setup
	$(MINITRON) run --config $(RECIPE) "stages=[import, prune]" $(OUT_FLAG) $(ARGS)

# Distillation of the pruned student(s) from the (optionally corrected) teacher.
distill: setup
	$(MINITRON) distill --config $(RECIPE) $(OUT_FLAG) $(ARGS)

teacher-correct: setup
	$(MINITRON) teacher-correct --config $(RECIPE) $(OUT_FLAG) $(ARGS)

bench-distill: setup
	$(PY) benchmarks/bench_distill.py

bench-pruning: setup
	$(PY) benchmarks/bench_pruning.py

convert-hf-to-nemo: setup
	$(MINITRON) convert hf-to-nemo --input $(IN) $(OUT_FLAG)

convert-nemo-to-hf: setup
	$(MINITRON) convert nemo-to-hf --input $(IN) $(OUT_FLAG)

# The README's test command; CI (.ci/run) calls exactly this.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Tiny random models only (seconds): no SmolLM2, no torchrun.
test-fast: setup
	$(PY) -m pytest -m "not smollm2 and not torchrun" $(PYTEST_ARGS)

bench-conversion: setup
	$(PY) benchmarks/bench_conversion.py

clean:
	rm -rf runs .pytest_cache
