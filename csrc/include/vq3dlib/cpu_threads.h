#pragma once
// The thread count of the CPU kernels called from one thread, when it differs from torch's count
// for that thread (set with the set_thread_cpu_threads op, csrc/bindings.cpp). A pool thread whose
// torch ops run on one thread (vq3dlib/cpu_threads.py) lets the kernels that share their work out
// as they go (the marching kernel's blocks of rays) use the pool's threads.
#include <ATen/Parallel.h>

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace vq3dlib {

// Threads the CPU kernels called from this thread run on; 0: torch's count for the thread.
int64_t& thread_kernel_threads();

// The calling thread's OpenMP thread count (torch's count for the thread); nothing without OpenMP.
inline void set_openmp_threads(int64_t n) {
#ifdef _OPENMP
  omp_set_num_threads(static_cast<int>(n));
#else
  (void)n;
#endif
}

// For the lifetime of a kernel call: the calling thread's kernel thread count, when it has one, as
// its OpenMP count (the previous count is restored on exit).
class KernelThreads {
 public:
  KernelThreads() {
    const int64_t n = thread_kernel_threads();
    if (n > 0 && n != at::get_num_threads()) {
      previous_ = at::get_num_threads();
      set_openmp_threads(n);
    }
  }
  ~KernelThreads() {
    if (previous_ > 0) set_openmp_threads(previous_);
  }
  KernelThreads(const KernelThreads&) = delete;
  KernelThreads& operator=(const KernelThreads&) = delete;

 private:
  int64_t previous_ = 0;
};

}  // namespace vq3dlib
