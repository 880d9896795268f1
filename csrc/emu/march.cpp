// The CUDA kernels of csrc/cuda/march_kernels.cuh and their launch sites (csrc/cuda/march_ops.h),
// compiled by the host compiler: every (block, thread) of each launch runs on the CPU
// (vq3dlib/launch.h). Registered for CPU tensors in the `vq3dlib_emu` library.
#include "march_ops.h"

TORCH_LIBRARY_IMPL(vq3dlib_emu, CPU, m) { vq3dlib::march_cuda::register_kernels(m); }
