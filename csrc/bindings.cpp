// Op registration of the `vq3dlib` library: the kernel schemas (declared once, in
// csrc/include/vq3dlib/schemas.h), two build probes and the per-thread CPU thread count. Kernels
// register implementations with TORCH_LIBRARY_IMPL in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu
// (CUDA). Fake (meta) implementations and autograd are registered from Python in vq3dlib/ops/,
// which makes the ops usable under torch.compile.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "vq3dlib/cpu_threads.h"
#include "vq3dlib/schemas.h"

namespace vq3dlib {
bool cuda_compiled() {
#ifdef VQ3DLIB_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int64_t& thread_kernel_threads() {
  thread_local int64_t n = 0;
  return n;
}

// How many threads the CPU kernels' at::parallel_for really runs on: the number of chunks one call
// over [0, get_num_threads()) with grain 1 is split into. It is 1 when the extension was compiled
// without the flags of torch's parallel backend (e.g. -fopenmp), which silently serialises it.
int64_t cpu_parallel_threads() {
  const KernelThreads team;  // as the marching kernel does
  std::atomic<int64_t> chunks{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) { ++chunks; });
  return chunks.load();
}

// Sets how many threads the CPU ops started from the calling thread run on, for that thread only
// (torch.set_num_threads sets the whole process's), and returns the count it had; `kernels` (when
// given; 0: the same count) sets how many this library's kernels that share their work out as they
// go use instead (KernelThreads, vq3dlib/cpu_threads.h). Both copies of torch's per-thread lazy
// initialisation (libtorch's, through at::get_num_threads, and the one inlined into this library) run
// first, since each would otherwise reset the count to the process's on its first parallel op. A
// build without torch's parallel backend runs every kernel on one thread anyway.
int64_t set_thread_cpu_threads(int64_t n, c10::optional<int64_t> kernels) {
  TORCH_CHECK(n >= 1, "set_thread_cpu_threads: n must be >= 1, got ", n);
  TORCH_CHECK(!kernels || *kernels >= 0, "set_thread_cpu_threads: kernels must be >= 0, got ", *kernels);
  at::internal::lazy_init_num_threads();
  const int64_t previous = at::get_num_threads();
  set_openmp_threads(n);
  if (kernels) thread_kernel_threads() = *kernels;
  return previous;
}
}  // namespace vq3dlib

TORCH_LIBRARY(vq3dlib, m) {
  m.def("cuda_compiled() -> bool", &vq3dlib::cuda_compiled);
  m.def("cpu_parallel_threads() -> int", &vq3dlib::cpu_parallel_threads);
  m.def("set_thread_cpu_threads(int n, int? kernels=None) -> int", &vq3dlib::set_thread_cpu_threads);
  vq3dlib::define_kernel_schemas(m);
}
