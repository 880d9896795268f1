// Packed ray marching through an occupancy grid, CPU kernel (one pass over blocks of rays).
// Math lives in csrc/include/vq3dlib/march.h; Python wrapper and reference: vq3dlib/ops/march.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "march_lanes.h"
#include "vq3dlib/cpu_threads.h"
#include "vq3dlib/march_host.h"

namespace vq3dlib {
namespace {

using Packed = std::tuple<at::Tensor, at::Tensor, at::Tensor>;  // ray_indices, t_starts, t_ends

// Runs fn(b) for every block b in [0, n_blocks), the blocks handed out to the threads as they go (ray
// costs vary a lot across an image).
template <typename Fn>
void for_each_block_as_they_go(int64_t n_blocks, const Fn& fn) {
  parallel_for_as_they_go(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) fn(b);
  });
}

// The packed outputs of blocks of `sizes[b]` samples each: fill(b, offset, ri, ts, te) writes block
// b's samples from `offset` on, the blocks in parallel.
template <typename T, typename Fill>
Packed pack_blocks(const std::vector<int64_t>& sizes, const at::TensorOptions& options, const Fill& fill) {
  const int64_t n_blocks = static_cast<int64_t>(sizes.size());
  std::vector<int64_t> offsets(static_cast<size_t>(n_blocks) + 1, 0);
  for (int64_t b = 0; b < n_blocks; ++b) offsets[b + 1] = offsets[b] + sizes[b];
  const int64_t total = offsets[n_blocks];
  at::Tensor ray_indices = at::empty({total}, options.dtype(at::kLong));
  at::Tensor t_starts = at::empty({total}, options);
  at::Tensor t_ends = at::empty({total}, options);
  int64_t* ri = ray_indices.data_ptr<int64_t>();
  T* ts = t_starts.data_ptr<T>();
  T* te = t_ends.data_ptr<T>();
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) fill(b, offsets[b], ri, ts, te);
  });
  return {ray_indices, t_starts, t_ends};
}

// The lanes march float32 rays only: other dtypes take the scalar kernel.
template <typename T>
bool march_in_lanes(const T*, const T*, const T*, const T*, const MarchGrid<T>&, const int64_t*, int64_t, int64_t,
                    T, int64_t, int64_t, int64_t, const at::TensorOptions&, Packed*) {
  return false;
}

// Marches float32 rays in SIMD lanes (march_lanes.h) where they apply (else returns false), each
// block's samples packed by ray with a stable counting sort of the block.
bool march_in_lanes(const float* o, const float* d, const float* nr, const float* fr, const MarchGrid<float>& grid,
                    const int64_t* sidx, int64_t scene_stride, int64_t n_scenes, float step, int64_t max_samples,
                    int64_t spacing, int64_t n_rays, const at::TensorOptions& options, Packed* out) {
  if (!lanes_support(static_cast<int>(spacing), grid.contraction, grid.levels, scene_stride, n_scenes)) {
    return false;
  }
  const int64_t block_rays = 128;  // smaller than the scalar kernel's: the lanes march a block 4x faster
  const int64_t n_blocks = (n_rays + block_rays - 1) / block_rays;
  std::vector<LaneSamples> blocks(static_cast<size_t>(n_blocks));
  for_each_block_as_they_go(n_blocks, [&](int64_t b) {
    march_block_lanes(o, d, nr, fr, grid, sidx, scene_stride, step, max_samples, b * block_rays,
                      std::min(n_rays, (b + 1) * block_rays), blocks[static_cast<size_t>(b)]);
  });
  std::vector<int64_t> sizes(static_cast<size_t>(n_blocks));
  for (int64_t b = 0; b < n_blocks; ++b) sizes[b] = static_cast<int64_t>(blocks[b].ray.size());
  *out = pack_blocks<float>(sizes, options, [&](int64_t b, int64_t offset, int64_t* ri, float* ts, float* te) {
    const LaneSamples& buf = blocks[b];
    std::vector<int64_t> slot(buf.counts.size());  // where each ray's next sample goes
    for (size_t r = 0; r < buf.counts.size(); ++r) {
      slot[r] = offset;
      offset += buf.counts[r];
    }
    for (size_t k = 0; k < buf.ray.size(); ++k) {
      const int64_t s = slot[static_cast<size_t>(buf.ray[k])]++;
      ri[s] = b * block_rays + buf.ray[k];
      ts[s] = buf.t0[k];
      te[s] = buf.t1[k];
    }
  });
  return true;
}

Packed march_packed_cpu(
    const at::Tensor& origins_in, const at::Tensor& directions_in, const at::Tensor& near_in,
    const at::Tensor& far_in, const at::Tensor& binaries_in, const at::Tensor& boxes_in,
    const c10::optional<at::Tensor>& scene_index_in, double step_size, int64_t max_samples,
    int64_t contraction, int64_t spacing) {
  const KernelThreads team;  // its workers take blocks of rays as they go (cpu_threads.h)
  const MarchInputs in = prepare_march_inputs(origins_in, directions_in, near_in, far_in, binaries_in, boxes_in,
                                              scene_index_in);
  const int64_t n_rays = in.n_rays;
  const uint8_t* bin = in.binaries_data();
  const int64_t* sidx = in.scene_index_data();

  // One pass: rays are marched in blocks, handed out dynamically to the threads (ray costs vary a lot
  // across an image); each block appends its samples to its own buffers, which are then copied into
  // the packed outputs at the block's offset. (A count pass + fill pass would march every ray twice.)
  const int64_t block_rays = 512;
  const int64_t n_blocks = (n_rays + block_rays - 1) / block_rays;
  at::Tensor ray_indices, t_starts, t_ends;
  AT_DISPATCH_FLOATING_TYPES(in.origins.scalar_type(), "march_packed_cpu", [&] {
    using T = scalar_t;
    const T* o = in.origins.data_ptr<T>();
    const T* d = in.directions.data_ptr<T>();
    const T* nr = in.near.data_ptr<T>();
    const T* fr = in.far.data_ptr<T>();
    MarchGrid<T> grid = in.grid<T>(contraction);
    grid.spans = span_reciprocals(grid.boxes, grid.levels);  // the boxes are host memory here
    const T step = static_cast<T>(step_size);
    for (int64_t i = 0; i < (sidx != nullptr ? n_rays : 0); ++i) {
      TORCH_CHECK(sidx[i] >= 0 && sidx[i] < in.n_scenes, "scene_index out of range");
    }

    Packed lanes;
    if (march_in_lanes(o, d, nr, fr, grid, sidx, in.scene_stride, in.n_scenes, step, max_samples, spacing, n_rays,
                       in.origins.options(), &lanes)) {
      std::tie(ray_indices, t_starts, t_ends) = lanes;
      return;
    }
    struct BlockSamples {
      std::vector<int64_t> ray;
      std::vector<T> t0, t1;
    };
    struct AppendSamples {
      BlockSamples* out;
      int64_t ray_id;
      void operator()(int64_t, T ts, T te) const {
        out->ray.push_back(ray_id);
        out->t0.push_back(ts);
        out->t1.push_back(te);
      }
    };
    std::vector<BlockSamples> blocks(static_cast<size_t>(n_blocks));
    for_each_block_as_they_go(n_blocks, [&](int64_t b) {
      BlockSamples& buf = blocks[static_cast<size_t>(b)];
      const int64_t end = std::min(n_rays, (b + 1) * block_rays);
      for (int64_t i = b * block_rays; i < end; ++i) {
        AppendSamples emit{&buf, i};
        const uint8_t* scene_bin = bin + (sidx != nullptr ? sidx[i] : 0) * in.scene_stride;
        march_ray<T>(o + 3 * i, d + 3 * i, nr[i], fr[i], grid, scene_bin, step, step_size,
                     static_cast<int>(spacing), max_samples, emit);
      }
    });
    std::vector<int64_t> sizes(static_cast<size_t>(n_blocks));
    for (int64_t b = 0; b < n_blocks; ++b) sizes[b] = static_cast<int64_t>(blocks[b].ray.size());
    std::tie(ray_indices, t_starts, t_ends) =
        pack_blocks<T>(sizes, in.origins.options(), [&](int64_t b, int64_t offset, int64_t* ri, T* ts, T* te) {
          const BlockSamples& buf = blocks[b];
          std::copy(buf.ray.begin(), buf.ray.end(), ri + offset);
          std::copy(buf.t0.begin(), buf.t0.end(), ts + offset);
          std::copy(buf.t1.begin(), buf.t1.end(), te + offset);
        });
  });
  return {ray_indices, t_starts, t_ends};
}

}  // namespace

TORCH_LIBRARY_IMPL(vq3dlib, CPU, m) { m.impl("march_packed", &march_packed_cpu); }

}  // namespace vq3dlib
