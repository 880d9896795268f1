// Tiled transposes of the last two dims (transpose.h). A tile of kTileA x kTileB elements reads its
// input rows kRows at a time: the rows lie Bn elements apart, often a power of two, so they share
// cache sets, and reading 32 of them at once (each a few cache lines) evicted each other from an
// 8-way L1 (a 25 MB layout change took 6-11 ms, against 1.6 ms for a copy). The tile's output rows
// (kTileB x kTileA elements) stay in L1 meanwhile. In float, 8 x 8 blocks of a tile go through
// AVX2 registers (eight loads, 24 shuffles, eight stores instead of 64 scalar moves); the rest of
// the tile, and double, move element by element.
#include "transpose.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "lanes.h"

namespace vq3dlib {
namespace {

constexpr int64_t kTileA = 32, kTileB = 128, kRows = 4;

// Rows [a0, a1) and columns [b0, b1) of one slice, element by element, kRows input rows at a time.
template <typename T>
void transpose_elements(const T* __restrict src, T* __restrict dst, int64_t A, int64_t Bn, int64_t a0, int64_t a1,
                        int64_t b0, int64_t b1) {
  for (int64_t r0 = a0; r0 < a1; r0 += kRows) {
    const int64_t r1 = std::min(a1, r0 + kRows);
    for (int64_t b = b0; b < b1; ++b) {
      T* __restrict d = dst + b * A;
      for (int64_t a = r0; a < r1; ++a) d[a] = src[a * Bn + b];
    }
  }
}

#if defined(VQ3D_LANES)
// dst[(b + j) * A + a + i] = src[(a + i) * Bn + b + j] for i, j in [0, 8).
VQ3D_AVX2 void transpose_8x8(const float* src, float* dst, int64_t A, int64_t Bn) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * Bn);
  for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // quads: columns (0, 1) and (2, 3) of each 128-bit half
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {  // rows 0-3 and 4-7 joined by 128-bit halves: columns j and j + 4
    _mm256_storeu_ps(dst + j * A, _mm256_permute2f128_ps(r[j], r[j + 4], 0x20));
    _mm256_storeu_ps(dst + (j + 4) * A, _mm256_permute2f128_ps(r[j], r[j + 4], 0x31));
  }
}

// One tile as 8 x 8 blocks, the rows and columns past the last whole block element by element.
VQ3D_AVX2 void transpose_blocks(const float* src, float* dst, int64_t A, int64_t Bn, int64_t a0, int64_t a1,
                                int64_t b0, int64_t b1) {
  const int64_t a8 = a0 + (a1 - a0) / 8 * 8, b8 = b0 + (b1 - b0) / 8 * 8;
  for (int64_t a = a0; a < a8; a += 8)
    for (int64_t b = b0; b < b8; b += 8) transpose_8x8(src + a * Bn + b, dst + b * A + a, A, Bn);
  transpose_elements(src, dst, A, Bn, a0, a8, b8, b1);
  transpose_elements(src, dst, A, Bn, a8, a1, b0, b1);
}
#endif

}  // namespace

template <typename T>
void transpose_last_two(const T* in, T* out, int64_t N, int64_t A, int64_t Bn) {
#if defined(VQ3D_LANES)
  [[maybe_unused]] const bool blocks = std::is_same_v<T, float> && lanes::cpu_has_avx2();
#endif
  const int64_t ta = (A + kTileA - 1) / kTileA, tb = (Bn + kTileB - 1) / kTileB;
  at::parallel_for(0, N * ta * tb, 8, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t n = k / (ta * tb), a0 = (k / tb) % ta * kTileA, b0 = k % tb * kTileB;
      const int64_t a1 = std::min(A, a0 + kTileA), b1 = std::min(Bn, b0 + kTileB);
      const T* src = in + n * A * Bn;
      T* dst = out + n * A * Bn;
#if defined(VQ3D_LANES)
      if constexpr (std::is_same_v<T, float>) {
        if (blocks) {
          transpose_blocks(src, dst, A, Bn, a0, a1, b0, b1);
          continue;
        }
      }
#endif
      transpose_elements(src, dst, A, Bn, a0, a1, b0, b1);
    }
  });
}

template void transpose_last_two<float>(const float*, float*, int64_t, int64_t, int64_t);
template void transpose_last_two<double>(const double*, double*, int64_t, int64_t, int64_t);

}  // namespace vq3dlib
