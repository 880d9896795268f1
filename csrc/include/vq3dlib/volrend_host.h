// Host-side argument checks shared by the CPU and CUDA volume-rendering entry points.
#pragma once
#include <torch/types.h>

#include <initializer_list>

#include "vq3dlib/volrend.h"

// Registers one backend's four volume-rendering kernels, volrend_{density,alpha}_{fwd,bwd}_<suffix> of
// the including file, under the dispatch key KEY (CPU or CUDA).
#define VQ3D_REGISTER_VOLREND_KERNELS(KEY, suffix)                         \
  TORCH_LIBRARY_IMPL(vq3dlib, KEY, m) {                                    \
    m.impl("volrend_density_fwd", &vq3dlib::volrend_density_fwd_##suffix); \
    m.impl("volrend_density_bwd", &vq3dlib::volrend_density_bwd_##suffix); \
    m.impl("volrend_alpha_fwd", &vq3dlib::volrend_alpha_fwd_##suffix);     \
    m.impl("volrend_alpha_bwd", &vq3dlib::volrend_alpha_bwd_##suffix);     \
  }

namespace vq3dlib {

// Data pointer of an optional gradient (nullptr when autograd passed none: the kernels skip it).
template <typename T>
const T* optional_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

inline void check_volrend_layout(const at::Tensor& values, const at::Tensor& packed_info, int64_t samples_per_ray,
                                 const char* name) {
  // Packed layouts must be consecutive runs covering every sample (as pack_info makes them): the
  // kernels write each sample exactly once and do not zero-initialise their outputs.
  TORCH_CHECK(values.dim() == 1 && values.is_contiguous(), name, " must be a contiguous 1-D tensor");
  if (samples_per_ray > 0) {
    TORCH_CHECK(values.numel() % samples_per_ray == 0, name, " must hold a multiple of samples_per_ray values");
  } else {
    TORCH_CHECK(packed_info.scalar_type() == at::kLong && packed_info.dim() == 2 && packed_info.size(1) == 2 &&
                    packed_info.is_contiguous(),
                "packed_info must be a contiguous int64 [n_rays, 2] tensor when samples_per_ray == 0");
    TORCH_CHECK(packed_info.device() == values.device(), "packed_info must be on the device of ", name);
  }
}

inline void check_volrend_density_inputs(const at::Tensor& t_starts, const at::Tensor& t_ends,
                                         const at::Tensor& sigmas, const at::Tensor& packed_info,
                                         int64_t samples_per_ray) {
  check_volrend_layout(sigmas, packed_info, samples_per_ray, "sigmas");
  for (const at::Tensor* t : {&t_starts, &t_ends}) {
    TORCH_CHECK(t->sizes() == sigmas.sizes() && t->is_contiguous() && t->scalar_type() == sigmas.scalar_type() &&
                    t->device() == sigmas.device(),
                "t_starts and t_ends must be contiguous and match sigmas in shape, dtype and device");
  }
}

inline void check_volrend_alpha_inputs(const at::Tensor& alphas, const at::Tensor& packed_info,
                                       int64_t samples_per_ray) {
  check_volrend_layout(alphas, packed_info, samples_per_ray, "alphas");
}

inline void check_volrend_grads(const at::Tensor& like, std::initializer_list<const c10::optional<at::Tensor>*> grads,
                                std::initializer_list<const at::Tensor*> saved) {
  for (const at::Tensor* s : saved) {
    TORCH_CHECK(s->sizes() == like.sizes() && s->is_contiguous() && s->scalar_type() == like.scalar_type(),
                "saved forward outputs must be contiguous and match the samples in shape and dtype");
  }
  for (const auto* g : grads) {
    if (g->has_value() && (*g)->defined()) {
      TORCH_CHECK((*g)->sizes() == like.sizes() && (*g)->is_contiguous() &&
                      (*g)->scalar_type() == like.scalar_type() && (*g)->device() == like.device(),
                  "incoming gradients must be contiguous and match the samples in shape, dtype and device");
    }
  }
}

inline int64_t volrend_n_rays(const at::Tensor& values, const at::Tensor& packed_info, int64_t samples_per_ray) {
  return samples_per_ray > 0 ? values.numel() / samples_per_ray : packed_info.size(0);
}

}  // namespace vq3dlib
