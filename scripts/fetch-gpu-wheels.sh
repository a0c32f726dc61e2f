#!/usr/bin/env bash
# Download (here, with PyPI access) the wheels the GPU machine lacks into .whl/ (git-ignored via
# .git/info/exclude), for Python 3.12 on x86-64, and copy the MONAI anchor scripts beside them.
# Then, on the lent GPU:  run(carry=[".whl"], command="bash scripts/gpu-checks.sh")
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
plat=()
for n in 2_28 2_27 2_17 2_5; do plat+=(--platform "manylinux_${n}_x86_64"); done
plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for pkg in monai nibabel nilearn scikit-learn joblib threadpoolctl lxml jsonschema \
           jsonschema-specifications referencing rpds-py attrs pyyaml; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d .whl "$pkg"
done
cp ../shared/bench/monai_anchor.py ../shared/bench/monai_anchor_sliding_window.py .whl/
du -sh .whl
