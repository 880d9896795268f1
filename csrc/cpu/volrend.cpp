// Volume-rendering weights on the CPU, forward and backward, for packed or dense samples.
// Parallel over rays, handed out in pieces as the threads go (parallel_for_as_they_go, vq3dlib/
// cpu_threads.h); each ray is one sequential O(n) pass (csrc/include/
// vq3dlib/volrend.h holds the math, shared with the CUDA kernels). The density forward scans the
// optical depth per ray, then evaluates exp/expm1 with ATen's vectorised element-wise kernels.
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "vq3dlib/cpu_threads.h"
#include "vq3dlib/volrend_host.h"

namespace vq3dlib {
namespace {

// Rays per parallel task: about 16k samples of work per task.
int64_t ray_grain(int64_t n_samples, int64_t n_rays) {
  const int64_t per_ray = std::max<int64_t>(1, n_samples / std::max<int64_t>(1, n_rays));
  return std::max<int64_t>(1, 16384 / per_ray);
}

// Runs fn(s) with the span s of each ray's samples in `values` (packed by packed_info, or
// samples_per_ray each), the rays handed out to the threads as they go in pieces of ray_grain rays.
template <typename Fn>
void for_each_ray(const at::Tensor& values, const at::Tensor& packed_info, int64_t samples_per_ray, const Fn& fn) {
  const int64_t n_rays = volrend_n_rays(values, packed_info, samples_per_ray);
  const int64_t* info = samples_per_ray > 0 ? nullptr : packed_info.data_ptr<int64_t>();
  parallel_for_as_they_go(0, n_rays, ray_grain(values.numel(), n_rays), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(ray_span(r, info, samples_per_ray));
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> volrend_density_fwd_cpu(
    const at::Tensor& t_starts, const at::Tensor& t_ends, const at::Tensor& sigmas, const at::Tensor& packed_info,
    int64_t samples_per_ray) {
  check_volrend_density_inputs(t_starts, t_ends, sigmas, packed_info, samples_per_ray);
  auto weights = at::empty_like(sigmas);
  auto trans = at::empty_like(sigmas);
  auto alphas = at::empty_like(sigmas);
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "volrend_density_fwd_cpu", [&] {
    const scalar_t* ts = t_starts.data_ptr<scalar_t>();
    const scalar_t* te = t_ends.data_ptr<scalar_t>();
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    scalar_t* tr = trans.data_ptr<scalar_t>();
    scalar_t* al = alphas.data_ptr<scalar_t>();
    for_each_ray(sigmas, packed_info, samples_per_ray, [&](const RaySpan& s) {
      density_optical_depth<scalar_t>(s.count, ts + s.begin, te + s.begin, sg + s.begin, tr + s.begin,
                                      al + s.begin);
    });
  });
  // Vectorised (ATen) element-wise passes: scalar exp/expm1 per sample would dominate the run time.
  trans.exp_();
  alphas.expm1_().neg_();
  at::mul_out(weights, trans, alphas);
  return {weights, trans, alphas};
}

std::tuple<at::Tensor, at::Tensor> volrend_density_bwd_cpu(
    const c10::optional<at::Tensor>& grad_weights, const c10::optional<at::Tensor>& grad_trans,
    const c10::optional<at::Tensor>& grad_alphas, const at::Tensor& t_starts, const at::Tensor& t_ends,
    const at::Tensor& sigmas, const at::Tensor& trans, const at::Tensor& alphas, const at::Tensor& packed_info,
    int64_t samples_per_ray, bool need_delta_grad) {
  check_volrend_density_inputs(t_starts, t_ends, sigmas, packed_info, samples_per_ray);
  check_volrend_grads(sigmas, {&grad_weights, &grad_trans, &grad_alphas}, {&trans, &alphas});
  auto grad_sigmas = at::empty_like(sigmas);
  auto grad_deltas = need_delta_grad ? at::empty_like(sigmas) : at::empty({0}, sigmas.options());
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "volrend_density_bwd_cpu", [&] {
    const scalar_t* gw = optional_ptr<scalar_t>(grad_weights);
    const scalar_t* gt = optional_ptr<scalar_t>(grad_trans);
    const scalar_t* ga = optional_ptr<scalar_t>(grad_alphas);
    const scalar_t* ts = t_starts.data_ptr<scalar_t>();
    const scalar_t* te = t_ends.data_ptr<scalar_t>();
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    const scalar_t* tr = trans.data_ptr<scalar_t>();
    const scalar_t* al = alphas.data_ptr<scalar_t>();
    scalar_t* gs = grad_sigmas.data_ptr<scalar_t>();
    scalar_t* gd = need_delta_grad ? grad_deltas.data_ptr<scalar_t>() : nullptr;
    for_each_ray(sigmas, packed_info, samples_per_ray, [&](const RaySpan& s) {
      const int64_t b = s.begin;
      density_weights_backward<scalar_t>(s.count, gw ? gw + b : nullptr, gt ? gt + b : nullptr,
                                         ga ? ga + b : nullptr, ts + b, te + b, sg + b, tr + b, al + b, gs + b,
                                         gd ? gd + b : nullptr);
    });
  });
  return {grad_sigmas, grad_deltas};
}

std::tuple<at::Tensor, at::Tensor> volrend_alpha_fwd_cpu(const at::Tensor& alphas, const at::Tensor& packed_info,
                                                         int64_t samples_per_ray) {
  check_volrend_alpha_inputs(alphas, packed_info, samples_per_ray);
  auto weights = at::empty_like(alphas);
  auto trans = at::empty_like(alphas);
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "volrend_alpha_fwd_cpu", [&] {
    const scalar_t* al = alphas.data_ptr<scalar_t>();
    scalar_t* w = weights.data_ptr<scalar_t>();
    scalar_t* tr = trans.data_ptr<scalar_t>();
    for_each_ray(alphas, packed_info, samples_per_ray, [&](const RaySpan& s) {
      alpha_weights_forward<scalar_t>(s.count, al + s.begin, w + s.begin, tr + s.begin);
    });
  });
  return {weights, trans};
}

at::Tensor volrend_alpha_bwd_cpu(const c10::optional<at::Tensor>& grad_weights,
                                 const c10::optional<at::Tensor>& grad_trans, const at::Tensor& alphas,
                                 const at::Tensor& trans, const at::Tensor& packed_info, int64_t samples_per_ray) {
  check_volrend_alpha_inputs(alphas, packed_info, samples_per_ray);
  check_volrend_grads(alphas, {&grad_weights, &grad_trans}, {&trans});
  auto grad_alphas = at::empty_like(alphas);
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "volrend_alpha_bwd_cpu", [&] {
    const scalar_t* gw = optional_ptr<scalar_t>(grad_weights);
    const scalar_t* gt = optional_ptr<scalar_t>(grad_trans);
    const scalar_t* al = alphas.data_ptr<scalar_t>();
    const scalar_t* tr = trans.data_ptr<scalar_t>();
    scalar_t* ga = grad_alphas.data_ptr<scalar_t>();
    for_each_ray(alphas, packed_info, samples_per_ray, [&](const RaySpan& s) {
      const int64_t b = s.begin;
      alpha_weights_backward<scalar_t>(s.count, gw ? gw + b : nullptr, gt ? gt + b : nullptr, al + b, tr + b,
                                       ga + b);
    });
  });
  return grad_alphas;
}

}  // namespace
}  // namespace vq3dlib

VQ3D_REGISTER_VOLREND_KERNELS(CPU, cpu)
