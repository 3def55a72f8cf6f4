#!/usr/bin/env bash
# The CUDA checks of genlab on a GPU machine: at most about 8 minutes, no network (see benchmarks/gpu_check.py).
#   benchmarks/gpu_check.sh MNIST_DIR [GENLAB_CACHE_DIR]
# Needs a Python with torch (CUDA build) and genlab installed (pip install -e .); prints one line per check and
# writes bench_out/gpu/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=${1:?usage: benchmarks/gpu_check.sh MNIST_DIR [GENLAB_CACHE_DIR]}
PY=${PYTHON:-python}
args=(--mnist "$MNIST")
if [ $# -ge 2 ]; then args+=(--cache "$2"); fi
exec timeout 480 "$PY" benchmarks/gpu_check.py "${args[@]}"
