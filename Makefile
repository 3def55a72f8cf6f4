# genlab: all set-up on a fresh machine with only Python.
#   make demo   create .venv, install torch (TORCH_SPEC) then genlab, train on built-in digits (~2 min)
#   make test   same venv plus the dev extra (pytest, diffusers), run the test suite
# Users with a GPU choose their own torch build, e.g.  make demo TORCH_SPEC="torch==2.5.1" TORCH_INDEX=...
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test install dev bench clean docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip

$(VENV)/.torch: $(BIN)/python
	$(PIP) install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

demo: $(VENV)/.installed
	$(BIN)/genlab demo

test: $(VENV)/.dev
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q tests

# Regenerates the pictures the README shows (docs/*.png) from a fresh demo run.
docs: $(VENV)/.installed
	$(BIN)/genlab demo --name docs-demo --force
	cp runs/docs-demo/samples.png docs/demo_samples.png
	cp runs/docs-demo/process.png docs/demo_process.png

bench: $(VENV)/.dev
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
