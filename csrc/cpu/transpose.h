// Transpose of the last two dims of contiguous [N, A, Bn] arrays, for the planes' layout changes
// (triplane.cpp: channels-first <-> channels-last).
#pragma once
#include <cstdint>

namespace vq3dlib {

// out[n, b, a] = in[n, a, b] for contiguous in [N, A, Bn] and out [N, Bn, A], parallel over tiles.
// Defined for float and double; float moves 8 x 8 blocks through AVX2 registers where the CPU has it.
template <typename T>
void transpose_last_two(const T* in, T* out, int64_t N, int64_t A, int64_t Bn);

}  // namespace vq3dlib
