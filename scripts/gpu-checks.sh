#!/usr/bin/env bash
# All GPU checks in one job: the MONAI anchor (the reference network) and nnpipe's own
# benchmarks, side by side on the same GPU. Prepare once with scripts/fetch-gpu-wheels.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/nnpipe-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "== MONAI anchor (reference network) =="
timeout 240 python3 .whl/monai_anchor.py --compile 2>&1 | tail -n 25
echo "== nnpipe =="
timeout 330 python3 -m nnpipe.benchmark.gpu_suite --work /tmp/nnpipe-gpu --out "$OUT" 2>&1 \
  | grep -v '^\[nnpipe' | tail -n 30
