// Fused contracted-triplane sampling on the CPU: contraction -> 3 bilinear lookups -> reduction,
// forward, backward (to planes and to points) and double backward (of the backward, to grad_out,
// planes and points). The forward is parallel over points, handed out in pieces as the threads go
// (parallel_for_as_they_go, vq3dlib/cpu_threads.h);
// plane gradients are parallel over whole scenes when the points come scene by scene, else over
// texel rows (each thread owns a band of rows of every plane), so no two threads write one texel:
// no atomics, no private buffers, deterministic. The point gradients
// are computed in the same pass (one texel lookup serves both), and outputs are zeroed inside the
// parallel regions rather than by a serial memset before them.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "hugepages.h"
#include "transpose.h"
#include "triplane_lanes.h"
#include "vq3dlib/cpu_threads.h"
#include "vq3dlib/triplane_host.h"

namespace vq3dlib {
namespace {

constexpr int64_t kGrain = 512;

// Channel loops: vectorised, the dot products as SIMD reductions (a fixed order for a given build).
#define VQ3D_SIMD _Pragma("omp simd")
#define VQ3D_SIMD_DOT _Pragma("omp simd reduction(+ : dot)")
constexpr int64_t kBlock = 16;  // points whose texels are prefetched together

// The 12 texels (3 planes x 4 corners) one point reads, with their weights. Computing them for a
// block of points first and prefetching every texel lets the memory system overlap the cache
// misses of random lookups (the kernel is latency-bound otherwise).
template <typename T>
struct PointTexels {
  int64_t index;  // the point
  bool ok;
  T pc[3];
  T dpx[3], dpy[3];
  int64_t offset[12];  // element offset of the texel's first channel, -1 when outside
  int row[12];         // texel row (height index) in its plane
  T weight[12], dwdx[12], dwdy[12];
};

inline int64_t visit(const int64_t* order, int64_t position) {
  return order != nullptr ? order[position] : position;
}

// kDerivs = false (the forward) skips the weights' derivatives.
template <typename T, bool kDerivs = true>
void locate_texels(const TriplaneArgs<T>& a, const T* points, const int64_t* scene_index, int64_t i,
                   PointTexels<T>& t) {
  T q[3];
  t.index = i;
  const int64_t scene = triplane_point_setup(a, points + 3 * i, i, scene_index, t.pc, q);
  t.ok = scene >= 0;
  if (!t.ok) return;
  const T scale = a.plane_scale();
  for (int p = 0; p < 3; ++p) {
    BilinearCorners<T> bc;
    triplane_plane_corners(a, q, p, &bc, &t.dpx[p], &t.dpy[p]);
    const int64_t base = a.plane_offset(scene, p);
    for (int k = 0; k < 4; ++k) {
      const int j = p * 4 + k;
      t.offset[j] = bc.valid[k] ? base + (static_cast<int64_t>(bc.cy(k)) * a.width + bc.cx(k)) * a.channels : -1;
      t.row[j] = bc.cy(k);
      t.weight[j] = bc.w[k] * scale;
      if (kDerivs) {
        t.dwdx[j] = bc.dwdx(k) * scale;
        t.dwdy[j] = bc.dwdy(k) * scale;
      }
    }
  }
}

// Prefetches the texels of t (those of the rows [row_lo, row_hi)), for reading or (rw) writing.
template <typename T>
void prefetch_texels(const T* data, const PointTexels<T>& t, int64_t channels, int rw, int row_lo = 0,
                     int row_hi = 1 << 30) {
  if (!t.ok) return;
  const int64_t per_line = 64 / static_cast<int64_t>(sizeof(T));
  for (int j = 0; j < 12; ++j) {
    if (t.offset[j] < 0 || t.row[j] < row_lo || t.row[j] >= row_hi) continue;
    for (int64_t c = 0; c < channels; c += per_line) {
      if (rw) __builtin_prefetch(data + t.offset[j] + c, 1, 1);
      else __builtin_prefetch(data + t.offset[j] + c, 0, 1);
    }
  }
}

// The order the kernels visit the points in: by scene, then along a Morton (Z-order) curve over
// cells of the unit cube of q. Consecutive points then read neighbouring texels in all three planes,
// so random points read texels the cache mostly holds already (planes that do not fit in the
// cache). A counting sort, O(S + cells); the results do not depend on it
// (each point is computed on its own; plane gradients add in this fixed order, whatever the thread
// count). Empty (identity order) for few points, for planes that fit in the cache and for points
// that already come in a coherent order.
constexpr int64_t kOrderMinPoints = 2048;
constexpr int64_t kOrderMinPlaneBytes = int64_t(16) << 20;  // smaller planes stay in the cache anyway

inline uint32_t spread_bits3(uint32_t v) {  // bit b of v -> bit 3b
  uint32_t r = 0;
  for (int b = 0; b < 10; ++b) r |= ((v >> b) & 1u) << (3 * b);
  return r;
}

// The bucket of point i: 0 when it refers to no valid scene (it reads nothing), else 1 + its scene's
// first bucket + the Morton code of its cell (2^bits cells per axis of q's unit cube); *scene = its scene.
template <typename T>
int32_t cell_key(const TriplaneArgs<T>& a, const T* points, const int64_t* scene_index, int64_t i, int bits,
                 int64_t* scene) {
  T pc[3], q[3];
  *scene = triplane_point_setup(a, points + 3 * i, i, scene_index, pc, q);
  if (*scene < 0) return 0;
  uint32_t code = 0;
  for (int j = 0; j < 3; ++j) {
    const T u = (q[j] + T(1)) * T(0.5) * T(int64_t(1) << bits);
    const int c = u > T(0) ? static_cast<int>(std::min(u, T((int64_t(1) << bits) - 1))) : 0;
    code |= spread_bits3(static_cast<uint32_t>(c)) << j;
  }
  return static_cast<int32_t>(1 + *scene * (int64_t(1) << (3 * bits)) + code);
}

// The visit order and, in that order, copies of the point coordinates and scenes (so the kernels
// read them sequentially; visit_args gives the kernels' args for them).
template <typename T>
struct VisitOrder {
  std::vector<int64_t> index;  // empty: identity
  std::vector<T> points;
  std::vector<int64_t> scene;
  const int64_t* order() const { return index.empty() ? nullptr : index.data(); }
};

template <typename T>
VisitOrder<T> compute_visit_order(const TriplaneArgs<T>& a, const T* points, const int64_t* scene_index, int64_t S,
                                  const T** points_v, const int64_t** scene_v) {
  VisitOrder<T> vo;
  *points_v = points;
  *scene_v = scene_index;
  const int64_t plane_bytes = a.n_scenes * 3 * a.height * a.width * a.channels * int64_t(sizeof(T));
  if (S < kOrderMinPoints || plane_bytes < kOrderMinPlaneBytes) return vo;
  int bits = 5;  // 32^3 cells per scene; fewer for many scenes (at most 2^21 buckets)
  while (bits > 1 && a.n_scenes * (int64_t(1) << (3 * bits)) > (int64_t(1) << 21)) --bits;
  const int64_t cells = int64_t(1) << (3 * bits), n_buckets = a.n_scenes * cells + 1;
  // Points that already come in a coherent order (samples along rays) are left as they are: when
  // most of 1024 probed neighbours i, i + 1 share a cell, sorting would buy nothing.
  const int64_t n_probe = std::min<int64_t>(S - 1, 1024);
  int64_t same = 0;
  for (int64_t k = 0; k < n_probe; ++k) {
    const int64_t i = k * (S - 1) / n_probe;
    int64_t s0, s1;
    same += cell_key(a, points, scene_index, i, bits, &s0) == cell_key(a, points, scene_index, i + 1, bits, &s1);
  }
  if (2 * same > n_probe) return vo;
  std::vector<int32_t> key(S);
  vo.scene.resize(S);
  at::parallel_for(0, S, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) key[i] = cell_key(a, points, scene_index, i, bits, &vo.scene[i]);
  });
  std::vector<int64_t> start(n_buckets + 1, 0);
  for (int64_t i = 0; i < S; ++i) ++start[key[i] + 1];
  for (int64_t k = 0; k < n_buckets; ++k) start[k + 1] += start[k];
  vo.index.resize(S);
  for (int64_t i = 0; i < S; ++i) vo.index[start[key[i]]++] = i;
  std::vector<int64_t> scene_sorted(S);
  vo.points.resize(3 * S);
  at::parallel_for(0, S, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t pos = b; pos < e; ++pos) {
      const int64_t i = vo.index[pos];
      for (int j = 0; j < 3; ++j) vo.points[3 * pos + j] = points[3 * i + j];
      scene_sorted[pos] = vo.scene[i];
    }
  });
  vo.scene.swap(scene_sorted);
  *points_v = vo.points.data();
  *scene_v = vo.scene.data();
  return vo;
}

// The last computed (non-identity) visit order, with what it was computed from. A forward's
// backward and double backward see the same points, so each step sorts them once. It is reused only
// when every input of compute_visit_order is equal: the sizes and options compared field by field,
// the points and scene indices compared in full (a memcmp of 12-20 bytes per point against the sort's
// contraction and counting sort), so a reuse is exact, never a guess.
constexpr int64_t kOrderCacheMaxPoints = int64_t(1) << 21;

template <typename T>
struct OrderCache {
  std::mutex mutex;
  int64_t S = -1, points_per_scene = 0, n_scenes = 0, plane_elems = 0;
  int contraction = -1;
  T bound = T(0);
  std::vector<T> points;
  std::vector<int64_t> scenes;
  std::shared_ptr<const VisitOrder<T>> order;
};

template <typename T>
OrderCache<T>& order_cache() {
  static OrderCache<T> cache;
  return cache;
}

// compute_visit_order through the one-entry cache; *points_v and *scene_v as it sets them.
template <typename T>
std::shared_ptr<const VisitOrder<T>> visit_order(const TriplaneArgs<T>& a, const T* points, const int64_t* scene_index,
                                                 int64_t S, const T** points_v, const int64_t** scene_v) {
  OrderCache<T>& c = order_cache<T>();
  const int64_t plane_elems = a.height * a.width * a.channels;
  const int64_t n_scene_ids = a.points_per_scene > 0 ? 0 : S;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.order && c.S == S && c.points_per_scene == a.points_per_scene && c.n_scenes == a.n_scenes &&
        c.plane_elems == plane_elems && c.contraction == a.contraction && c.bound == a.bound &&
        std::memcmp(points, c.points.data(), sizeof(T) * 3 * S) == 0 &&  // bit for bit (-0.0 != 0.0)
        static_cast<int64_t>(c.scenes.size()) == n_scene_ids &&
        (n_scene_ids == 0 || std::memcmp(scene_index, c.scenes.data(), sizeof(int64_t) * n_scene_ids) == 0)) {
      auto vo = c.order;
      *points_v = vo->points.data();
      *scene_v = vo->scene.data();
      return vo;
    }
  }
  auto vo = std::make_shared<VisitOrder<T>>(compute_visit_order(a, points, scene_index, S, points_v, scene_v));
  // the identity order costs a probe only: not cached; nor are orders of more than kOrderCacheMaxPoints
  // points (the entry holds 48 bytes per float point until the next call replaces it)
  if (vo->index.empty()) return vo;
  *points_v = vo->points.data();  // the copies now live in *vo
  *scene_v = vo->scene.data();
  if (S <= kOrderCacheMaxPoints) {
    std::lock_guard<std::mutex> lock(c.mutex);
    c.S = S;
    c.points_per_scene = a.points_per_scene;
    c.n_scenes = a.n_scenes;
    c.plane_elems = plane_elems;
    c.contraction = a.contraction;
    c.bound = a.bound;
    c.points.assign(points, points + 3 * S);
    c.scenes.assign(scene_index, scene_index + n_scene_ids);
    c.order = vo;
  }
  return vo;
}

// The kernels' args for the points as visit order gives them (scenes per point once reordered).
template <typename T>
TriplaneArgs<T> visit_args(TriplaneArgs<T> a, const VisitOrder<T>& vo) {
  if (!vo.index.empty()) a.points_per_scene = 0;
  return a;
}

// In visit order the rows of the per-point arrays are read at random: prefetched once located.
template <typename T>
void prefetch_row(const int64_t* order, const T* row, int64_t n, int rw) {
  if (order == nullptr) return;
  const int64_t per_line = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t c = 0; c < n; c += per_line) {
    if (rw) __builtin_prefetch(row + c, 1, 1);
    else __builtin_prefetch(row + c, 0, 1);
  }
}

// Rows of per-point arrays moved between the caller's order and the visit order, in parallel:
// gather: dst[pos] = src[order[pos]]; scatter: dst[order[pos]] = src[pos] (rows of n values). The
// backward's row bands then read grad_out sequentially (each band reads every row: gathering once
// replaces a random read per band) and write the point gradients sequentially.
template <typename T>
void gather_rows(const int64_t* order, const T* __restrict src, T* __restrict dst, int64_t S, int64_t n) {
  at::parallel_for(0, S, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t pos = b; pos < e; ++pos) {
      const T* __restrict from = src + order[pos] * n;
      VQ3D_SIMD
      for (int64_t c = 0; c < n; ++c) dst[pos * n + c] = from[c];
    }
  });
}

template <typename T>
void scatter_rows(const int64_t* order, const T* __restrict src, T* __restrict dst, int64_t S, int64_t n) {
  at::parallel_for(0, S, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t pos = b; pos < e; ++pos) {
      T* __restrict to = dst + order[pos] * n;
      for (int64_t c = 0; c < n; ++c) to[c] = src[pos * n + c];
    }
  });
}

// The per-point arrays of a backward in visit order: rows read are gathered once, rows written are
// staged (zeroed unless the kernel writes every row itself) and scattered to their points by
// finish(). With no order (identity) the arrays are used as they are.
template <typename T>
class VisitOrderRows {
 public:
  VisitOrderRows(const int64_t* order, int64_t S, const at::TensorOptions& options)
      : order_(order), S_(S), options_(options) {}

  const T* read(const T* src, int64_t n) {
    if (order_ == nullptr || src == nullptr) return src;
    T* dst = buffer(n, false);
    gather_rows(order_, src, dst, S_, n);
    return dst;
  }

  T* write(T* dst, int64_t n, bool zeroed = true) {
    if (order_ == nullptr || dst == nullptr) return dst;
    T* staged = buffer(n, zeroed);
    pending_.push_back({staged, dst, n});
    return staged;
  }

  void finish() {
    for (const Pending& w : pending_) scatter_rows(order_, w.staged, w.dst, S_, w.n);
    pending_.clear();
  }

 private:
  struct Pending {
    const T* staged;
    T* dst;
    int64_t n;
  };

  T* buffer(int64_t n, bool zeroed) {
    buffers_.push_back(zeroed ? at::zeros({S_ * n}, options_) : at::empty({S_ * n}, options_));
    return buffers_.back().template data_ptr<T>();
  }

  const int64_t* order_;
  int64_t S_;
  at::TensorOptions options_;
  std::vector<at::Tensor> buffers_;
  std::vector<Pending> pending_;
};

// Adds plane p's four texels of t, weighted, into acc[0, C) (kC > 0: C = kC, known at compile time,
// so acc stays in registers).
template <typename T, int kC>
inline void add_plane_texels(const T* __restrict planes, const PointTexels<T>& t, int p, int64_t C,
                             T* __restrict acc) {
  for (int k = 0; k < 4; ++k) {
    const int j = p * 4 + k;
    if (t.offset[j] < 0) continue;
    const T w = t.weight[j];
    const T* __restrict v = planes + t.offset[j];
    if constexpr (kC > 0) {
      VQ3D_SIMD
      for (int c = 0; c < kC; ++c) acc[c] += w * v[c];
    } else {
      VQ3D_SIMD
      for (int64_t c = 0; c < C; ++c) acc[c] += w * v[c];
    }
  }
}

// Writes the kC values of src to dst. With stream (rows written in a random order, as in the
// Morton visit order) float rows go out as non-temporal stores: the cache lines of the output,
// which no point reads again, are then written without first being read in. flush_streams()
// orders them before anything that follows (the end of each thread's share of a parallel region).
template <typename T, int kC>
inline void store_row(T* __restrict dst, const T* __restrict src, bool stream) {
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float> && kC % 4 == 0) {
    if (stream && (reinterpret_cast<std::uintptr_t>(dst) & 15) == 0) {
      for (int c = 0; c < kC; c += 4) _mm_stream_ps(dst + c, _mm_loadu_ps(src + c));
      return;
    }
  }
#endif
  std::copy(src, src + kC, dst);
}

inline void flush_streams() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// kC > 0: the planes have exactly kC channels (the sums are accumulated in a local array and each
// output row is written once); kC = 0: any channel count, accumulated in the output row.
// Both add the same terms in the same order.
template <typename T, int kC>
void forward_range(const TriplaneArgs<T>& a, const T* planes, const T* points, const int64_t* scene_index,
                   const int64_t* order, T* out, int64_t begin, int64_t end) {
  const int64_t C = a.channels, OC = a.out_channels();
  const bool concat = a.reduce == kReduceConcat;
  PointTexels<T> block[kBlock];
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t n = std::min(kBlock, end - b0);
    for (int64_t r = 0; r < n; ++r) {
      locate_texels<T, false>(a, points, scene_index, b0 + r, block[r]);
      block[r].index = visit(order, b0 + r);
      prefetch_texels(planes, block[r], C, 0);
      prefetch_row(order, out + block[r].index * OC, OC, 1);
    }
    for (int64_t r = 0; r < n; ++r) {
      const PointTexels<T>& t = block[r];
      T* o_row = out + t.index * OC;
      if constexpr (kC > 0) {
        T acc[kC > 0 ? kC : 1];
        for (int p = 0; p < 3; ++p) {
          if (p == 0 || concat) std::fill(acc, acc + kC, T(0));
          if (t.ok) add_plane_texels<T, kC>(planes, t, p, C, acc);
          if (concat || p == 2) store_row<T, kC>(o_row + a.plane_out_offset(p), acc, order != nullptr);
        }
      } else {
        std::fill(o_row, o_row + OC, T(0));  // out is allocated uninitialised: zeroed here, in parallel
        if (!t.ok) continue;
        for (int p = 0; p < 3; ++p) add_plane_texels<T, 0>(planes, t, p, C, o_row + a.plane_out_offset(p));
      }
    }
  }
}

// The lanes locate float32 points only: for other dtypes this overload of triplane_forward_lanes
// (triplane_lanes.h) declines.
template <typename T>
bool triplane_forward_lanes(const TriplaneArgs<T>&, const T*, const T*, const int64_t*, const int64_t*, T*,
                            int64_t, int64_t) {
  return false;
}

// The forward over points [begin, end): in lanes where they apply, else with the channel loop
// specialised for common channel counts.
template <typename T>
void forward_any(const TriplaneArgs<T>& a, const T* planes, const T* points, const int64_t* scene_index,
                 const int64_t* order, T* out, int64_t begin, int64_t end) {
  if (triplane_forward_lanes(a, planes, points, scene_index, order, out, begin, end)) return;
  switch (a.channels) {
    case 8: return forward_range<T, 8>(a, planes, points, scene_index, order, out, begin, end);
    case 12: return forward_range<T, 12>(a, planes, points, scene_index, order, out, begin, end);
    case 16: return forward_range<T, 16>(a, planes, points, scene_index, order, out, begin, end);
    case 32: return forward_range<T, 32>(a, planes, points, scene_index, order, out, begin, end);
    default: return forward_range<T, 0>(a, planes, points, scene_index, order, out, begin, end);
  }
}

// Visits the points at positions [begin, end) (in visit order: the caller stages grad_out and the
// point gradients in that order): point gradients of the points at positions [pts_lo, pts_hi) and
// plane gradients of the texel rows [row_lo, row_hi), in one pass (one texel lookup serves both).
template <typename T>
void backward_range(const TriplaneArgs<T>& a, const T* planes, const T* points, const int64_t* scene_index,
                    const T* grad_out, T* grad_planes, T* grad_points, int64_t begin, int64_t end, int64_t pts_lo,
                    int64_t pts_hi, int row_lo = 0, int row_hi = 1 << 30) {
  const int64_t C = a.channels, OC = a.out_channels();
  PointTexels<T> block[kBlock];
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t n = std::min(kBlock, end - b0);
    for (int64_t r = 0; r < n; ++r) {
      locate_texels(a, points, scene_index, b0 + r, block[r]);
      if (grad_points != nullptr && b0 + r >= pts_lo && b0 + r < pts_hi) prefetch_texels(planes, block[r], C, 0);
      if (grad_planes != nullptr) prefetch_texels(grad_planes, block[r], C, 1, row_lo, row_hi);
    }
    for (int64_t r = 0; r < n; ++r) {
      const PointTexels<T>& t = block[r];
      if (!t.ok) continue;
      const int64_t i = t.index;
      const bool want_point = grad_points != nullptr && b0 + r >= pts_lo && b0 + r < pts_hi;
      T gq[3] = {T(0), T(0), T(0)};
      for (int p = 0; p < 3; ++p) {
        const T* g = grad_out + i * OC + a.plane_out_offset(p);
        T g_px = T(0), g_py = T(0);
        for (int k = 0; k < 4; ++k) {
          const int j = p * 4 + k;
          if (t.offset[j] < 0) continue;
          const bool want_texel = grad_planes != nullptr && t.row[j] >= row_lo && t.row[j] < row_hi;
          if (want_texel && want_point) {  // both from one pass over the channels
            const T w = t.weight[j];
            const T* v = planes + t.offset[j];
            T* gp = grad_planes + t.offset[j];
            T dot = T(0);
            VQ3D_SIMD_DOT
            for (int64_t c = 0; c < C; ++c) {
              gp[c] += w * g[c];
              dot += v[c] * g[c];
            }
            g_px += t.dwdx[j] * dot;
            g_py += t.dwdy[j] * dot;
          } else if (want_texel) {
            const T w = t.weight[j];
            T* gp = grad_planes + t.offset[j];
            VQ3D_SIMD
            for (int64_t c = 0; c < C; ++c) gp[c] += w * g[c];
          } else if (want_point) {
            const T* v = planes + t.offset[j];
            T dot = T(0);
            VQ3D_SIMD_DOT
            for (int64_t c = 0; c < C; ++c) dot += v[c] * g[c];
            g_px += t.dwdx[j] * dot;
            g_py += t.dwdy[j] * dot;
          }
        }
        if (want_point) triplane_accumulate_coord_grad(p, g_px, g_py, t.dpx[p], t.dpy[p], gq);
      }
      if (want_point) triplane_point_grad(a, t.pc, gq, grad_points + 3 * i);
    }
  }
}

// The double backward: the cotangents gg_planes (of the plane gradient) and gg_points (of the
// point gradient, v below) give gradients to grad_out, the planes and the points. With the
// directional derivative dw_j = d w_j / dt along x + t v of each texel weight:
//   d/d grad_out[i]  = sum_j w_j gg_planes[t_j] + dw_j planes[t_j]
//   d/d planes[t]    = sum_{i, j: t_j = t} dw_j grad_out[i]
//   d/d points[i]    = the point gradient with gg_planes for the planes + the Hessian of the
//                      sampled feature . grad_out[i] times v (bilinear cross terms and the
//                      contraction's curvature).
// Parallel like backward_range: plane gradients by bands of texel rows, the rest by chunks of points.
template <typename T>
struct DoubleBackwardIO {
  const T* planes;
  const T* points;
  const int64_t* scene_index;
  const T* grad_out;
  const T* gg_planes;  // nullptr: no cotangent of the plane gradient
  const T* gg_points;  // nullptr: no cotangent of the point gradient
  T* grad_grad_out;    // nullptrs: not wanted
  T* grad_planes;
  T* grad_points;
};

template <typename T>
void double_backward_range(const TriplaneArgs<T>& a, const DoubleBackwardIO<T>& io, int64_t begin, int64_t end,
                           int64_t pts_lo, int64_t pts_hi, int row_lo = 0, int row_hi = 1 << 30) {
  const int64_t C = a.channels, OC = a.out_channels();
  const bool scatter = io.grad_planes != nullptr && io.gg_points != nullptr;
  PointTexels<T> block[kBlock];
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t n = std::min(kBlock, end - b0);
    for (int64_t r = 0; r < n; ++r) {
      locate_texels(a, io.points, io.scene_index, b0 + r, block[r]);
      if (b0 + r >= pts_lo && b0 + r < pts_hi) {
        prefetch_texels(io.planes, block[r], C, 0);
        if (io.gg_planes != nullptr) prefetch_texels(io.gg_planes, block[r], C, 0);
      }
      if (scatter) prefetch_texels(io.grad_planes, block[r], C, 1, row_lo, row_hi);
    }
    for (int64_t r = 0; r < n; ++r) {
      const PointTexels<T>& t = block[r];
      const int64_t i = t.index;
      const bool own = b0 + r >= pts_lo && b0 + r < pts_hi;
      T* gg_row = own && io.grad_grad_out != nullptr ? io.grad_grad_out + i * OC : nullptr;
      if (gg_row != nullptr) std::fill(gg_row, gg_row + OC, T(0));
      if (!t.ok || (!own && !scatter)) continue;
      T dw[12] = {}, dpx[3] = {}, dpy[3] = {};  // tangents of the weights and pixel positions along v
      if (io.gg_points != nullptr) {
        T dq[3];
        triplane_point_jvp(a, t.pc, io.gg_points + 3 * i, dq);
        for (int p = 0; p < 3; ++p) {
          dpx[p] = t.dpx[p] * dq[plane_u_axis(p)];
          dpy[p] = t.dpy[p] * dq[plane_v_axis(p)];
          for (int k = 0; k < 4; ++k) dw[p * 4 + k] = t.dwdx[p * 4 + k] * dpx[p] + t.dwdy[p * 4 + k] * dpy[p];
        }
      }
      const bool want_x = own && io.grad_points != nullptr;
      T gq_lin[3] = {T(0), T(0), T(0)}, gq_b[3] = {T(0), T(0), T(0)};
      const T scale = a.plane_scale();
      for (int p = 0; p < 3; ++p) {
        const int64_t off = a.plane_out_offset(p);
        const T* g = io.grad_out + i * OC + off;
        T a_px = T(0), a_py = T(0), b_px = T(0), b_py = T(0), b_xy = T(0);
        for (int k = 0; k < 4; ++k) {
          const int j = p * 4 + k;
          if (t.offset[j] < 0) continue;
          if (scatter && t.row[j] >= row_lo && t.row[j] < row_hi) {
            T* gp = io.grad_planes + t.offset[j];
            const T d = dw[j];
            VQ3D_SIMD
            for (int64_t c = 0; c < C; ++c) gp[c] += d * g[c];
          }
          if (!own) continue;
          const T* v = io.planes + t.offset[j];
          const T* u = io.gg_planes != nullptr ? io.gg_planes + t.offset[j] : nullptr;
          if (gg_row != nullptr) {
            T* o = gg_row + off;
            const T d = dw[j], w = t.weight[j];
            if (io.gg_points != nullptr) {
              VQ3D_SIMD
              for (int64_t c = 0; c < C; ++c) o[c] += d * v[c];
            }
            if (u != nullptr) {
              VQ3D_SIMD
              for (int64_t c = 0; c < C; ++c) o[c] += w * u[c];
            }
          }
          if (!want_x) continue;
          if (io.gg_points != nullptr) {
            T dot = T(0);
            VQ3D_SIMD_DOT
            for (int64_t c = 0; c < C; ++c) dot += v[c] * g[c];
            b_px += t.dwdx[j] * dot;
            b_py += t.dwdy[j] * dot;
            b_xy += BilinearCorners<T>::d2w(k) * scale * dot;
          }
          if (u != nullptr) {
            T dot = T(0);
            VQ3D_SIMD_DOT
            for (int64_t c = 0; c < C; ++c) dot += u[c] * g[c];
            a_px += t.dwdx[j] * dot;
            a_py += t.dwdy[j] * dot;
          }
        }
        if (!want_x) continue;
        // d/dt of the plane's pixel gradient (b_px, b_py) along v: the bilinear cross term
        triplane_accumulate_coord_grad(p, a_px + b_xy * dpy[p], a_py + b_xy * dpx[p], t.dpx[p], t.dpy[p], gq_lin);
        triplane_accumulate_coord_grad(p, b_px, b_py, t.dpx[p], t.dpy[p], gq_b);
      }
      if (!want_x) continue;
      T* gx = io.grad_points + 3 * i;
      triplane_point_grad(a, t.pc, gq_lin, gx);
      if (io.gg_points != nullptr) triplane_point_grad_jvp(a, t.pc, io.gg_points + 3 * i, gq_b, gx);
    }
  }
}

// Where each scene's points start, [n_scenes + 1], when the points come scene by scene in their own
// order (dense points, or packed ones with non-decreasing valid scene indices) and there are several
// scenes; else empty (the row bands split the work).
template <typename T>
std::vector<int64_t> scene_starts(const TriplaneArgs<T>& a, const int64_t* scene_index, int64_t S, bool own_order) {
  std::vector<int64_t> starts;
  if (!own_order || a.n_scenes < 2) return starts;
  starts.resize(a.n_scenes + 1);
  if (a.points_per_scene > 0) {
    for (int64_t s = 0; s <= a.n_scenes; ++s) starts[s] = std::min(S, s * a.points_per_scene);
    starts[a.n_scenes] = S;  // points past the last scene read nothing: visited with it
    return starts;
  }
  int64_t s = 0;
  starts[0] = 0;
  for (int64_t i = 0; i < S; ++i) {
    const int64_t k = scene_index[i];
    if (k < s || k >= a.n_scenes) return {};  // unsorted or invalid: the row bands handle it
    while (s < k) starts[++s] = i;
  }
  while (s < a.n_scenes) starts[++s] = S;
  return starts;
}

// Runs fn(pts_lo, pts_hi, row_lo, row_hi) once per part, in parallel: part k owns the texel rows
// [k*H/n, (k+1)*H/n) of every plane of grad_planes [B, 3, H, W, C] and visits all points, so no
// two threads write one texel (no atomics, no private buffers to zero and sum); it zeroes its own
// rows first (parallel first touch) and computes the per-point results of the k-th chunk of the
// visit order [pts_lo, pts_hi) in the same pass.
template <typename Fn>
void for_each_row_band(const at::Tensor& grad_planes, int64_t S, const Fn& fn) {
  const int64_t H = grad_planes.size(2), row_elems = grad_planes.size(3) * grad_planes.size(4);
  const int64_t n_parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (S + kGrain - 1) / kGrain));
  AT_DISPATCH_FLOATING_TYPES(grad_planes.scalar_type(), "for_each_row_band", [&] {
    scalar_t* data = grad_planes.data_ptr<scalar_t>();
    at::parallel_for(0, n_parts, 1, [&](int64_t pb, int64_t pe) {
      for (int64_t k = pb; k < pe; ++k) {
        const int lo = static_cast<int>(k * H / n_parts), hi = static_cast<int>((k + 1) * H / n_parts);
        for (int64_t plane = 0; plane < grad_planes.size(0) * 3; ++plane) {
          scalar_t* band = data + (plane * H + lo) * row_elems;
          std::fill(band, band + (hi - lo) * row_elems, scalar_t(0));
        }
        fn(k * S / n_parts, (k + 1) * S / n_parts, lo, hi);
      }
    });
  });
}

const int64_t* scene_ptr(const at::Tensor& scene_index, int64_t points_per_scene) {
  return points_per_scene > 0 ? nullptr : scene_index.data_ptr<int64_t>();
}

at::Tensor triplane_sample_fwd_cpu(const at::Tensor& planes, const at::Tensor& points, const at::Tensor& scene_index,
                                   int64_t points_per_scene, int64_t contraction, double bound, bool align_corners,
                                   int64_t padding, int64_t reduce) {
  check_triplane_inputs(planes, points, scene_index, points_per_scene);
  const int64_t S = points.size(0);
  const int64_t OC = triplane_out_channels(planes, reduce);
  at::Tensor out = at::empty({S, OC}, planes.options());
  if (S == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_fwd_cpu", [&] {
    auto a = make_triplane_args<scalar_t>(planes, points_per_scene, contraction, bound, align_corners, padding, reduce);
    const scalar_t* pl = planes.data_ptr<scalar_t>();
    const scalar_t* pt = points.data_ptr<scalar_t>();
    const int64_t* si = scene_ptr(scene_index, points_per_scene);
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* pv;
    const int64_t* sv;
    const auto vo = visit_order(a, pt, si, S, &pv, &sv);
    const auto args = visit_args(a, *vo);
    parallel_for_as_they_go(0, S, 4 * kGrain, [&](int64_t b, int64_t e) {
      forward_any(args, pl, pv, sv, vo->order(), o, b, e);
      flush_streams();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& points, const at::Tensor& scene_index,
    int64_t points_per_scene, int64_t contraction, double bound, bool align_corners, int64_t padding, int64_t reduce,
    bool need_planes_grad, bool need_points_grad) {
  check_triplane_inputs(planes, points, scene_index, points_per_scene);
  check_triplane_grad_out(grad_out, planes, points, reduce);
  const int64_t S = points.size(0);
  at::Tensor g = grad_out.contiguous();
  at::Tensor grad_planes =
      need_planes_grad ? empty_hugepages(planes.sizes(), planes.options()) : at::empty({0}, planes.options());
  at::Tensor grad_points = need_points_grad ? at::zeros_like(points) : at::empty({0}, points.options());
  if (S == 0 || (!need_planes_grad && !need_points_grad)) {
    if (need_planes_grad) grad_planes.zero_();
    return {grad_planes, grad_points};
  }
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_bwd_cpu", [&] {
    auto a = make_triplane_args<scalar_t>(planes, points_per_scene, contraction, bound, align_corners, padding, reduce);
    const scalar_t* pl = planes.data_ptr<scalar_t>();
    const scalar_t* pt = points.data_ptr<scalar_t>();
    const int64_t* si = scene_ptr(scene_index, points_per_scene);
    const scalar_t* go = g.data_ptr<scalar_t>();
    scalar_t* gpts = need_points_grad ? grad_points.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pv;
    const int64_t* sv;
    const auto vo = visit_order(a, pt, si, S, &pv, &sv);
    const auto args = visit_args(a, *vo);
    // in visit order: grad_out's rows gathered once (every row band reads all of them) and the
    // point gradients staged, then scattered to their points
    const int64_t* ord = vo->order();
    VisitOrderRows<scalar_t> rows(ord, S, planes.options());
    go = rows.read(go, g.size(1));
    gpts = rows.write(gpts, 3);
    if (!need_planes_grad) {  // point gradients only: parallel over chunks of points
      at::parallel_for(0, S, kGrain, [&](int64_t b, int64_t e) {
        backward_range(args, pl, pv, sv, go, static_cast<scalar_t*>(nullptr), gpts, b, e, b, e);
      });
    } else if (const auto starts = scene_starts(args, sv, S, ord == nullptr); !starts.empty()) {
      // the points of each scene in one run: each thread owns whole scenes, their planes' gradients
      // and their points, so every point is located once and no texel is written by two threads.
      // Each texel's terms add in point order, as in the row bands, for any thread count.
      scalar_t* gpl = grad_planes.data_ptr<scalar_t>();
      const int64_t scene_elems = 3 * args.height * args.width * args.channels;
      at::parallel_for(0, args.n_scenes, 1, [&](int64_t s0, int64_t s1) {
        std::fill(gpl + s0 * scene_elems, gpl + s1 * scene_elems, scalar_t(0));
        backward_range(args, pl, pv, sv, go, gpl, gpts, starts[s0], starts[s1], starts[s0], starts[s1]);
      });
    } else {
      scalar_t* gpl = grad_planes.data_ptr<scalar_t>();
      for_each_row_band(grad_planes, S, [&](int64_t pts_lo, int64_t pts_hi, int lo, int hi) {
        backward_range(args, pl, pv, sv, go, gpl, gpts, 0, S, pts_lo, pts_hi, lo, hi);
      });
    }
    rows.finish();
  });
  return {grad_planes, grad_points};
}

// The double backward of points and per-point rows in visit order: by row bands when there is a
// plane gradient to scatter, else in parallel over chunks of points.
template <typename T>
void run_double_backward(const TriplaneArgs<T>& a, const DoubleBackwardIO<T>& io, int64_t S, bool scatter,
                         bool need_planes_grad, at::Tensor& grad_planes) {
  if (!scatter) {
    if (need_planes_grad) grad_planes.zero_();
    at::parallel_for(0, S, kGrain, [&](int64_t b, int64_t e) { double_backward_range(a, io, b, e, b, e); });
    return;
  }
  for_each_row_band(grad_planes, S, [&](int64_t pts_lo, int64_t pts_hi, int lo, int hi) {
    double_backward_range(a, io, 0, S, pts_lo, pts_hi, lo, hi);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> triplane_sample_bwd_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& points, const at::Tensor& scene_index,
    const c10::optional<at::Tensor>& gg_planes, const c10::optional<at::Tensor>& gg_points, int64_t points_per_scene,
    int64_t contraction, double bound, bool align_corners, int64_t padding, int64_t reduce, bool need_grad_out_grad,
    bool need_planes_grad, bool need_points_grad) {
  at::Tensor ggp, ggx;
  check_triplane_double_backward(grad_out, planes, points, scene_index, gg_planes, gg_points, points_per_scene,
                                 reduce, &ggp, &ggx);
  const int64_t S = points.size(0);
  at::Tensor g = grad_out.contiguous();
  at::Tensor grad_g = need_grad_out_grad ? at::empty_like(g) : at::empty({0}, planes.options());
  at::Tensor grad_planes =
      need_planes_grad ? empty_hugepages(planes.sizes(), planes.options()) : at::empty({0}, planes.options());
  at::Tensor grad_points = need_points_grad ? at::zeros_like(points) : at::empty({0}, points.options());
  const bool scatter = need_planes_grad && ggx.defined();
  if (S == 0 || (!need_grad_out_grad && !scatter && !need_points_grad)) {
    if (need_grad_out_grad) grad_g.zero_();
    if (need_planes_grad) grad_planes.zero_();
    return {grad_g, grad_planes, grad_points};
  }
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_bwd_bwd_cpu", [&] {
    auto a = make_triplane_args<scalar_t>(planes, points_per_scene, contraction, bound, align_corners, padding, reduce);
    DoubleBackwardIO<scalar_t> io{planes.data_ptr<scalar_t>(),
                                  points.data_ptr<scalar_t>(),
                                  scene_ptr(scene_index, points_per_scene),
                                  g.data_ptr<scalar_t>(),
                                  ggp.defined() ? ggp.data_ptr<scalar_t>() : nullptr,
                                  ggx.defined() ? ggx.data_ptr<scalar_t>() : nullptr,
                                  need_grad_out_grad ? grad_g.data_ptr<scalar_t>() : nullptr,
                                  scatter ? grad_planes.data_ptr<scalar_t>() : nullptr,
                                  need_points_grad ? grad_points.data_ptr<scalar_t>() : nullptr};
    const auto vo = visit_order(a, io.points, io.scene_index, S, &io.points, &io.scene_index);
    const auto args = visit_args(a, *vo);
    // in visit order, as in the backward: each row band reads every point's grad_out row
    VisitOrderRows<scalar_t> rows(vo->order(), S, planes.options());
    const int64_t OC = g.size(1);
    io.grad_out = rows.read(io.grad_out, OC);
    io.gg_points = rows.read(io.gg_points, 3);
    io.grad_grad_out = rows.write(io.grad_grad_out, OC, /*zeroed=*/false);  // each row filled by its band
    io.grad_points = rows.write(io.grad_points, 3);
    run_double_backward(args, io, S, scatter, need_planes_grad, grad_planes);
    rows.finish();
  });
  return {grad_g, grad_planes, grad_points};
}

}  // namespace

namespace {

// [B, 3, X, Y, Z] -> contiguous [B, 3, <dims of order>]: Y*Z <-> X (channels last) or Z <-> X*Y
// (channels first), as one transpose of the last two dims of [B*3, A, Bn].
at::Tensor swap_plane_layout(const at::Tensor& x, at::IntArrayRef out_size, int64_t A) {
  at::Tensor in = x.contiguous();
  at::Tensor out = empty_hugepages(out_size, x.options());
  const int64_t N = x.size(0) * x.size(1), Bn = N > 0 && A > 0 ? x.numel() / (N * A) : 0;
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "swap_plane_layout", [&] {
    transpose_last_two(in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N, A, Bn);
  });
  return out;
}

}  // namespace

at::Tensor planes_channels_last_cpu(const at::Tensor& planes) {
  TORCH_CHECK(planes.dim() == 5, "planes must be [B, 3, C, H, W]");
  return swap_plane_layout(planes, {planes.size(0), planes.size(1), planes.size(3), planes.size(4), planes.size(2)},
                           planes.size(2));
}

at::Tensor planes_channels_first_cpu(const at::Tensor& planes) {
  TORCH_CHECK(planes.dim() == 5, "planes must be [B, 3, H, W, C]");
  return swap_plane_layout(planes, {planes.size(0), planes.size(1), planes.size(4), planes.size(2), planes.size(3)},
                           planes.size(2) * planes.size(3));
}

TORCH_LIBRARY_IMPL(vq3dlib, CPU, m) {
  m.impl("planes_channels_last", &planes_channels_last_cpu);
  m.impl("planes_channels_first", &planes_channels_first_cpu);
  m.impl("triplane_sample_fwd", &triplane_sample_fwd_cpu);
  m.impl("triplane_sample_bwd", &triplane_sample_bwd_cpu);
  m.impl("triplane_sample_bwd_bwd", &triplane_sample_bwd_bwd_cpu);
}

}  // namespace vq3dlib
