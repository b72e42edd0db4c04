// Operator schemas (one TORCH_LIBRARY block for the whole library) and the Python module `arseg_ops._C`.
// Kernels live per backend: cpu/*_cpu.cpp and cuda/*_cuda.cpp register them with TORCH_LIBRARY_IMPL.
// Fake kernels and autograd formulas are registered from Python (arseg_ops/_ops.py).
#include <Python.h>

#include <torch/library.h>

#include "cpu/cpu_isa.h"
#include "op_common.h"

TORCH_LIBRARY(arseg_ops, m) {
  m.def(
      "mv_warp(Tensor feature, Tensor mv, float scale_x=1., float scale_y=1., str mode=\"bilinear\", "
      "str padding_mode=\"zeros\") -> Tensor");
  // Gradient with respect to `feature`; it needs only the motion, not the feature values.
  m.def(
      "mv_warp_backward_feature(Tensor grad_output, Tensor mv, float scale_x, float scale_y, str mode, "
      "str padding_mode) -> Tensor");
  // Gradient with respect to `mv`, summed over the pixels of each block.
  m.def(
      "mv_warp_backward_mv(Tensor grad_output, Tensor feature, Tensor mv, float scale_x, float scale_y, str mode, "
      "str padding_mode) -> Tensor");
  m.def(
      "local_attn(Tensor query, Tensor key, Tensor value, int kernel_size=7, float scale=1., "
      "str padding=\"zeros\") -> Tensor");
  m.def(
      "local_attn_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, int kernel_size, float scale, "
      "str padding) -> (Tensor, Tensor, Tensor)");
  // Fused CReFF: lr_feature resized to key_feature's size + local_attn of depthwise-3x3 q (of the resized
  // lr_feature), k, v (of key_feature warped by mv); weight (3, C, 1, 3, 3), bias (3, C).
  m.def(
      "creff(Tensor key_feature, Tensor mv, Tensor lr_feature, Tensor weight, Tensor bias, int kernel_size=7, "
      "float scale=1., float mv_scale_x=1., float mv_scale_y=1.) -> Tensor");
  // Its fused backward (CPU): the gradients of key_feature, lr_feature, weight and bias, not of mv (codec motion
  // is data; arseg_ops._ops uses the op-by-op backward when mv's gradient is asked for, and on CUDA).
  m.def(
      "creff_backward(Tensor grad_output, Tensor key_feature, Tensor mv, Tensor lr_feature, Tensor weight, "
      "Tensor bias, int kernel_size, float scale, float mv_scale_x, float mv_scale_y) -> (Tensor, Tensor, Tensor, "
      "Tensor)");
}

#ifndef ARSEG_TORCH_VERSION
#define ARSEG_TORCH_VERSION "unknown"
#endif
#ifndef ARSEG_CUDA_VERSION
#define ARSEG_CUDA_VERSION ""
#endif
#ifndef ARSEG_CUDA_ARCHS
#define ARSEG_CUDA_ARCHS ""
#endif
#ifdef ARSEG_DEBUG_BUILD
#define ARSEG_DEBUG_FLAG 1  // setup.py with ARSEG_DEBUG=1: -O0 -g, assertions on
#else
#define ARSEG_DEBUG_FLAG 0
#endif
#ifdef ARSEG_WITH_CUDA
#define ARSEG_WITH_CUDA_FLAG 1
#else
#define ARSEG_WITH_CUDA_FLAG 0
#endif

// Importing arseg_ops._C loads this library, which runs the registrations above. The module itself only
// carries what the build was made with, so arseg_ops can refuse a build made for another torch, and the
// schema-level limits the Python validation reads (max_kernel_size).
static PyObject* set_poison_outputs_py(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  const bool was = arseg::poison_outputs();
  arseg::set_poison_outputs(on != 0);
  return PyBool_FromLong(was);
}

static PyObject* set_experimental_kernels_py(PyObject*, PyObject* arg) {
  const char* names = PyUnicode_AsUTF8(arg);
  if (names == nullptr) return nullptr;
  const std::string was = arseg::experimental_kernels();
  arseg::set_experimental_kernels(names);
  return PyUnicode_FromString(was.c_str());
}

// The instruction set the CPU kernels compiled per instruction set (creff, mv_warp, local_attn) run with now.
static PyObject* cpu_isa_py(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(arseg::cpu::isa_name(arseg::cpu::choose_isa()));
  } catch (const std::exception& e) {  // a bad ARSEG_CPU_ISA
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

static PyMethodDef arseg_methods[] = {
    {"_cpu_isa", cpu_isa_py, METH_NOARGS,
     "The CPU instruction set (baseline, avx2, avx512) the creff, mv_warp and local_attn CPU kernels run with: the "
     "best this CPU has, capped by the environment variable ARSEG_CPU_ISA (read per call)."},
    {"_set_poison_outputs", set_poison_outputs_py, METH_O,
     "Tests only: fill every new operator output with NaN before the kernel writes it. Returns the old setting."},
    {"_set_experimental_kernels", set_experimental_kernels_py, METH_O,
     "Opt in to unverified kernels: a comma-separated list of kernel names or 'all' ('' = none). Returns the old "
     "setting. The environment variable ARSEG_EXPERIMENTAL_KERNELS gives the initial value."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef arseg_module = {PyModuleDef_HEAD_INIT, "_C", "arseg_ops compiled operators", -1,
                                          arseg_methods};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&arseg_module);
  if (mod == nullptr) return nullptr;
  if (PyModule_AddStringConstant(mod, "torch_version", ARSEG_TORCH_VERSION) < 0 ||
      PyModule_AddStringConstant(mod, "cuda_version", ARSEG_CUDA_VERSION) < 0 ||
      PyModule_AddStringConstant(mod, "cuda_archs", ARSEG_CUDA_ARCHS) < 0 ||
      PyModule_AddIntConstant(mod, "with_cuda", ARSEG_WITH_CUDA_FLAG) < 0 ||
      PyModule_AddIntConstant(mod, "debug", ARSEG_DEBUG_FLAG) < 0 ||
      PyModule_AddIntConstant(mod, "max_kernel_size", arseg::kMaxKernelSize) < 0) {
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
