# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv if absent, installs the CPU build of torch==2.13.0 when torch is missing (a plain
# `torch` requirement would pull several GB of CUDA packages), installs the package, then runs.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.gap-mllm-installed

.PHONY: install test test-all demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

demo: install
	$(VENV)/bin/gap-mllm demo

bench: install
	$(PY) bench/bench_forward.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
