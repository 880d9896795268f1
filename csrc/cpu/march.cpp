// Packed ray marching through an occupancy grid, CPU kernel (one pass over blocks of rays).
// Math lives in csrc/include/vq3dlib/march.h; Python wrapper and reference: vq3dlib/ops/march.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "march_lanes.h"
#include "vq3dlib/cpu_threads.h"
#include "vq3dlib/march_host.h"

namespace vq3dlib {
namespace {

// The lanes march float32 rays only: other dtypes take the scalar kernel.
template <typename T>
bool march_in_lanes(const T*, const T*, const T*, const T*, const MarchGrid<T>&, const int64_t*, int64_t, T,
                    int64_t, int64_t, const at::TensorOptions&, at::Tensor*, at::Tensor*, at::Tensor*) {
  return false;
}

// The float32 rays marched in SIMD lanes (march_lanes.h), blocks of rays handed out to the threads as
// they go; each block's samples are then packed by ray (a stable counting sort of the block).
bool march_in_lanes(const float* o, const float* d, const float* nr, const float* fr, const MarchGrid<float>& grid,
                    const int64_t* sidx, int64_t scene_stride, float step, int64_t max_samples, int64_t n_rays,
                    const at::TensorOptions& options, at::Tensor* ray_indices_out, at::Tensor* t_starts_out,
                    at::Tensor* t_ends_out) {
  const int64_t block_rays = 128;  // smaller than the scalar kernel's: the lanes march a block 4x faster
  const int64_t n_blocks = (n_rays + block_rays - 1) / block_rays;
  std::vector<LaneSamples> blocks(static_cast<size_t>(n_blocks));
  std::atomic<int64_t> next_block{0};
  const int64_t n_workers = std::min<int64_t>(at::get_num_threads(), n_blocks);
  at::parallel_for(0, n_workers, 1, [&](int64_t, int64_t) {
    for (int64_t b = next_block++; b < n_blocks; b = next_block++) {
      march_block_lanes(o, d, nr, fr, grid, sidx, scene_stride, step, max_samples, b * block_rays,
                        std::min(n_rays, (b + 1) * block_rays), blocks[static_cast<size_t>(b)]);
    }
  });
  std::vector<int64_t> block_offsets(static_cast<size_t>(n_blocks) + 1, 0);
  for (int64_t b = 0; b < n_blocks; ++b) {
    block_offsets[b + 1] = block_offsets[b] + static_cast<int64_t>(blocks[b].ray.size());
  }
  const int64_t total = block_offsets[n_blocks];
  at::Tensor ray_indices = at::empty({total}, options.dtype(at::kLong));
  at::Tensor t_starts = at::empty({total}, options);
  at::Tensor t_ends = at::empty({total}, options);
  int64_t* ri = ray_indices.data_ptr<int64_t>();
  float* ts = t_starts.data_ptr<float>();
  float* te = t_ends.data_ptr<float>();
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> slot;
    for (int64_t b = begin; b < end; ++b) {
      const LaneSamples& buf = blocks[b];
      slot.assign(buf.counts.size(), 0);  // where each ray's next sample goes
      int64_t at_ = block_offsets[b];
      for (size_t r = 0; r < buf.counts.size(); ++r) {
        slot[r] = at_;
        at_ += buf.counts[r];
      }
      const int64_t first_ray = b * block_rays;
      for (size_t k = 0; k < buf.ray.size(); ++k) {
        const int64_t s = slot[static_cast<size_t>(buf.ray[k])]++;
        ri[s] = first_ray + buf.ray[k];
        ts[s] = buf.t0[k];
        te[s] = buf.t1[k];
      }
    }
  });
  *ray_indices_out = ray_indices;
  *t_starts_out = t_starts;
  *t_ends_out = t_ends;
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> march_packed_cpu(
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

    if (lanes_support(static_cast<int>(spacing), static_cast<int>(contraction), grid.levels, in.scene_stride,
                      in.n_scenes) &&
        march_in_lanes(o, d, nr, fr, grid, sidx, in.scene_stride, step, max_samples, n_rays, in.origins.options(),
                       &ray_indices, &t_starts, &t_ends)) {
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
    std::atomic<int64_t> next_block{0};
    const int64_t n_workers = std::min<int64_t>(at::get_num_threads(), n_blocks);
    at::parallel_for(0, n_workers, 1, [&](int64_t, int64_t) {
      for (int64_t b = next_block++; b < n_blocks; b = next_block++) {
        BlockSamples& buf = blocks[static_cast<size_t>(b)];
        const int64_t end = std::min(n_rays, (b + 1) * block_rays);
        for (int64_t i = b * block_rays; i < end; ++i) {
          AppendSamples emit{&buf, i};
          const uint8_t* scene_bin = bin + (sidx != nullptr ? sidx[i] : 0) * in.scene_stride;
          march_ray<T>(o + 3 * i, d + 3 * i, nr[i], fr[i], grid, scene_bin, step, step_size,
                       static_cast<int>(spacing), max_samples, emit);
        }
      }
    });
    std::vector<int64_t> block_offsets(static_cast<size_t>(n_blocks) + 1, 0);
    for (int64_t b = 0; b < n_blocks; ++b) {
      block_offsets[b + 1] = block_offsets[b] + static_cast<int64_t>(blocks[b].ray.size());
    }
    const int64_t total = block_offsets[n_blocks];
    ray_indices = at::empty({total}, in.origins.options().dtype(at::kLong));
    t_starts = at::empty({total}, in.origins.options());
    t_ends = at::empty({total}, in.origins.options());
    int64_t* ri = ray_indices.data_ptr<int64_t>();
    T* ts = t_starts.data_ptr<T>();
    T* te = t_ends.data_ptr<T>();
    at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const BlockSamples& buf = blocks[b];
        const int64_t at_ = block_offsets[b];
        std::copy(buf.ray.begin(), buf.ray.end(), ri + at_);
        std::copy(buf.t0.begin(), buf.t0.end(), ts + at_);
        std::copy(buf.t1.begin(), buf.t1.end(), te + at_);
      }
    });
  });
  return {ray_indices, t_starts, t_ends};
}

}  // namespace

TORCH_LIBRARY_IMPL(vq3dlib, CPU, m) { m.impl("march_packed", &march_packed_cpu); }

}  // namespace vq3dlib
