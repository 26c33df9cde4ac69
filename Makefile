# pinn: make help lists the targets
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_CPU := torch==2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296

.PHONY: help install train test bench accuracy lint clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
		{ echo "pinn needs Python >= 3.11 (pyDOE 1.6 does); $(PY) is older or missing: make PY=python3.11 ..." >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing the default (CUDA) torch"; \
	else \
		echo "no GPU: installing the CPU build of torch (a local wheel, else download.pytorch.org/whl/cpu)"; \
		$(BIN)/pip install -q --retries 1 --timeout 15 --extra-index-url $(TORCH_CPU_INDEX) "$(TORCH_CPU)" \
			|| $(BIN)/pip install -q --extra-index-url $(TORCH_CPU_INDEX) "torch>=2.4"; \
	fi
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install pinn with its test extras (plotting is a core dependency)

train: $(STAMP)  ## train the default problem (1D heat); ARGS="key=value ..." adds overrides
	$(BIN)/pinn train $(ARGS)

test: $(STAMP)  ## run the test suite
	$(BIN)/python -m pytest -q -n 2 $(ARGS)

bench: $(STAMP)  ## speed tables: derivative engines against nested autograd and DeepXDE; L-BFGS against torch's
	$(BIN)/python benchmarks/speed.py --deepxde $(ARGS)
	$(BIN)/python benchmarks/lbfgs.py

accuracy: $(STAMP)  ## accuracy table: every equation's default config (rel L2, time)
	$(BIN)/python benchmarks/accuracy.py $(ARGS)

lint: $(STAMP)  ## static checks (ruff)
	$(BIN)/pip install -q 'ruff>=0.6' && $(BIN)/ruff check pinn_cli tests benchmarks

clean:  ## remove the virtual environment, caches and run outputs
	rm -rf $(VENV) outputs multirun .pytest_cache build dist *.egg-info
