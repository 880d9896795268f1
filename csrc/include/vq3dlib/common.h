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

template <typename T>
VQ3D_HD T sign_of(T x) {
  return x < T(0) ? T(-1) : T(1);
}

}  // namespace vq3dlib
