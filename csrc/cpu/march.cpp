// Packed ray marching through an occupancy grid, CPU kernel (two passes: count, then fill).
// Math lives in csrc/include/vq3dlib/march.h; Python wrapper and reference: vq3dlib/ops/march.py.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include "vq3dlib/march_host.h"

namespace vq3dlib {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> march_packed_cpu(
    const at::Tensor& origins_in, const at::Tensor& directions_in, const at::Tensor& near_in,
    const at::Tensor& far_in, const at::Tensor& binaries_in, const at::Tensor& boxes_in,
    const c10::optional<at::Tensor>& scene_index_in, double step_size, int64_t max_samples,
    int64_t contraction, int64_t spacing) {
  check_march_inputs(origins_in, directions_in, near_in, far_in, binaries_in, boxes_in, scene_index_in);
  auto origins = origins_in.contiguous();
  auto directions = directions_in.contiguous();
  auto near = near_in.contiguous();
  auto far = far_in.contiguous();
  auto binaries = binaries_in.contiguous();
  auto boxes = boxes_in.contiguous();
  at::Tensor scene_index;
  if (scene_index_in.has_value()) scene_index = scene_index_in->contiguous();
  const int64_t n_rays = origins.size(0);
  const int64_t n_scenes = binaries.size(0);
  const int levels = static_cast<int>(binaries.size(1));
  const int rx = static_cast<int>(binaries.size(2)), ry = static_cast<int>(binaries.size(3)),
            rz = static_cast<int>(binaries.size(4));
  const int64_t scene_stride = static_cast<int64_t>(levels) * rx * ry * rz;
  const uint8_t* bin = reinterpret_cast<const uint8_t*>(binaries.data_ptr());
  const int64_t* sidx = scene_index.defined() ? scene_index.data_ptr<int64_t>() : nullptr;

  auto counts = at::zeros({n_rays}, origins.options().dtype(at::kLong));
  at::Tensor ray_indices, t_starts, t_ends;
  AT_DISPATCH_FLOATING_TYPES(origins.scalar_type(), "march_packed_cpu", [&] {
    using T = scalar_t;
    const T* o = origins.data_ptr<T>();
    const T* d = directions.data_ptr<T>();
    const T* nr = near.data_ptr<T>();
    const T* fr = far.data_ptr<T>();
    MarchGrid<T> grid{bin, boxes.data_ptr<T>(), levels, rx, ry, rz, static_cast<int>(contraction)};
    const T step = static_cast<T>(step_size);
    int64_t* cnt = counts.data_ptr<int64_t>();
    auto scene_of = [&](int64_t i) {
      int64_t s = sidx != nullptr ? sidx[i] : 0;
      TORCH_CHECK(s >= 0 && s < n_scenes, "scene_index out of range");
      return bin + s * scene_stride;
    };
    at::parallel_for(0, n_rays, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        cnt[i] = march_ray<T>(o + 3 * i, d + 3 * i, nr[i], fr[i], grid, scene_of(i), step, step_size,
                              static_cast<int>(spacing), max_samples, i, nullptr, nullptr, nullptr);
      }
    });
    auto offsets = counts.cumsum(0);
    const int64_t total = n_rays > 0 ? offsets[n_rays - 1].item<int64_t>() : 0;
    ray_indices = at::empty({total}, counts.options());
    t_starts = at::empty({total}, origins.options());
    t_ends = at::empty({total}, origins.options());
    const int64_t* off = offsets.data_ptr<int64_t>();
    int64_t* ri = ray_indices.data_ptr<int64_t>();
    T* ts = t_starts.data_ptr<T>();
    T* te = t_ends.data_ptr<T>();
    at::parallel_for(0, n_rays, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (cnt[i] == 0) continue;
        const int64_t start = off[i] - cnt[i];
        march_ray<T>(o + 3 * i, d + 3 * i, nr[i], fr[i], grid, scene_of(i), step, step_size,
                     static_cast<int>(spacing), max_samples, i, ri + start, ts + start, te + start);
      }
    });
  });
  return {ray_indices, t_starts, t_ends};
}

}  // namespace

TORCH_LIBRARY_IMPL(vq3dlib, CPU, m) { m.impl("march_packed", &march_packed_cpu); }

}  // namespace vq3dlib
