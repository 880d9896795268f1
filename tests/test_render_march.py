"""Tests for packed ray marching: vq3dlib.render.march (ray_march) and vq3dlib.ops.march (kernels)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from vq3dlib import backend
from vq3dlib.ops import extension_supports
from vq3dlib.ops.march import contract_linf_exact, march_packed, march_packed_reference
from vq3dlib.render.march import ray_march
from vq3dlib.render.occupancy import OccupancyGrid


def _rays(n: int, device, dtype=torch.float32, spread: float = 3.0):
    o = (torch.randn(n, 3, dtype=torch.float64) * spread).to(device, dtype)
    d = torch.nn.functional.normalize(torch.randn(n, 3, dtype=torch.float64), dim=-1).to(device, dtype)
    return o, d


def _random_grid(contraction: str, n_scenes: int, levels: int, res, p: float, device) -> OccupancyGrid:
    aabb = None if contraction == "linf" else [-1.5, -1.0, -1.2, 1.5, 1.0, 1.2]
    grid = OccupancyGrid(aabb, res, levels, contraction, n_scenes).to(device)
    grid.binaries.copy_(torch.rand(grid.binaries.shape, device=device) < p)
    return grid


def _ext_or_skip(device):
    if not extension_supports("ray_march", device):
        pytest.skip(f"compiled extension unavailable on {device}")


def _assert_sorted_valid(samples, n_rays):
    ri, ts, te = samples
    assert ri.dtype == torch.long and ts.shape == te.shape == ri.shape
    if ri.numel():
        assert (ri[1:] >= ri[:-1]).all() and ri.min() >= 0 and ri.max() < n_rays
        assert (te > ts).all()
        same = ri[1:] == ri[:-1]
        assert (ts[1:][same] >= te[:-1][same]).all()  # sorted by t within a ray, no overlap


CASES = [
    ("none", "t", 1, 1, 16),
    ("none", "t", 3, 2, (8, 12, 10)),
    ("none", "contracted", 2, 1, 16),
    ("linf", "t", 3, 1, 16),
    ("linf", "contracted", 3, 1, (16, 8, 12)),
]


@pytest.mark.parametrize("contraction,spacing,n_scenes,levels,res", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_equals_reference(kernel_target, contraction, spacing, n_scenes, levels, res, dtype):
    device = kernel_target.device
    _ext_or_skip(device)
    n = 600
    o, d = _rays(n, device, dtype)
    grid = _random_grid(contraction, n_scenes, levels, res, 0.4, device)
    scene = torch.randint(0, n_scenes, (n,), device=device)
    near = torch.rand(n, device=device, dtype=dtype) * 0.5
    near[:20] = 5.0  # near >= far for some rays
    far = torch.full((n,), 4.0, device=device, dtype=dtype) + torch.rand(n, device=device, dtype=dtype)
    if spacing == "contracted":
        far[::2] = 1e10
    kw = dict(scene_index=scene, near=near, far=far, step_size=0.02, max_samples=100, spacing=spacing)
    with kernel_target.forced():
        ext = ray_march(o, d, grid, **kw)
    with backend.forced("torch"):
        ref = ray_march(o, d, grid, **kw)
    _assert_sorted_valid(ext, n)
    assert ext.ray_indices.numel() > 1000
    if device.type == "cpu":
        for a, b in zip(ext, ref, strict=True):
            assert torch.equal(a, b)
    else:  # --use_fast_math contraction on the GPU: a few midpoints may land in a neighbouring cell
        ka = set(zip(ext.ray_indices.tolist(), ext.t_starts.tolist(), strict=True))
        kb = set(zip(ref.ray_indices.tolist(), ref.t_starts.tolist(), strict=True))
        assert len(ka ^ kb) <= 1e-3 * len(kb)


@pytest.mark.parametrize("spacing", ["t", "contracted"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_equals_reference_in_boxes_of_power_of_two_spans(spacing, dtype):
    """Spans of 2, 4 and 1 (the CPU kernel multiplies by their exact reciprocals), rays along cell faces."""
    _ext_or_skip(torch.device("cpu"))
    grid = OccupancyGrid([-1.0, -2.0, -0.5, 1.0, 2.0, 0.5], (16, 8, 32), 2, "none", 1)
    grid.binaries.copy_(torch.rand(grid.binaries.shape, generator=torch.Generator().manual_seed(0)) < 0.4)
    o, d = _rays(400, "cpu", dtype)
    faces = torch.arange(-8, 9, dtype=dtype) / 8  # x = k / 8: faces of the finest level's cells
    o[:17] = torch.stack([faces, torch.zeros_like(faces), torch.full_like(faces, -3.0)], -1)
    d[:17] = torch.tensor([0.0, 0.0, 1.0], dtype=dtype)
    kw = dict(near=0.0, far=8.0, step_size=1 / 64, max_samples=200, spacing=spacing)
    ext = ray_march(o, d, grid, **kw)
    with backend.forced("torch"):
        ref = ray_march(o, d, grid, **kw)
    assert ext.ray_indices.numel() > 1000 and (ext.ray_indices < 17).sum() > 50
    for a, b in zip(ext, ref, strict=True):
        assert torch.equal(a, b)


LANE_CASES = [  # float32 rays, contracted spacing: the CPU kernel marches them in SIMD lanes
    ("linf", 1, 1, 16),
    ("linf", 2, 1, (16, 8, 12)),
    ("none", 3, 3, (8, 12, 10)),  # spans 3, 2 and 2.4: the lookup divides
]


@pytest.mark.parametrize("contraction,n_scenes,levels,res", LANE_CASES)
def test_kernel_lanes_equal_reference(contraction, n_scenes, levels, res):
    """Rays of every kind side by side in the lanes: ending early, capped, never starting, stalling."""
    _ext_or_skip(torch.device("cpu"))
    torch.manual_seed(1)
    n = 1100  # eight full blocks of 128 rays and a partial one; not a multiple of the 8 lanes
    o, d = _rays(n, "cpu")
    axes = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, -1], [1, 1, 0], [1, -1, 1], [0, 1, 1]])
    d[:60] = torch.nn.functional.normalize(axes.repeat(10, 1), dim=-1)  # zero components, arg-max ties
    o[:30] = 0.0
    grid = _random_grid(contraction, n_scenes, levels, res, 0.3, "cpu")
    scene = torch.randint(0, n_scenes, (n,))
    near = torch.rand(n) * 0.5
    far = torch.full((n,), 8.0)
    far[::3] = 1e10
    near[100:130], far[100:130] = 9.0, 8.0  # near >= far: no samples
    # rays that stall: t = 1e4 inside the unit cube, where t + 1e-4 rounds back to t
    o[200:210] = torch.tensor([-1e4, 0.25, 0.0])
    d[200:210] = torch.tensor([1.0, 0.0, 0.0])
    near[200:210] = 1e4 - 0.5
    for step, cap in ((0.02, 20), (0.05, 1000), (1e-4, 3)):
        kw = dict(scene_index=scene, near=near, far=far, step_size=step, max_samples=cap)
        kw["spacing"] = "contracted"
        with backend.forced("ext"):
            ext = ray_march(o, d, grid, **kw)
        with backend.forced("torch"):
            ref = ray_march(o, d, grid, **kw)
        _assert_sorted_valid(ext, n)
        assert ext.ray_indices.numel() > 1000
        counts = torch.bincount(ext.ray_indices, minlength=n)
        assert counts[100:130].sum() == 0
        assert (counts[200:210].sum() == 0) == (step == 1e-4)
        if cap < 100:
            assert (counts == cap).sum() > 30  # rays that stop at the cap
        for a, b in zip(ext, ref, strict=True):
            assert torch.equal(a, b)


def test_exact_contraction_equals_library_contraction():
    from vq3dlib.contraction import contract_linf

    x = torch.randn(10000, 3) * torch.rand(10000, 1) * 20
    x[:10] = torch.tensor([1.0, 1.0, 0.5])  # ties
    assert torch.equal(contract_linf_exact(x), contract_linf(x))


def test_reference_properties_dense_tiling(device):
    """All-occupied world grid + spacing t: samples tile [entry, exit] exactly with steps of step_size."""
    o, d = _rays(200, device)
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], 8, contraction="none").to(device)
    grid.binaries.fill_(True)
    s = ray_march(o, d, grid, step_size=0.05, max_samples=10000)
    _assert_sorted_valid(s, 200)
    from vq3dlib.render.aabb import ray_aabb_intersect

    t0, t1, hit = ray_aabb_intersect(o, d, [-1, -1, -1, 1, 1, 1])
    counts = torch.bincount(s.ray_indices, minlength=200)
    assert torch.equal(counts > 0, hit)
    assert torch.equal(counts[hit], torch.ceil((t1[hit] - t0[hit]) / 0.05).long()) or (
        (counts[hit] - torch.ceil((t1[hit] - t0[hit]) / 0.05).long()).abs().max() <= 1
    )
    first = torch.cumsum(counts, 0) - counts
    last = torch.cumsum(counts, 0) - 1
    assert torch.allclose(s.t_starts[first[hit]], t0[hit])
    assert torch.allclose(s.t_ends[last[hit]], t1[hit])
    same = s.ray_indices[1:] == s.ray_indices[:-1]
    assert torch.equal(s.t_starts[1:][same], s.t_ends[:-1][same])  # contiguous


def test_samples_are_in_occupied_cells(device):
    grid = OccupancyGrid.from_field(lambda x, s: (x[:, 0] > 0.3).float() * (s + 1), 16, n_scenes=2).to(device)
    o, d = _rays(300, device)
    scene = torch.randint(0, 2, (300,), device=device)
    s = ray_march(o, d, grid, scene_index=scene, far=8.0, step_size=0.03)
    mid = o[s.ray_indices] + ((s.t_starts + s.t_ends) / 2)[:, None] * d[s.ray_indices]
    assert grid.query(mid, scene[s.ray_indices]).all()
    assert (mid[:, 0] >= 0).all()  # cells straddle no x = 0 plane; their world extent is large


def test_multi_scene_batch_equals_separate_calls(device):
    grid = _random_grid("linf", 3, 1, 12, 0.3, device)
    o, d = _rays(300, device)
    scene = torch.randint(0, 3, (300,), device=device)
    both = ray_march(o, d, grid, scene_index=scene, spacing="contracted", step_size=0.05)
    for k in range(3):
        single = OccupancyGrid(resolution=12).to(device)
        single.binaries.copy_(grid.binaries[k : k + 1])
        rays = (scene == k).nonzero()[:, 0]
        alone = ray_march(o[rays], d[rays], single, spacing="contracted", step_size=0.05)
        mine = torch.isin(both.ray_indices, rays)
        assert torch.equal(rays[alone.ray_indices], both.ray_indices[mine])
        assert torch.equal(alone.t_starts, both.t_starts[mine])


def test_single_scene_grid_is_shared(device):
    grid = _random_grid("linf", 1, 1, 8, 0.5, device)
    o, d = _rays(50, device)
    a = ray_march(o, d, grid, far=6.0, step_size=0.05)
    b = ray_march(o, d, grid, far=6.0, step_size=0.05, scene_index=torch.arange(50, device=device))
    assert torch.equal(a.t_starts, b.t_starts)


def test_contracted_spacing_bounds_contracted_step(device):
    d = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1).to(device)
    o = torch.zeros_like(d)  # radial rays: |x|_inf grows along the ray
    s = ray_march(o, d, None, spacing="contracted", step_size=0.02, max_samples=100000)
    counts = torch.bincount(s.ray_indices, minlength=64)
    assert (counts > 50).all() and (counts < 400).all()  # finitely many steps to infinity
    y0 = contract_linf_exact(o[s.ray_indices] + s.t_starts[:, None] * d[s.ray_indices])
    y1 = contract_linf_exact(o[s.ray_indices] + s.t_ends[:, None] * d[s.ray_indices])
    assert ((y1 - y0).abs().amax(-1) <= 0.02 * (1 + 1e-4)).all()
    dt = s.t_ends - s.t_starts
    assert (dt >= 0.02 * (1 - 1e-6)).all() and dt.max() > 1.0  # steps grow with distance


def test_max_samples_keeps_first(device):
    grid = OccupancyGrid(resolution=8).to(device)
    o, d = _rays(20, device)
    full = ray_march(o, d, grid, far=5.0, step_size=0.01)
    capped = ray_march(o, d, grid, far=5.0, step_size=0.01, max_samples=7)
    assert torch.bincount(capped.ray_indices).max() == 7
    keep = torch.zeros_like(full.ray_indices, dtype=torch.bool)
    counts = torch.bincount(full.ray_indices, minlength=20)
    start = torch.cumsum(counts, 0) - counts
    for r in range(20):
        keep[start[r] : start[r] + min(7, int(counts[r]))] = True
    assert torch.equal(capped.t_starts, full.t_starts[keep])


def test_rays_that_miss_inside_and_degenerate(kernel_target):
    device = kernel_target.device
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], 4, contraction="none").to(device)
    o = torch.tensor([[5.0, 5.0, 5.0], [0.0, 0.0, 0.0], [0.0, 0.0, -3.0], [0.0, 0.0, -3.0]], device=device)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]], device=device)
    near = torch.tensor([0.0, 0.0, 0.0, 3.0], device=device)
    far = torch.tensor([10.0, 10.0, 10.0, 3.0], device=device)  # last: near == far
    with kernel_target.forced():
        s = ray_march(o, d, grid, near=near, far=far, step_size=0.25)
    assert s.ray_indices.unique().tolist() == [1]  # miss, inside, behind, empty interval
    assert s.t_starts[0].item() == 0.0 and s.t_ends[-1].item() == 1.0
    with backend.forced("torch"):
        ref = ray_march(o, d, grid, near=near, far=far, step_size=0.25)
    for a, b in zip(s, ref, strict=True):
        assert torch.equal(a, b)
    with kernel_target.forced():  # one ray
        one = ray_march(o[1:2], d[1:2], grid, near=near[1:2], far=far[1:2], step_size=0.25)
    assert torch.equal(one.t_starts, s.t_starts) and int(one.ray_indices.max()) == 0


def test_cpu_kernel_output_does_not_depend_on_threads():
    # Blocks of rays go to whichever thread is free; the packed output must still be in ray order and
    # identical for any thread count (several blocks of 512 rays, uneven per-ray costs).
    _ext_or_skip(torch.device("cpu"))
    o, d = _rays(5000, "cpu")
    o[::7] *= 0.1  # rays starting near the centre march more steps
    grid = _random_grid("linf", 2, 1, 16, 0.5, "cpu")
    scene = torch.arange(5000) % 2
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in sorted({1, max(2, threads)}):
            torch.set_num_threads(n)
            with backend.forced("ext"):
                outs.append(
                    ray_march(o, d, grid, scene_index=scene, far=1e10, step_size=0.02, spacing="contracted")
                )
    finally:
        torch.set_num_threads(threads)
    _assert_sorted_valid(outs[0], 5000)
    assert outs[0].ray_indices.numel() > 10000
    for a, b in zip(outs[0], outs[-1], strict=True):
        assert torch.equal(a, b)


def test_zero_samples_and_empty_batch(kernel_target):
    device = kernel_target.device
    grid = OccupancyGrid(resolution=4).to(device)
    grid.binaries.fill_(False)
    o, d = _rays(10, device)
    for spacing in ("t", "contracted"):
        for backend_name in ("torch", "kernel"):
            with kernel_target.forced(backend_name):
                s = ray_march(o, d, grid, far=5.0, spacing=spacing)
                assert s.ray_indices.shape == (0,) and s.t_starts.dtype == torch.float32
                e = ray_march(o[:0], d[:0], grid, far=5.0, spacing=spacing)
                assert e.ray_indices.shape == e.t_starts.shape == (0,)


def test_jitter_shifts_by_less_than_a_step(device):
    o, d = _rays(200, device, spread=1.0)
    box = [-1, -1, -1, 1, 1, 1]
    g = torch.Generator(device=device).manual_seed(1)
    plain = ray_march(o, d, None, aabb=box, step_size=0.1)
    jit = ray_march(o, d, None, aabb=box, step_size=0.1, jitter=True, generator=g)
    assert set(jit.ray_indices.tolist()) <= set(plain.ray_indices.tolist())  # short chords may be skipped
    rays_p, counts_p = torch.unique_consecutive(plain.ray_indices, return_counts=True)
    rays_j, counts_j = torch.unique_consecutive(jit.ray_indices, return_counts=True)
    start_p = plain.t_starts[torch.cumsum(counts_p, 0) - counts_p][torch.isin(rays_p, rays_j)]
    start_j = jit.t_starts[torch.cumsum(counts_j, 0) - counts_j]
    shift = start_j - start_p
    assert (shift >= 0).all() and (shift < 0.1).all() and shift.std() > 0.01


def test_bad_inputs():
    grid = OccupancyGrid(resolution=4, n_scenes=2)
    o, d = _rays(5, "cpu")
    with pytest.raises(ValueError, match="scene_index is required"):
        ray_march(o, d, grid, far=3.0)
    with pytest.raises(ValueError, match="scene_index"):
        ray_march(o, d, grid, far=3.0, scene_index=torch.tensor([0, 1, 2, 0, 0]))
    with pytest.raises(TypeError, match="scene_index"):
        ray_march(o, d, grid, far=3.0, scene_index=torch.zeros(5))
    with pytest.raises(ValueError, match="far must be finite"):
        ray_march(o, d, OccupancyGrid(resolution=4), far=math.inf)
    with pytest.raises(ValueError, match="step_size"):
        ray_march(o, d, None, step_size=0.0)
    with pytest.raises(ValueError, match="spacing"):
        ray_march(o, d, None, spacing="log")
    with pytest.raises(ValueError, match="origins"):
        ray_march(torch.full((5, 3), math.nan), d, None)
    with pytest.raises(ValueError, match="far"):
        ray_march(o, d, None, far=torch.ones(4))
    with pytest.raises(TypeError, match="grid"):
        ray_march(o, d, "grid")
    with pytest.raises(TypeError, match="binaries"):
        march_packed(o, d, torch.zeros(5), torch.ones(5), torch.ones(1, 1, 2, 2, 2), torch.zeros(1, 6))


def test_reference_handles_large_chunks():
    # more rays than one reference chunk: chunk offsets must be right
    o, d = _rays(5000, "cpu", spread=0.1)
    binaries = torch.ones(1, 1, 2, 2, 2, dtype=torch.bool)
    boxes = torch.tensor([[-1.0, -1, -1, 1, 1, 1]])
    ri, ts, _ = march_packed_reference(
        o, d, torch.zeros(5000), torch.full((5000,), 9.0), binaries, boxes, step_size=0.5
    )
    assert torch.equal(ri.unique(), torch.arange(5000))


@pytest.mark.cuda
def test_matches_nerfacc_occgrid_on_cuda():
    from nerfacc import OccGridEstimator

    dev = torch.device("cuda")
    est = OccGridEstimator(torch.tensor([-1.0, -1, -1, 1, 1, 1]), resolution=32).to(dev)
    ours = OccupancyGrid([-1, -1, -1, 1, 1, 1], 32, contraction="none").to(dev)
    fn = lambda x: (x.norm(dim=-1) < 0.6).float()  # noqa: E731
    est.train()
    est.update_every_n_steps(0, lambda x: fn(x), occ_thre=0.5)
    ours.binaries.copy_(est.binaries[None])
    o, d = _rays(2000, dev)
    ri_a, t0_a, t1_a = est.sampling(o, d, render_step_size=0.01)
    s = ray_march(o, d, ours, step_size=0.01)
    # same rays get samples and the sampled length per ray agrees up to a step per cell crossing
    len_a = torch.zeros(2000, device=dev).index_add_(0, ri_a.long(), t1_a - t0_a)
    len_b = torch.zeros(2000, device=dev).index_add_(0, s.ray_indices, s.t_ends - s.t_starts)
    assert torch.equal(len_a > 0, len_b > 0) or ((len_a > 0) ^ (len_b > 0)).float().mean() < 0.01
    assert (len_a - len_b).abs().max() < 0.1


def test_value_checks_switched_off_skip_the_synchronising_checks():
    from vq3dlib import _validation

    o, d = torch.tensor([[0.0, 0, -2]]), torch.tensor([[0.0, 0, 1]])
    binaries, box = torch.ones(2, 1, 2, 2, 2, dtype=torch.bool), torch.tensor([[-1.0, -1, -1, 1, 1, 1]])
    far = torch.full((1,), math.nan)
    with pytest.raises(ValueError, match="NaN"):
        march_packed(o, d, torch.zeros(1), far, binaries, box, torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="scene_index"):
        march_packed(o, d, torch.zeros(1), torch.ones(1), binaries, box, torch.full((1,), 5))
    _validation.set_finite_checks(False)
    try:  # no value of near/far/scene_index is read: a NaN far marches nothing
        ri, _, _ = march_packed(o, d, torch.zeros(1), far, binaries, box, torch.zeros(1, dtype=torch.long))
        assert ri.numel() == 0
    finally:
        _validation.set_finite_checks(True)


def test_reference_chunks_bound_the_candidates():
    from vq3dlib.ops import march as ops_march

    t0, t1 = torch.zeros(10), torch.full((10,), 9.5)
    assert ops_march._chunk_rays(t0, t1, 1.0, 0) == 10  # 11 steps per ray: one chunk
    o = torch.zeros(50, 3)
    d = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    b, box = torch.ones(1, 1, 4, 4, 4, dtype=torch.bool), torch.tensor([[-1.0, -1, -1, 1, 1, 1]])
    whole = march_packed_reference(o, d, torch.zeros(50), torch.full((50,), 3.0), b, box, step_size=0.1)
    small = ops_march._MAX_CANDIDATES
    try:
        ops_march._MAX_CANDIDATES = 100  # 3 rays per chunk: the same samples
        chunked = march_packed_reference(o, d, torch.zeros(50), torch.full((50,), 3.0), b, box, step_size=0.1)
    finally:
        ops_march._MAX_CANDIDATES = small
    for a, c in zip(whole, chunked, strict=True):
        assert torch.equal(a, c)


def _few_occupied_grid() -> OccupancyGrid:
    grid = OccupancyGrid(resolution=16)
    grid.binaries[:] = False
    grid.binaries[0, 0, 8, 8, 8] = True
    grid.binaries[0, 0, 12, 3, 4] = True
    return grid


def test_empty_contracted_grid_with_default_far_returns_no_samples_at_once():
    grid = OccupancyGrid(resolution=16)
    grid.binaries[:] = False
    o = torch.zeros(8, 3)
    d = torch.nn.functional.normalize(torch.randn(8, 3), dim=-1)
    start = time.perf_counter()
    s = ray_march(o, d, grid)  # spacing="t", far=1e10: 1e12 candidate steps per ray unless bounded
    assert time.perf_counter() - start < 5.0
    assert s.t_starts.numel() == 0 and s.ray_indices.numel() == 0


@pytest.mark.parametrize("backend_name", ["torch", "ext"])
def test_huge_far_gives_the_samples_of_a_far_just_past_the_occupied_cells(backend_name):
    grid = _few_occupied_grid()
    o = torch.randn(64, 3) * 0.3
    d = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    with backend.forced(backend_name):
        near_far = ray_march(o, d, grid, far=100.0)
        huge_far = ray_march(o, d, grid)
    assert near_far.t_starts.numel() > 0
    for a, b in zip(near_far, huge_far):
        assert torch.equal(a, b)


def test_unbounded_work_is_refused_with_a_message():
    grid = OccupancyGrid(resolution=16)  # fully occupied up to the contracted border
    o, d = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="would take 1e\\+12 steps"):
        ray_march(o, d, grid)
    tiny = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=4, contraction="none")
    with pytest.raises(ValueError, match="step_size=1e-09"):
        ray_march(torch.tensor([[0.0, 0, -3]]), torch.tensor([[0.0, 0, 1]]), tiny, step_size=1e-9)
    with pytest.raises(ValueError, match="directions must be non-zero"):
        ray_march(torch.zeros(2, 3), torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]), grid, spacing="contracted")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_bad_step_size_is_refused(value):
    grid = _few_occupied_grid()
    with pytest.raises(ValueError, match="step_size must be > 0 \\(a finite number\\)"):
        ray_march(torch.zeros(1, 3), torch.tensor([[1.0, 0, 0]]), grid, step_size=value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_rays_march_in_float32(dtype):
    grid = _few_occupied_grid()
    o = (torch.randn(16, 3) * 0.3).to(dtype)
    d = torch.nn.functional.normalize(torch.randn(16, 3), dim=-1).to(dtype)
    half = ray_march(o, d, grid, step_size=0.05)
    full = ray_march(o.float(), d.float(), grid, step_size=0.05)
    assert half.t_starts.dtype == torch.float32
    for a, b in zip(half, full):
        assert torch.equal(a, b)


def test_meta_rays_are_refused_with_a_message():
    with pytest.raises(ValueError, match="meta tensor"):
        ray_march(torch.zeros(2, 3, device="meta"), torch.ones(2, 3, device="meta"), _few_occupied_grid())


def test_occupied_radius_is_the_outer_corner_of_the_farthest_occupied_cell():
    from vq3dlib.ops.march import occupied_radius

    grid = _few_occupied_grid()  # cells 8 and 12 of 16 on [-2, 2]: corner 13 * 0.25 - 2 = 1.25
    assert float(occupied_radius(grid.binaries, grid.boxes)) == pytest.approx(1.25)
    grid.binaries[:] = False
    assert float(occupied_radius(grid.binaries, grid.boxes)) == -1.0
