// The `vq3dlib_emu` library: the kernel schemas of csrc/include/vq3dlib/schemas.h, implemented on
// CPU tensors by the CUDA kernels run through the emulated launch (csrc/emu/{triplane,march,volrend}.cpp;
// loader: vq3dlib/_emu.py). planes_channels_last/first are the CUDA path's layout changes, plain copies.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "vq3dlib/schemas.h"

namespace vq3dlib {
namespace {

bool sanitized() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  return false;
#endif
}

at::Tensor planes_channels_last_emu(const at::Tensor& planes) {
  TORCH_CHECK(planes.dim() == 5, "planes must be [B, 3, C, H, W]");
  return planes.permute({0, 1, 3, 4, 2}).contiguous();
}

at::Tensor planes_channels_first_emu(const at::Tensor& planes) {
  TORCH_CHECK(planes.dim() == 5, "planes must be [B, 3, H, W, C]");
  return planes.permute({0, 1, 4, 2, 3}).contiguous();
}

}  // namespace
}  // namespace vq3dlib

TORCH_LIBRARY(vq3dlib_emu, m) {
  m.def("sanitized() -> bool", &vq3dlib::sanitized);
  vq3dlib::define_kernel_schemas(m);
}

TORCH_LIBRARY_IMPL(vq3dlib_emu, CPU, m) {
  m.impl("planes_channels_last", &vq3dlib::planes_channels_last_emu);
  m.impl("planes_channels_first", &vq3dlib::planes_channels_first_emu);
}
