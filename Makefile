# `make test` and `make demo` work on a fresh machine: they create .venv and install what they need
# (triton too: its kernels are tested on CPU under TRITON_INTERPRET=1).
# torch==2.13.0 is installed first (unless the interpreter already has a torch) so that pip does not
# resolve an unpinned torch to the multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nx-installed

.PHONY: test test-all demo lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,triton]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m ""

SYSTEM ?= nextflow
demo: $(STAMP)
	$(PY) -m nxrecipes.demo --out out/demo --system $(SYSTEM)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
