// Scene contraction functions and their vector-Jacobian products (host + device).
// Python reference: vq3dlib/contraction.py (tests compare the two).
//
//   l2   (mip-NeRF 360): x                      if |x|_2 <= 1
//                        (2 - 1/|x|) x / |x|    otherwise            -> ball of radius 2
//   linf (MERF):         x                      if |x|_inf <= 1
//                        x_j / |x|_inf          for j not the arg-max coordinate
//                        (2 - 1/|x_j|) sign x_j for the arg-max coordinate -> cube [-2, 2]^3
//   axis (per axis):     each coordinate on its own: x_j if |x_j| <= 1, else (2 - 1/|x_j|) sign x_j
//                        -> cube [-2, 2]^3; planes x_j = c with |c| <= 1 stay planes
#pragma once
#include <limits>

#include "vq3dlib/common.h"

namespace vq3dlib {

enum Contraction : int { kContractNone = 0, kContractL2 = 1, kContractLinf = 2, kContractAxis = 3 };

// |x|_2 of a 3-vector without overflow: when the sum of squares overflows (|x| above sqrt of the
// largest value), the coordinates are scaled by |x|_inf first. Same bits as sqrt(x.x) otherwise.
template <typename T>
VQ3D_HD T norm3(const T x[3]) {
  T r2 = x[0] * x[0] + x[1] * x[1] + x[2] * x[2];
  if (!(r2 > std::numeric_limits<T>::max())) return sqrt(r2);
  T m = fmax(fabs(x[0]), fmax(fabs(x[1]), fabs(x[2])));
  T a = x[0] / m, b = x[1] / m, c = x[2] / m;
  return m * sqrt(a * a + b * b + c * c);
}

template <typename T>
VQ3D_HD int linf_argmax(const T x[3]) {
  int k = 0;
  T m = fabs(x[0]);
  if (fabs(x[1]) > m) { k = 1; m = fabs(x[1]); }
  if (fabs(x[2]) > m) { k = 2; }
  return k;
}

// y = contract(x)
template <typename T>
VQ3D_HD void contract_point(int mode, const T x[3], T y[3]) {
  y[0] = x[0]; y[1] = x[1]; y[2] = x[2];
  if (mode == kContractL2) {
    T r = norm3(x);
    if (r > T(1)) {
      T s = (T(2) - T(1) / r) / r;
      y[0] = s * x[0]; y[1] = s * x[1]; y[2] = s * x[2];
    }
  } else if (mode == kContractLinf) {
    int k = linf_argmax(x);
    T m = fabs(x[k]);
    if (m > T(1)) {
      for (int j = 0; j < 3; ++j) {
        if (j != k) y[j] = x[j] / m;
      }
      y[k] = (T(2) - T(1) / m) * sign_of(x[k]);
    }
  } else if (mode == kContractAxis) {
    for (int j = 0; j < 3; ++j) {
      if (fabs(x[j]) > T(1)) y[j] = (T(2) - T(1) / fabs(x[j])) * sign_of(x[j]);
    }
  }
}

// gx = J(x)^T gy, J the Jacobian of contract at x.
template <typename T>
VQ3D_HD void contract_vjp(int mode, const T x[3], const T gy[3], T gx[3]) {
  gx[0] = gy[0]; gx[1] = gy[1]; gx[2] = gy[2];
  if (mode == kContractL2) {
    T r2 = x[0] * x[0] + x[1] * x[1] + x[2] * x[2];
    if (r2 > T(1)) {
      T r = norm3(x);  // r2 may overflow (then c = 0, the limit)
      T s = (T(2) - T(1) / r) / r;               // 2/r - 1/r^2
      T c = (T(2) / r - T(2)) / (r2 * r);        // 2/r^4 - 2/r^3
      T xg = x[0] * gy[0] + x[1] * gy[1] + x[2] * gy[2];
      for (int j = 0; j < 3; ++j) gx[j] = s * gy[j] + c * x[j] * xg;
    }
  } else if (mode == kContractLinf) {
    int k = linf_argmax(x);
    T m = fabs(x[k]);
    if (m > T(1)) {
      T acc = T(0);
      for (int j = 0; j < 3; ++j) {
        if (j == k) continue;
        gx[j] = gy[j] / m;
        acc += gy[j] * x[j];
      }
      gx[k] = gy[k] / (x[k] * x[k]) - acc * sign_of(x[k]) / (m * m);
    }
  } else if (mode == kContractAxis) {  // diagonal Jacobian: 1 / x_j^2 outside
    for (int j = 0; j < 3; ++j) {
      if (fabs(x[j]) > T(1)) gx[j] = gy[j] / (x[j] * x[j]);
    }
  }
}

// dy = J(x) v, the Jacobian-vector product of contract at x (forward mode).
template <typename T>
VQ3D_HD void contract_jvp(int mode, const T x[3], const T v[3], T dy[3]) {
  dy[0] = v[0]; dy[1] = v[1]; dy[2] = v[2];
  if (mode == kContractL2) {
    T r = norm3(x);
    if (r > T(1)) {  // J = s I + k n n^T, n = x / r (symmetric)
      T n[3] = {x[0] / r, x[1] / r, x[2] / r};
      T s = (T(2) - T(1) / r) / r, k = (T(2) / r - T(2)) / r;
      T nv = n[0] * v[0] + n[1] * v[1] + n[2] * v[2];
      for (int j = 0; j < 3; ++j) dy[j] = s * v[j] + k * n[j] * nv;
    }
  } else if (mode == kContractLinf) {
    int k = linf_argmax(x);
    T m = fabs(x[k]);
    if (m > T(1)) {
      T sg = sign_of(x[k]);
      for (int j = 0; j < 3; ++j) dy[j] = v[j] / m - x[j] * sg * v[k] / (m * m);
      dy[k] = v[k] / (m * m);
    }
  } else if (mode == kContractAxis) {
    for (int j = 0; j < 3; ++j) {
      if (fabs(x[j]) > T(1)) dy[j] = v[j] / (x[j] * x[j]);
    }
  }
}

// dgx = d/dt [J(x + t v)^T gy] at t = 0, gy fixed: the derivative of contract_vjp along v (the
// contraction's curvature term of a Hessian-vector product).
template <typename T>
VQ3D_HD void contract_vjp_jvp(int mode, const T x[3], const T gy[3], const T v[3], T dgx[3]) {
  dgx[0] = T(0); dgx[1] = T(0); dgx[2] = T(0);
  if (mode == kContractL2) {
    T r = norm3(x);
    if (r > T(1)) {  // J^T gy = s gy + k n (n . gy), s = 2/r - 1/r^2, k = 2/r^2 - 2/r
      T n[3] = {x[0] / r, x[1] / r, x[2] / r};
      T k = (T(2) / r - T(2)) / r;
      T nv = n[0] * v[0] + n[1] * v[1] + n[2] * v[2];  // dr
      T ng = n[0] * gy[0] + n[1] * gy[1] + n[2] * gy[2];
      T ds = (T(2) / r - T(2)) / (r * r) * nv;  // (-2/r^2 + 2/r^3) dr
      T dk = (T(2) - T(4) / r) / (r * r) * nv;  // (-4/r^3 + 2/r^2) dr
      T dn[3], dng = T(0);
      for (int j = 0; j < 3; ++j) {
        dn[j] = (v[j] - n[j] * nv) / r;
        dng += dn[j] * gy[j];
      }
      for (int j = 0; j < 3; ++j) dgx[j] = ds * gy[j] + dk * n[j] * ng + k * (dn[j] * ng + n[j] * dng);
    }
  } else if (mode == kContractLinf) {
    int k = linf_argmax(x);
    T m = fabs(x[k]);
    if (m > T(1)) {  // J^T gy: gy_j / m (j != k); gy_k / m^2 - sign(x_k) acc / m^2
      T sg = sign_of(x[k]), m2 = m * m;
      T acc = T(0), dacc = T(0);
      for (int j = 0; j < 3; ++j) {
        if (j == k) continue;
        dgx[j] = -gy[j] * sg * v[k] / m2;
        acc += gy[j] * x[j];
        dacc += gy[j] * v[j];
      }
      dgx[k] = (T(2) * v[k] * (acc - sg * gy[k]) / m - sg * dacc) / m2;
    }
  } else if (mode == kContractAxis) {  // d/dt of gy_j / x_j^2 = -2 gy_j v_j / x_j^3
    for (int j = 0; j < 3; ++j) {
      if (fabs(x[j]) > T(1)) dgx[j] = -T(2) * gy[j] * v[j] / (x[j] * x[j] * x[j]);
    }
  }
}

}  // namespace vq3dlib
