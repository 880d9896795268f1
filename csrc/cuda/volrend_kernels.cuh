// The CUDA kernels of volume-rendering weights, forward and backward, for packed or dense samples.
// One thread handles one ray in one sequential O(n) pass (forward: running optical depth /
// transmittance; backward: one reverse pass with a running suffix sum). Consecutive rays are stored
// next to each other, so a warp reads a compact range of memory.
//
// No torch or CUDA runtime header here: nvcc compiles this file for the GPU (csrc/cuda/volrend.cu)
// and the host compiler for the emulated launch (csrc/emu/volrend.cpp); the launch sites are
// csrc/cuda/volrend_ops.h. Math (shared with the CPU kernels): csrc/include/vq3dlib/volrend.h.
#pragma once
#include <cstdint>

#include "vq3dlib/cuda_compat.h"
#include "vq3dlib/volrend.h"

namespace vq3dlib {
namespace volrend_cuda {

constexpr int kThreads = 256;

template <typename T>
__global__ void density_fwd_kernel(int64_t n_rays, const int64_t* __restrict__ packed_info, int64_t per_ray,
                                   const T* __restrict__ ts, const T* __restrict__ te, const T* __restrict__ sg,
                                   T* __restrict__ w, T* __restrict__ tr, T* __restrict__ al) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const RaySpan s = ray_span(r, packed_info, per_ray);
  const int64_t b = s.begin;
  density_weights_forward<T>(s.count, ts + b, te + b, sg + b, w + b, tr + b, al + b);
}

template <typename T>
__global__ void density_bwd_kernel(int64_t n_rays, const int64_t* __restrict__ packed_info, int64_t per_ray,
                                   const T* gw, const T* gt, const T* ga, const T* __restrict__ ts,
                                   const T* __restrict__ te, const T* __restrict__ sg, const T* __restrict__ tr,
                                   const T* __restrict__ al, T* __restrict__ gs, T* gd) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const RaySpan s = ray_span(r, packed_info, per_ray);
  const int64_t b = s.begin;
  density_weights_backward<T>(s.count, gw ? gw + b : nullptr, gt ? gt + b : nullptr, ga ? ga + b : nullptr, ts + b,
                              te + b, sg + b, tr + b, al + b, gs + b, gd ? gd + b : nullptr);
}

template <typename T>
__global__ void alpha_fwd_kernel(int64_t n_rays, const int64_t* __restrict__ packed_info, int64_t per_ray,
                                 const T* __restrict__ al, T* __restrict__ w, T* __restrict__ tr) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const RaySpan s = ray_span(r, packed_info, per_ray);
  alpha_weights_forward<T>(s.count, al + s.begin, w + s.begin, tr + s.begin);
}

template <typename T>
__global__ void alpha_bwd_kernel(int64_t n_rays, const int64_t* __restrict__ packed_info, int64_t per_ray,
                                 const T* gw, const T* gt, const T* __restrict__ al, const T* __restrict__ tr,
                                 T* __restrict__ ga) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const RaySpan s = ray_span(r, packed_info, per_ray);
  const int64_t b = s.begin;
  alpha_weights_backward<T>(s.count, gw ? gw + b : nullptr, gt ? gt + b : nullptr, al + b, tr + b, ga + b);
}

}  // namespace volrend_cuda
}  // namespace vq3dlib
