"""Build and run the CPU emulator of the CUDA kernels (csrc/cuda_emu): the machinery behind
arseg_ops.testing.cuda_emulated.

The emulator is the real csrc/cuda/*.cu source compiled by the host C++ compiler against csrc/cuda_emu (a block's
threads run as fibers with real barriers and warp rendezvous; mma.sync and cp.async follow the PTX ISA), linked
with csrc/cuda_emu/harness.cpp, which runs one op call with the kernels the CUDA glue would choose
(csrc/cuda/kernel_choice.h). Built on first use from the checkout's csrc/ (or ARSEG_CUDA_EMU_SOURCE), one object
per translation unit cached under a hash of its source, the headers it includes and the flags: editing a .cu or a
header rebuilds what includes it, no reinstall. Three builds: plain, address (ASan + UBSan), thread (TSan); ARSEG_CUDA_EMU_SANITIZE picks.
Cache: ARSEG_CUDA_EMU_CACHE, else build/cuda_emu in the checkout, else ~/.cache/arseg/cuda_emu.
"""
import concurrent.futures
import fcntl
import glob
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import tempfile

import numpy as np
import torch

MODES = ("plain", "address", "thread")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_COMMON = ["-std=c++17", "-g", "-O1", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas", "-DARSEG_CUDA_EMULATION"]
# The kernels are compiled (and the emulator's own code too) with these per mode; the emulator's scheduler is not
# instrumented by TSan (its bookkeeping is not the kernels' memory), but knows it runs under it (EMU_TSAN).
_MODE_FLAGS = {
    "plain": [],
    "address": ["-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
    "thread": ["-fsanitize=thread", "-DEMU_TSAN"],
}
_SCHEDULER_FLAGS = {"plain": [], "address": _MODE_FLAGS["address"], "thread": ["-DEMU_TSAN"]}
_SANITIZER_ENV = {
    "address": {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=66",
                "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=66"},
    "thread": {"TSAN_OPTIONS": "halt_on_error=1:report_signal_unsafe=0:history_size=4:exitcode=66"},
}


class CudaEmulationError(RuntimeError):
    """The emulated kernels did something a GPU would fault on or compute wrong: a race, an out-of-bounds access,
    a divergent barrier, an unwaited cp.async, ... (the message carries the emulator's or sanitizer's report)."""


def source_dir():
    """The csrc/ whose kernels are emulated: ARSEG_CUDA_EMU_SOURCE, else the checkout this package lives in."""
    src = os.environ.get("ARSEG_CUDA_EMU_SOURCE") or os.path.join(os.path.dirname(_PACKAGE_DIR), "csrc")
    if not os.path.isfile(os.path.join(src, "cuda_emu", "harness.cpp")):
        raise RuntimeError(
            "arseg_ops CUDA emulator: no kernel source at %s (it needs a source checkout: install with "
            "`pip install -e .`, or set ARSEG_CUDA_EMU_SOURCE to the checkout's csrc/)" % src)
    return os.path.abspath(src)


def sanitize_mode():
    mode = os.environ.get("ARSEG_CUDA_EMU_SANITIZE", "") or "plain"
    if mode not in MODES:
        raise ValueError("ARSEG_CUDA_EMU_SANITIZE must be one of address, thread (or empty), got %r" % mode)
    return mode


def _cache_root(src):
    env = os.environ.get("ARSEG_CUDA_EMU_CACHE")
    if env:
        return env
    checkout_build = os.path.join(os.path.dirname(src), "build")
    if os.access(os.path.dirname(src), os.W_OK):
        return os.path.join(checkout_build, "cuda_emu")
    return os.path.join(os.path.expanduser("~"), ".cache", "arseg", "cuda_emu")


def _torch_macro_flags():
    """The -D macros of torch's COMMON_NVCC_FLAGS (no implicit half / bfloat16 conversions), from the one list
    setup.py builds with: the emulated kernels compile under the same restrictions as the GPU build."""
    spec = importlib.util.spec_from_file_location("arseg_build_flags", os.path.join(_PACKAGE_DIR, "_build_flags.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [f for f in module.torch_common_nvcc_flags() if f.startswith("-D")]


def _compiler():
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError("arseg_ops CUDA emulator: no C++ compiler %r found (set CXX)" % cxx)
    return cxx


def _digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


_built = {}


def _file_digest(path):
    with open(path, "rb") as f:
        return _digest(f.read())


class _Unit:
    """One translation unit: its object is reused while the unit, the command and every header the compiler read
    for it (recorded from -MD in a manifest) are unchanged; any edit recompiles just the units that include it."""

    def __init__(self, path, cmd, out_dir, version):
        self.path, self.cmd = path, cmd
        key = _digest(_file_digest(path), " ".join(cmd), version)
        self.stem = os.path.join(out_dir, "%s-%s" % (os.path.basename(path), key))

    def cached_object(self):
        try:
            with open(self.stem + ".deps") as f:
                deps = json.load(f)
            if all(os.path.exists(d) and _file_digest(d) == h for d, h in deps.items()):
                obj = "%s-%s.o" % (self.stem, _digest(*sorted(deps.items())))
                return obj if os.path.exists(obj) else None
        except (OSError, ValueError):
            pass
        return None

    def compile(self):
        """Builds the object; returns (object path, None) or (None, the compiler's error)."""
        tmp = self.stem + ".tmp.o"
        proc = subprocess.run(self.cmd + ["-MD", "-MF", self.stem + ".tmp.d", "-c", self.path, "-o", tmp],
                              capture_output=True, text=True)
        if proc.returncode:
            return None, " ".join(self.cmd) + " -c " + self.path + "\n" + proc.stderr[-6000:]
        with open(self.stem + ".tmp.d") as f:
            names = f.read().replace("\\\n", " ").split(":", 1)[1].split()
        deps = {os.path.abspath(d): _file_digest(d) for d in names}
        obj = "%s-%s.o" % (self.stem, _digest(*sorted(deps.items())))
        os.replace(tmp, obj)  # an interrupted build never leaves a truncated cached object
        with open(self.stem + ".deps", "w") as f:
            json.dump(deps, f)
        os.remove(self.stem + ".tmp.d")
        return obj, None


def harness_path(mode=None):
    """Path of the emulator executable for `mode` (default: ARSEG_CUDA_EMU_SANITIZE), built or rebuilt as needed."""
    mode = mode or sanitize_mode()
    if mode not in MODES:
        raise ValueError("sanitize mode must be one of %s, got %r" % (", ".join(MODES), mode))
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError("arseg_ops CUDA emulator: runs on x86-64 Linux only (its fiber switch is x86-64 code)")
    src = source_dir()
    if (src, mode) in _built:  # once per process: sources do not change under a running test session
        return _built[(src, mode)]
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    includes = ["-I" + os.path.join(src, "cuda_emu", "include"), "-I" + os.path.join(src, "cuda_emu"),
                "-I" + src, "-I" + os.path.join(src, "cuda")]
    sources = [(p, _MODE_FLAGS[mode] + ["-x", "c++"]) for p in sorted(glob.glob(os.path.join(src, "cuda", "*.cu")))]
    sources += [(os.path.join(src, "cuda_emu", "harness.cpp"), _MODE_FLAGS[mode]),
                (os.path.join(src, "cuda_emu", "cuda_emu_mem.cpp"), _MODE_FLAGS[mode]),
                (os.path.join(src, "cuda_emu", "cuda_emu.cpp"), _SCHEDULER_FLAGS[mode]),
                (os.path.join(src, "cuda_emu", "cuda_emu_block.cpp"), _SCHEDULER_FLAGS[mode]),
                (os.path.join(src, "cuda_emu", "cuda_emu_mma.cpp"), _SCHEDULER_FLAGS[mode])]
    out_dir = os.path.join(_cache_root(src), mode)
    os.makedirs(out_dir, exist_ok=True)
    units = [_Unit(path, [cxx] + _COMMON + _torch_macro_flags() + flags + includes, out_dir, version)
             for path, flags in sources]
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test processes build once
        objects = [u.cached_object() for u in units]
        todo = [u for u, obj in zip(units, objects) if obj is None]
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            built = iter(list(pool.map(_Unit.compile, todo)))
        errors = []
        for i, obj in enumerate(objects):
            if obj is None:
                objects[i], error = next(built)
                errors += [error] if error else []
        if errors:
            raise RuntimeError("arseg_ops CUDA emulator: compile failed (%s mode):\n%s" % (mode, errors[0]))
        exe = os.path.join(out_dir, "harness-" + _digest(*objects))
        if not os.path.exists(exe):
            link = [cxx] + _MODE_FLAGS[mode] + objects + ["-o", exe + ".tmp"]
            proc = subprocess.run(link, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError("arseg_ops CUDA emulator: link failed:\n" + proc.stderr[-4000:])
            os.replace(exe + ".tmp", exe)
    _built[(src, mode)] = exe
    return exe


# ---- one call ----

DTYPES = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
ORDERS = {"forward": "fwd", "reverse": "rev", "random": "random"}


class Options:
    """How the emulated device runs a call (see testing.cuda_emulated)."""

    def __init__(self, order="forward", seed=1, sm_count=132, misaligned=False, sanitize=None):
        if order not in ORDERS:
            raise ValueError("order must be one of forward, reverse, random, got %r" % (order,))
        if not isinstance(sm_count, int) or sm_count < 1:
            raise ValueError("sm_count must be a positive int, got %r" % (sm_count,))
        if sanitize is not None and sanitize not in MODES:
            raise ValueError("sanitize must be one of plain, address, thread, got %r" % (sanitize,))
        self.order, self.seed, self.sm_count, self.misaligned = order, int(seed), sm_count, bool(misaligned)
        self.sanitize = sanitize


def _write(t, path):
    t.detach().contiguous().view(-1).view(torch.uint8).numpy().tofile(path)


def _read(path, dtype, shape):
    raw = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    return raw.view(dtype).reshape(shape)


def run(op, *, experimental, dtype, nhwc, sizes, inputs, output_shapes, options):
    """Runs `op` (a harness op name) on the emulated device. inputs: tensors (any layout; sent in logical NCHW
    order); returns (outputs as contiguous tensors of `output_shapes`, the kernel name the harness reports)."""
    mode = options.sanitize or sanitize_mode()
    exe = harness_path(mode)
    with tempfile.TemporaryDirectory(prefix="arseg_emu_") as tmp:
        ins = []
        for i, t in enumerate(inputs):
            path = os.path.join(tmp, "in%d.bin" % i)
            _write(t, path)
            ins.append(path)
        outs = [os.path.join(tmp, "out%d.bin" % i) for i in range(len(output_shapes))]
        args = [exe, "op=" + op, "experimental=%d" % bool(experimental), "dtype=" + DTYPES[dtype],
                "layout=" + ("nhwc" if nhwc else "nchw"), "misalign=%d" % options.misaligned,
                "in=" + ",".join(ins), "out=" + ",".join(outs)]
        args += ["%s=%s" % (k, repr(float(v)) if isinstance(v, float) else v) for k, v in sizes.items()]
        env = dict(os.environ, ARSEG_EMU_ORDER=ORDERS[options.order], ARSEG_EMU_SEED=str(options.seed),
                   ARSEG_EMU_SM_COUNT=str(options.sm_count), **_SANITIZER_ENV.get(mode, {}))
        proc = subprocess.run(args, capture_output=True, text=True, env=env)
        report = [line for line in proc.stderr.splitlines() if line.startswith("EMU_RESULT")]
        if proc.returncode != 0 or not report:
            what = {3: "the emulator reported errors", 66: "the %s sanitizer reported an error" % mode,
                    2: "bad harness arguments", 4: "a kernel launcher returned an error"}
            raise CudaEmulationError("arseg_ops CUDA emulator (%s, %s): %s (exit %d):\n%s" % (
                op, mode, what.get(proc.returncode, "the emulated run failed"), proc.returncode,
                proc.stderr[-6000:]))
        fields = dict(kv.split("=", 1) for kv in report[-1].split()[1:])
        if fields["kernel"] == "composed":
            return None, "composed"
        return [_read(p, dtype, s) for p, s in zip(outs, output_shapes)], fields["kernel"]
