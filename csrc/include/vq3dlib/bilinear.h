// Bilinear lookup geometry with F.grid_sample semantics (host + device).
// Python reference: vq3dlib/ops/triplane.py::triplane_sample_reference.
#pragma once
#include "vq3dlib/common.h"

namespace vq3dlib {

enum Padding : int { kPadZeros = 0, kPadBorder = 1 };

// Normalised coordinate u in [-1, 1] -> pixel coordinate, and d(pixel)/du (0 where border-clamped).
template <typename T>
VQ3D_HD T unnormalize_coord(T u, int size, bool align_corners, int padding, T* dpix_du) {
  T pix, scale;
  if (align_corners) {
    scale = T(size - 1) / T(2);
    pix = (u + T(1)) * scale;
  } else {
    scale = T(size) / T(2);
    pix = ((u + T(1)) * T(size) - T(1)) / T(2);
  }
  if (padding == kPadBorder) {
    if (pix <= T(0)) { pix = T(0); scale = T(0); }
    else if (pix >= T(size - 1)) { pix = T(size - 1); scale = T(0); }
  }
  *dpix_du = scale;
  return pix;
}

// The four corners of a bilinear lookup: integer positions, weights and validity.
template <typename T>
struct BilinearCorners {
  int x0, y0;
  T fx, fy;          // fractional offsets
  bool valid[4];     // (x0,y0) (x0+1,y0) (x0,y0+1) (x0+1,y0+1)
  T w[4];

  VQ3D_HD void set(T px, T py, int width, int height) {
    // far outside, every corner is invalid anyway; clamping keeps the integer conversion defined
    px = clamp_value(px, T(-2), T(width + 1));
    py = clamp_value(py, T(-2), T(height + 1));
    x0 = floor_int(px);
    y0 = floor_int(py);
    fx = px - T(x0);
    fy = py - T(y0);
    w[0] = (T(1) - fx) * (T(1) - fy);
    w[1] = fx * (T(1) - fy);
    w[2] = (T(1) - fx) * fy;
    w[3] = fx * fy;
    bool vx0 = x0 >= 0 && x0 < width, vx1 = x0 + 1 >= 0 && x0 + 1 < width;
    bool vy0 = y0 >= 0 && y0 < height, vy1 = y0 + 1 >= 0 && y0 + 1 < height;
    valid[0] = vx0 && vy0; valid[1] = vx1 && vy0; valid[2] = vx0 && vy1; valid[3] = vx1 && vy1;
  }
  VQ3D_HD int cx(int k) const { return x0 + (k & 1); }
  VQ3D_HD int cy(int k) const { return y0 + (k >> 1); }
  // d w_k / d fx and d w_k / d fy
  VQ3D_HD T dwdx(int k) const { return ((k & 1) ? T(1) : T(-1)) * ((k >> 1) ? fy : (T(1) - fy)); }
  VQ3D_HD T dwdy(int k) const { return ((k >> 1) ? T(1) : T(-1)) * ((k & 1) ? fx : (T(1) - fx)); }
  // d^2 w_k / d fx d fy (the only non-zero second derivative of a bilinear weight)
  VQ3D_HD static T d2w(int k) { return ((k & 1) ? T(1) : T(-1)) * ((k >> 1) ? T(1) : T(-1)); }
};

// Plane p in {0: xy, 1: xz, 2: yz}: which point coordinates index (width, height).
VQ3D_HD int plane_u_axis(int p) { return p == 2 ? 1 : 0; }
VQ3D_HD int plane_v_axis(int p) { return p == 0 ? 1 : 2; }

}  // namespace vq3dlib
