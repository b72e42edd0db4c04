#!/usr/bin/env bash
# Compile-checks the CUDA side without a GPU: (1) the standalone CMake build of csrc/cuda/*.cu (torch-free,
# sm_80 + sm_90 unless CMAKE_CUDA_ARCHITECTURES is set), (2) a syntax check of the CUDA torch glue
# (csrc/cuda/*.cpp) against the installed torch's headers and the CUDA toolkit's. Exits non-zero on failure.
# Without nvcc it prints "skipped: nvcc not found" and exits 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="$(command -v nvcc || true)"
if [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$NVCC" ]]; then
  echo "cuda_compile_check: skipped: nvcc not found"
  exit 0
fi
# The toolkit whose headers the glue check uses (nvcc may be a wrapper script outside the toolkit).
CUDA_ROOT=""
for cand in "${CUDA_HOME:-}" "${CUDA_PATH:-}" "$(dirname "$(readlink -f "$NVCC")")/.." /usr/local/cuda; do
  if [[ -n "$cand" && -f "$cand/include/cuda_runtime.h" ]]; then CUDA_ROOT="$(cd "$cand" && pwd)"; break; fi
done
if [[ -z "$CUDA_ROOT" ]]; then echo "cuda_compile_check: FAILED: no CUDA toolkit headers found (set CUDA_HOME)"; exit 1; fi
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT

echo "cuda_compile_check: nvcc = $NVCC ($("$NVCC" --version | grep -o 'release [0-9.]*'))"
echo "cuda_compile_check: [1/2] cmake build of csrc/cuda/*.cu into $BUILD"
cmake_args=(-S "$ROOT" -B "$BUILD" -DCMAKE_CUDA_COMPILER="$NVCC")
if [[ -n "${CMAKE_CUDA_ARCHITECTURES:-}" ]]; then cmake_args+=(-DCMAKE_CUDA_ARCHITECTURES="$CMAKE_CUDA_ARCHITECTURES"); fi
cmake "${cmake_args[@]}" > "$BUILD/configure.log" 2>&1 || { cat "$BUILD/configure.log"; exit 1; }
if ! cmake --build "$BUILD" -j "${MAX_JOBS:-2}" > "$BUILD/build.log" 2>&1; then
  grep -v "ptxas info" "$BUILD/build.log" | tail -60
  echo "cuda_compile_check: FAILED: cmake build of the CUDA kernels"
  exit 1
fi
spills="$(grep -c "Registers are spilled" "$BUILD/build.log" || true)"
echo "cuda_compile_check: kernels built ($(ls "$BUILD"/*.a)); kernels with register spills: $spills"
grep "Registers are spilled" "$BUILD/build.log" | sed -E "s/.*function '([^']*)'.*, ([0-9]+ bytes spill stores).*/  spill: \2 in \1/" \
  | sed -E 's/_ZN5arseg4cuda[0-9]+_GLOBAL__N__[0-9a-f_]+_[0-9]+//' || true

echo "cuda_compile_check: [2/2] syntax check of the CUDA glue (csrc/cuda/*.cpp) with g++ -DARSEG_WITH_CUDA"
PYTHON="${PYTHON:-python}"
mapfile -t torch_includes < <("$PYTHON" -c "from torch.utils.cpp_extension import include_paths; print('\n'.join(include_paths()))")
inc_flags=()
for d in "${torch_includes[@]}"; do inc_flags+=(-I"$d"); done
# A CPU torch wheel ships c10/cuda headers but not the generated c10/cuda/impl/cuda_cmake_macros.h;
# C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips it (it only defines the shared-library export macro).
for src in "$ROOT"/csrc/cuda/*.cpp; do
  g++ -std=c++20 -fsyntax-only -Wall -Werror -DARSEG_WITH_CUDA -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
    "${inc_flags[@]}" -I"$CUDA_ROOT/include" "$src"
  echo "  ok: ${src#"$ROOT"/}"
done
echo "cuda_compile_check: passed"
