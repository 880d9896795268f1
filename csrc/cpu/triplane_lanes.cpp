// The triplane forward with its texels located in AVX2 lanes (contract: triplane_lanes.h).
//
// A block of 16 points is located eight at a time: the division by the bound, the contraction, the
// unnormalisation, the bilinear corners, weights and validity of all three planes (triplane.h,
// bilinear.h) become lane operations with selects for their branches. The channel sums then run per
// point as in forward_range, in the same order, so each feature is the scalar forward's bit for bit.
#include "triplane_lanes.h"

#include <algorithm>
#include <limits>

#include "lanes.h"

namespace vq3dlib {

#ifdef VQ3D_LANES
namespace {

using namespace lanes;

constexpr int kBlock = 16;  // points located, prefetched and summed together

// The located texels of a block: texel j = plane * 4 + corner of point r.
struct BlockTexels {
  alignas(32) int32_t offset[12][kBlock];  // element offset of the texel within its plane; -1: outside
  alignas(32) float weight[12][kBlock];
};

// unnormalize_coord (bilinear.h) without the derivative.
VQ3D_AVX2 vf unnormalize_lanes(vf u, int size, bool align_corners, int padding) {
  const vf one = splat(1.0f);
  vf pix = align_corners ? (u + one) * splat(static_cast<float>(size - 1) / 2.0f)
                         : ((u + one) * splat(static_cast<float>(size)) - one) * splat(0.5f);  // x / 2 == x * 0.5
  if (padding == kPadBorder) {
    const vf last = splat(static_cast<float>(size - 1));
    pix = select(pix <= splat(0.0f), splat(0.0f), select(pix >= last, last, pix));
  }
  return pix;
}

// Texels of plane p for the unit coordinates q of eight points (lanes) into columns [h, h + 8) of t.
VQ3D_AVX2 void locate_plane_lanes(const TriplaneArgs<float>& a, const vf q[3], int p, float scale,
                                  BlockTexels* t, int h) {
  const int width = static_cast<int>(a.width), height = static_cast<int>(a.height);
  vf px = unnormalize_lanes(q[plane_u_axis(p)], width, a.align_corners, a.padding);
  vf py = unnormalize_lanes(q[plane_v_axis(p)], height, a.align_corners, a.padding);
  // BilinearCorners::set: clamp, floor, fractions, weights, validity
  px = select(px < splat(-2.0f), splat(-2.0f), select(px > splat(width + 1.0f), splat(width + 1.0f), px));
  py = select(py < splat(-2.0f), splat(-2.0f), select(py > splat(height + 1.0f), splat(height + 1.0f), py));
  const vi x0 = floor_lanes(px), y0 = floor_lanes(py);
  const vf fx = px - __builtin_convertvector(x0, vf), fy = py - __builtin_convertvector(y0, vf);
  const vf one = splat(1.0f), gx = one - fx, gy = one - fy;
  const vf w[4] = {gx * gy, fx * gy, gx * fy, fx * fy};
  const vi zero = splat_int(0), x1 = x0 + splat_int(1), y1 = y0 + splat_int(1);
  const vi vx[2] = {(x0 >= zero) & (x0 < splat_int(width)), (x1 >= zero) & (x1 < splat_int(width))};
  const vi vy[2] = {(y0 >= zero) & (y0 < splat_int(height)), (y1 >= zero) & (y1 < splat_int(height))};
  const vi channels = splat_int(static_cast<int32_t>(a.channels));
  for (int k = 0; k < 4; ++k) {
    const vi cx = (k & 1) ? x1 : x0, cy = (k >> 1) ? y1 : y0;
    const vi valid = vx[k & 1] & vy[k >> 1];
    const vi offset = select_int(valid, (cy * splat_int(width) + cx) * channels, splat_int(-1));
    *reinterpret_cast<vi*>(&t->offset[p * 4 + k][h]) = offset;
    *reinterpret_cast<vf*>(&t->weight[p * 4 + k][h]) = w[k] * splat(scale);
  }
}

// Locates the texels of the points at positions [b0, b0 + n), n <= kBlock (the lanes past n repeat
// the last point).
VQ3D_AVX2 void locate_block_lanes(const TriplaneArgs<float>& a, const float* points, int64_t b0, int n,
                                  BlockTexels* t) {
  const float scale = a.plane_scale();
  const bool contract = a.contraction == kContractLinf;
  for (int h = 0; h < n; h += kLanes) {
    vi at = vi{0, 1, 2, 3, 4, 5, 6, 7} + splat_int(h);
    at = select_int(at < splat_int(n), at, splat_int(n - 1)) * splat_int(3);
    const float* base = points + 3 * b0;
    vf pc[3], q[3];
    for (int j = 0; j < 3; ++j) {
      const vf x = reinterpret_cast<vf>(_mm256_i32gather_ps(base + j, reinterpret_cast<__m256i>(at), 4));
      pc[j] = x / splat(a.bound);  // triplane_point_setup
    }
    if (contract) {
      contract_linf_lanes(pc[0], pc[1], pc[2], &q[0], &q[1], &q[2]);
      for (int j = 0; j < 3; ++j) q[j] = q[j] * splat(0.5f);
    } else {
      for (int j = 0; j < 3; ++j) q[j] = pc[j];
    }
    for (int p = 0; p < 3; ++p) locate_plane_lanes(a, q, p, scale, t, h);
  }
}

typedef float vf4 __attribute__((vector_size(16)));

// The channel sums of one point as kC / 8 eight-lane vectors and, for kC = 12, a four-lane one.
template <int kC>
struct ChannelSums {
  static constexpr int kWide = kC / 8, kNarrow = kC % 8 == 4;
  vf wide[kWide > 0 ? kWide : 1];
  vf4 narrow;

  VQ3D_AVX2 void zero() {
    for (int k = 0; k < kWide; ++k) wide[k] = splat(0.0f);
    narrow = vf4{0.0f, 0.0f, 0.0f, 0.0f};
  }
  // acc[c] += w * v[c] for every channel (add_plane_texels' terms)
  VQ3D_AVX2 void add(float w, const float* v) {
    for (int k = 0; k < kWide; ++k) wide[k] += splat(w) * reinterpret_cast<vf>(_mm256_loadu_ps(v + 8 * k));
    if (kNarrow) narrow += vf4{w, w, w, w} * reinterpret_cast<vf4>(_mm_loadu_ps(v + 8 * kWide));
  }
  // stream: non-temporal stores where dst is 16-byte aligned, as store_row (triplane.cpp) writes rows
  VQ3D_AVX2 void store(float* dst, bool stream) const {
    if (stream && (reinterpret_cast<std::uintptr_t>(dst) & 15) == 0) {
      for (int k = 0; k < kWide; ++k) {
        const __m256 w = reinterpret_cast<__m256>(wide[k]);
        _mm_stream_ps(dst + 8 * k, _mm256_castps256_ps128(w));
        _mm_stream_ps(dst + 8 * k + 4, _mm256_extractf128_ps(w, 1));
      }
      if (kNarrow) _mm_stream_ps(dst + 8 * kWide, reinterpret_cast<__m128>(narrow));
      return;
    }
    for (int k = 0; k < kWide; ++k) _mm256_storeu_ps(dst + 8 * k, reinterpret_cast<__m256>(wide[k]));
    if (kNarrow) _mm_storeu_ps(dst + 8 * kWide, reinterpret_cast<__m128>(narrow));
  }
};

template <int kC>
VQ3D_AVX2 void add_plane_lanes(const float* __restrict plane, const BlockTexels& t, int p, int r,
                               ChannelSums<kC>* acc) {
  for (int k = 0; k < 4; ++k) {
    const int j = p * 4 + k;
    if (t.offset[j][r] >= 0) acc->add(t.weight[j][r], plane + t.offset[j][r]);
  }
}

template <int kC>
__attribute__((target("avx2"))) void forward_lanes(const TriplaneArgs<float>& a, const float* planes,
                                                   const float* points, const int64_t* scene_index,
                                                   const int64_t* order, float* out, int64_t begin, int64_t end) {
  const int64_t OC = a.out_channels(), plane_elems = a.height * a.width * a.channels;
  const bool concat = a.reduce == kReduceConcat, stream = order != nullptr;
  BlockTexels t;
  int64_t scene_base[kBlock];
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int n = static_cast<int>(std::min<int64_t>(kBlock, end - b0));
    locate_block_lanes(a, points, b0, n, &t);
    for (int r = 0; r < n; ++r) {
      const int64_t i = b0 + r, scene = triplane_point_scene(a, i, scene_index);
      scene_base[r] = scene >= 0 ? a.plane_offset(scene, 0) : -1;
      if (scene_base[r] >= 0) {
        for (int j = 0; j < 12; ++j) {
          if (t.offset[j][r] < 0) continue;
          const float* texel = planes + scene_base[r] + (j / 4) * plane_elems + t.offset[j][r];
          for (int c = 0; c < kC; c += 16) __builtin_prefetch(texel + c, 0, 1);
          __builtin_prefetch(texel + kC - 1, 0, 1);  // a texel may end in the next cache line
        }
      }
      for (int64_t c = 0; stream && c < OC; c += 16) __builtin_prefetch(out + order[i] * OC + c, 1, 1);
    }
    for (int r = 0; r < n; ++r) {
      const int64_t row = order != nullptr ? order[b0 + r] : b0 + r;
      float* o_row = out + row * OC;
      ChannelSums<kC> acc;
      for (int p = 0; p < 3; ++p) {
        if (p == 0 || concat) acc.zero();
        if (scene_base[r] >= 0) add_plane_lanes<kC>(planes + scene_base[r] + p * plane_elems, t, p, r, &acc);
        if (concat || p == 2) acc.store(o_row + a.plane_out_offset(p), stream);
      }
    }
  }
  if (stream) _mm_sfence();
}

}  // namespace

bool triplane_forward_lanes(const TriplaneArgs<float>& a, const float* planes, const float* points,
                            const int64_t* scene_index, const int64_t* order, float* out, int64_t begin,
                            int64_t end) {
  if (!cpu_has_avx2() || (a.contraction != kContractNone && a.contraction != kContractLinf) ||
      a.height * a.width * a.channels > std::numeric_limits<int32_t>::max() || a.width + 2 > (1 << 24) ||
      a.height + 2 > (1 << 24)) {
    return false;
  }
  switch (a.channels) {
    case 8: forward_lanes<8>(a, planes, points, scene_index, order, out, begin, end); return true;
    case 12: forward_lanes<12>(a, planes, points, scene_index, order, out, begin, end); return true;
    case 16: forward_lanes<16>(a, planes, points, scene_index, order, out, begin, end); return true;
    case 32: forward_lanes<32>(a, planes, points, scene_index, order, out, begin, end); return true;
    default: return false;
  }
}

#else  // no lanes on this platform

bool triplane_forward_lanes(const TriplaneArgs<float>&, const float*, const float*, const int64_t*, const int64_t*,
                            float*, int64_t, int64_t) {
  return false;
}

#endif

}  // namespace vq3dlib
