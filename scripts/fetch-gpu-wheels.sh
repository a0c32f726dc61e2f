#!/usr/bin/env bash
# Download (here, with PyPI access) the wheels the GPU machine lacks into .whl/ (git-ignored via
# .git/info/exclude), for its Python 3.12 on x86-64, and copy the MONAI anchor scripts beside
# them. Then, on the lent GPU:  run(carry=[".whl"], command="bash scripts/gpu-checks.sh")
#
# Only what that machine's image does not hold (its package list: the device notes, KINDS.md),
# at the versions this project's environment runs, so one version of each travels:
#   monai                         losses (training), and the anchor scripts
#   nibabel                       NIfTI reading and writing
#   nilearn                       the embedded dataset's MNI152 template (the tiny study's data)
#   jsonschema + its three needs  config validation (nnpipe train, predict, evaluate)
# Everything else nnpipe needs there (numpy, scipy, pandas, pyyaml, scikit-learn, joblib, lxml,
# attrs, jinja2, requests, tensorboard, matplotlib) is in the image; carrying a second copy of a
# compiled one (scikit-learn, lxml) would shadow the image's, built against its numpy. No
# SimpleITK: the checks read and write NIfTI only (SimpleITK serves NRRD and MetaImage, ~50 MB).
# About 16 MB in all (the carried tree may hold 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl  # one version of each: two stop the install there
plat=()
for n in 2_28 2_27 2_17 2_5; do plat+=(--platform "manylinux_${n}_x86_64"); done
plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for pkg in monai==1.6.1 nibabel==5.4.2 nilearn==0.13.1 jsonschema==4.26.0 \
           jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d .whl "$pkg"
done
cp ../shared/bench/monai_anchor.py ../shared/bench/monai_anchor_sliding_window.py .whl/
du -sh .whl
