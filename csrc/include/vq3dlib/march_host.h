// Host-side argument checks and unpacking of the marching op, shared by the CPU and CUDA entry points.
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
  for (const at::Tensor* t : {&directions, &near, &far, &binaries, &boxes}) {
    TORCH_CHECK(t->device() == origins.device(), "every marching input must be on the device of origins (",
                origins.device(), "), got one on ", t->device());
  }
  if (scene_index.has_value()) {
    TORCH_CHECK(scene_index->dim() == 1 && scene_index->size(0) == origins.size(0), "scene_index must be [N]");
    TORCH_CHECK(scene_index->scalar_type() == at::kLong, "scene_index must be int64");
    TORCH_CHECK(scene_index->device() == origins.device(), "scene_index must be on the device of origins");
  }
}

// The marching op's arguments, checked and made contiguous, with the sizes every kernel needs.
struct MarchInputs {
  at::Tensor origins, directions, near, far, binaries, boxes, scene_index;  // scene_index may be undefined
  int64_t n_rays, n_scenes, scene_stride;
  int levels, rx, ry, rz;

  const uint8_t* binaries_data() const { return reinterpret_cast<const uint8_t*>(binaries.data_ptr()); }
  const int64_t* scene_index_data() const {
    return scene_index.defined() ? scene_index.data_ptr<int64_t>() : nullptr;
  }
  template <typename T>
  MarchGrid<T> grid(int64_t contraction) const {
    return {binaries_data(), boxes.data_ptr<T>(), levels, rx, ry, rz, static_cast<int>(contraction)};
  }
};

inline MarchInputs prepare_march_inputs(const at::Tensor& origins, const at::Tensor& directions,
                                        const at::Tensor& near, const at::Tensor& far, const at::Tensor& binaries,
                                        const at::Tensor& boxes, const c10::optional<at::Tensor>& scene_index) {
  check_march_inputs(origins, directions, near, far, binaries, boxes, scene_index);
  MarchInputs in;
  in.origins = origins.contiguous();
  in.directions = directions.contiguous();
  in.near = near.contiguous();
  in.far = far.contiguous();
  in.binaries = binaries.contiguous();
  in.boxes = boxes.contiguous();
  if (scene_index.has_value()) in.scene_index = scene_index->contiguous();
  in.n_rays = in.origins.size(0);
  in.n_scenes = in.binaries.size(0);
  in.levels = static_cast<int>(in.binaries.size(1));
  in.rx = static_cast<int>(in.binaries.size(2));
  in.ry = static_cast<int>(in.binaries.size(3));
  in.rz = static_cast<int>(in.binaries.size(4));
  in.scene_stride = static_cast<int64_t>(in.levels) * in.rx * in.ry * in.rz;
  return in;
}

}  // namespace vq3dlib
