#!/usr/bin/env bash
# GPU step benchmark on one H100/H200 of a GPU machine, in one call.
#
# Here, once (a CPU machine with PyPI): fetch the cp312 megatron-core wheel the GPU image lacks
#   bash benchmarks/gpu_step.sh --fetch-wheels
# Then on the GPU machine (with .whl/ copied alongside; results in $OUT, default runs/gpu_step):
#   bash benchmarks/gpu_step.sh
# Extra arguments go to benchmarks/gpu_step.py (e.g. --variants flm-xpos,peer --steps 10).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    # megatron-core's own needs (torch, numpy, packaging) are on the GPU image already.
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl megatron-core==0.16.1
    exit 0
fi
ls .whl/megatron_core-0.16.1-*.whl >/dev/null || { echo "no .whl/megatron_core wheel: run --fetch-wheels here first"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu_step}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
    2>&1 | tee "$OUT/machine.txt"
python3 benchmarks/gpu_step.py --json "$OUT/gpu_step.json" "$@" 2>&1 | tee "$OUT/gpu_step.log"
