// Stand-in for the CUDA toolkit header <cuda_runtime.h> when the kernels are compiled for the CPU emulator.
#pragma once
#include "../cuda_emu.h"
