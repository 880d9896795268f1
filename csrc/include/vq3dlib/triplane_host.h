// Host-side argument checks and TriplaneArgs construction shared by the CPU and CUDA entry points.
#pragma once
#include <torch/types.h>

#include "vq3dlib/triplane.h"

namespace vq3dlib {

inline void check_triplane_inputs(const at::Tensor& planes, const at::Tensor& points,
                                  const at::Tensor& scene_index, int64_t points_per_scene) {
  TORCH_CHECK(planes.dim() == 5 && planes.size(1) == 3, "planes must be [B, 3, H, W, C] (channels-last)");
  TORCH_CHECK(planes.is_contiguous(), "planes must be contiguous channels-last [B, 3, H, W, C]");
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3 && points.is_contiguous(), "points must be contiguous [S, 3]");
  TORCH_CHECK(points.scalar_type() == planes.scalar_type(), "points and planes must have the same dtype");
  TORCH_CHECK(points.device() == planes.device(), "points must be on the device of planes (", planes.device(),
              "), got ", points.device());
  if (points_per_scene <= 0) {
    TORCH_CHECK(scene_index.scalar_type() == at::kLong && scene_index.dim() == 1 &&
                    scene_index.size(0) == points.size(0) && scene_index.is_contiguous(),
                "scene_index must be a contiguous int64 [S] tensor when points are packed");
    TORCH_CHECK(scene_index.device() == planes.device(), "scene_index must be on the device of planes (",
                planes.device(), "), got ", scene_index.device());
  }
}

// Output width C' of the op: 3C for concat, else C (planes are channels-last [B, 3, H, W, C]).
inline int64_t triplane_out_channels(const at::Tensor& planes, int64_t reduce) {
  return reduce == kReduceConcat ? 3 * planes.size(4) : planes.size(4);
}

// The backward's incoming gradient: [S, C'] on the device and with the dtype of planes.
inline void check_triplane_grad_out(const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& points,
                                    int64_t reduce) {
  const int64_t out_channels = triplane_out_channels(planes, reduce);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == points.size(0) && grad_out.size(1) == out_channels,
              "grad_out must be [S, ", out_channels, "], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == planes.scalar_type() && grad_out.device() == planes.device(),
              "grad_out must have the dtype and device of planes");
}

// An optional cotangent of the double backward (gg_planes like planes, gg_points like points):
// undefined or empty -> an undefined tensor (absent), else checked and made contiguous.
inline at::Tensor triplane_cotangent(const c10::optional<at::Tensor>& cot, const at::Tensor& like, const char* name) {
  if (!cot.has_value() || !cot->defined() || cot->numel() == 0) return at::Tensor();
  TORCH_CHECK(cot->sizes() == like.sizes(), name, " must have shape ", like.sizes(), ", got ", cot->sizes());
  TORCH_CHECK(cot->scalar_type() == like.scalar_type() && cot->device() == like.device(), name,
              " must have the dtype and device of ", like.sizes().size() == 5 ? "planes" : "points");
  return cot->contiguous();
}

// The double backward's inputs checked; its cotangents (undefined where absent) into *ggp, *ggx.
inline void check_triplane_double_backward(const at::Tensor& grad_out, const at::Tensor& planes,
                                           const at::Tensor& points, const at::Tensor& scene_index,
                                           const c10::optional<at::Tensor>& gg_planes,
                                           const c10::optional<at::Tensor>& gg_points, int64_t points_per_scene,
                                           int64_t reduce, at::Tensor* ggp, at::Tensor* ggx) {
  check_triplane_inputs(planes, points, scene_index, points_per_scene);
  check_triplane_grad_out(grad_out, planes, points, reduce);
  *ggp = triplane_cotangent(gg_planes, planes, "gg_planes");
  *ggx = triplane_cotangent(gg_points, points, "gg_points");
}

template <typename T>
TriplaneArgs<T> make_triplane_args(const at::Tensor& planes, int64_t points_per_scene, int64_t contraction,
                                   double bound, bool align_corners, int64_t padding, int64_t reduce) {
  TORCH_CHECK(contraction >= 0 && contraction <= 3, "contraction code must be 0, 1, 2 or 3");
  TORCH_CHECK(padding == kPadZeros || padding == kPadBorder, "padding code must be 0 or 1");
  TORCH_CHECK(reduce >= 0 && reduce <= 2, "reduce code must be 0, 1 or 2");
  TORCH_CHECK(bound > 0, "bound must be > 0");
  TriplaneArgs<T> a;
  a.n_scenes = planes.size(0);
  a.height = planes.size(2);
  a.width = planes.size(3);
  a.channels = planes.size(4);
  a.points_per_scene = points_per_scene;
  a.contraction = static_cast<int>(contraction);
  a.bound = static_cast<T>(bound);
  a.align_corners = align_corners;
  a.padding = static_cast<int>(padding);
  a.reduce = static_cast<int>(reduce);
  return a;
}

}  // namespace vq3dlib
