// The CUDA kernels of csrc/cuda/triplane_kernels.cuh and their launch sites (csrc/cuda/triplane_ops.h),
// compiled by the host compiler: every (block, thread) of each launch runs on the CPU
// (vq3dlib/launch.h). Registered for CPU tensors in the `vq3dlib_emu` library.
#include "triplane_ops.h"

TORCH_LIBRARY_IMPL(vq3dlib_emu, CPU, m) { vq3dlib::triplane_cuda::register_kernels(m); }
