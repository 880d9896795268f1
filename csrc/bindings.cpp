// Op registration of the `vq3dlib` library: the kernel schemas (declared once, in
// csrc/include/vq3dlib/schemas.h) and two build probes. Kernels register implementations with
// TORCH_LIBRARY_IMPL in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA). Fake (meta)
// implementations and autograd are registered from Python in vq3dlib/ops/, which makes the ops
// usable under torch.compile.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "vq3dlib/schemas.h"

namespace vq3dlib {
bool cuda_compiled() {
#ifdef VQ3DLIB_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// How many threads the CPU kernels' at::parallel_for really runs on: the number of chunks one call
// over [0, get_num_threads()) with grain 1 is split into. It is 1 when the extension was compiled
// without the flags of torch's parallel backend (e.g. -fopenmp), which silently serialises it.
int64_t cpu_parallel_threads() {
  std::atomic<int64_t> chunks{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) { ++chunks; });
  return chunks.load();
}
}  // namespace vq3dlib

TORCH_LIBRARY(vq3dlib, m) {
  m.def("cuda_compiled() -> bool", &vq3dlib::cuda_compiled);
  m.def("cpu_parallel_threads() -> int", &vq3dlib::cpu_parallel_threads);
  vq3dlib::define_kernel_schemas(m);
}
