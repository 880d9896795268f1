#pragma once
// The thread count of the CPU kernels called from one thread, when it differs from torch's count
// for that thread (set with the set_thread_cpu_threads op, csrc/bindings.cpp). A pool thread whose
// torch ops run on one thread (vq3dlib/cpu_threads.py) lets the kernels that share their work out
// as they go (the marching kernel's blocks of rays) use the pool's threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
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

// Runs fn(b, e) over [begin, end) in pieces of `grain`, handed out to the threads as they go: a
// thread that shares its core with another process takes fewer pieces, where at::parallel_for's
// equal shares would leave the other threads waiting for it at the end of the region.
template <typename Fn>
void parallel_for_as_they_go(int64_t begin, int64_t end, int64_t grain, const Fn& fn) {
  if (end <= begin) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t n_pieces = (end - begin + grain - 1) / grain;
  const int64_t n_workers = std::min<int64_t>(at::get_num_threads(), n_pieces);
  if (n_workers <= 1 || at::in_parallel_region()) {
    fn(begin, end);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, n_workers, 1, [&](int64_t, int64_t) {
    for (int64_t p = next++; p < n_pieces; p = next++) fn(begin + p * grain, std::min(end, begin + (p + 1) * grain));
  });
}

}  // namespace vq3dlib
