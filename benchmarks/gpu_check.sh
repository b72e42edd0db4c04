#!/usr/bin/env bash
# One prepared check of the CUDA side on a lent H100/H200, from the project root, within ~8 minutes:
#   1. build (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise, torch's nvcc flags, MAX_JOBS=16)
#   2. the whole CUDA test suite twice, with the default and with the experimental kernels, and in parallel
#      compute-sanitizer memcheck (all dtypes, K = 1..11), racecheck and synccheck (small) on both kernel sets
#   3. timings with peak memory: default vs experimental vs peers at 64x720x960 (gpu_check.py ops)
#   4. AR-PSP18 keyframe vs non-keyframe at 720x960 and 1024x2048, eager fp32 / bf16, compiled bf16
#   5. one PASS / SHORT / MISSING line per target of issues 20 and 21
# Logs and JSON land in $OUT (default /tmp/arseg_gpu_check). Usage:
#   OUT=/some/dir bash benchmarks/gpu_check.sh          on the GPU machine (the device tool sets $OUT)
#   bash benchmarks/gpu_check.sh --dry-run              anywhere: the plan, and every Python stage on the CPU
# Without a CUDA device (and without --dry-run) it says so and exits 2 having run nothing.
set -u
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/arseg_gpu_check}; mkdir -p "$OUT"
PY=benchmarks/gpu_check.py
BUDGET=${GPU_CHECK_BUDGET_S:-480}  # seconds for the whole check; stages 3 and 4 get what is left
T0=$(date +%s); el() { echo "== [+$(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

if [ "${1:-}" = "--dry-run" ]; then
  el "dry run: the plan (stage: command), then every Python stage on the CPU at tiny sizes"
  cat <<EOF
build:       TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=16 FORCE_CUDA=1 pip install --no-build-isolation --no-deps --no-index -e .
tests:       pytest python_tests -m cuda   (default kernels; and ARSEG_EXPERIMENTAL_KERNELS=all)
sanitizers:  compute-sanitizer --tool memcheck python3 $PY sanitize; racecheck / synccheck: $PY sanitize --small
timings:     python3 $PY ops --json \$OUT/ops.json --deadline <what is left>
AR-PSP18:    python3 $PY arseg --json \$OUT/arseg.json --deadline <what is left>
targets:     python3 $PY targets \$OUT/ops.json \$OUT/arseg.json
budget:      ${BUDGET} s
EOF
  python3 $PY dry-run --out "$OUT/dry_run" > "$OUT/dry_run.log" 2>&1; rc=$?
  tail -5 "$OUT/dry_run.log"
  echo "dry run rc=$rc (the verdicts above judge tiny CPU shapes, not the targets; log: $OUT/dry_run.log)"
  exit $rc
fi

if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.version.cuda else 1)" 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device visible to a CUDA build of torch here; this check needs an H100/H200."
  echo "Nothing was run. On a CPU, 'bash benchmarks/gpu_check.sh --dry-run' checks the script itself."
  exit 2
fi

el env
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
git log -1 --format='commit %h %s' 2>/dev/null

el build
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} FORCE_CUDA=1
timeout 240 python3 -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1
echo "build rc=$?"; grep -E " error|error:" "$OUT/build.log" | head -20
python3 -c "import arseg_ops; print(arseg_ops.build_info())" || { tail -40 "$OUT/build.log"; exit 1; }

el "CUDA tests (default, experimental) and compute-sanitizer (memcheck, racecheck, synccheck), in parallel"
TESTS="python3 -m pytest python_tests -q -m cuda -p no:cacheprovider --maxfail=40"
timeout 200 $TESTS > "$OUT/tests_default.log" 2>&1 & P1=$!
ARSEG_EXPERIMENTAL_KERNELS=all timeout 200 $TESTS > "$OUT/tests_experimental.log" 2>&1 & P2=$!
timeout 200 compute-sanitizer --tool memcheck --print-limit 20 python3 $PY sanitize > "$OUT/memcheck.log" 2>&1 & P3=$!
timeout 200 compute-sanitizer --tool racecheck --racecheck-report hazard --print-limit 20 python3 $PY sanitize --small \
  > "$OUT/racecheck.log" 2>&1 & P4=$!
timeout 200 compute-sanitizer --tool synccheck --print-limit 20 python3 $PY sanitize --small > "$OUT/synccheck.log" 2>&1 & P5=$!
for pair in "$P1 tests_default" "$P2 tests_experimental" "$P3 memcheck" "$P4 racecheck" "$P5 synccheck"; do
  set -- $pair; wait "$1"; rc=$?
  summary=$(grep -E "passed|failed|ERROR SUMMARY|RACECHECK SUMMARY|calls done" "$OUT/$2.log" | tail -2 | tr '\n' ' ')
  echo "$2 rc=$rc ${summary}"
  grep -E "^FAILED|^ERROR" "$OUT/$2.log" | head -15
done

el "timings: default vs experimental kernels vs peers, 64x720x960 (ms, peak MB)"
timeout $(( $(left) > 120 ? 150 : 60 )) python3 $PY ops --json "$OUT/ops.json" --deadline $(( $(left) > 220 ? 120 : 40 )) \
  2>&1 | tee "$OUT/ops.log" | grep -vE "^\s*$"

el "AR-PSP18 keyframe vs non-keyframe"
budget=$(( $(left) - 25 )); [ $budget -lt 30 ] && budget=30
timeout $(( budget + 60 )) python3 $PY arseg --json "$OUT/arseg.json" --deadline $budget 2>&1 | tee "$OUT/arseg.log"

el "targets"
python3 $PY targets "$OUT/ops.json" "$OUT/arseg.json" | tee "$OUT/targets.txt"
el done
