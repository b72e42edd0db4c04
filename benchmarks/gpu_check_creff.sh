#!/usr/bin/env bash
# GPU check of the experimental fused creff kernel (csrc/cuda/creff_forward.cu), a few minutes, from the project root
# on a GPU machine: build (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise), the creff tests with
# ARSEG_EXPERIMENTAL_KERNELS=creff, compute-sanitizer memcheck / racecheck / synccheck on a small shape, and
# default-vs-fused timings at 1 x 64 x 720 x 960 fp32 and bf16 with peak memory. Logs land in $OUT.
#   OUT=/some/dir bash benchmarks/gpu_check_creff.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/arseg_gpu_check_creff}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "== [+$(( $(date +%s) - T0 ))s] $*"; }
CHECK=benchmarks/creff_gpu_check.py
el env
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv,noheader

el build
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=16 FORCE_CUDA=1
timeout 300 python3 -m pip install --no-build-isolation --no-deps --no-index -e . > $OUT/build.log 2>&1
echo "build rc=$?"; grep -E "error|spill" $OUT/build.log | head -20
grep -A3 "creff_forward_kernel" $OUT/build.log | grep -E "registers|spill" | head -8
python3 -c "import arseg_ops; print(arseg_ops.build_info())" || { tail -40 $OUT/build.log; exit 1; }

el "sanitizers on the fused kernel (small shapes)"
for tool in memcheck racecheck synccheck; do
  timeout 120 compute-sanitizer --tool $tool --print-limit 20 python3 $CHECK sanitize > $OUT/$tool.log 2>&1
  echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/$tool.log | tail -1)"
done

el "tests (default and fused paths; ARSEG_EXPERIMENTAL_KERNELS=creff for the CPU-side creff tests too)"
ARSEG_EXPERIMENTAL_KERNELS=creff timeout 300 python3 -m pytest -q -x python_tests/test_creff_cuda.py \
  $(ls python_tests/test_creff.py 2>/dev/null) > $OUT/tests.log 2>&1
echo "tests rc=$?"; tail -15 $OUT/tests.log

el "timings: default (composition) vs fused"
timeout 120 python3 $CHECK time 2>&1 | tee $OUT/timings.log
el done
