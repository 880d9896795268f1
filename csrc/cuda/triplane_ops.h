// Launch sites of the triplane CUDA kernels (csrc/cuda/triplane_kernels.cuh): argument checks,
// outputs, launch. Written once, compiled by nvcc (csrc/cuda/triplane.cu, CUDA tensors) and by the
// host compiler (csrc/emu/triplane.cpp, the emulated `cuda-emu` backend on CPU tensors).
#pragma once
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "triplane_kernels.cuh"
#include "vq3dlib/launch.h"
#include "vq3dlib/triplane_host.h"

namespace vq3dlib {
namespace triplane_cuda {
namespace {

const int64_t* scene_ptr(const at::Tensor& scene_index, int64_t points_per_scene) {
  return points_per_scene > 0 ? nullptr : scene_index.data_ptr<int64_t>();
}

at::Tensor triplane_sample_fwd_cuda(const at::Tensor& planes, const at::Tensor& points,
                                    const at::Tensor& scene_index, int64_t points_per_scene, int64_t contraction,
                                    double bound, bool align_corners, int64_t padding, int64_t reduce) {
  check_triplane_inputs(planes, points, scene_index, points_per_scene);
  const KernelDeviceGuard guard(planes);
  const int64_t S = points.size(0);
  const int64_t OC = triplane_out_channels(planes, reduce);
  at::Tensor out = at::zeros({S, OC}, planes.options());
  if (S == 0 || planes.size(4) == 0) return out;
  const ChannelGroups cg = channel_groups(planes.size(4));
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_fwd_cuda", [&] {
    auto a = make_triplane_args<scalar_t>(planes, points_per_scene, contraction, bound, align_corners, padding, reduce);
    launch_kernel("triplane_fwd_kernel", &triplane_fwd_kernel<scalar_t>, blocks_for(S * cg.n_groups, kThreads),
                  kThreads, a, cg, S, planes.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(),
                  scene_ptr(scene_index, points_per_scene), out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& points, const at::Tensor& scene_index,
    int64_t points_per_scene, int64_t contraction, double bound, bool align_corners, int64_t padding, int64_t reduce,
    bool need_planes_grad, bool need_points_grad) {
  check_triplane_inputs(planes, points, scene_index, points_per_scene);
  check_triplane_grad_out(grad_out, planes, points, reduce);
  const KernelDeviceGuard guard(planes);
  const int64_t S = points.size(0);
  at::Tensor g = grad_out.contiguous();
  at::Tensor grad_planes = need_planes_grad ? at::zeros_like(planes) : at::empty({0}, planes.options());
  at::Tensor grad_points = need_points_grad ? at::zeros_like(points) : at::empty({0}, points.options());
  if (S == 0 || planes.size(4) == 0 || (!need_planes_grad && !need_points_grad)) return {grad_planes, grad_points};
  const ChannelGroups cg = channel_groups(planes.size(4));
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_bwd_cuda", [&] {
    auto a = make_triplane_args<scalar_t>(planes, points_per_scene, contraction, bound, align_corners, padding, reduce);
    launch_kernel("triplane_bwd_kernel", &triplane_bwd_kernel<scalar_t>, blocks_for(S * cg.n_groups, kThreads),
                  kThreads, a, cg, S, planes.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(),
                  scene_ptr(scene_index, points_per_scene), g.data_ptr<scalar_t>(),
                  need_planes_grad ? grad_planes.data_ptr<scalar_t>() : nullptr,
                  need_points_grad ? grad_points.data_ptr<scalar_t>() : nullptr);
  });
  return {grad_planes, grad_points};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> triplane_sample_bwd_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& points, const at::Tensor& scene_index,
    const c10::optional<at::Tensor>& gg_planes, const c10::optional<at::Tensor>& gg_points, int64_t points_per_scene,
    int64_t contraction, double bound, bool align_corners, int64_t padding, int64_t reduce, bool need_grad_out_grad,
    bool need_planes_grad, bool need_points_grad) {
  at::Tensor ggp, ggx;
  check_triplane_double_backward(grad_out, planes, points, scene_index, gg_planes, gg_points, points_per_scene,
                                 reduce, &ggp, &ggx);
  const KernelDeviceGuard guard(planes);
  const int64_t S = points.size(0);
  at::Tensor g = grad_out.contiguous();
  at::Tensor grad_g = need_grad_out_grad ? at::zeros_like(g) : at::empty({0}, planes.options());
  at::Tensor grad_planes = need_planes_grad ? at::zeros_like(planes) : at::empty({0}, planes.options());
  at::Tensor grad_points = need_points_grad ? at::zeros_like(points) : at::empty({0}, points.options());
  if (S == 0 || planes.size(4) == 0 || (!ggp.defined() && !ggx.defined()) ||
      (!need_grad_out_grad && !need_planes_grad && !need_points_grad))
    return {grad_g, grad_planes, grad_points};
  const ChannelGroups cg = channel_groups(planes.size(4));
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_bwd_bwd_cuda", [&] {
    auto a = make_triplane_args<scalar_t>(planes, points_per_scene, contraction, bound, align_corners, padding, reduce);
    launch_kernel("triplane_bwd_bwd_kernel", &triplane_bwd_bwd_kernel<scalar_t>,
                  blocks_for(S * cg.n_groups, kThreads), kThreads, a, cg, S, planes.data_ptr<scalar_t>(),
                  points.data_ptr<scalar_t>(), scene_ptr(scene_index, points_per_scene), g.data_ptr<scalar_t>(),
                  ggp.defined() ? ggp.data_ptr<scalar_t>() : nullptr,
                  ggx.defined() ? ggx.data_ptr<scalar_t>() : nullptr,
                  need_grad_out_grad ? grad_g.data_ptr<scalar_t>() : nullptr,
                  need_planes_grad ? grad_planes.data_ptr<scalar_t>() : nullptr,
                  need_points_grad ? grad_points.data_ptr<scalar_t>() : nullptr);
  });
  return {grad_g, grad_planes, grad_points};
}

}  // namespace

// m.impl of the triplane kernels, for the TORCH_LIBRARY_IMPL block of the including file.
inline void register_kernels(torch::Library& m) {
  m.impl("triplane_sample_fwd", &triplane_sample_fwd_cuda);
  m.impl("triplane_sample_bwd", &triplane_sample_bwd_cuda);
  m.impl("triplane_sample_bwd_bwd", &triplane_sample_bwd_bwd_cuda);
}

}  // namespace triplane_cuda
}  // namespace vq3dlib
