"""Build arseg_ops._C: CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Environment:
  FORCE_CUDA=1          build the CUDA kernels even without a visible GPU (needs a CUDA build of torch + nvcc)
  ARSEG_FORCE_CPU=1     never build the CUDA kernels
  TORCH_CUDA_ARCH_LIST  CUDA architectures, e.g. "8.0;9.0" (default: the visible GPU's, else "8.0;9.0")
  MAX_JOBS              parallel compile jobs (default: all cores); used by ninja
  ARSEG_DEBUG=1         debug build: -O0 -g with assertions on (-UNDEBUG) for C++; -O0 -G -g (device debug info)
                        for nvcc. Slow kernels: for gdb / cuda-gdb / compute-sanitizer, never for timings.
                        A debug build sets arseg_ops._C.debug to 1.
Always install with `pip install --no-build-isolation ...`: an isolated build would download another torch.

Parallel build: torch's BuildExtension compiles with ninja when the `ninja` package is installed
(`pip install ninja`; one process per source file, MAX_JOBS at a time) and falls back to compiling the files
one after another otherwise (it warns "could not find ninja"). Add `-v` to pip to see the compiler commands.
"""
import glob
import importlib.util
import os
import sys

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build_flags():
    """arseg_ops/_build_flags.py, loaded by path (the package is not importable before it is built): the nvcc
    flags live there once, for this build and for CI's compile check (.ci/cuda_compile_check.py)."""
    spec = importlib.util.spec_from_file_location("arseg_build_flags", os.path.join(HERE, "arseg_ops", "_build_flags.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_flags = _load_build_flags()


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _want_cuda():
    if _flag("ARSEG_FORCE_CPU"):
        return False
    if _flag("FORCE_CUDA"):
        if torch.version.cuda is None:
            raise RuntimeError(
                "FORCE_CUDA=1 needs a CUDA build of torch, but torch %s has no CUDA "
                "(unset FORCE_CUDA, or set ARSEG_FORCE_CPU=1)" % torch.__version__
            )
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _cuda_archs():
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            archs = "%d.%d" % (major, minor)
        else:
            archs = build_flags.DEFAULT_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # torch's BuildExtension reads it
    return archs


def _openmp_flags():
    """at::parallel_for is inline in ATen's headers and uses `#pragma omp parallel` when torch's backend is
    OpenMP: without -fopenmp the pragma is ignored and every CPU kernel runs on one thread. The GOMP symbols
    resolve against the libgomp torch itself loads, so no extra link flag is needed."""
    info = torch.__config__.parallel_info()
    if sys.platform != "darwin" and "backend: OpenMP" in info and "OpenMP not found" not in info:
        return ["-fopenmp"]
    return []


def _debug():
    return _flag("ARSEG_DEBUG")


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _extension():
    with_cuda = _want_cuda()
    debug = _debug()
    define_macros = [("ARSEG_TORCH_VERSION", '"%s"' % torch.__version__)]
    if debug:
        define_macros.append(("ARSEG_DEBUG_BUILD", None))
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    # Flags given here come after Python's own (-DNDEBUG -O2 ...), so -O0 and -UNDEBUG win in a debug build.
    cxx_flags = (["-O0", "-g", "-UNDEBUG"] if debug else ["-O3"]) + _openmp_flags()
    if not with_cuda:
        return CppExtension("arseg_ops._C", sources, define_macros=define_macros,
                            extra_compile_args={"cxx": cxx_flags})
    archs = _cuda_archs()
    define_macros += [
        ("ARSEG_WITH_CUDA", None),
        ("ARSEG_CUDA_VERSION", '"%s"' % torch.version.cuda),
        ("ARSEG_CUDA_ARCHS", '"%s"' % archs),
    ]
    sources += _sources("csrc/cuda/*.cpp") + _sources("csrc/cuda/*.cu")
    # torch puts its COMMON_NVCC_FLAGS (no implicit half/bfloat16 conversions) in front of these.
    return CUDAExtension("arseg_ops._C", sources, define_macros=define_macros,
                         extra_compile_args={"cxx": cxx_flags, "nvcc": build_flags.nvcc_flags(debug)})


setup(
    name="arseg",
    version="0.1.0",
    description="Fused CPU/CUDA kernels for AR-Seg compressed-video semantic segmentation (mv_warp, local_attn)",
    packages=["arseg_ops", "arseg_ops.bench", "arseg_ops.cli", "arseg_ops.models", "arseg_ops.train"],
    package_dir={"arseg_ops": "arseg_ops", "arseg_ops.models": "models"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy", "av", "tqdm"],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["arseg = arseg_ops.cli:main"]},
    zip_safe=False,
)
