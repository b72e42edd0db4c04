#!/usr/bin/env python3
"""CI's CUDA build check, without a GPU: every csrc/cuda/*.cu compiled with exactly the flags `pip install` uses
with a CUDA build of torch (arseg_ops/_build_flags.py: torch's COMMON_NVCC_FLAGS + setup.py's own), for each
architecture, plus a syntax check of the torch glue (csrc/cuda/*.cpp).

The full compile runs ptxas with -v: the registers and spill bytes of every kernel are compared with
.ci/ptxas_baseline.txt and a kernel that got worse fails the check (a refactor must not cost the GPU anything;
change the baseline on purpose with --update-baseline and say why in the commit).

  python .ci/cuda_compile_check.py                     # full compile, sm_80 + sm_90, compare with the baseline
  python .ci/cuda_compile_check.py --frontend-only     # nvcc's front end (-cuda) only: seconds, no ptxas table
  python .ci/cuda_compile_check.py --archs 9.0 --update-baseline
Without nvcc it prints "skipped: nvcc not found" and exits 0.
"""
import argparse
import concurrent.futures
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(ROOT, ".ci", "ptxas_baseline.txt")


def load_build_flags():
    spec = importlib.util.spec_from_file_location("arseg_build_flags", os.path.join(ROOT, "arseg_ops", "_build_flags.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.access("/usr/local/cuda/bin/nvcc", os.X_OK):
        nvcc = "/usr/local/cuda/bin/nvcc"
    return nvcc


def cuda_root(nvcc):
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                 os.path.join(os.path.dirname(os.path.realpath(nvcc)), ".."), "/usr/local/cuda"):
        if cand and os.path.isfile(os.path.join(cand, "include", "cuda_runtime.h")):
            return os.path.abspath(cand)
    return None


def compile_one(nvcc, flags, src, out_dir, frontend_only):
    base = os.path.join(out_dir, os.path.basename(src))
    if frontend_only:
        cmd = [nvcc] + flags + ["-cuda", src, "-o", base + ".cpp.ii"]
    else:
        cmd = [nvcc] + flags + ["-Xptxas=-v", "-c", src, "-o", base + ".o"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return src, proc.returncode, proc.stdout + proc.stderr, cmd


_ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '(sm_\d+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"ptxas info\s*: Used (\d+) registers")


def parse_ptxas(log):
    """{(arch, mangled kernel): (registers, spill store bytes, spill load bytes)} from ptxas -v output."""
    table, current, spills = {}, None, (0, 0)
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current, spills = (m.group(2), m.group(1)), (0, 0)
            continue
        m = _PROPS.search(line)
        if m and current:
            spills = (int(m.group(2)), int(m.group(3)))
            continue
        m = _REGS.search(line)
        if m and current:
            table[current] = (int(m.group(1)),) + spills
            current = None
    return table


def demangle(names):
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    # The anonymous namespace's per-file name says nothing and changes with the path.
    clean = [re.sub(r"\(anonymous namespace\)::", "", o).replace(" ", "") for o in out]
    return dict(zip(names, clean)) if len(clean) == len(names) else {n: n for n in names}


def read_baseline():
    table = {}
    if os.path.exists(BASELINE):
        for line in open(BASELINE):
            if line.strip() and not line.startswith("#"):
                arch, regs, st, ld, name = line.rstrip("\n").split("\t")
                table[(arch, name)] = (int(regs), int(st), int(ld))
    return table


def write_baseline(table):
    with open(BASELINE, "w") as f:
        f.write("# ptxas -v per kernel under the extension's nvcc flags (.ci/cuda_compile_check.py --update-baseline)\n")
        f.write("# arch\tregisters\tspill store bytes\tspill load bytes\tkernel\n")
        for (arch, name), (regs, st, ld) in sorted(table.items()):
            f.write("%s\t%d\t%d\t%d\t%s\n" % (arch, regs, st, ld, name))


def compare(table, baseline):
    """(lines to print, number of kernels that got worse)."""
    lines, worse = [], 0
    for key in sorted(set(table) | set(baseline)):
        arch, name = key
        short = name if len(name) < 110 else name[:107] + "..."
        if key not in baseline:
            lines.append("  new      %s %s: %d regs, %d/%d spill bytes" % ((arch, short) + table[key]))
        elif key not in table:
            lines.append("  gone     %s %s" % (arch, short))
        else:
            (r, s, l), (r0, s0, l0) = table[key], baseline[key]
            if r > r0 or s > s0 or l > l0:
                worse += 1
                lines.append("  WORSE    %s %s: %d -> %d regs, spills %d/%d -> %d/%d" % (arch, short, r0, r, s0, l0, s, l))
            elif (r, s, l) != (r0, s0, l0):
                lines.append("  better   %s %s: %d -> %d regs, spills %d/%d -> %d/%d" % (arch, short, r0, r, s0, l0, s, l))
    return lines, worse


def glue_syntax_check(cuda_inc):
    from torch.utils.cpp_extension import include_paths
    inc = ["-I" + d for d in include_paths()] + ["-I" + cuda_inc]
    # A CPU torch wheel ships c10/cuda headers but not the generated c10/cuda/impl/cuda_cmake_macros.h;
    # C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips it (it only defines the shared-library export macro).
    for src in sorted(os.listdir(os.path.join(ROOT, "csrc", "cuda"))):
        if src.endswith(".cpp"):
            path = os.path.join(ROOT, "csrc", "cuda", src)
            cmd = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-Werror", "-DARSEG_WITH_CUDA",
                   "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"] + inc + [path]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stdout + proc.stderr)
                return False
            print("  ok: csrc/cuda/" + src)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default=os.environ.get("ARSEG_CHECK_ARCHS", "8.0;9.0"))
    ap.add_argument("--frontend-only", action="store_true", help="nvcc -cuda only (no ptxas, no baseline)")
    ap.add_argument("--update-baseline", action="store_true", help="write the ptxas table as the new baseline")
    ap.add_argument("--no-glue", action="store_true", help="skip the g++ syntax check of csrc/cuda/*.cpp")
    ap.add_argument("--only", action="append", default=[],
                    help="compile only the .cu files whose name contains this (repeatable; a quick check while "
                         "working on one file: the other files' kernels are not compared)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", os.cpu_count() or 2)))
    args = ap.parse_args()
    nvcc = find_nvcc()
    if nvcc is None:
        print("cuda_compile_check: skipped: nvcc not found")
        return 0
    root = cuda_root(nvcc)
    if root is None:
        print("cuda_compile_check: FAILED: no CUDA toolkit headers found (set CUDA_HOME)")
        return 1
    flags = load_build_flags().full_nvcc_flags(args.archs) + ["-Icsrc", "-Icsrc/cuda"]
    print("cuda_compile_check: %s, flags: %s" % (nvcc, " ".join(flags)))
    sources = sorted(os.path.join("csrc", "cuda", f) for f in os.listdir(os.path.join(ROOT, "csrc", "cuda"))
                     if f.endswith(".cu") and (not args.only or any(o in f for o in args.only)))
    failed, table = 0, {}
    with tempfile.TemporaryDirectory() as out_dir, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(compile_one, nvcc, flags, s, out_dir, args.frontend_only) for s in sources]
        for job in jobs:
            src, rc, log, cmd = job.result()
            if rc:
                failed += 1
                errors = [l for l in log.splitlines() if "ptxas info" not in l and not l.startswith("    ")]
                print("  FAILED: %s (%d error lines)\n%s" % (src, sum("error" in l for l in errors), "\n".join(errors[:40])))
            else:
                print("  ok: %s" % src)
                table.update(parse_ptxas(log))
    if failed:
        print("cuda_compile_check: FAILED: %d of %d .cu files do not compile under the extension's flags" % (failed, len(sources)))
        return 1
    status = 0
    if not args.frontend_only:
        names = demangle(sorted({name for _, name in table}))
        table = {(arch, names[name]): v for (arch, name), v in table.items()}
        spilling = sorted((a, n) for (a, n), v in table.items() if v[1] or v[2])
        print("cuda_compile_check: %d kernels x archs, %d with register spills" % (len(table), len(spilling)))
        if args.update_baseline:
            # With --only, the other files' kernels keep their baseline rows.
            write_baseline({**read_baseline(), **table} if args.only else table)
            print("cuda_compile_check: baseline written to %s" % os.path.relpath(BASELINE, ROOT))
        else:
            baseline = read_baseline()
            if args.only:  # kernels of the files not compiled are not "gone"
                baseline = {k: v for k, v in baseline.items() if k in table}
            lines, worse = compare(table, baseline)
            print("\n".join(lines) if lines else "  registers and spills equal to the baseline for every kernel")
            if worse:
                print("cuda_compile_check: FAILED: %d kernels use more registers or spill more than %s"
                      % (worse, os.path.relpath(BASELINE, ROOT)))
                status = 1
    if not args.no_glue:
        print("cuda_compile_check: syntax check of the CUDA glue (csrc/cuda/*.cpp) with g++ -DARSEG_WITH_CUDA")
        if not glue_syntax_check(os.path.join(root, "include")):
            return 1
    print("cuda_compile_check: %s" % ("passed" if status == 0 else "FAILED"))
    return status


if __name__ == "__main__":
    sys.exit(main())
