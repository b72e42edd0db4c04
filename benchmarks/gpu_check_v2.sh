#!/usr/bin/env bash
# GPU check of the experimental local_attn v2 kernels (csrc/cuda/local_attn_v2_*.cu), about 5 minutes, from the
# project root on a GPU machine: build (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise), the CUDA tests with
# ARSEG_EXPERIMENTAL_KERNELS=all, compute-sanitizer memcheck and racecheck on the v2 kernels (in parallel with the
# tests), default-vs-v2 timings with peak memory (benchmarks/local_attn_v2_check.py), and one Nsight Compute
# profile of the v2 forward and backward. Logs land in $OUT (default /tmp/arseg_gpu_check_v2).
#   OUT=/some/dir bash benchmarks/gpu_check_v2.sh
# Derived from /work/shared/gpu/check.sh (which also runs `arseg bench` and the peers; run it as well for those).
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/arseg_gpu_check_v2}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "== [+$(( $(date +%s) - T0 ))s] $*"; }
CHECK=benchmarks/local_attn_v2_check.py
el env
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv,noheader
python3 -c "import torch;print(torch.__version__, torch.version.cuda)"

el build
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=16 FORCE_CUDA=1
timeout 300 python3 -m pip install --no-build-isolation --no-deps --no-index -e . > $OUT/build.log 2>&1
echo "build rc=$?"; grep -E "error|spill" $OUT/build.log | head -20
python3 -c "import arseg_ops; print(arseg_ops.build_info())" || { tail -40 $OUT/build.log; exit 1; }

el "tests (ARSEG_EXPERIMENTAL_KERNELS=all) + sanitizers on the v2 kernels"
( timeout 120 compute-sanitizer --tool memcheck --print-limit 20 python3 $CHECK sanitize > $OUT/memcheck_v2.log 2>&1
  echo "memcheck rc=$?" >> $OUT/memcheck_v2.log
  timeout 90 compute-sanitizer --tool racecheck --racecheck-report hazard --print-limit 20 python3 $CHECK sanitize small \
    > $OUT/racecheck_v2.log 2>&1; echo "racecheck rc=$?" >> $OUT/racecheck_v2.log
  timeout 60 compute-sanitizer --tool synccheck --print-limit 20 python3 $CHECK sanitize small \
    > $OUT/synccheck_v2.log 2>&1; echo "synccheck rc=$?" >> $OUT/synccheck_v2.log ) &
SAN=$!
ARSEG_EXPERIMENTAL_KERNELS=all timeout 200 python3 -m pytest python_tests -q -m cuda -p no:cacheprovider \
  --timeout=90 --maxfail=40 --ignore=python_tests/test_video.py --ignore=python_tests/test_cli.py > $OUT/tests.log 2>&1
echo "tests rc=$?"; grep -E "passed|failed" $OUT/tests.log | tail -1; grep -E "^FAILED|^ERROR" $OUT/tests.log | head -40
wait $SAN
for f in memcheck racecheck synccheck; do echo "-- $f"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|rc=|all calls done" $OUT/${f}_v2.log | tail -3; done

el "timings: default vs v2 (ms, do_bench medians, L2 flushed; same process, same GPU)"
left=$(( 270 - ($(date +%s) - T0) )); [ $left -lt 60 ] && left=60
timeout $(( left + 30 )) python3 $CHECK time $left 2>&1 | tee $OUT/timings.log

el "ncu: v2 forward and backward kernels at C=64 720x960 K=7 (fp32, bf16)"
timeout 120 ncu --kernel-name regex:local_attn_v2 --launch-count 6 --section SpeedOfLight --section Occupancy \
  --section LaunchStats --section MemoryWorkloadAnalysis --section WarpStateStats python3 $CHECK ncu > $OUT/ncu_v2.log 2>&1
echo "ncu rc=$?"; grep -E "local_attn_v2|Duration|Memory Throughput|DRAM Throughput|Registers Per|Achieved Occupancy|Compute \(SM\)" $OUT/ncu_v2.log | head -60
el done
