// Op registration: every schema of the extension is declared here, once, so the list of compiled
// ops lives in one place. Kernels register implementations with TORCH_LIBRARY_IMPL in
// csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA). Fake (meta) implementations and autograd are
// registered from Python in vq3dlib/ops/, which makes the ops usable under torch.compile.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

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

  // ---- triplane (csrc/cpu/triplane.cpp, csrc/cuda/triplane.cu) ----
  // [B, 3, C, H, W] -> contiguous [B, 3, H, W, C] (CPU: in huge-page-advised memory)
  m.def("planes_channels_last(Tensor planes) -> Tensor");
  m.def(
      "triplane_sample_fwd(Tensor planes, Tensor points, Tensor scene_index, int points_per_scene, "
      "int contraction, float bound, bool align_corners, int padding, int reduce) -> Tensor");
  m.def(
      "triplane_sample_bwd(Tensor grad_out, Tensor planes, Tensor points, Tensor scene_index, "
      "int points_per_scene, int contraction, float bound, bool align_corners, int padding, int reduce, "
      "bool need_planes_grad, bool need_points_grad) -> (Tensor, Tensor)");

  // ---- rendering (add render schemas below this line) ----
  // ray marching (csrc/cpu/march.cpp, csrc/cuda/march.cu)
  m.def(
      "march_packed(Tensor origins, Tensor directions, Tensor near, Tensor far, Tensor binaries, "
      "Tensor boxes, Tensor? scene_index, float step_size, int max_samples, int contraction, "
      "int spacing) -> (Tensor, Tensor, Tensor)");
  // volume-rendering weights (csrc/cpu/volrend.cpp, csrc/cuda/volrend.cu); packed_info [n_rays, 2]
  // (start, count) when samples_per_ray == 0, else dense rays of samples_per_ray samples.
  m.def(
      "volrend_density_fwd(Tensor t_starts, Tensor t_ends, Tensor sigmas, Tensor packed_info, "
      "int samples_per_ray) -> (Tensor, Tensor, Tensor)");
  m.def(
      "volrend_density_bwd(Tensor? grad_weights, Tensor? grad_trans, Tensor? grad_alphas, Tensor t_starts, "
      "Tensor t_ends, Tensor sigmas, Tensor trans, Tensor alphas, Tensor packed_info, int samples_per_ray, "
      "bool need_delta_grad) -> (Tensor, Tensor)");
  m.def("volrend_alpha_fwd(Tensor alphas, Tensor packed_info, int samples_per_ray) -> (Tensor, Tensor)");
  m.def(
      "volrend_alpha_bwd(Tensor? grad_weights, Tensor? grad_trans, Tensor alphas, Tensor trans, "
      "Tensor packed_info, int samples_per_ray) -> Tensor");
}
