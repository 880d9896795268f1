// Eight float32/int32 SIMD lanes (AVX2) for the CPU kernels that march or locate eight rays or points
// at once: vector types, their helpers, and whether this CPU runs them. Functions that use them carry
// VQ3D_AVX2 (the target is AVX2 without FMA: a lane rounds every operation as scalar code does).
#pragma once
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VQ3D_LANES 1
#include <immintrin.h>

namespace vq3dlib {
namespace lanes {

constexpr int kLanes = 8;
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));

#define VQ3D_AVX2 __attribute__((target("avx2"))) inline

// Whether this CPU runs AVX2 (checked once).
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

VQ3D_AVX2 vf splat(float x) { return vf{x, x, x, x, x, x, x, x}; }
VQ3D_AVX2 vi splat_int(int32_t x) { return vi{x, x, x, x, x, x, x, x}; }
VQ3D_AVX2 vf abs_of(vf x) { return reinterpret_cast<vf>(reinterpret_cast<vi>(x) & splat_int(0x7fffffff)); }
VQ3D_AVX2 int bits_of(vi mask) { return _mm256_movemask_ps(reinterpret_cast<__m256>(mask)); }
VQ3D_AVX2 vf select(vi mask, vf a, vf b) { return mask ? a : b; }
VQ3D_AVX2 vi select_int(vi mask, vi a, vi b) { return mask ? a : b; }
// floor_int (common.h) in the lanes, for values within int32's range
VQ3D_AVX2 vi floor_lanes(vf x) {
  const vi i = __builtin_convertvector(x, vi);  // rounds towards zero
  return i + (__builtin_convertvector(i, vf) > x);  // true lanes are -1
}

// contract_point(kContractLinf, x) (contraction.h) in the lanes.
VQ3D_AVX2 void contract_linf_lanes(vf x0, vf x1, vf x2, vf* y0, vf* y1, vf* y2) {
  const vf a0 = abs_of(x0), a1 = abs_of(x1), a2 = abs_of(x2);
  const vi k1 = a1 > a0;  // linf_argmax: the first coordinate of largest magnitude
  const vf m01 = select(k1, a1, a0);
  const vi k2 = a2 > m01;
  const vf m = select(k2, a2, m01);
  const vf one = splat(1.0f);
  const vi outside = m > one;
  const vf xk = select(k2, x2, select(k1, x1, x0));
  const vf c = (splat(2.0f) - one / m) * select(xk < splat(0.0f), splat(-1.0f), one);
  const vi is1 = k1 & ~k2;
  const vi is0 = ~(k1 | k2);
  *y0 = select(outside, select(is0, c, x0 / m), x0);
  *y1 = select(outside, select(is1, c, x1 / m), x1);
  *y2 = select(outside, select(k2, c, x2 / m), x2);
}

}  // namespace lanes
}  // namespace vq3dlib
#endif
