// The schemas of the kernel ops, declared once: csrc/bindings.cpp defines them in the `vq3dlib`
// library (CPU and CUDA kernels), csrc/emu/bindings.cpp in the `vq3dlib_emu` library (the CUDA
// kernels emulated on the host, on CPU tensors). Kernels register implementations with
// TORCH_LIBRARY_IMPL in csrc/cpu/*.cpp, csrc/cuda/*.cu and csrc/emu/*.cpp.
#pragma once
#include <torch/library.h>

namespace vq3dlib {

inline void define_kernel_schemas(torch::Library& m) {
  // ---- triplane (csrc/cpu/triplane.cpp, csrc/cuda/triplane.cu) ----
  // [B, 3, C, H, W] -> contiguous [B, 3, H, W, C] (CPU: in huge-page-advised memory)
  m.def("planes_channels_last(Tensor planes) -> Tensor");
  // its inverse, [B, 3, H, W, C] -> contiguous [B, 3, C, H, W] (the layout change's backward)
  m.def("planes_channels_first(Tensor planes) -> Tensor");
  m.def(
      "triplane_sample_fwd(Tensor planes, Tensor points, Tensor scene_index, int points_per_scene, "
      "int contraction, float bound, bool align_corners, int padding, int reduce) -> Tensor");
  m.def(
      "triplane_sample_bwd(Tensor grad_out, Tensor planes, Tensor points, Tensor scene_index, "
      "int points_per_scene, int contraction, float bound, bool align_corners, int padding, int reduce, "
      "bool need_planes_grad, bool need_points_grad) -> (Tensor, Tensor)");
  // the backward's backward: cotangents of its (grad_planes, grad_points) -> gradients to
  // (grad_out, planes, points); an absent or empty cotangent counts as zero
  m.def(
      "triplane_sample_bwd_bwd(Tensor grad_out, Tensor planes, Tensor points, Tensor scene_index, "
      "Tensor? gg_planes, Tensor? gg_points, int points_per_scene, int contraction, float bound, "
      "bool align_corners, int padding, int reduce, bool need_grad_out_grad, bool need_planes_grad, "
      "bool need_points_grad) -> (Tensor, Tensor, Tensor)");

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

}  // namespace vq3dlib
