// Volume-rendering weights along one ray, forward and backward (host + device).
// Python reference: vq3dlib/ops/volrend.py (tests compare the two).
//
// Density form, per sample i of a ray (tau_i = sigma_i * (t_end_i - t_start_i)):
//   T_i = exp(-sum_{j<i} tau_j)      a_i = 1 - exp(-tau_i)      w_i = T_i a_i
// Backward, with incoming gradients gw, gT, ga (dT_i/dtau_k = -T_i and dw_i/dtau_k = -w_i for i > k):
//   dL/dtau_k = (ga_k + gw_k T_k) (1 - a_k) - sum_{i>k} (gw_i w_i + gT_i T_i)
// using the forward's T and a, so the backward pass evaluates no transcendental function.
//
// Alpha form:
//   T_i = prod_{j<i} (1 - a_j)       w_i = T_i a_i
// Backward, without dividing by (1 - a_k) (exact when some a_k == 1):
//   dL/da_k = T_k (gw_k - R_k),  R_k = sum_{i>k} (gw_i a_i + gT_i) prod_{k<j<i} (1 - a_j)
//   computed in one reverse pass as R_k = c_{k+1} + (1 - a_{k+1}) R_{k+1},  c_i = gw_i a_i + gT_i.
//
// Every function handles one ray: `n` samples starting at the given pointers (stride 1). The CPU
// kernels call them from at::parallel_for over rays, the CUDA kernels from one thread per ray.
#pragma once
#include <cstdint>

#include "vq3dlib/common.h"

namespace vq3dlib {

VQ3D_HD float exp_of(float x) { return expf(x); }
VQ3D_HD double exp_of(double x) { return exp(x); }
VQ3D_HD float expm1_of(float x) { return expm1f(x); }
VQ3D_HD double expm1_of(double x) { return expm1(x); }

// Samples [begin, begin + count) of ray `ray`: packed (packed_info [n_rays, 2] = start, count) or
// dense (`per_ray` samples per ray, packed_info unused).
struct RaySpan {
  int64_t begin;
  int64_t count;
};

VQ3D_HD RaySpan ray_span(int64_t ray, const int64_t* packed_info, int64_t per_ray) {
  if (per_ray > 0) return RaySpan{ray * per_ray, per_ray};
  return RaySpan{packed_info[2 * ray], packed_info[2 * ray + 1]};
}

// First half of the forward, without transcendental functions: writes the negated exclusive optical
// depth -sum_{j<i} tau_j into neg_depth and -tau_i into neg_tau. The CPU kernel finishes with
// vectorised passes (T = exp(neg_depth), a = -expm1(neg_tau), w = T a) over all samples at once.
template <typename T>
VQ3D_HD void density_optical_depth(int64_t n, const T* t_starts, const T* t_ends, const T* sigmas, T* neg_depth,
                                   T* neg_tau) {
  T optical_depth = T(0);
  for (int64_t i = 0; i < n; ++i) {
    const T tau = sigmas[i] * (t_ends[i] - t_starts[i]);
    neg_depth[i] = -optical_depth;
    neg_tau[i] = -tau;
    optical_depth += tau;
  }
}

// The whole forward in one pass (CUDA: one thread per ray).
template <typename T>
VQ3D_HD void density_weights_forward(int64_t n, const T* t_starts, const T* t_ends, const T* sigmas,
                                     T* weights, T* trans, T* alphas) {
  T optical_depth = T(0);  // sum of tau over the previous samples
  for (int64_t i = 0; i < n; ++i) {
    const T tau = sigmas[i] * (t_ends[i] - t_starts[i]);
    const T t_i = exp_of(-optical_depth);
    const T a_i = -expm1_of(-tau);
    trans[i] = t_i;
    alphas[i] = a_i;
    weights[i] = t_i * a_i;
    optical_depth += tau;
  }
}

// Writes dL/dsigma_i into grad_sigmas and, when grad_deltas is not null, dL/d(t_end_i - t_start_i).
// trans and alphas are the forward's outputs. Any of grad_weights / grad_trans / grad_alphas may be
// null (treated as zero).
template <typename T>
VQ3D_HD void density_weights_backward(int64_t n, const T* grad_weights, const T* grad_trans,
                                      const T* grad_alphas, const T* t_starts, const T* t_ends,
                                      const T* sigmas, const T* trans, const T* alphas, T* grad_sigmas,
                                      T* grad_deltas) {
  T suffix = T(0);  // sum_{i>k} (gw_i w_i + gT_i T_i)
  for (int64_t k = n - 1; k >= 0; --k) {
    const T delta = t_ends[k] - t_starts[k];
    const T a_k = alphas[k];
    const T keep = T(1) - a_k;
    const T t_k = trans[k];
    const T w_k = t_k * a_k;
    const T gw = grad_weights ? grad_weights[k] : T(0);
    const T gt = grad_trans ? grad_trans[k] : T(0);
    const T ga = grad_alphas ? grad_alphas[k] : T(0);
    const T grad_tau = (ga + gw * t_k) * keep - suffix;
    grad_sigmas[k] = grad_tau * delta;
    if (grad_deltas) grad_deltas[k] = grad_tau * sigmas[k];
    suffix += gw * w_k + gt * t_k;
  }
}

template <typename T>
VQ3D_HD void alpha_weights_forward(int64_t n, const T* alphas, T* weights, T* trans) {
  T t_i = T(1);
  for (int64_t i = 0; i < n; ++i) {
    const T a_i = alphas[i];
    trans[i] = t_i;
    weights[i] = t_i * a_i;
    t_i *= T(1) - a_i;
  }
}

template <typename T>
VQ3D_HD void alpha_weights_backward(int64_t n, const T* grad_weights, const T* grad_trans, const T* alphas,
                                    const T* trans, T* grad_alphas) {
  T r = T(0);  // R_k
  for (int64_t k = n - 1; k >= 0; --k) {
    const T gw = grad_weights ? grad_weights[k] : T(0);
    const T gt = grad_trans ? grad_trans[k] : T(0);
    const T a_k = alphas[k];
    grad_alphas[k] = trans[k] * (gw - r);
    r = (gw * a_k + gt) + (T(1) - a_k) * r;
  }
}

}  // namespace vq3dlib
