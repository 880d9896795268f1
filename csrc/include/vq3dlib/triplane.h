// Per-point triplane geometry shared by the CPU and CUDA kernels: world point -> contracted,
// normalised coordinate -> bilinear corners on each of the three planes, and the chain rule back
// from plane-pixel gradients to the world point. Channel loops live in the kernels.
//
// Planes are stored channels-last, [B, 3, H, W, C], planes ordered (xy, xz, yz); plane p is indexed
// by (u, v) = point coordinates (plane_u_axis(p), plane_v_axis(p)) -> (width, height), exactly like
// F.grid_sample(plane[None], grid=(u, v)).
#pragma once
#include "vq3dlib/bilinear.h"
#include "vq3dlib/contraction.h"

namespace vq3dlib {

enum Reduce : int { kReduceSum = 0, kReduceMean = 1, kReduceConcat = 2 };

template <typename T>
struct TriplaneArgs {
  int64_t n_scenes, height, width, channels;
  int64_t points_per_scene;  // > 0: dense layout, scene = point / points_per_scene
  int contraction;
  T bound;
  bool align_corners;
  int padding;
  int reduce;

  VQ3D_HD int64_t out_channels() const { return reduce == kReduceConcat ? 3 * channels : channels; }
  VQ3D_HD T plane_scale() const { return reduce == kReduceMean ? T(1) / T(3) : T(1); }
  VQ3D_HD int64_t plane_out_offset(int p) const { return reduce == kReduceConcat ? p * channels : 0; }
  VQ3D_HD int64_t plane_offset(int64_t scene, int p) const {
    return (scene * 3 + p) * height * width * channels;
  }
};

// The scene of a point (dense points: point / points_per_scene, else scene_index[point]), or -1 when
// it refers to no valid scene.
template <typename T>
VQ3D_HD int64_t triplane_point_scene(const TriplaneArgs<T>& a, int64_t point, const int64_t* scene_index) {
  const int64_t scene = a.points_per_scene > 0 ? point / a.points_per_scene : scene_index[point];
  return (scene >= 0 && scene < a.n_scenes) ? scene : -1;
}

// World point -> scaled point pc = x / bound and unit coordinate q in [-1, 1]^3 (inside the bound /
// the contracted box). Returns the scene index, or -1 when the point refers to no valid scene.
template <typename T>
VQ3D_HD int64_t triplane_point_setup(const TriplaneArgs<T>& a, const T* xyz, int64_t point,
                                     const int64_t* scene_index, T pc[3], T q[3]) {
  for (int j = 0; j < 3; ++j) pc[j] = xyz[j] / a.bound;
  contract_point(a.contraction, pc, q);
  if (a.contraction != kContractNone) {
    for (int j = 0; j < 3; ++j) q[j] *= T(0.5);
  }
  return triplane_point_scene(a, point, scene_index);
}

// Bilinear corners of plane p for unit coordinate q, with d(pixel)/d(q) along width and height.
template <typename T>
VQ3D_HD void triplane_plane_corners(const TriplaneArgs<T>& a, const T q[3], int p,
                                    BilinearCorners<T>* corners, T* dpx_dq, T* dpy_dq) {
  T px = unnormalize_coord(q[plane_u_axis(p)], static_cast<int>(a.width), a.align_corners, a.padding, dpx_dq);
  T py = unnormalize_coord(q[plane_v_axis(p)], static_cast<int>(a.height), a.align_corners, a.padding, dpy_dq);
  corners->set(px, py, static_cast<int>(a.width), static_cast<int>(a.height));
}

// Adds the coordinate gradient of plane p (d loss / d pixel x, y) into gq (d loss / d q).
template <typename T>
VQ3D_HD void triplane_accumulate_coord_grad(int p, T g_px, T g_py, T dpx_dq, T dpy_dq, T gq[3]) {
  gq[plane_u_axis(p)] += g_px * dpx_dq;
  gq[plane_v_axis(p)] += g_py * dpy_dq;
}

// d loss / d q -> d loss / d world point (through the 1/2 scaling, the contraction and the bound).
template <typename T>
VQ3D_HD void triplane_point_grad(const TriplaneArgs<T>& a, const T pc[3], T gq[3], T gx[3]) {
  if (a.contraction != kContractNone) {
    for (int j = 0; j < 3; ++j) gq[j] *= T(0.5);
  }
  contract_vjp(a.contraction, pc, gq, gx);
  for (int j = 0; j < 3; ++j) gx[j] /= a.bound;
}

// The double backward (gradients of the point gradient, e.g. an eikonal loss) along a world-space
// tangent v of the point: dq = d q / dt of q(x + t v).
template <typename T>
VQ3D_HD void triplane_point_jvp(const TriplaneArgs<T>& a, const T pc[3], const T v[3], T dq[3]) {
  T vc[3];
  for (int j = 0; j < 3; ++j) vc[j] = v[j] / a.bound;
  contract_jvp(a.contraction, pc, vc, dq);
  if (a.contraction != kContractNone) {
    for (int j = 0; j < 3; ++j) dq[j] *= T(0.5);
  }
}

// d/dt of triplane_point_grad(a, pc(x + t v), gq) with gq fixed, added into gx: the curvature of
// the contraction (zero without one).
template <typename T>
VQ3D_HD void triplane_point_grad_jvp(const TriplaneArgs<T>& a, const T pc[3], const T v[3], const T gq[3],
                                     T gx[3]) {
  if (a.contraction == kContractNone) return;
  T vc[3], gy[3], d[3];
  for (int j = 0; j < 3; ++j) {
    vc[j] = v[j] / a.bound;
    gy[j] = gq[j] * T(0.5);
  }
  contract_vjp_jvp(a.contraction, pc, gy, vc, d);
  for (int j = 0; j < 3; ++j) gx[j] += d[j] / a.bound;
}

}  // namespace vq3dlib
