// Fused contracted-triplane sampling on CUDA: the kernels are csrc/cuda/triplane_kernels.cuh, their
// launch sites csrc/cuda/triplane_ops.h (shared with the emulated backend, csrc/emu/triplane.cpp).
#include "triplane_ops.h"

TORCH_LIBRARY_IMPL(vq3dlib, CUDA, m) { vq3dlib::triplane_cuda::register_kernels(m); }
