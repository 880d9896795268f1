// Shared host/device helpers. Included by the CPU (.cpp) and CUDA (.cu) kernels so every formula
// exists once.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define VQ3D_HD __host__ __device__ __forceinline__
#else
#define VQ3D_HD inline
#endif

#include <cmath>

namespace vq3dlib {

template <typename T>
VQ3D_HD T clamp_value(T x, T lo, T hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// floor(x) as an int, for x within int's range; the same value as static_cast<int>(floor(x)) without
// a call into libm (x86-64 has no floor instruction before SSE4.1, and the build targets baseline).
template <typename T>
VQ3D_HD int floor_int(T x) {
  const int i = static_cast<int>(x);  // rounds towards zero
  return static_cast<T>(i) > x ? i - 1 : i;
}

template <typename T>
VQ3D_HD T sign_of(T x) {
  return x < T(0) ? T(-1) : T(1);
}

}  // namespace vq3dlib
