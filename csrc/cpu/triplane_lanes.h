// The triplane forward of float32 points with the texels located in AVX2 lanes (eight points at a
// time), for the CPU kernel (triplane.cpp). The arithmetic is locate_texels' and add_plane_texels'
// operation for operation (no fused multiply-add), so the features are the scalar forward's bit for bit.
#pragma once
#include <cstdint>

#include "vq3dlib/triplane.h"

namespace vq3dlib {

// Features of the points at positions [begin, end) into out (the rows order[position], or position
// without an order), as forward_range computes them. Returns false, doing nothing, for what the lanes
// do not handle (a CPU without AVX2, channel counts other than 8, 12, 16 and 32, contractions other
// than none and L-inf, planes of 2^31 elements or more): the caller then runs the scalar forward.
bool triplane_forward_lanes(const TriplaneArgs<float>& a, const float* planes, const float* points,
                            const int64_t* scene_index, const int64_t* order, float* out, int64_t begin, int64_t end);

}  // namespace vq3dlib
