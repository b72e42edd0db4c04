#!/usr/bin/env python3
"""Planted-bug self-test of the emulated CUDA suite: are the cuda_emu tests able to fail?

Plants one known kind of GPU bug at a time in a copy of csrc/ (a missing barrier, a wrong cp.async wait count, a
missing commit, swapped mma fragment registers, a wrong shuffle lane, off-by-one staging, a non-atomic shared-memory
add, ...), points the emulator at the copy (ARSEG_CUDA_EMU_SOURCE) and runs the emulated tests that cover the
mutated kernel, in the sanitizer modes that should see it. A mutant is CAUGHT when the tests fail. The unmutated
copy runs first and must pass. Objects are cached by content, so each mutant recompiles only what it changed
(a header change recompiles every kernel).

  python python_tests/planted_bugs.py              # every mutant (about 30-60 minutes on 2 cores)
  python python_tests/planted_bugs.py NAME ...     # some; --list names them
Exit status 1 when a mutant is missed.
"""
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "build", "cuda_emu_mutant")
ATTN = "python_tests/test_cuda_emu_local_attn.py"
MV = "python_tests/test_cuda_emu_mv_warp.py"
CREFF = "python_tests/test_cuda_emu_creff.py"
V2_ATTN = [ATTN, "-k", "test_v2_experimental and zeros and (f32 or f16) and nchw"]

# name: (file under csrc/, unique old text, new text, pytest selection, sanitizer modes that should catch it)
MUTANTS = {
    "no_barrier_before_restage": (
        "cuda/local_attn_v2_device.cuh",
        "    __syncthreads();  // everyone is done with the buffer issue(s + 1) overwrites (read by compute(s - 1))",
        "    ;", [ATTN, "-k", "test_thread_orders and v2"], ["plain", "thread"]),
    "no_barrier_after_wait": (
        "cuda/local_attn_v2_device.cuh", "    __syncthreads();     // ... and everyone's", "    ;", V2_ATTN,
        ["plain"]),
    "cp_async_wait_count_2": (
        "cuda/local_attn_v2_device.cuh", "    cp_async_wait<1>();", "    cp_async_wait<2>();", V2_ATTN, ["plain"]),
    "cp_async_commit_missing": (
        "cuda/local_attn_v2_device.cuh", "    cp_async_commit();\n    cp_async_wait<1>();", "    cp_async_wait<1>();",
        V2_ATTN, ["plain"]),
    "mma_fragment_registers_swapped": (
        "cuda/local_attn_v2_mma.cuh",
        "return {{ld_shared_u32(r0 + ch + 2 * t), ld_shared_u32(r1 + ch + 2 * t), ld_shared_u32(r0 + ch + 8 + 2 * t),",
        "return {{ld_shared_u32(r0 + ch + 2 * t), ld_shared_u32(r0 + ch + 8 + 2 * t), ld_shared_u32(r1 + ch + 2 * t),",
        V2_ATTN, ["plain"]),
    "tf32_accumulator_to_operand_order": (
        "cuda/local_attn_v2_mma.cuh",
        "split4(opaque_f(P[s][0]), opaque_f(P[s][2]), opaque_f(P[s][1]), opaque_f(P[s][3]))",
        "split4(opaque_f(P[s][0]), opaque_f(P[s][1]), opaque_f(P[s][2]), opaque_f(P[s][3]))", V2_ATTN, ["plain"]),
    "mma_16bit_key_numbering": (
        "cuda/local_attn_v2_mma.cuh", "return 2 * t + (i & 1) + (i >> 1) * 8;", "return 2 * t + i;", V2_ATTN,
        ["plain"]),
    "quad_shuffle_wrong_lane": (
        "cuda/local_attn_v2_device.cuh", "  return v + __shfl_xor_sync(0xffffffffu, v, 2);",
        "  return v + __shfl_xor_sync(0xffffffffu, v, 4);", V2_ATTN, ["plain"]),
    "staging_reads_one_column_past_the_image": (
        "cuda/local_attn_v2_device.cuh", "      const bool ok = inside(y, x, H, W) && c < img.channels;",
        "      const bool ok = inside(y, x, H, W + 1) && c < img.channels;",
        [ATTN, "-k", "test_v2_channel_counts and nhwc and 16"], ["plain", "address"]),
    "no_barrier_before_output_store": (
        "cuda/local_attn_v2_forward.cu", "          write_rows<G>(buf, O, L);\n          __syncthreads();",
        "          write_rows<G>(buf, O, L);\n          ;", V2_ATTN, ["plain"]),
    "mv_warp_v2_no_barrier_after_taps": (
        "cuda/mv_warp_v2_forward.cu",
        "      __syncthreads();\n      const int count = min(kThreads, HW - base);\n      for (int slot = slot0;",
        "      ;\n      const int count = min(kThreads, HW - base);\n      for (int slot = slot0;",
        [MV, "-k", "test_thread_orders and v2"], ["plain", "thread"]),
    "mv_warp_v2_shuffle_tree_too_wide": (
        "cuda/mv_warp_v2_backward_mv.cu", "for (int o = lanes >> 1; o > 0; o >>= 1)",
        "for (int o = lanes; o > 0; o >>= 1)", [MV, "-k", "test_channels_last and v2 and f32"], ["plain"]),
    "mv_warp_v2_non_atomic_shared_add": (
        "cuda/mv_warp_v2_backward_feature.cu", "                  atomicAdd(&win[(cc + j) * kCells + cell[k]], v);",
        "                  win[(cc + j) * kCells + cell[k]] += v;", [MV, "-k", "test_thread_orders and v2"],
        ["plain", "thread"]),
    "v1_local_attn_no_barrier_after_staging": (
        "cuda/local_attn_forward.cu",
        "      stage_halo<T, acc_t, K>(s, kn, p.C, c0, p.H, p.W, y0, x0);\n      __syncthreads();\n      dot_pass",
        "      stage_halo<T, acc_t, K>(s, kn, p.C, c0, p.H, p.W, y0, x0);\n      ;\n      dot_pass",
        [ATTN, "-k", "test_v1_default and zeros and f32"], ["plain", "thread"]),
    "v1_mv_warp_reduction_tree_stops_early": (
        "cuda/mv_warp_kernels.cu", "for (int s = kThreads / 2; s > 0; s >>= 1)",
        "for (int s = kThreads / 2; s > 1; s >>= 1)", [MV, "-k", "test_modes_and_dtypes and v1 and bilinear"],
        ["plain"]),
    "creff_no_barrier_before_restaging": (
        "cuda/creff_forward.cu",
        "      __syncthreads();  // taps complete / previous chunk's dot pass done with sh.kv",
        "      ;", [CREFF, "-k", "test_thread_orders or (test_sizes and odd-C and experimental)"], ["plain", "thread"]),
    "creff_nhwc_resize_reads_wrong_column": (
        "cuda/creff_forward.cu", "      load_channels(e[1], lr_img + (row0 + tx.i1) * p.C, left, vec);",
        "      load_channels(e[1], lr_img + (row0 + tx.i0) * p.C, left, vec);",
        [CREFF, "-k", "test_fused_channels_last_kernel_sizes"], ["plain"]),
    "creff_nhwc_vector_store_past_the_last_channel": (
        "cuda/creff_forward.cu", "  const bool vec = channels_last && p.C % CC == 0 &&",
        "  const bool vec = channels_last && p.C % 1 == 0 &&", [CREFF, "-k", "test_channels_last and experimental"],
        ["address"]),
}


def run_tests(selection, mode):
    env = dict(os.environ, ARSEG_CUDA_EMU_SOURCE=os.path.join(WORK, "csrc"), ARSEG_CUDA_EMU_SANITIZE=mode,
               ARSEG_CUDA_EMU_CACHE=os.path.join(ROOT, "build", "cuda_emu"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "cuda_emu"] + selection
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    evidence = next((l.strip() for l in lines if l.startswith("E ") or "EMU ERROR" in l or "Sanitizer" in l), "")
    return proc.returncode, (lines[-1] if lines else proc.stderr[-300:]), evidence


def plant(name):
    """A fresh copy of csrc/ at a fixed path (so cached objects of unchanged files are reused), with one bug."""
    shutil.rmtree(os.path.join(WORK, "csrc"), ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "csrc"), os.path.join(WORK, "csrc"))
    if name is None:
        return
    path, old, new = MUTANTS[name][:3]
    full = os.path.join(WORK, "csrc", path)
    text = open(full).read()
    if text.count(old) != 1:
        raise SystemExit("planted_bugs: %s: the text to mutate is not in %s exactly once (update the mutant)"
                         % (name, path))
    open(full, "w").write(text.replace(old, new))


def main(argv):
    if "--list" in argv:
        print("\n".join(MUTANTS))
        return 0
    names = argv or list(MUTANTS)
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        raise SystemExit("planted_bugs: unknown mutant(s) %s (--list names them)" % ", ".join(unknown))
    plant(None)
    selections = {tuple(MUTANTS[n][3]): MUTANTS[n][4] for n in names}
    for selection, modes in selections.items():
        for mode in modes:
            rc, summary, _ = run_tests(list(selection), mode)
            if rc != 0:
                raise SystemExit("planted_bugs: the unmutated kernels fail %s (%s): %s" % (selection, mode, summary))
    print("unmutated kernels pass every selection")
    missed = []
    for name in names:
        plant(name)
        caught_in = []
        for mode in MUTANTS[name][4]:
            t0 = time.time()
            rc, summary, evidence = run_tests(MUTANTS[name][3], mode)
            print("%-42s %-8s %-7s %5.0fs  %s" % (name, mode, "CAUGHT" if rc else "missed", time.time() - t0, summary))
            if evidence:
                print("      " + evidence[:200])
            if rc:
                caught_in.append(mode)
            sys.stdout.flush()
        if not caught_in:
            missed.append(name)
    shutil.rmtree(os.path.join(WORK, "csrc"), ignore_errors=True)
    print("%d of %d planted bugs caught%s" % (len(names) - len(missed), len(names),
                                             "; missed: " + ", ".join(missed) if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
