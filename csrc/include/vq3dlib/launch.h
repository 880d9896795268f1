// One launch helper for the CUDA kernels, used by the launch sites of csrc/cuda/*_ops.h, which are
// compiled twice: by nvcc (csrc/cuda/*.cu, real launches on the current stream) and by the host
// compiler (csrc/emu/*.cpp, the `cuda-emu` backend), where the launch is emulated.
//
// Emulated launch: every (block, thread) of the grid runs on the CPU. The blocks are spread over
// the threads of at::parallel_for; the threads of one block run one after another on one host thread,
// with blockIdx/threadIdx/blockDim/gridDim set before each. This is exact for kernels whose threads
// do not talk to each other inside a block (no __syncthreads, shared memory or warp intrinsics,
// which vq3dlib/cuda_compat.h therefore does not provide): every kernel of this library. Threads of
// different blocks run concurrently, so atomicAdd is a real host atomic.
#pragma once
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <utility>

#include "vq3dlib/cuda_compat.h"

#if defined(__CUDACC__)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace vq3dlib {

// Blocks of `threads` threads that cover `n` work items (n > 0).
inline int64_t blocks_for(int64_t n, int threads) { return (n + threads - 1) / threads; }

// Launches kernel<<<n_blocks, threads>>>(args...) (1-D grid), or emulates it on the host. Checks the
// launch configuration the same way in both builds: 1 <= n_blocks < 2^31, 1 <= threads <= 1024.
template <typename... Params, typename... Args>
void launch_kernel(const char* name, void (*kernel)(Params...), int64_t n_blocks, int threads, Args&&... args) {
  TORCH_CHECK(n_blocks >= 1 && n_blocks <= std::numeric_limits<int32_t>::max(), name,
              ": grid of ", n_blocks, " blocks is outside [1, 2^31 - 1]");
  TORCH_CHECK(threads >= 1 && threads <= 1024, name, ": ", threads, " threads per block is outside [1, 1024]");
  const dim3 grid(static_cast<unsigned int>(n_blocks)), block(static_cast<unsigned int>(threads));
#if defined(__CUDACC__)
  kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#else
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    gridDim = grid;
    blockDim = block;
    for (int64_t b = begin; b < end; ++b) {
      blockIdx = {static_cast<unsigned int>(b), 0, 0};
      for (unsigned int t = 0; t < block.x; ++t) {
        threadIdx = {t, 0, 0};
        kernel(args...);
      }
    }
  });
#endif
}

// Makes the device of `t` current for the launches of a scope (nothing to do when emulated).
struct KernelDeviceGuard {
#if defined(__CUDACC__)
  explicit KernelDeviceGuard(const at::Tensor& t) : guard(t.device()) {}
  c10::cuda::CUDAGuard guard;
#else
  template <typename Tensor>
  explicit KernelDeviceGuard(const Tensor&) {}
#endif
};

}  // namespace vq3dlib
