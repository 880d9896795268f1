// Volume-rendering weights on CUDA, forward and backward, for packed or dense samples. One thread
// handles one ray in one sequential O(n) pass (forward: running optical depth / transmittance;
// backward: one reverse pass with a running suffix sum); the math is in csrc/include/vq3dlib/volrend.h,
// shared with the CPU kernels. Consecutive rays are stored next to each other, so a warp reads a
// compact range of memory.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "vq3dlib/volrend_host.h"

namespace vq3dlib {
namespace {

constexpr int kThreads = 256;

inline unsigned int ray_blocks(int64_t n_rays) {
  return static_cast<unsigned int>((n_rays + kThreads - 1) / kThreads);
}

template <typename T>
__global__ void density_fwd_kernel(int64_t n_rays, const int64_t* __restrict__ packed_info, int64_t per_ray,
                                   const T* __restrict__ ts, const T* __restrict__ te, const T* __restrict__ sg,
                                   T* __restrict__ w, T* __restrict__ tr, T* __restrict__ al) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const RaySpan s = ray_span(r, packed_info, per_ray);
  const int64_t b = s.begin;
  density_weights_forward<T>(s.count, ts + b, te + b, sg + b, w + b, tr + b, al + b);
}

template <typename T>
__global__ void density_bwd_kernel(int64_t n_rays, const int64_t* __restrict__ packed_info, int64_t per_ray,
                                   const T* gw, const T* gt, const T* ga, const T* __restrict__ ts,
                                   const T* __restrict__ te, const T* __restrict__ sg, const T* __restrict__ tr,
                                   const T* __restrict__ al, T* __restrict__ gs, T* gd) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const RaySpan s = ray_span(r, packed_info, per_ray);
  const int64_t b = s.begin;
  density_weights_backward<T>(s.count, gw ? gw + b : nullptr, gt ? gt + b : nullptr, ga ? ga + b : nullptr, ts + b,
                              te + b, sg + b, tr + b, al + b, gs + b, gd ? gd + b : nullptr);
}

template <typename T>
__global__ void alpha_fwd_kernel(int64_t n_rays, const int64_t* __restrict__ packed_info, int64_t per_ray,
                                 const T* __restrict__ al, T* __restrict__ w, T* __restrict__ tr) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const RaySpan s = ray_span(r, packed_info, per_ray);
  alpha_weights_forward<T>(s.count, al + s.begin, w + s.begin, tr + s.begin);
}

template <typename T>
__global__ void alpha_bwd_kernel(int64_t n_rays, const int64_t* __restrict__ packed_info, int64_t per_ray,
                                 const T* gw, const T* gt, const T* __restrict__ al, const T* __restrict__ tr,
                                 T* __restrict__ ga) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const RaySpan s = ray_span(r, packed_info, per_ray);
  const int64_t b = s.begin;
  alpha_weights_backward<T>(s.count, gw ? gw + b : nullptr, gt ? gt + b : nullptr, al + b, tr + b, ga + b);
}

const int64_t* info_ptr(const at::Tensor& packed_info, int64_t samples_per_ray) {
  return samples_per_ray > 0 ? nullptr : packed_info.data_ptr<int64_t>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> volrend_density_fwd_cuda(
    const at::Tensor& t_starts, const at::Tensor& t_ends, const at::Tensor& sigmas, const at::Tensor& packed_info,
    int64_t samples_per_ray) {
  check_volrend_density_inputs(t_starts, t_ends, sigmas, packed_info, samples_per_ray);
  const c10::cuda::CUDAGuard guard(sigmas.device());
  auto weights = at::empty_like(sigmas);
  auto trans = at::empty_like(sigmas);
  auto alphas = at::empty_like(sigmas);
  const int64_t n_rays = volrend_n_rays(sigmas, packed_info, samples_per_ray);
  if (n_rays == 0 || sigmas.numel() == 0) return {weights, trans, alphas};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "volrend_density_fwd_cuda", [&] {
    density_fwd_kernel<scalar_t><<<ray_blocks(n_rays), kThreads, 0, stream>>>(
        n_rays, info_ptr(packed_info, samples_per_ray), samples_per_ray, t_starts.data_ptr<scalar_t>(),
        t_ends.data_ptr<scalar_t>(), sigmas.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
        trans.data_ptr<scalar_t>(), alphas.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {weights, trans, alphas};
}

std::tuple<at::Tensor, at::Tensor> volrend_density_bwd_cuda(
    const c10::optional<at::Tensor>& grad_weights, const c10::optional<at::Tensor>& grad_trans,
    const c10::optional<at::Tensor>& grad_alphas, const at::Tensor& t_starts, const at::Tensor& t_ends,
    const at::Tensor& sigmas, const at::Tensor& trans, const at::Tensor& alphas, const at::Tensor& packed_info,
    int64_t samples_per_ray, bool need_delta_grad) {
  const c10::cuda::CUDAGuard guard(sigmas.device());
  check_volrend_density_inputs(t_starts, t_ends, sigmas, packed_info, samples_per_ray);
  check_volrend_grads(sigmas, {&grad_weights, &grad_trans, &grad_alphas}, {&trans, &alphas});
  auto grad_sigmas = at::empty_like(sigmas);
  auto grad_deltas = need_delta_grad ? at::empty_like(sigmas) : at::empty({0}, sigmas.options());
  const int64_t n_rays = volrend_n_rays(sigmas, packed_info, samples_per_ray);
  if (n_rays == 0 || sigmas.numel() == 0) return {grad_sigmas, grad_deltas};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "volrend_density_bwd_cuda", [&] {
    density_bwd_kernel<scalar_t><<<ray_blocks(n_rays), kThreads, 0, stream>>>(
        n_rays, info_ptr(packed_info, samples_per_ray), samples_per_ray, optional_ptr<scalar_t>(grad_weights),
        optional_ptr<scalar_t>(grad_trans), optional_ptr<scalar_t>(grad_alphas), t_starts.data_ptr<scalar_t>(),
        t_ends.data_ptr<scalar_t>(), sigmas.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(),
        alphas.data_ptr<scalar_t>(), grad_sigmas.data_ptr<scalar_t>(), need_delta_grad ? grad_deltas.data_ptr<scalar_t>() : nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_sigmas, grad_deltas};
}

std::tuple<at::Tensor, at::Tensor> volrend_alpha_fwd_cuda(const at::Tensor& alphas, const at::Tensor& packed_info,
                                                          int64_t samples_per_ray) {
  check_volrend_alpha_inputs(alphas, packed_info, samples_per_ray);
  const c10::cuda::CUDAGuard guard(alphas.device());
  auto weights = at::empty_like(alphas);
  auto trans = at::empty_like(alphas);
  const int64_t n_rays = volrend_n_rays(alphas, packed_info, samples_per_ray);
  if (n_rays == 0 || alphas.numel() == 0) return {weights, trans};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "volrend_alpha_fwd_cuda", [&] {
    alpha_fwd_kernel<scalar_t><<<ray_blocks(n_rays), kThreads, 0, stream>>>(
        n_rays, info_ptr(packed_info, samples_per_ray), samples_per_ray, alphas.data_ptr<scalar_t>(),
        weights.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {weights, trans};
}

at::Tensor volrend_alpha_bwd_cuda(const c10::optional<at::Tensor>& grad_weights,
                                  const c10::optional<at::Tensor>& grad_trans, const at::Tensor& alphas,
                                  const at::Tensor& trans, const at::Tensor& packed_info, int64_t samples_per_ray) {
  const c10::cuda::CUDAGuard guard(alphas.device());
  check_volrend_alpha_inputs(alphas, packed_info, samples_per_ray);
  check_volrend_grads(alphas, {&grad_weights, &grad_trans}, {&trans});
  auto grad_alphas = at::empty_like(alphas);
  const int64_t n_rays = volrend_n_rays(alphas, packed_info, samples_per_ray);
  if (n_rays == 0 || alphas.numel() == 0) return grad_alphas;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "volrend_alpha_bwd_cuda", [&] {
    alpha_bwd_kernel<scalar_t><<<ray_blocks(n_rays), kThreads, 0, stream>>>(
        n_rays, info_ptr(packed_info, samples_per_ray), samples_per_ray, optional_ptr<scalar_t>(grad_weights),
        optional_ptr<scalar_t>(grad_trans), alphas.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(),
        grad_alphas.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_alphas;
}

}  // namespace
}  // namespace vq3dlib

VQ3D_REGISTER_VOLREND_KERNELS(CUDA, cuda)
