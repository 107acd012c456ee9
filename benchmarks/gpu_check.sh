#!/usr/bin/env bash
# The GPU check on a machine with CUDA PyTorch but no MONAI (e.g. a lent GPU machine): install the
# wheels carried in .whl/ (MONAI, nibabel, SimpleITK, ... for Python 3.12; see README "GPU check"),
# then run benchmarks/gpu_check.py on CUDA and leave the report in $OUT (or benchmarks/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import monai" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}/gpu_check-cuda.md"
timeout 480 python3 benchmarks/gpu_check.py --device cuda --size ct --repeats 3 --out "$out"
