#!/usr/bin/env bash
# Every GPU check of issue 12 in ONE call of at most 9 minutes, and ONE table at the end:
#   study          the tiny study on the GPU: train amp and bf16 (2 epochs, deterministic),
#                  SIGTERM mid-run, resume, predict, evaluate (benchmarks.gpu_study)
#   anchor         the MONAI anchor (the reference network), same machine state
#   anchor-window  its whole-case sliding window (BraTS size, 8-flip TTA)
#   v2model        an nnU-Net v2 model folder on a CT-sized case, TTA off and on, fp16
#                  autocast, NIfTI read -> written (benchmarks.gpu_v2)
#   bench          nnpipe's figures and what limits each (benchmarks.gpu_suite bench)
#   table          the figures beside the anchor and the targets, the study's checks, and
#                  every failed step (gpu_suite table)
# Each step runs under the smaller of its own cap and what is left of the budget, writes its
# log to $WORK/logs, and on failure prints "FAIL: <step> (<why>)" with the end of its log; the
# table prints every row it has whatever failed. Exit 1 if any step failed.
#
# On the GPU machine (first, here, with PyPI: bash scripts/fetch-gpu-wheels.sh):
#   run(carry=[".whl"], command="bash scripts/gpu-checks.sh", timeout_s=600)
# Here, on the CPU, the same logic with tiny sizes (16³ networks, a 48×48×31 case; the anchors
# need CUDA and are skipped):
#   NNPIPE_CHECKS=cpu bash scripts/gpu-checks.sh
# Knobs: NNPIPE_CHECKS_SKIP="anchor study" (steps to skip; set it empty to run the anchors on
# the CPU too, which shows how a failing step is reported), NNPIPE_CHECKS_BUDGET_S (seconds for
# all steps), NNPIPE_BENCH_ARGS (more arguments for bench, e.g. "--rows train3d --compile"),
# NNPIPE_ANCHOR_COMPILE=1 (the anchor's torch.compile cells too; about a minute each).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${NNPIPE_CHECKS:-gpu}
case $MODE in
  gpu) DEVICE=(--device cuda); BENCH=(--compile); BUDGET=${NNPIPE_CHECKS_BUDGET_S:-525}
       STUDY_CAP=150; SKIP=" ${NNPIPE_CHECKS_SKIP-} "; PY=${PYTHON:-python3} ;;
  cpu) DEVICE=(--device cpu); BENCH=(--tiny --steps 3); BUDGET=${NNPIPE_CHECKS_BUDGET_S:-3600}
       STUDY_CAP=1800; SKIP=" ${NNPIPE_CHECKS_SKIP-anchor anchor-window} "
       PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)} ;;
  *) echo "FAIL: NNPIPE_CHECKS must be gpu or cpu, got '$MODE'"; exit 2 ;;
esac
export OUT=${OUT:-/tmp/nnpipe-checks-out}
WORK=${WORK:-/tmp/nnpipe-checks-$MODE}
LOGS=$WORK/logs
RESERVE=15  # seconds kept for the table
DEADLINE=$((SECONDS + BUDGET))
mkdir -p "$OUT" "$LOGS"
: > "$OUT/steps.tsv"
FAILED=()

# step NAME CAP_S COMMAND...: run COMMAND with at most CAP_S seconds (less if the budget is
# nearly spent), log to $LOGS/NAME.log, echo its ok/FAIL/skip lines, record it in steps.tsv.
step() {
  local name=$1 cap=$2 rc=0 why="" t0=$SECONDS
  shift 2
  if [[ $SKIP == *" $name "* ]]; then
    echo "skip: $name (NNPIPE_CHECKS_SKIP)"
    printf '%s\t0\t0\tskipped\n' "$name" >> "$OUT/steps.tsv"
    return 0
  fi
  local left=$((DEADLINE - SECONDS - RESERVE))
  local limit=$((cap < left ? cap : left))
  if ((limit < 10)); then
    why="not started: ${left} s of the budget left"
    rc=125
  else
    echo "== $name (at most ${limit} s) =="
    timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    rc=$?
    grep -E '^(ok|FAIL|skip|study|bench: data|bench: .* took)' "$LOGS/$name.log" | cut -c1-400
    if ((rc == 124 || rc == 137)); then why="stopped at its ${limit} s limit"
    elif ((rc != 0)); then why="exit $rc"; fi
  fi
  local dt=$((SECONDS - t0))
  if ((rc != 0)); then
    FAILED+=("$name")
    echo "FAIL: $name ($why after ${dt} s); log ends: $(tail -n 4 "$LOGS/$name.log" 2>/dev/null \
      | tr '\n' ' ' | cut -c1-400)"
  else
    echo "ok: $name (${dt} s)"
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$why" >> "$OUT/steps.tsv"
  return 0
}

export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [[ $MODE == gpu ]]; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    step install 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl
  else
    echo "FAIL: install: no .whl/*.whl here: run scripts/fetch-gpu-wheels.sh where PyPI is" \
      "reachable and carry .whl"
    printf 'install\t1\t0\tno .whl folder carried\n' >> "$OUT/steps.tsv"
    FAILED+=(install)
  fi
  export PYTHONPATH=/tmp/site:$PYTHONPATH
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    || echo "FAIL: nvidia-smi does not answer (the imports step says whether torch sees a GPU)"
fi
step imports 60 "$PY" -c "import sys, torch, nibabel, nilearn, monai, jsonschema, yaml, pandas
import nnpipe.cli, benchmarks.gpu_suite, benchmarks.gpu_study
cuda = torch.cuda.is_available()
print('ok: imports: torch', torch.__version__, '· cuda', cuda)
sys.exit('FAIL: imports: torch sees no CUDA GPU' if '$MODE' == 'gpu' and not cuda else 0)"
step study "$STUDY_CAP" "$PY" -m benchmarks.gpu_study --work "$WORK" --out "$OUT" "${DEVICE[@]}"
ANCHOR_ARGS=()
[[ ${NNPIPE_ANCHOR_COMPILE:-0} == 1 ]] && ANCHOR_ARGS=(--compile)
ANCHORS=.whl  # fetch-gpu-wheels.sh copies them there; here they are also in ../shared/bench
[[ -f $ANCHORS/monai_anchor.py || ! -d ../shared/bench ]] || ANCHORS=../shared/bench
step anchor 110 "$PY" -m benchmarks.gpu_suite anchor --script $ANCHORS/monai_anchor.py \
  --out "$OUT" --timeout 100 "${ANCHOR_ARGS[@]}"
step anchor-window 50 "$PY" -m benchmarks.gpu_suite anchor \
  --script $ANCHORS/monai_anchor_sliding_window.py --out "$OUT" --timeout 40
V2_ARGS=()
[[ $MODE == cpu ]] && V2_ARGS=(--tiny)
step v2model 100 "$PY" -m benchmarks.gpu_v2 --work "$WORK" --out "$OUT" "${DEVICE[@]}" \
  "${V2_ARGS[@]}"
left=$((DEADLINE - SECONDS - RESERVE))
# shellcheck disable=SC2206  # NNPIPE_BENCH_ARGS is split on purpose
step bench "$left" "$PY" -m benchmarks.gpu_suite bench --work "$WORK" --out "$OUT" \
  "${DEVICE[@]}" "${BENCH[@]}" --budget-s $((left - 10)) ${NNPIPE_BENCH_ARGS:-}

for f in "$LOGS"/*.log; do echo "===== $f"; cat "$f"; done > "$OUT/gpu-checks.log" 2>&1
echo
"$PY" -m benchmarks.gpu_suite table --out "$OUT" --logs "$LOGS" \
  || { echo "FAIL: table: the steps' records follow"; cat "$OUT/steps.tsv"; FAILED+=(table); }
if ((${#FAILED[@]})); then
  echo "FAILED steps: ${FAILED[*]} (logs: $OUT/gpu-checks.log)"
  exit 1
fi
echo "every step passed"
