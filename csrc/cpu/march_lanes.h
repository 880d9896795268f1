// Packed marching of float32 rays in SIMD lanes (contracted spacing), for the CPU kernel (march.cpp).
// The per-ray arithmetic is march_ray's (csrc/include/vq3dlib/march.h) operation for operation, so the
// samples are bit-identical to the scalar kernel's and the torch reference's; the lanes only march
// several rays at once and drop the branches of the step.
#pragma once
#include <cstdint>
#include <vector>

#include "vq3dlib/march.h"

namespace vq3dlib {

// The samples of a block of rays in the order the lanes emit them (each ray's in t order) and every
// ray's sample count; march.cpp packs them by ray.
struct LaneSamples {
  std::vector<int32_t> ray;  // offset of the ray in the block
  std::vector<float> t0, t1;
  std::vector<int32_t> counts;  // [rays in the block]
};

// Whether march_block_lanes marches rays of this description (float32 rays, contracted spacing, no or
// L-inf contraction, grid cells addressable with int32, at most kMaxExactLevels levels).
bool lanes_support(int spacing, int contraction, int levels, int64_t cells_per_scene, int64_t n_scenes);

// Marches rays [begin, end) with the step rule t_{k+1} = t_k + step * max(1, |x(t_k)|_inf^2) and
// stores their occupied samples in `out` (replacing what it held). `scene_index` [n_rays] (or nullptr:
// scene 0) picks each ray's grid in `binaries`, `scene_stride` cells apart.
void march_block_lanes(const float* origins, const float* directions, const float* near, const float* far,
                       const MarchGrid<float>& grid, const int64_t* scene_index, int64_t scene_stride,
                       float step, int64_t max_samples, int64_t begin, int64_t end, LaneSamples& out);

}  // namespace vq3dlib
