// Launch site of the marching CUDA kernel (csrc/cuda/march_kernels.cuh): count pass, cumsum, fill
// pass. Written once, compiled by nvcc (csrc/cuda/march.cu, CUDA tensors) and by the host compiler
// (csrc/emu/march.cpp, the emulated `cuda-emu` backend on CPU tensors).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "march_kernels.cuh"
#include "vq3dlib/launch.h"
#include "vq3dlib/march_host.h"

namespace vq3dlib {
namespace march_cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> march_packed_cuda(
    const at::Tensor& origins_in, const at::Tensor& directions_in, const at::Tensor& near_in,
    const at::Tensor& far_in, const at::Tensor& binaries_in, const at::Tensor& boxes_in,
    const c10::optional<at::Tensor>& scene_index_in, double step_size, int64_t max_samples,
    int64_t contraction, int64_t spacing) {
  const KernelDeviceGuard guard(origins_in);
  const MarchInputs in = prepare_march_inputs(origins_in, directions_in, near_in, far_in, binaries_in, boxes_in,
                                              scene_index_in);
  const int64_t n_rays = in.n_rays;
  auto counts = at::zeros({n_rays}, in.origins.options().dtype(at::kLong));
  at::Tensor ray_indices, t_starts, t_ends;
  AT_DISPATCH_FLOATING_TYPES(in.origins.scalar_type(), "march_packed_cuda", [&] {
    using T = scalar_t;
    const MarchGrid<T> grid = in.grid<T>(contraction);
    const T step = static_cast<T>(step_size);
    // offsets == nullptr: count pass (writes counts); else fill pass (writes the packed samples)
    auto launch = [&](const int64_t* offsets, int64_t* ri, T* ts, T* te) {
      launch_kernel("march_packed_kernel", &march_packed_kernel<T>, blocks_for(n_rays, kThreads), kThreads, n_rays,
                    in.origins.data_ptr<T>(), in.directions.data_ptr<T>(), in.near.data_ptr<T>(),
                    in.far.data_ptr<T>(), grid, in.scene_index_data(), in.n_scenes, in.scene_stride, step,
                    step_size, static_cast<int>(spacing), max_samples, counts.data_ptr<int64_t>(), offsets, ri, ts,
                    te);
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

// m.impl of the marching kernel, for the TORCH_LIBRARY_IMPL block of the including file.
inline void register_kernels(torch::Library& m) { m.impl("march_packed", &march_packed_cuda); }

}  // namespace march_cuda
}  // namespace vq3dlib
