// Fused contracted-triplane sampling on CUDA. One thread handles one point and a group of up to
// kGroup channels, so the threads of one point read a texel's channels as one coalesced run
// (planes are channels-last). Plane gradients use atomicAdd; the point gradient of a channel group
// is pushed through the (linear) chain rule and atomically added, so no cross-thread reduction is
// needed.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "vq3dlib/triplane_host.h"

namespace vq3dlib {
namespace {

constexpr int kGroup = 8;
constexpr int kThreads = 256;

struct ChannelGroups {
  int64_t n_groups, group;
};

inline ChannelGroups channel_groups(int64_t channels) {
  const int64_t n_groups = (channels + kGroup - 1) / kGroup;
  return {n_groups, (channels + n_groups - 1) / n_groups};
}

template <typename T>
__global__ void triplane_fwd_kernel(TriplaneArgs<T> a, ChannelGroups cg, int64_t n_points,
                                    const T* __restrict__ planes, const T* __restrict__ points,
                                    const int64_t* __restrict__ scene_index, T* __restrict__ out) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tid >= n_points * cg.n_groups) return;
  const int64_t i = tid / cg.n_groups;
  const int64_t c0 = (tid % cg.n_groups) * cg.group;
  const int64_t c1 = min(c0 + cg.group, a.channels);
  T pc[3], q[3];
  const int64_t scene = triplane_point_setup(a, points + 3 * i, i, scene_index, pc, q);
  if (scene < 0) return;
  const T scale = a.plane_scale();
  T acc[kGroup];
#pragma unroll
  for (int c = 0; c < kGroup; ++c) acc[c] = T(0);
  for (int p = 0; p < 3; ++p) {
    BilinearCorners<T> bc;
    T dpx, dpy;
    triplane_plane_corners(a, q, p, &bc, &dpx, &dpy);
    const T* base = planes + a.plane_offset(scene, p);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (!bc.valid[k]) continue;
      const T w = bc.w[k] * scale;
      const T* v = base + (static_cast<int64_t>(bc.cy(k)) * a.width + bc.cx(k)) * a.channels;
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        if (c0 + c < c1) acc[c] += w * __ldg(v + c0 + c);
      }
    }
    if (a.reduce == kReduceConcat) {
      T* o = out + i * a.out_channels() + a.plane_out_offset(p);
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        if (c0 + c < c1) { o[c0 + c] = acc[c]; acc[c] = T(0); }
      }
    }
  }
  if (a.reduce != kReduceConcat) {
    T* o = out + i * a.out_channels();
#pragma unroll
    for (int c = 0; c < kGroup; ++c) {
      if (c0 + c < c1) o[c0 + c] = acc[c];
    }
  }
}

template <typename T>
__global__ void triplane_bwd_kernel(TriplaneArgs<T> a, ChannelGroups cg, int64_t n_points,
                                    const T* __restrict__ planes, const T* __restrict__ points,
                                    const int64_t* __restrict__ scene_index, const T* __restrict__ grad_out,
                                    T* __restrict__ grad_planes, T* __restrict__ grad_points) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tid >= n_points * cg.n_groups) return;
  const int64_t i = tid / cg.n_groups;
  const int64_t c0 = (tid % cg.n_groups) * cg.group;
  const int64_t c1 = min(c0 + cg.group, a.channels);
  T pc[3], q[3];
  const int64_t scene = triplane_point_setup(a, points + 3 * i, i, scene_index, pc, q);
  if (scene < 0) return;
  const T scale = a.plane_scale();
  T gq[3] = {T(0), T(0), T(0)};
  for (int p = 0; p < 3; ++p) {
    BilinearCorners<T> bc;
    T dpx, dpy;
    triplane_plane_corners(a, q, p, &bc, &dpx, &dpy);
    const int64_t base = a.plane_offset(scene, p);
    const T* g = grad_out + i * a.out_channels() + a.plane_out_offset(p);
    T g_px = T(0), g_py = T(0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (!bc.valid[k]) continue;
      const int64_t pix = base + (static_cast<int64_t>(bc.cy(k)) * a.width + bc.cx(k)) * a.channels;
      T dot = T(0);
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        if (c0 + c >= c1) continue;
        const T gc = g[c0 + c];
        if (grad_planes != nullptr) atomicAdd(grad_planes + pix + c0 + c, bc.w[k] * scale * gc);
        if (grad_points != nullptr) dot += __ldg(planes + pix + c0 + c) * gc;
      }
      dot *= scale;
      g_px += bc.dwdx(k) * dot;
      g_py += bc.dwdy(k) * dot;
    }
    triplane_accumulate_coord_grad(p, g_px, g_py, dpx, dpy, gq);
  }
  if (grad_points != nullptr) {
    T gx[3];
    triplane_point_grad(a, pc, gq, gx);  // linear in gq: per-group partials add up
    for (int j = 0; j < 3; ++j) atomicAdd(grad_points + 3 * i + j, gx[j]);
  }
}

inline int64_t n_blocks(int64_t n) { return (n + kThreads - 1) / kThreads; }

const int64_t* scene_ptr(const at::Tensor& scene_index, int64_t points_per_scene) {
  return points_per_scene > 0 ? nullptr : scene_index.data_ptr<int64_t>();
}

at::Tensor triplane_sample_fwd_cuda(const at::Tensor& planes, const at::Tensor& points,
                                    const at::Tensor& scene_index, int64_t points_per_scene, int64_t contraction,
                                    double bound, bool align_corners, int64_t padding, int64_t reduce) {
  check_triplane_inputs(planes, points, scene_index, points_per_scene);
  const c10::cuda::CUDAGuard guard(planes.device());
  const int64_t S = points.size(0);
  const int64_t OC = triplane_out_channels(planes, reduce);
  at::Tensor out = at::zeros({S, OC}, planes.options());
  if (S == 0 || planes.size(4) == 0) return out;
  const ChannelGroups cg = channel_groups(planes.size(4));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_fwd_cuda", [&] {
    auto a = make_triplane_args<scalar_t>(planes, points_per_scene, contraction, bound, align_corners, padding, reduce);
    triplane_fwd_kernel<scalar_t><<<n_blocks(S * cg.n_groups), kThreads, 0, stream>>>(
        a, cg, S, planes.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(), scene_ptr(scene_index, points_per_scene),
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& points, const at::Tensor& scene_index,
    int64_t points_per_scene, int64_t contraction, double bound, bool align_corners, int64_t padding, int64_t reduce,
    bool need_planes_grad, bool need_points_grad) {
  check_triplane_inputs(planes, points, scene_index, points_per_scene);
  check_triplane_grad_out(grad_out, planes, points, reduce);
  const c10::cuda::CUDAGuard guard(planes.device());
  const int64_t S = points.size(0);
  at::Tensor g = grad_out.contiguous();
  at::Tensor grad_planes = need_planes_grad ? at::zeros_like(planes) : at::empty({0}, planes.options());
  at::Tensor grad_points = need_points_grad ? at::zeros_like(points) : at::empty({0}, points.options());
  if (S == 0 || planes.size(4) == 0 || (!need_planes_grad && !need_points_grad)) return {grad_planes, grad_points};
  const ChannelGroups cg = channel_groups(planes.size(4));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_bwd_cuda", [&] {
    auto a = make_triplane_args<scalar_t>(planes, points_per_scene, contraction, bound, align_corners, padding, reduce);
    triplane_bwd_kernel<scalar_t><<<n_blocks(S * cg.n_groups), kThreads, 0, stream>>>(
        a, cg, S, planes.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(), scene_ptr(scene_index, points_per_scene),
        g.data_ptr<scalar_t>(), need_planes_grad ? grad_planes.data_ptr<scalar_t>() : nullptr,
        need_points_grad ? grad_points.data_ptr<scalar_t>() : nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_planes, grad_points};
}

}  // namespace

TORCH_LIBRARY_IMPL(vq3dlib, CUDA, m) {
  m.impl("triplane_sample_fwd", &triplane_sample_fwd_cuda);
  m.impl("triplane_sample_bwd", &triplane_sample_bwd_cuda);
}

}  // namespace vq3dlib
