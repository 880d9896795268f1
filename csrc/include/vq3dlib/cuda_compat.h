// The CUDA built-ins the kernel headers (csrc/cuda/*_kernels.cuh) use, for a host compiler: with
// nvcc this header adds nothing; on the host it gives the qualifiers, dim3, per-thread
// blockIdx/threadIdx/blockDim/gridDim (set by the emulated launch of vq3dlib/launch.h), __ldg,
// atomicAdd as a real host atomic, and min/max. Only what the kernels use is here: a kernel that
// needs __syncthreads, shared memory or warp intrinsics does not compile in the emulation (they are
// deliberately absent; see docs/backends.md).
#pragma once

#if !defined(__CUDACC__) && !defined(__HIPCC__)
#include <cstdint>
#include <type_traits>

#define VQ3D_CUDA_EMULATED 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The position of the emulated CUDA thread a host thread is running (one per host thread).
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// atomicAdd: returns the old value, like CUDA's. Integers use the hardware fetch-add; floating
// point a compare-and-swap loop (sequentially consistent; CUDA's is relaxed, which is weaker).
template <typename T>
inline T atomicAdd(T* address, T value) {
  static_assert(std::is_arithmetic<T>::value, "atomicAdd: arithmetic types only");
  if constexpr (std::is_integral<T>::value) {
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
  } else {
    T old;
    __atomic_load(address, &old, __ATOMIC_SEQ_CST);
    T desired = old + value;
    while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
      desired = old + value;
    }
    return old;
  }
}

// CUDA's global min/max overloads for integers and floating point.
template <typename T, typename = std::enable_if_t<std::is_arithmetic<T>::value>>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T, typename = std::enable_if_t<std::is_arithmetic<T>::value>>
inline T max(T a, T b) {
  return a < b ? b : a;
}
#endif
