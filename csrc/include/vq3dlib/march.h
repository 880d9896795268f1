// Ray-box intersection, occupancy-grid lookup and packed ray marching (host + device).
// Python reference: vq3dlib/ops/march.py::march_packed_reference (tests require identical samples).
//
// Every floating-point expression here is written as the same sequence of single roundings that the
// torch reference performs (mul, add, div; no fused multiply-add), through the *_rn helpers, so the
// CPU kernel and the reference produce bit-identical sample positions and occupancy decisions.
#pragma once
#include <cmath>
#include <cstdint>

#include "vq3dlib/common.h"
#include "vq3dlib/contraction.h"

namespace vq3dlib {

enum Spacing : int { kSpacingT = 0, kSpacingContracted = 1 };

// Correctly rounded arithmetic that nvcc may not contract into FMA or replace by fast-math approximations.
#if defined(__CUDA_ARCH__)
VQ3D_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
VQ3D_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
VQ3D_HD float sub_rn(float a, float b) { return __fsub_rn(a, b); }
VQ3D_HD float div_rn(float a, float b) { return __fdiv_rn(a, b); }
VQ3D_HD double mul_rn(double a, double b) { return __dmul_rn(a, b); }
VQ3D_HD double add_rn(double a, double b) { return __dadd_rn(a, b); }
VQ3D_HD double sub_rn(double a, double b) { return __dsub_rn(a, b); }
VQ3D_HD double div_rn(double a, double b) { return __ddiv_rn(a, b); }
#else
template <typename T>
VQ3D_HD T mul_rn(T a, T b) { return a * b; }
template <typename T>
VQ3D_HD T add_rn(T a, T b) { return a + b; }
template <typename T>
VQ3D_HD T sub_rn(T a, T b) { return a - b; }
template <typename T>
VQ3D_HD T div_rn(T a, T b) { return a / b; }
#endif

// Slab test of the ray o + t d against box [lo, hi] (box = {xmin, ymin, zmin, xmax, ymax, zmax}).
// Returns the entry/exit parameters of the infinite line; a zero direction component yields
// (-inf, inf) when the origin lies inside that slab and (inf, -inf) otherwise.
template <typename T>
VQ3D_HD void ray_box_slabs(const T o[3], const T d[3], const T box[6], T* t_min, T* t_max) {
  const T inf = T(INFINITY);
  T tmin = -inf, tmax = inf;
  for (int a = 0; a < 3; ++a) {
    T lo, hi;
    if (d[a] == T(0)) {
      bool inside = o[a] >= box[a] && o[a] <= box[a + 3];
      lo = inside ? -inf : inf;
      hi = inside ? inf : -inf;
    } else {
      T t1 = div_rn(sub_rn(box[a], o[a]), d[a]);
      T t2 = div_rn(sub_rn(box[a + 3], o[a]), d[a]);
      lo = t1 < t2 ? t1 : t2;
      hi = t1 < t2 ? t2 : t1;
    }
    tmin = lo > tmin ? lo : tmin;
    tmax = hi < tmax ? hi : tmax;
  }
  *t_min = tmin;
  *t_max = tmax;
}

// Clips [near, far] to the box; returns whether a non-empty interval remains.
template <typename T>
VQ3D_HD bool ray_box_clip(const T o[3], const T d[3], const T box[6], T near, T far, T* t0, T* t1) {
  T tmin, tmax;
  ray_box_slabs(o, d, box, &tmin, &tmax);
  *t0 = tmin > near ? tmin : near;
  *t1 = tmax < far ? tmax : far;
  return *t1 > *t0;
}

// Exact reciprocals of the level boxes' spans, when every span is a power of two (so that dividing
// by it and multiplying by its reciprocal round alike): the lookup then needs no division per axis.
constexpr int kMaxExactLevels = 8;

template <typename T>
struct SpanReciprocals {
  bool exact = false;  // false: divide by the spans
  T inv[kMaxExactLevels][3];
};

// Occupancy of point x (world space) in a grid of `levels` boxes (finest first; boxes given in the
// grid's space: contracted space when contraction != kContractNone) with binaries
// [levels, rx, ry, rz] (uint8/bool). A point is looked up in the first level whose box contains it;
// the upper box face belongs to the last cell. Points outside every box are empty. `spans`, when
// exact, replaces each division by a box span with the equal multiplication by its reciprocal.
template <typename T>
VQ3D_HD bool grid_occupied(const uint8_t* binaries, const T* boxes, int levels, int rx, int ry, int rz,
                           int contraction, const T x[3], const SpanReciprocals<T>* spans = nullptr) {
  T y[3];
  contract_point(contraction, x, y);
  const int res[3] = {rx, ry, rz};
  const bool exact = spans != nullptr && spans->exact;
  for (int l = 0; l < levels; ++l) {
    const T* box = boxes + 6 * l;
    int idx[3];
    bool inside = true;
    for (int a = 0; a < 3; ++a) {
      const T off = sub_rn(y[a], box[a]);
      const T unit = exact ? mul_rn(off, spans->inv[l][a]) : div_rn(off, sub_rn(box[a + 3], box[a]));
      T u = mul_rn(unit, T(res[a]));
      if (!(u >= T(0) && u <= T(res[a]))) { inside = false; break; }
      int i = floor_int(u);
      idx[a] = i < res[a] - 1 ? i : res[a] - 1;
    }
    if (inside) {
      int64_t cell = ((static_cast<int64_t>(l) * rx + idx[0]) * ry + idx[1]) * rz + idx[2];
      return binaries[cell] != 0;
    }
  }
  return false;
}

// The reciprocals of the spans of `levels` boxes [levels, 6] on the host (exact = false unless every
// span is a positive, finite power of two and there are at most kMaxExactLevels levels).
template <typename T>
inline SpanReciprocals<T> span_reciprocals(const T* boxes, int levels) {
  SpanReciprocals<T> r;
  if (levels > kMaxExactLevels) return r;
  for (int l = 0; l < levels; ++l) {
    for (int a = 0; a < 3; ++a) {
      const T span = boxes[6 * l + a + 3] - boxes[6 * l + a];
      int e = 0;
      if (!(span > T(0)) || !std::isfinite(span) || std::frexp(span, &e) != T(0.5)) return r;
      r.inv[l][a] = T(1) / span;  // exact: a power of two
    }
  }
  r.exact = true;
  return r;
}

// Grid description shared by every ray of one call.
template <typename T>
struct MarchGrid {
  const uint8_t* binaries;  // [n_scenes, levels, rx, ry, rz]
  const T* boxes;           // [levels, 6]
  int levels, rx, ry, rz;
  int contraction;
  SpanReciprocals<T> spans;  // filled on the host where the boxes are readable (CPU)
};

// Where march_ray sends each kept sample: emit(k, t_start, t_end) with k = 0, 1, ... per ray.
struct DiscardSamples {  // counting pass
  template <typename T>
  VQ3D_HD void operator()(int64_t, T, T) const {}
};

template <typename T>
struct WriteSamples {  // fill pass: the ray's slice of the packed outputs
  int64_t ray_id;
  int64_t* ray_indices;
  T* t_starts;
  T* t_ends;
  VQ3D_HD void operator()(int64_t k, T ts, T te) const {
    ray_indices[k] = ray_id;
    t_starts[k] = ts;
    t_ends[k] = te;
  }
};

// Marches one ray, hands every kept sample to `emit` and returns their number (at most max_samples).
//   spacing kSpacingT:          t_k = t0 + k * step, t_{k+1} likewise (lattice from the clipped near).
//   spacing kSpacingContracted: t_{k+1} = t_k + step * max(1, |x(t_k)|_inf^2).
// A sample [t_k, min(t_{k+1}, t1)] is kept when the grid is occupied at its midpoint.
template <typename T, typename Emit>
VQ3D_HD int64_t march_ray(const T o[3], const T d[3], T near, T far, const MarchGrid<T>& g,
                          const uint8_t* scene_binaries, T step, double step_d, int spacing,
                          int64_t max_samples, Emit& emit) {
  T t0 = near, t1 = far;
  if (g.contraction == kContractNone) {
    if (!ray_box_clip(o, d, g.boxes + 6 * (g.levels - 1), near, far, &t0, &t1)) return 0;
  } else if (!(t1 > t0)) {
    return 0;
  }
  int64_t count = 0;
  if (spacing == kSpacingT) {
    double n_steps = ceil((static_cast<double>(t1) - static_cast<double>(t0)) / step_d) + 1.0;
    for (int64_t k = 0; static_cast<double>(k) < n_steps && count < max_samples; ++k) {
      T ts = add_rn(t0, mul_rn(T(k), step));
      if (!(ts < t1)) break;
      T te = add_rn(t0, mul_rn(T(k + 1), step));
      te = te < t1 ? te : t1;
      T mid = mul_rn(add_rn(ts, te), T(0.5));
      T x[3] = {add_rn(o[0], mul_rn(mid, d[0])), add_rn(o[1], mul_rn(mid, d[1])),
                add_rn(o[2], mul_rn(mid, d[2]))};
      if (grid_occupied(scene_binaries, g.boxes, g.levels, g.rx, g.ry, g.rz, g.contraction, x, &g.spans)) {
        emit(count, ts, te);
        ++count;
      }
    }
  } else {
    T t = t0;
    while (t < t1 && count < max_samples) {
      T m = T(0);
      for (int a = 0; a < 3; ++a) {
        T xa = fabs(add_rn(o[a], mul_rn(t, d[a])));
        m = xa > m ? xa : m;
      }
      T m2 = mul_rn(m, m);
      T tn = add_rn(t, mul_rn(step, m2 > T(1) ? m2 : T(1)));
      if (!(tn > t)) break;  // no progress left in this precision
      T te = tn < t1 ? tn : t1;
      T mid = mul_rn(add_rn(t, te), T(0.5));
      T x[3] = {add_rn(o[0], mul_rn(mid, d[0])), add_rn(o[1], mul_rn(mid, d[1])),
                add_rn(o[2], mul_rn(mid, d[2]))};
      if (grid_occupied(scene_binaries, g.boxes, g.levels, g.rx, g.ry, g.rz, g.contraction, x, &g.spans)) {
        emit(count, t, te);
        ++count;
      }
      t = tn;
    }
  }
  return count;
}

}  // namespace vq3dlib
