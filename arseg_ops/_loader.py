"""Load the compiled library and refuse one built against another torch (its ABI would not match)."""
import importlib

import torch

_C = None

_REBUILD_HINT = "rebuild it: pip install --no-build-isolation -e .  (from the arseg source tree)"


def load_library():
    """Import arseg_ops._C, which registers the torch.ops.arseg_ops operators."""
    global _C
    if _C is not None:
        return _C
    try:
        module = importlib.import_module("arseg_ops._C")
    except ImportError as exc:
        raise ImportError(
            "arseg_ops: the compiled extension arseg_ops._C could not be loaded (%s). It is either not built "
            "or built against another torch than the installed %s; %s" % (exc, torch.__version__, _REBUILD_HINT)
        ) from exc
    check_torch_version(module.torch_version, torch.__version__)
    _C = module
    return module


def check_torch_version(built, installed):
    """An extension must run on the torch it was compiled against: the C++ ABI is not stable across releases."""
    if built != installed:
        raise ImportError(
            "arseg_ops._C was built against torch %s but torch %s is installed; %s" % (built, installed, _REBUILD_HINT)
        )


def build_info():
    """What the installed extension was compiled with: backends, CUDA archs, torch and CUDA versions; and the CPU
    instruction set its per-instruction-set kernels run with here (cpu_isa)."""
    module = load_library()
    with_cuda = bool(module.with_cuda)
    archs = [a for a in module.cuda_archs.replace(",", ";").split(";") if a] if with_cuda else []
    return {
        "backends": ["cpu", "cuda"] if with_cuda else ["cpu"],
        "cuda": with_cuda,
        "cuda_archs": archs,
        "cuda_version": module.cuda_version or None,
        "torch_version": module.torch_version,
        "torch_runtime_version": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "experimental_kernels": _current_experimental_kernels(module),
        "debug": bool(module.debug),
        "cpu_isa": _cpu_isa(module),
    }


def _cpu_isa(module):
    """The instruction set creff, mv_warp and local_attn run with on this CPU now (ARSEG_CPU_ISA caps it), or
    what is wrong with ARSEG_CPU_ISA."""
    try:
        return module._cpu_isa()
    except RuntimeError as exc:
        return "invalid: %s" % str(exc).splitlines()[0]


class poison_outputs:
    """Context manager (tests only): every operator output is NaN-filled before its kernel writes it."""

    def __enter__(self):
        self._was = load_library()._set_poison_outputs(True)
        return self

    def __exit__(self, *exc):
        load_library()._set_poison_outputs(self._was)
        return False


def _current_experimental_kernels(module):
    names = module._set_experimental_kernels("")
    module._set_experimental_kernels(names)
    return names


def experimental_kernel(name):
    """True when the opt-in kernels of family `name` are switched on: the same test as arseg::experimental_kernel in
    C++ (the setting is a comma-separated list of names, or "all")."""
    items = _current_experimental_kernels(load_library()).split(",")
    return "all" in items or name in items


class experimental_kernels:
    """Context manager: opt in to kernels that no GPU run has verified yet, e.g. experimental_kernels("local_attn").

    Names are kernel families ("local_attn", "mv_warp", "creff") or "all". Outside the block the previous
    setting (initially the environment variable ARSEG_EXPERIMENTAL_KERNELS, default none) is restored. Kernels
    that exist only on one backend ignore the setting elsewhere; build_info()["experimental_kernels"] shows it.
    """

    def __init__(self, *names):
        for name in names:
            if not isinstance(name, str) or not name or "," in name:
                raise ValueError("experimental_kernels: each name must be a non-empty kernel name without ',', got %r"
                                 % (name,))
        self._names = ",".join(names)

    def __enter__(self):
        self._was = load_library()._set_experimental_kernels(self._names)
        return self

    def __exit__(self, *exc):
        load_library()._set_experimental_kernels(self._was)
        return False
