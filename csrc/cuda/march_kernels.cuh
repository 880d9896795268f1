// The CUDA kernel of packed ray marching through an occupancy grid: one thread per ray, launched
// twice (count pass: samples per ray; fill pass, after a cumsum of the counts: the packed samples).
//
// No torch or CUDA runtime header here: nvcc compiles this file for the GPU (csrc/cuda/march.cu) and
// the host compiler for the emulated launch (csrc/emu/march.cpp); the launch site is
// csrc/cuda/march_ops.h. Math: csrc/include/vq3dlib/march.h; reference: vq3dlib/ops/march.py.
#pragma once
#include <cstdint>

#include "vq3dlib/cuda_compat.h"
#include "vq3dlib/march.h"

namespace vq3dlib {
namespace march_cuda {

constexpr int kThreads = 256;

template <typename T>
__global__ void march_packed_kernel(int64_t n_rays, const T* __restrict__ o, const T* __restrict__ d,
                                    const T* __restrict__ nr, const T* __restrict__ fr, MarchGrid<T> grid,
                                    const int64_t* __restrict__ sidx, int64_t n_scenes, int64_t scene_stride,
                                    T step, double step_d, int spacing, int64_t max_samples,
                                    int64_t* __restrict__ counts, const int64_t* __restrict__ offsets,
                                    int64_t* __restrict__ ray_indices, T* __restrict__ t_starts,
                                    T* __restrict__ t_ends) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_rays) return;
  int64_t s = sidx != nullptr ? sidx[i] : 0;
  if (s < 0 || s >= n_scenes) {  // validated in Python; never read out of bounds
    if (offsets == nullptr) counts[i] = 0;
    return;
  }
  const uint8_t* scene_bin = grid.binaries + s * scene_stride;
  if (offsets == nullptr) {
    DiscardSamples discard;
    counts[i] = march_ray<T>(o + 3 * i, d + 3 * i, nr[i], fr[i], grid, scene_bin, step, step_d, spacing,
                             max_samples, discard);
  } else {
    const int64_t c = counts[i];
    if (c == 0) return;
    const int64_t start = offsets[i] - c;
    WriteSamples<T> write{i, ray_indices + start, t_starts + start, t_ends + start};
    // at most the counted samples: the slice of this ray ends there, whatever a second march finds
    march_ray<T>(o + 3 * i, d + 3 * i, nr[i], fr[i], grid, scene_bin, step, step_d, spacing, c, write);
  }
}

}  // namespace march_cuda
}  // namespace vq3dlib
