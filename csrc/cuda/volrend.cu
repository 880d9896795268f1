// Volume-rendering weights on CUDA: the kernels are csrc/cuda/volrend_kernels.cuh, their launch
// sites csrc/cuda/volrend_ops.h (shared with the emulated backend, csrc/emu/volrend.cpp).
#include "volrend_ops.h"

TORCH_LIBRARY_IMPL(vq3dlib, CUDA, m) { vq3dlib::volrend_cuda::register_kernels(m); }
