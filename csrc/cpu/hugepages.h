// Large CPU buffers read or written at random texels (triplane planes and their gradients) suffer
// from TLB misses with 4 KiB pages. Advising transparent huge pages before the first touch halves
// the cost of random lookups where the kernel allows THP on request (the common "madvise" setting).
#pragma once
#include <torch/types.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace vq3dlib {

inline at::Tensor empty_hugepages(at::IntArrayRef size, at::TensorOptions options) {
  at::Tensor t = at::empty(size, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t bytes = t.nbytes();
  if (t.device().is_cpu() && bytes >= 4 * kHuge) {
    const uintptr_t ptr = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t start = (ptr + kHuge - 1) & ~(kHuge - 1), end = (ptr + bytes) & ~(kHuge - 1);
    if (end > start) madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE);  // advice only
  }
#endif
  return t;
}

}  // namespace vq3dlib
