// The CUDA kernels of fused contracted-triplane sampling: forward, backward and double backward. One thread handles
// one point and a group of up to kGroup channels, so the threads of one point read a texel's
// channels as one coalesced run (planes are channels-last). Plane gradients use atomicAdd; the
// point gradient of a channel group is pushed through the (linear) chain rule and atomically added,
// so no cross-thread reduction is needed.
//
// No torch or CUDA runtime header here: nvcc compiles this file for the GPU (csrc/cuda/triplane.cu)
// and the host compiler for the emulated launch (csrc/emu/triplane.cpp); the launch site is
// csrc/cuda/triplane_ops.h. Per-point math: csrc/include/vq3dlib/triplane.h.
#pragma once
#include <cstdint>

#include "vq3dlib/cuda_compat.h"
#include "vq3dlib/triplane.h"

namespace vq3dlib {
namespace triplane_cuda {

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

// The double backward (csrc/cpu/triplane.cpp describes the formulas): cotangents gg_planes (of the
// plane gradient) and gg_points (v, of the point gradient) -> gradients to grad_out, planes and
// points. Per (point, channel group) thread like the backward: plane gradients and the (linear in
// the channel sums) point-gradient partials are added atomically; each thread owns its channels of
// grad_grad_out.
template <typename T>
__global__ void triplane_bwd_bwd_kernel(TriplaneArgs<T> a, ChannelGroups cg, int64_t n_points,
                                        const T* __restrict__ planes, const T* __restrict__ points,
                                        const int64_t* __restrict__ scene_index, const T* __restrict__ grad_out,
                                        const T* __restrict__ gg_planes, const T* __restrict__ gg_points,
                                        T* __restrict__ grad_grad_out, T* __restrict__ grad_planes,
                                        T* __restrict__ grad_points) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tid >= n_points * cg.n_groups) return;
  const int64_t i = tid / cg.n_groups;
  const int64_t c0 = (tid % cg.n_groups) * cg.group;
  const int64_t c1 = min(c0 + cg.group, a.channels);
  T pc[3], q[3];
  const int64_t scene = triplane_point_setup(a, points + 3 * i, i, scene_index, pc, q);
  if (scene < 0) return;  // grad_grad_out is zero-initialised by the launch site
  const T scale = a.plane_scale();
  T dq[3] = {T(0), T(0), T(0)};
  if (gg_points != nullptr) triplane_point_jvp(a, pc, gg_points + 3 * i, dq);
  T gq_lin[3] = {T(0), T(0), T(0)}, gq_b[3] = {T(0), T(0), T(0)};
  T acc[kGroup];
#pragma unroll
  for (int c = 0; c < kGroup; ++c) acc[c] = T(0);
  for (int p = 0; p < 3; ++p) {
    BilinearCorners<T> bc;
    T dpx, dpy;
    triplane_plane_corners(a, q, p, &bc, &dpx, &dpy);
    const T tpx = dpx * dq[plane_u_axis(p)], tpy = dpy * dq[plane_v_axis(p)];  // pixel tangents along v
    const int64_t base = a.plane_offset(scene, p);
    const T* g = grad_out + i * a.out_channels() + a.plane_out_offset(p);
    T a_px = T(0), a_py = T(0), b_px = T(0), b_py = T(0), b_xy = T(0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (!bc.valid[k]) continue;
      const int64_t pix = base + (static_cast<int64_t>(bc.cy(k)) * a.width + bc.cx(k)) * a.channels;
      const T w = bc.w[k] * scale;
      const T dw = (bc.dwdx(k) * tpx + bc.dwdy(k) * tpy) * scale;
      T dot_b = T(0), dot_a = T(0);
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        if (c0 + c >= c1) continue;
        const T gc = g[c0 + c];
        const T v = __ldg(planes + pix + c0 + c);
        const T u = gg_planes != nullptr ? __ldg(gg_planes + pix + c0 + c) : T(0);
        if (grad_planes != nullptr && gg_points != nullptr) atomicAdd(grad_planes + pix + c0 + c, dw * gc);
        acc[c] += dw * v + w * u;
        dot_b += v * gc;
        dot_a += u * gc;
      }
      a_px += bc.dwdx(k) * scale * dot_a;
      a_py += bc.dwdy(k) * scale * dot_a;
      b_px += bc.dwdx(k) * scale * dot_b;
      b_py += bc.dwdy(k) * scale * dot_b;
      b_xy += BilinearCorners<T>::d2w(k) * scale * dot_b;
    }
    triplane_accumulate_coord_grad(p, a_px + b_xy * tpy, a_py + b_xy * tpx, dpx, dpy, gq_lin);
    triplane_accumulate_coord_grad(p, b_px, b_py, dpx, dpy, gq_b);
    if (grad_grad_out != nullptr && (a.reduce == kReduceConcat || p == 2)) {
      T* o = grad_grad_out + i * a.out_channels() + a.plane_out_offset(p);
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        if (c0 + c < c1) { o[c0 + c] = acc[c]; acc[c] = T(0); }
      }
    }
  }
  if (grad_points != nullptr) {
    T gx[3];
    triplane_point_grad(a, pc, gq_lin, gx);  // linear in the channel sums: per-group partials add up
    if (gg_points != nullptr) triplane_point_grad_jvp(a, pc, gg_points + 3 * i, gq_b, gx);
    for (int j = 0; j < 3; ++j) atomicAdd(grad_points + 3 * i + j, gx[j]);
  }
}

}  // namespace triplane_cuda
}  // namespace vq3dlib
