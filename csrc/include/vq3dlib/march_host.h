// Host-side argument checks of the marching op, shared by the CPU and CUDA entry points.
#pragma once
#include <ATen/ATen.h>

#include "vq3dlib/march.h"

namespace vq3dlib {

inline void check_march_inputs(const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& near,
                        const at::Tensor& far, const at::Tensor& binaries, const at::Tensor& boxes,
                        const c10::optional<at::Tensor>& scene_index) {
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3, "origins must be [N, 3]");
  TORCH_CHECK(directions.sizes() == origins.sizes(), "directions must match origins");
  TORCH_CHECK(near.dim() == 1 && near.size(0) == origins.size(0), "near must be [N]");
  TORCH_CHECK(far.dim() == 1 && far.size(0) == origins.size(0), "far must be [N]");
  TORCH_CHECK(binaries.dim() == 5, "binaries must be [n_scenes, levels, rx, ry, rz]");
  TORCH_CHECK(binaries.scalar_type() == at::kBool || binaries.scalar_type() == at::kByte,
              "binaries must be bool or uint8");
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(0) == binaries.size(1) && boxes.size(1) == 6,
              "boxes must be [levels, 6]");
  TORCH_CHECK(directions.scalar_type() == origins.scalar_type() && near.scalar_type() == origins.scalar_type() &&
                  far.scalar_type() == origins.scalar_type() && boxes.scalar_type() == origins.scalar_type(),
              "origins, directions, near, far and boxes must share one dtype");
  if (scene_index.has_value()) {
    TORCH_CHECK(scene_index->dim() == 1 && scene_index->size(0) == origins.size(0), "scene_index must be [N]");
    TORCH_CHECK(scene_index->scalar_type() == at::kLong, "scene_index must be int64");
  }
}

}  // namespace vq3dlib
