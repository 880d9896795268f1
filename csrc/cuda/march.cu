// Packed ray marching on CUDA: the kernel is csrc/cuda/march_kernels.cuh, its launch site
// csrc/cuda/march_ops.h (shared with the emulated backend, csrc/emu/march.cpp).
#include "march_ops.h"

TORCH_LIBRARY_IMPL(vq3dlib, CUDA, m) { vq3dlib::march_cuda::register_kernels(m); }
