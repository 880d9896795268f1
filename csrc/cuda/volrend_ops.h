// Launch sites of the volume-rendering CUDA kernels (csrc/cuda/volrend_kernels.cuh). Written once,
// compiled by nvcc (csrc/cuda/volrend.cu, CUDA tensors) and by the host compiler
// (csrc/emu/volrend.cpp, the emulated `cuda-emu` backend on CPU tensors).
#pragma once
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "volrend_kernels.cuh"
#include "vq3dlib/launch.h"
#include "vq3dlib/volrend_host.h"

namespace vq3dlib {
namespace volrend_cuda {
namespace {

const int64_t* info_ptr(const at::Tensor& packed_info, int64_t samples_per_ray) {
  return samples_per_ray > 0 ? nullptr : packed_info.data_ptr<int64_t>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> volrend_density_fwd_cuda(
    const at::Tensor& t_starts, const at::Tensor& t_ends, const at::Tensor& sigmas, const at::Tensor& packed_info,
    int64_t samples_per_ray) {
  check_volrend_density_inputs(t_starts, t_ends, sigmas, packed_info, samples_per_ray);
  const KernelDeviceGuard guard(sigmas);
  auto weights = at::empty_like(sigmas);
  auto trans = at::empty_like(sigmas);
  auto alphas = at::empty_like(sigmas);
  const int64_t n_rays = volrend_n_rays(sigmas, packed_info, samples_per_ray);
  if (n_rays == 0 || sigmas.numel() == 0) return {weights, trans, alphas};
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "volrend_density_fwd_cuda", [&] {
    launch_kernel("density_fwd_kernel", &density_fwd_kernel<scalar_t>, blocks_for(n_rays, kThreads), kThreads,
        n_rays, info_ptr(packed_info, samples_per_ray), samples_per_ray, t_starts.data_ptr<scalar_t>(),
        t_ends.data_ptr<scalar_t>(), sigmas.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
        trans.data_ptr<scalar_t>(), alphas.data_ptr<scalar_t>());
  });
  return {weights, trans, alphas};
}

std::tuple<at::Tensor, at::Tensor> volrend_density_bwd_cuda(
    const c10::optional<at::Tensor>& grad_weights, const c10::optional<at::Tensor>& grad_trans,
    const c10::optional<at::Tensor>& grad_alphas, const at::Tensor& t_starts, const at::Tensor& t_ends,
    const at::Tensor& sigmas, const at::Tensor& trans, const at::Tensor& alphas, const at::Tensor& packed_info,
    int64_t samples_per_ray, bool need_delta_grad) {
  const KernelDeviceGuard guard(sigmas);
  check_volrend_density_inputs(t_starts, t_ends, sigmas, packed_info, samples_per_ray);
  check_volrend_grads(sigmas, {&grad_weights, &grad_trans, &grad_alphas}, {&trans, &alphas});
  auto grad_sigmas = at::empty_like(sigmas);
  auto grad_deltas = need_delta_grad ? at::empty_like(sigmas) : at::empty({0}, sigmas.options());
  const int64_t n_rays = volrend_n_rays(sigmas, packed_info, samples_per_ray);
  if (n_rays == 0 || sigmas.numel() == 0) return {grad_sigmas, grad_deltas};
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "volrend_density_bwd_cuda", [&] {
    launch_kernel("density_bwd_kernel", &density_bwd_kernel<scalar_t>, blocks_for(n_rays, kThreads), kThreads,
        n_rays, info_ptr(packed_info, samples_per_ray), samples_per_ray, optional_ptr<scalar_t>(grad_weights),
        optional_ptr<scalar_t>(grad_trans), optional_ptr<scalar_t>(grad_alphas), t_starts.data_ptr<scalar_t>(),
        t_ends.data_ptr<scalar_t>(), sigmas.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(),
        alphas.data_ptr<scalar_t>(), grad_sigmas.data_ptr<scalar_t>(), need_delta_grad ? grad_deltas.data_ptr<scalar_t>() : nullptr);
  });
  return {grad_sigmas, grad_deltas};
}

std::tuple<at::Tensor, at::Tensor> volrend_alpha_fwd_cuda(const at::Tensor& alphas, const at::Tensor& packed_info,
                                                          int64_t samples_per_ray) {
  check_volrend_alpha_inputs(alphas, packed_info, samples_per_ray);
  const KernelDeviceGuard guard(alphas);
  auto weights = at::empty_like(alphas);
  auto trans = at::empty_like(alphas);
  const int64_t n_rays = volrend_n_rays(alphas, packed_info, samples_per_ray);
  if (n_rays == 0 || alphas.numel() == 0) return {weights, trans};
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "volrend_alpha_fwd_cuda", [&] {
    launch_kernel("alpha_fwd_kernel", &alpha_fwd_kernel<scalar_t>, blocks_for(n_rays, kThreads), kThreads,
        n_rays, info_ptr(packed_info, samples_per_ray), samples_per_ray, alphas.data_ptr<scalar_t>(),
        weights.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>());
  });
  return {weights, trans};
}

at::Tensor volrend_alpha_bwd_cuda(const c10::optional<at::Tensor>& grad_weights,
                                  const c10::optional<at::Tensor>& grad_trans, const at::Tensor& alphas,
                                  const at::Tensor& trans, const at::Tensor& packed_info, int64_t samples_per_ray) {
  const KernelDeviceGuard guard(alphas);
  check_volrend_alpha_inputs(alphas, packed_info, samples_per_ray);
  check_volrend_grads(alphas, {&grad_weights, &grad_trans}, {&trans});
  auto grad_alphas = at::empty_like(alphas);
  const int64_t n_rays = volrend_n_rays(alphas, packed_info, samples_per_ray);
  if (n_rays == 0 || alphas.numel() == 0) return grad_alphas;
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "volrend_alpha_bwd_cuda", [&] {
    launch_kernel("alpha_bwd_kernel", &alpha_bwd_kernel<scalar_t>, blocks_for(n_rays, kThreads), kThreads,
        n_rays, info_ptr(packed_info, samples_per_ray), samples_per_ray, optional_ptr<scalar_t>(grad_weights),
        optional_ptr<scalar_t>(grad_trans), alphas.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(),
        grad_alphas.data_ptr<scalar_t>());
  });
  return grad_alphas;
}

}  // namespace

// m.impl of the four volume-rendering kernels, for the TORCH_LIBRARY_IMPL block of the including file.
inline void register_kernels(torch::Library& m) {
  m.impl("volrend_density_fwd", &volrend_density_fwd_cuda);
  m.impl("volrend_density_bwd", &volrend_density_bwd_cuda);
  m.impl("volrend_alpha_fwd", &volrend_alpha_fwd_cuda);
  m.impl("volrend_alpha_bwd", &volrend_alpha_bwd_cuda);
}

}  // namespace volrend_cuda
}  // namespace vq3dlib
