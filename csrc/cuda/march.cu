// Packed ray marching through an occupancy grid, CUDA kernel (two passes: count, cumsum, fill).
// Math lives in csrc/include/vq3dlib/march.h; Python wrapper and reference: vq3dlib/ops/march.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "vq3dlib/march_host.h"

namespace vq3dlib {
namespace {

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> march_packed_cuda(
    const at::Tensor& origins_in, const at::Tensor& directions_in, const at::Tensor& near_in,
    const at::Tensor& far_in, const at::Tensor& binaries_in, const at::Tensor& boxes_in,
    const c10::optional<at::Tensor>& scene_index_in, double step_size, int64_t max_samples,
    int64_t contraction, int64_t spacing) {
  const c10::cuda::CUDAGuard guard(origins_in.device());
  const MarchInputs in = prepare_march_inputs(origins_in, directions_in, near_in, far_in, binaries_in, boxes_in,
                                              scene_index_in);
  const int64_t n_rays = in.n_rays;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int blocks = static_cast<int>((n_rays + kThreads - 1) / kThreads);

  auto counts = at::zeros({n_rays}, in.origins.options().dtype(at::kLong));
  at::Tensor ray_indices, t_starts, t_ends;
  AT_DISPATCH_FLOATING_TYPES(in.origins.scalar_type(), "march_packed_cuda", [&] {
    using T = scalar_t;
    const MarchGrid<T> grid = in.grid<T>(contraction);
    const T step = static_cast<T>(step_size);
    // offsets == nullptr: count pass (writes counts); else fill pass (writes the packed samples)
    auto launch = [&](const int64_t* offsets, int64_t* ri, T* ts, T* te) {
      march_packed_kernel<T><<<blocks, kThreads, 0, stream>>>(
          n_rays, in.origins.data_ptr<T>(), in.directions.data_ptr<T>(), in.near.data_ptr<T>(),
          in.far.data_ptr<T>(), grid, in.scene_index_data(), in.n_scenes, in.scene_stride, step, step_size,
          static_cast<int>(spacing), max_samples, counts.data_ptr<int64_t>(), offsets, ri, ts, te);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (n_rays > 0) launch(nullptr, nullptr, nullptr, nullptr);
    auto offsets = counts.cumsum(0);
    const int64_t total = n_rays > 0 ? offsets[n_rays - 1].item<int64_t>() : 0;
    ray_indices = at::empty({total}, counts.options());
    t_starts = at::empty({total}, in.origins.options());
    t_ends = at::empty({total}, in.origins.options());
    if (total > 0) {
      launch(offsets.data_ptr<int64_t>(), ray_indices.data_ptr<int64_t>(), t_starts.data_ptr<T>(),
             t_ends.data_ptr<T>());
    }
  });
  return {ray_indices, t_starts, t_ends};
}

}  // namespace

TORCH_LIBRARY_IMPL(vq3dlib, CUDA, m) { m.impl("march_packed", &march_packed_cuda); }

}  // namespace vq3dlib
