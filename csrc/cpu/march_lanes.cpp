// Packed marching of float32 rays in eight AVX2 lanes (declarations and contract: march_lanes.h).
//
// Each lane marches one ray with march_ray's operations (mul, add, div, compare; no fused multiply-add:
// the functions target AVX2 without FMA), so a lane's samples are the scalar kernel's bit for bit. What
// the lanes change is the control flow: the L-inf arg-max, the contraction's branch and the grid's
// bounds checks become selects, and a lane whose ray ends takes the block's next ray.
#include "march_lanes.h"

#include <algorithm>
#include <limits>

#include "lanes.h"

namespace vq3dlib {

#ifdef VQ3D_LANES
namespace {

using namespace lanes;

// The grid's constants as lane vectors.
struct LaneGrid {
  vf lo[kMaxExactLevels][3];
  vf scale[kMaxExactLevels][3];  // the span's reciprocal (exact) or the span (divide)
  vf res[3];
  vi res_last[3];  // res - 1
  vi rx, ry, rz;
  bool exact;
};

// Occupancy of the points (y0, y1, y2) in the grid's space, for the lanes in `want`: grid_occupied.
// `scene_cell`: each lane's first cell in `binaries`. Every lane reads a cell (those that need none
// read a valid one) and the eight bytes are widened at once: no per-lane branches or inserts.
VQ3D_AVX2 vi lanes_occupied(const LaneGrid& lg, int levels, const uint8_t* binaries, vi scene_cell, vf y0, vf y1,
                            vf y2, vi want) {
  const vf zero = splat(0.0f);
  const vf y[3] = {y0, y1, y2};
  vi resolved = ~want;
  vi occupied = splat_int(0);
  for (int l = 0; l < levels; ++l) {
    vi inside = splat_int(-1);
    vf u[3];
    for (int a = 0; a < 3; ++a) {
      const vf off = y[a] - lg.lo[l][a];
      const vf unit = lg.exact ? off * lg.scale[l][a] : off / lg.scale[l][a];
      u[a] = unit * lg.res[a];
      inside &= (u[a] >= zero) & (u[a] <= lg.res[a]);
    }
    const vi hit = inside & ~resolved;
    if (bits_of(hit) != 0) {
      vi idx[3];
      for (int a = 0; a < 3; ++a) {  // u in [0, res] where inside: truncation is floor
        const vi i = __builtin_convertvector(select(hit, u[a], zero), vi);
        idx[a] = select_int(i < lg.res_last[a], i, lg.res_last[a]);
      }
      alignas(32) int32_t cell[kLanes];
      *reinterpret_cast<vi*>(cell) = scene_cell + ((splat_int(l) * lg.rx + idx[0]) * lg.ry + idx[1]) * lg.rz + idx[2];
      uint64_t bytes = 0;
      for (int j = 0; j < kLanes; ++j) bytes |= static_cast<uint64_t>(binaries[cell[j]]) << (8 * j);
      const vi cells = reinterpret_cast<vi>(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(bytes))));
      occupied = select_int(hit, cells != splat_int(0), occupied);
    }
    resolved |= inside;
    if (bits_of(resolved) == 0xff) break;
  }
  return occupied & want;
}

__attribute__((target("avx2"))) void march_block_avx2(const float* o, const float* d, const float* nr,
                                                       const float* fr, const MarchGrid<float>& g,
                                                       const int64_t* sidx, int64_t scene_stride, float step,
                                                       int64_t max_samples, int64_t begin, int64_t end,
                                                       LaneSamples& out) {
  LaneGrid lg;
  lg.exact = g.spans.exact;
  for (int l = 0; l < g.levels; ++l) {
    for (int a = 0; a < 3; ++a) {
      lg.lo[l][a] = splat(g.boxes[6 * l + a]);
      lg.scale[l][a] = splat(lg.exact ? g.spans.inv[l][a] : g.boxes[6 * l + a + 3] - g.boxes[6 * l + a]);
    }
  }
  const int res[3] = {g.rx, g.ry, g.rz};
  for (int a = 0; a < 3; ++a) {
    lg.res[a] = splat(static_cast<float>(res[a]));
    lg.res_last[a] = splat_int(res[a] - 1);
  }
  lg.rx = splat_int(g.rx);
  lg.ry = splat_int(g.ry);
  lg.rz = splat_int(g.rz);
  const bool linf = g.contraction == kContractLinf;
  const int32_t max_count = static_cast<int32_t>(std::min<int64_t>(max_samples, std::numeric_limits<int32_t>::max()));

  out.ray.clear();
  out.t0.clear();
  out.t1.clear();
  out.counts.assign(static_cast<size_t>(end - begin), 0);
  vf ox = splat(0.0f), oy = ox, oz = ox, dx = ox, dy = ox, dz = ox, t = ox, t1 = ox;
  vi count = splat_int(0), live = splat_int(0);
  int32_t lane_ray[kLanes];
  vi scene_cell = splat_int(0);
  std::fill(lane_ray, lane_ray + kLanes, -1);
  int64_t next = begin;
  const vf step_v = splat(step), one = splat(1.0f), half = splat(0.5f);
  for (;;) {
    int live_bits = bits_of(live);
    if (live_bits != 0xff) {  // lanes whose ray ended: record its count, take the next marchable ray
      for (int j = 0; j < kLanes; ++j) {
        if ((live_bits >> j) & 1) continue;
        if (lane_ray[j] >= 0) out.counts[static_cast<size_t>(lane_ray[j])] = count[j];
        lane_ray[j] = -1;
        while (next < end && lane_ray[j] < 0) {
          const int64_t i = next++;
          const float oi[3] = {o[3 * i], o[3 * i + 1], o[3 * i + 2]};
          const float di[3] = {d[3 * i], d[3 * i + 1], d[3 * i + 2]};
          float r0 = nr[i], r1 = fr[i];
          if (g.contraction == kContractNone) {
            if (!ray_box_clip(oi, di, g.boxes + 6 * (g.levels - 1), nr[i], fr[i], &r0, &r1)) continue;
          }
          if (!(r0 < r1) || max_count <= 0) continue;  // march_ray's loop would not start
          lane_ray[j] = static_cast<int32_t>(i - begin);
          scene_cell[j] = static_cast<int32_t>(sidx != nullptr ? sidx[i] * scene_stride : 0);
          ox[j] = oi[0], oy[j] = oi[1], oz[j] = oi[2];
          dx[j] = di[0], dy[j] = di[1], dz[j] = di[2];
          t[j] = r0, t1[j] = r1;
          count[j] = 0;
          live[j] = -1;
        }
      }
      live_bits = bits_of(live);
      if (live_bits == 0) break;
    }
    // the step: t_{k+1} = t_k + step * max(1, |x(t_k)|_inf^2), as in march_ray
    vf m = splat(0.0f);
    const vf a0 = abs_of(ox + t * dx), a1 = abs_of(oy + t * dy), a2 = abs_of(oz + t * dz);
    m = select(a0 > m, a0, m);
    m = select(a1 > m, a1, m);
    m = select(a2 > m, a2, m);
    const vf m2 = m * m;
    const vf tn = t + step_v * select(m2 > one, m2, one);
    const vi stepping = live & (tn > t);  // a lane without progress ends its ray
    const vf te = select(tn < t1, tn, t1);
    const vf mid = (t + te) * half;
    vf x0 = ox + mid * dx, x1 = oy + mid * dy, x2 = oz + mid * dz;
    if (linf) contract_linf_lanes(x0, x1, x2, &x0, &x1, &x2);
    const vi emit = lanes_occupied(lg, g.levels, g.binaries, scene_cell, x0, x1, x2, stepping);
    for (int bits = bits_of(emit); bits != 0; bits &= bits - 1) {
      const int j = __builtin_ctz(bits);
      out.ray.push_back(lane_ray[j]);
      out.t0.push_back(t[j]);
      out.t1.push_back(te[j]);
    }
    count -= emit;  // emit lanes are -1
    t = select(stepping, tn, t);
    live = stepping & (t < t1) & (count < splat_int(max_count));
  }
}

}  // namespace

bool lanes_support(int spacing, int contraction, int levels, int64_t cells_per_scene, int64_t n_scenes) {
  return cpu_has_avx2() && spacing == kSpacingContracted &&
         (contraction == kContractNone || contraction == kContractLinf) && levels >= 1 &&
         levels <= kMaxExactLevels && cells_per_scene * n_scenes <= std::numeric_limits<int32_t>::max();
}

void march_block_lanes(const float* origins, const float* directions, const float* near, const float* far,
                       const MarchGrid<float>& grid, const int64_t* scene_index, int64_t scene_stride,
                       float step, int64_t max_samples, int64_t begin, int64_t end, LaneSamples& out) {
  march_block_avx2(origins, directions, near, far, grid, scene_index, scene_stride, step, max_samples, begin,
                   end, out);
}

#else  // no lanes on this platform: march.cpp uses the scalar kernel

bool lanes_support(int, int, int, int64_t, int64_t) { return false; }

void march_block_lanes(const float*, const float*, const float*, const float*, const MarchGrid<float>&,
                       const int64_t*, int64_t, float, int64_t, int64_t, int64_t, LaneSamples&) {}

#endif

}  // namespace vq3dlib
