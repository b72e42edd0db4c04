"""The compiler flags of the CUDA kernels: one list for setup.py's CUDAExtension and for CI's compile check.

setup.py loads this file by path (the package cannot be imported before it is built), and
.ci/cuda_compile_check.py runs it to compile every csrc/cuda/*.cu exactly as `pip install` with a CUDA build of
torch does. torch's BuildExtension adds torch.utils.cpp_extension.COMMON_NVCC_FLAGS (-D__CUDA_NO_HALF_CONVERSIONS__
and friends, which remove the implicit float <-> __half / __nv_bfloat16 conversions) in front of ours; a check
without them passed code that every CUDA user then failed to build (T(0.0f) for a 16-bit T).
Runnable: `python arseg_ops/_build_flags.py` prints the full nvcc command-line flags, one per line.
"""
import os
import re
import sys

# setup.py's own nvcc flags, after torch's COMMON_NVCC_FLAGS. -warn-spills makes ptxas report register spills.
NVCC_FLAGS = ["--expt-relaxed-constexpr", "-Xptxas=-warn-spills"]
NVCC_RELEASE_FLAGS = ["-O3", "-lineinfo"]
NVCC_DEBUG_FLAGS = ["-O0", "-G", "-g", "-UNDEBUG"]  # -UNDEBUG: assertions on in device code
# What torch's BuildExtension itself passes to nvcc for every .cu besides COMMON_NVCC_FLAGS and -std.
TORCH_NVCC_EXTRA = ["-Xcompiler", "-fPIC", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
DEFAULT_ARCHS = "8.0;9.0"


def nvcc_flags(debug=False):
    """The nvcc flags setup.py hands to CUDAExtension (extra_compile_args["nvcc"])."""
    return NVCC_FLAGS + (NVCC_DEBUG_FLAGS if debug else NVCC_RELEASE_FLAGS)


def torch_common_nvcc_flags():
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
    return list(COMMON_NVCC_FLAGS)


def torch_cxx_std():
    """The -std= BuildExtension adds when none is given: c++17 up to torch 2.9-ish, c++20 in 2.13. Read from the
    installed torch's own source so the check builds with the standard `pip install` would use."""
    import inspect
    from torch.utils.cpp_extension import BuildExtension
    found = re.findall(r"'c\+\+(\d\d)'", inspect.getsource(BuildExtension.build_extensions))
    return "-std=c++%s" % (found[0] if found else "17")


def gencode_flags(archs=DEFAULT_ARCHS):
    """-gencode flags for a TORCH_CUDA_ARCH_LIST string such as "8.0;9.0" (SASS for each, as torch builds it)."""
    out = []
    for arch in archs.replace(",", ";").replace(" ", ";").split(";"):
        if arch:
            num = arch.replace(".", "").replace("+PTX", "")
            out.append("-gencode=arch=compute_%s,code=sm_%s" % (num, num))
    return out


def full_nvcc_flags(archs=DEFAULT_ARCHS, debug=False):
    """Every flag a .cu of the extension is compiled with: torch's common flags, ours, torch's extras, archs."""
    return (torch_common_nvcc_flags() + nvcc_flags(debug) + TORCH_NVCC_EXTRA + [torch_cxx_std()]
            + gencode_flags(archs))


if __name__ == "__main__":
    archs = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    print("\n".join(full_nvcc_flags(archs)))
