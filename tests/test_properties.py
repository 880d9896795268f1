"""Property-based tests (hypothesis) over the public ops and modules.

Each property draws shapes, dtypes (float16/bfloat16/float32/float64), empty inputs, NaN/Inf, huge and
tiny magnitudes, out-of-range indices and meta tensors, and asserts either a ``ValueError``/``TypeError``
naming the argument or a finite result that matches the torch reference / the op's invariants.
Example counts are small so the file stays within a few seconds of the default suite.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vq3dlib import (
    FSQ,
    LFQ,
    OccupancyGrid,
    VectorQuantizer,
    canonical_cameras,
    contract_l2,
    contract_linf,
    psnr,
    ray_march,
    triplane_sample,
)
from vq3dlib.backend import forced
from vq3dlib.ops.triplane import triplane_sample_reference
from vq3dlib.packed import exclusive_sum, pack_info, pad_segments
from vq3dlib.render.volrend import (
    accumulate_along_rays,
    render_weight_from_alpha,
    render_weight_from_density,
)

FAST = settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = [torch.float32, torch.float64]
ALL_FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
BAD = [float("nan"), float("inf"), float("-inf")]


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _raises_naming(exc: pytest.ExceptionInfo, name: str) -> None:
    assert isinstance(exc.value, (ValueError, TypeError)) and name in str(exc.value), str(exc.value)


# ------------------------------------------------------------------------------ volume rendering
@st.composite
def packed_rays(draw):
    counts = draw(st.lists(st.integers(0, 6), min_size=0, max_size=6))
    seed = draw(st.integers(0, 2**16))
    log_scale = draw(st.floats(-30, 30))
    dtype = draw(st.sampled_from(FLOATS))
    return counts, seed, log_scale, dtype


@FAST
@given(packed_rays())
def test_weights_from_density_lie_in_0_1_sum_to_at_most_1_and_match_the_reference(case):
    counts, seed, log_scale, dtype = case
    g = _seeded(seed)
    n = sum(counts)
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
    starts = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    ends = starts + torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    sigmas = (torch.rand(n, generator=g, dtype=torch.float64) * 10.0**log_scale).to(dtype)
    weights, trans, alphas = render_weight_from_density(starts, ends, sigmas, ray_indices=ray_indices,
                                                        n_rays=len(counts))  # fmt: skip
    for t in (weights, trans, alphas):
        assert t.shape == (n,) and t.dtype == dtype and bool(torch.isfinite(t).all())
        assert bool(((t >= 0) & (t <= 1)).all())
    per_ray = accumulate_along_rays(weights, None, ray_indices, len(counts)).squeeze(-1)
    assert bool((per_ray <= 1 + 1e-5).all())
    with forced("torch"):
        ref = render_weight_from_density(starts, ends, sigmas, ray_indices=ray_indices, n_rays=len(counts))
    torch.testing.assert_close(weights, ref[0], atol=1e-5, rtol=1e-4)


@FAST
@given(packed_rays(), st.sampled_from(["t_starts", "t_ends", "sigmas"]), st.sampled_from(BAD))
def test_weights_from_density_refuse_nan_and_inf_naming_the_input(case, name, bad):
    counts, seed, _, dtype = case
    counts = counts + [1]
    n = sum(counts)
    args = {"t_starts": torch.zeros(n, dtype=dtype), "t_ends": torch.ones(n, dtype=dtype),
            "sigmas": torch.ones(n, dtype=dtype)}  # fmt: skip
    args[name][seed % n] = bad
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    with pytest.raises((ValueError, TypeError)) as exc:
        render_weight_from_density(**args, ray_indices=ray_indices, n_rays=len(counts))
    _raises_naming(exc, name)


@FAST
@given(st.lists(st.floats(-2.0, 3.0, allow_nan=False), min_size=1, max_size=8))
def test_weights_from_alpha_accept_alpha_in_0_1_only(alphas):
    a = torch.tensor(alphas)
    ray_indices = torch.zeros(len(alphas), dtype=torch.long)
    if bool(((a >= 0) & (a <= 1)).all()):
        w, trans = render_weight_from_alpha(a, ray_indices=ray_indices, n_rays=1)
        assert bool(((w >= 0) & (w <= 1)).all()) and float(w.sum()) <= 1 + 1e-6
        torch.testing.assert_close(w.sum(), 1 - torch.prod(1 - a), atol=1e-5, rtol=1e-5)
    else:
        with pytest.raises(ValueError) as exc:
            render_weight_from_alpha(a, ray_indices=ray_indices, n_rays=1)
        _raises_naming(exc, "alphas")


@FAST
@given(st.lists(st.integers(-3, 5), min_size=1, max_size=6), st.integers(0, 3))
def test_packed_info_with_negative_or_overflowing_runs_is_refused(counts, shift):
    starts = torch.cumsum(torch.tensor([0] + counts[:-1]).clamp_min(0), 0) + shift
    info = torch.stack([starts, torch.tensor(counts)], dim=-1)
    n = int(torch.tensor(counts).clamp_min(0).sum())
    values = torch.rand(n, dtype=torch.float64)
    valid = min(counts) >= 0 and int((starts + torch.tensor(counts)).max()) <= n
    if valid:
        out = exclusive_sum(values, info)
        for (s, c) in info.tolist():  # the reference: a cumulative sum per ray
            if c:
                expect = torch.cat([values.new_zeros(1), torch.cumsum(values[s : s + c], 0)[:-1]])
                torch.testing.assert_close(out[s : s + c], expect)
        assert pad_segments(values, info).shape[0] == len(counts)
    else:
        for fn in (lambda: exclusive_sum(values, info), lambda: pad_segments(values, info)):
            with pytest.raises(ValueError) as exc:
                fn()
            _raises_naming(exc, "packed_info")


@FAST
@given(st.lists(st.integers(-2, 6), min_size=0, max_size=8))
def test_pack_info_accepts_sorted_non_negative_indices_only(values):
    idx = torch.tensor(values, dtype=torch.long)
    if values == sorted(values) and (not values or min(values) >= 0):
        info = pack_info(idx, n_rays=max(values, default=-1) + 1)
        assert int(info[:, 1].sum()) == len(values)
        for ray, (s, c) in enumerate(info.tolist()):
            assert values[s : s + c] == [ray] * c
    else:
        with pytest.raises(ValueError) as exc:
            pack_info(idx)
        _raises_naming(exc, "ray_indices")


# ------------------------------------------------------------------------------ contraction
@FAST
@given(
    st.integers(0, 2**16),
    st.floats(-30, 38),
    st.sampled_from(FLOATS),
    st.integers(0, 5),
)
def test_contractions_stay_in_their_ball_for_any_magnitude(seed, log_scale, dtype, n):
    x = torch.randn(n, 3, generator=_seeded(seed), dtype=torch.float64) * 10.0**log_scale
    x = x.to(dtype)
    if not bool(torch.isfinite(x).all()):
        return
    y2, yinf = contract_l2(x), contract_linf(x)
    assert y2.shape == x.shape and bool(torch.isfinite(y2).all()) and bool(torch.isfinite(yinf).all())
    assert bool((y2.double().norm(dim=-1) <= 2 + 1e-6).all())
    assert bool((yinf.double().abs().amax(dim=-1) <= 2 + 1e-6).all())
    inside = x.double().norm(dim=-1) <= 1
    torch.testing.assert_close(y2[inside], x[inside])
    far = x.double().norm(dim=-1) > 1e-3
    if bool(far.any()):  # the direction is kept
        cos = torch.nn.functional.cosine_similarity(y2[far].double(), x[far].double(), dim=-1)
        assert bool((cos > 1 - 1e-5).all())


@FAST
@given(st.sampled_from(ALL_FLOATS), st.sampled_from(BAD), st.integers(1, 4))
def test_contractions_refuse_nan_and_inf(dtype, bad, n):
    x = torch.zeros(n, 3, dtype=dtype)
    x[-1, 1] = bad
    for fn in (contract_l2, contract_linf):
        with pytest.raises(ValueError) as exc:
            fn(x)
        _raises_naming(exc, "x")


def test_contractions_on_meta_and_half_tensors():
    assert contract_l2(torch.zeros(5, 3, device="meta")).shape == (5, 3)
    for dtype in (torch.float16, torch.bfloat16):
        y = contract_l2(torch.tensor([[6e4, 0.0, 0.0], [0.5, 0.0, 0.0]]).to(dtype))
        assert y.dtype == dtype and float(y[0].float().norm()) == pytest.approx(2.0, abs=1e-2)
        assert float(y[1, 0]) == 0.5


# ------------------------------------------------------------------------------ triplane
@FAST
@given(
    st.integers(0, 2**16),
    st.integers(1, 3),
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(1, 5),
    st.integers(0, 12),
    st.sampled_from(["none", "l2", "linf"]),
    st.sampled_from(FLOATS),
    st.floats(0.1, 10.0),
)
def test_triplane_sample_matches_the_torch_reference(seed, scenes, c, h, w, n, contraction, dtype, bound):
    g = _seeded(seed)
    planes = torch.randn(scenes, 3, c, h, w, generator=g, dtype=dtype)
    points = (torch.rand(n, 3, generator=g, dtype=dtype) * 4 - 2) * bound
    scene_index = torch.randint(0, scenes, (n,), generator=g) if scenes > 1 else None
    out = triplane_sample(planes, points, scene_index, contraction=contraction, bound=bound)
    ref = triplane_sample_reference(planes, points, scene_index, contraction=contraction, bound=bound)
    assert out.shape == (n, c) and out.dtype == dtype and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@FAST
@given(
    st.integers(-3, 5),
    st.sampled_from(BAD + [0.0, -1.0]),
    st.sampled_from(["scene_index", "bound", "points"]),
)
def test_triplane_sample_refuses_bad_indices_bounds_and_points(index, bad, what):
    planes = torch.randn(2, 3, 4, 5, 5)
    points = torch.zeros(3, 3)
    kwargs = {}
    scene_index = torch.tensor([0, 1, 0])
    if what == "scene_index":
        if 0 <= index < 2:
            return
        scene_index = torch.tensor([0, index, 1])
    elif what == "bound":
        kwargs["bound"] = bad
    else:
        if bad in (0.0, -1.0):
            return
        points[1, 2] = bad
    with pytest.raises((ValueError, TypeError)) as exc:
        triplane_sample(planes, points, scene_index, **kwargs)
    _raises_naming(exc, what)


def test_triplane_sample_on_meta_and_empty_points():
    planes = torch.randn(1, 3, 4, 5, 5)
    assert triplane_sample(planes.to("meta"), torch.zeros(7, 3, device="meta")).shape == (7, 4)
    assert triplane_sample(planes, torch.zeros(0, 3)).shape == (0, 4)


# ------------------------------------------------------------------------------ quantizers
@FAST
@given(st.integers(0, 2**16), st.floats(-20, 19), st.integers(0, 6), st.sampled_from([None, 4]))
def test_vector_quantizer_indices_in_range_decode_and_scale_invariance(seed, log_scale, n, code_dim):
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 16, code_dim=code_dim).eval()
    z = torch.randn(n, 8, generator=_seeded(seed))
    z_q, idx, aux = vq(z)
    assert idx.shape == (n,) and bool(((idx >= 0) & (idx < 16)).all())
    torch.testing.assert_close(vq.indices_to_codes(idx), z_q)
    if code_dim is None:  # l2-normalised codes: the scale of the input does not matter
        assert torch.equal(vq(z * 10.0**log_scale)[1], idx)
    assert bool(torch.isfinite(aux.loss))


@FAST
@given(st.sampled_from([VectorQuantizer, FSQ, LFQ]), st.sampled_from(BAD), st.integers(1, 4))
def test_quantizers_refuse_nan_and_inf_inputs(kind, bad, n):
    q = {VectorQuantizer: lambda: VectorQuantizer(8, 16), FSQ: lambda: FSQ([5, 5, 5, 5, 5, 5, 5, 5]),
         LFQ: lambda: LFQ(8)}[kind]()  # fmt: skip
    z = torch.zeros(n, 8)
    z[-1, 3] = bad
    with pytest.raises(ValueError) as exc:
        q(z)
    _raises_naming(exc, "z")


@FAST
@given(
    st.lists(st.integers(3, 1000), min_size=1, max_size=4),
    st.integers(0, 2**16),
    st.floats(-10, 30),
    st.sampled_from(ALL_FLOATS),
)
def test_fsq_codes_stay_on_the_grid_and_decode_to_themselves(levels, seed, log_scale, dtype):
    q = FSQ(levels)
    z = torch.randn(5, len(levels), generator=_seeded(seed), dtype=torch.float64) * 10.0**log_scale
    z = z.to(dtype)
    if not bool(torch.isfinite(z).all()):
        return
    z_q, idx, _ = q(z)
    assert bool(((idx >= 0) & (idx < math.prod(levels))).all())
    assert bool((z_q.float().abs() <= 1 + 1e-3).all())
    torch.testing.assert_close(q.indices_to_codes(idx).float(), z_q.float(), atol=1e-2, rtol=0)


@FAST
@given(st.integers(1, 20), st.integers(0, 2**16), st.sampled_from(FLOATS))
def test_lfq_indices_in_range_and_decode_consistent(dim, seed, dtype):
    q = LFQ(dim).eval()
    z = torch.randn(4, dim, generator=_seeded(seed), dtype=dtype)
    z_q, idx, _ = q(z)
    assert bool(((idx >= 0) & (idx < 2**dim)).all())
    torch.testing.assert_close(q.indices_to_codes(idx).to(z_q.dtype), z_q)


@FAST
@given(st.sampled_from(["vq", "fsq", "lfq"]), st.integers(-3, 40))
def test_quantizer_decode_refuses_out_of_range_indices(kind, index):
    q, size = {"vq": (VectorQuantizer(8, 16), 16), "fsq": (FSQ([3, 3]), 9), "lfq": (LFQ(4), 16)}[kind]
    indices = torch.tensor([0, index])
    if 0 <= index < size:
        assert q.indices_to_codes(indices).shape[0] == 2
    else:
        with pytest.raises(ValueError) as exc:
            q.indices_to_codes(indices)
        _raises_naming(exc, "indices")


@pytest.mark.parametrize(
    "make", [lambda: VectorQuantizer(8, 16), lambda: VectorQuantizer(8, 16, code_dim=4), lambda: FSQ([5] * 8),
             lambda: LFQ(8)],  # fmt: skip
)
@pytest.mark.parametrize("train", [False, True])
def test_quantizers_on_meta_give_shapes(make, train):
    q = make().train(train).to("meta")
    z_q, idx, aux = q(torch.randn(2, 3, 8, device="meta"))
    assert z_q.shape == (2, 3, 8) and idx.shape == (2, 3) and z_q.device.type == "meta"
    assert aux.loss.shape == ()
    cpu = make()
    with pytest.raises(ValueError, match=r"z is on meta.*quantizer.to\('meta'\)"):
        cpu(torch.randn(3, 8, device="meta"))


# ------------------------------------------------------------------------------ marching, cameras, metrics
@FAST
@given(
    st.integers(0, 2**16),
    st.integers(0, 6),
    st.sampled_from(ALL_FLOATS),
    st.floats(0.02, 0.5),
    st.integers(1, 64),
)
def test_ray_march_samples_are_ordered_bounded_and_inside_the_box(seed, n, dtype, step, max_samples):
    g = _seeded(seed)
    origins = (torch.rand(n, 3, generator=g) * 4 - 2).to(dtype)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1).to(dtype)
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8, contraction="none")
    s = ray_march(origins, dirs, grid, step_size=step, max_samples=max_samples)
    assert s.t_starts.dtype in (torch.float32, torch.float64)
    assert bool((s.t_ends > s.t_starts).all()) and bool(torch.isfinite(s.t_ends).all())
    assert bool((s.ray_indices[1:] >= s.ray_indices[:-1]).all())
    counts = torch.bincount(s.ray_indices, minlength=n)
    assert bool((counts <= max_samples).all())
    mid = origins.to(s.t_starts.dtype)[s.ray_indices] + dirs.to(s.t_starts.dtype)[s.ray_indices] * (
        (s.t_starts + s.t_ends) / 2
    )[:, None]
    assert bool((mid.abs() <= 1 + step).all())


@FAST
@given(st.sampled_from(["step_size", "near", "far"]), st.sampled_from(BAD + [-1.0]))
def test_ray_march_refuses_bad_scalars_naming_them(name, bad):
    if name == "far" and bad == float("inf"):
        return  # an infinite far is allowed: the box bounds the march
    if name == "near" and bad == -1.0:
        return  # a negative near is allowed
    kwargs = {name: bad}
    origins, dirs = torch.zeros(1, 3), torch.tensor([[1.0, 0, 0]])
    if name == "far" and bad < 0:  # far < near: an empty ray
        assert ray_march(origins, dirs, None, aabb=[-1, -1, -1, 1, 1, 1], **kwargs).t_starts.numel() == 0
        return
    with pytest.raises(ValueError) as exc:
        ray_march(torch.zeros(1, 3), torch.tensor([[1.0, 0, 0]]), None, aabb=[-1, -1, -1, 1, 1, 1], **kwargs)
    _raises_naming(exc, name)


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(1.0, 179.0))
def test_canonical_cameras_name_a_bad_distance(distance, fov):
    as32 = float(torch.tensor(distance, dtype=torch.float32)) if not math.isnan(distance) else distance
    if math.isfinite(as32) and as32 > 0:  # any distance float32 holds (no overflow in a normalisation)
        cams = canonical_cameras(2, distance, fov, (4, 4))
        rays = cams.generate_rays()
        norms = rays.directions.norm(dim=-1)
        assert bool(torch.isfinite(norms).all()) and bool((norms > 0).all())
    else:
        with pytest.raises(ValueError) as exc:
            canonical_cameras(1, distance, fov, (4, 4))
        _raises_naming(exc, "distance")


@FAST
@given(st.integers(0, 2**16), st.sampled_from(["pred", "target"]), st.sampled_from(BAD + [None]))
def test_psnr_is_finite_or_names_its_bad_input(seed, name, bad):
    g = _seeded(seed)
    args = {"pred": torch.rand(2, 3, 4, 4, generator=g), "target": torch.rand(2, 3, 4, 4, generator=g)}
    if bad is None:
        p = psnr(**args)
        mse = ((args["pred"] - args["target"]) ** 2).flatten(1).mean(1)
        torch.testing.assert_close(p, -10 * torch.log10(mse))
    else:
        args[name][1, 0, 2, 2] = bad
        with pytest.raises(ValueError) as exc:
            psnr(**args)
        _raises_naming(exc, name)


# ------------------------------------------------------------------------------ cases the properties found
def test_fsq_half_precision_codes_at_the_top_of_a_wide_level_index_the_grid():
    q = FSQ([1000, 5])
    for dtype in (torch.bfloat16, torch.float16):
        z_q, idx, _ = q(torch.tensor([[1e4, 0.0], [-1e4, 0.0], [0.3, 0.0]]).to(dtype))
        assert int(idx.max()) < 1000 * 5
        grid = q.indices_to_codes(idx)
        assert grid[0, 0] == pytest.approx(499 / 500) and grid[1, 0] == -1.0
        torch.testing.assert_close(grid.to(dtype), z_q)


def test_canonical_cameras_far_away_or_very_close_keep_their_rotation():
    for distance in (3e38, 1e-40, 2.5):
        c2w = canonical_cameras(1, distance, 50.0, (4, 4)).cam_to_world[0]
        assert torch.equal(c2w[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])))
        assert float(c2w[2, 3]) == pytest.approx(distance, rel=1e-6)
    with pytest.raises(ValueError, match="distance 1e\\+300 is not a positive finite float32"):
        canonical_cameras(1, 1e300, 50.0, (4, 4))
    assert canonical_cameras(1, 1e300, 50.0, (4, 4), dtype=torch.float64).cam_to_world[0, 2, 3] == 1e300


def test_packed_info_and_accumulate_messages():
    with pytest.raises(ValueError, match=r"packed_info must hold counts >= 0 \(column 1\), got -2 \(ray 1\)"):
        exclusive_sum(torch.ones(3), torch.tensor([[0, 1], [1, -2]]))
    with pytest.raises(ValueError, match=r"packed_info addresses samples outside \[0, 3\) \(runs end at 5\)"):
        render_weight_from_alpha(torch.full((3,), 0.5), packed_info=torch.tensor([[2, 3]]))
    with pytest.raises(TypeError, match="packed_info must be an integer tensor"):
        pad_segments(torch.ones(3), torch.tensor([[0.0, 3.0]]))
    with pytest.raises(TypeError, match="ray_indices must be an integer tensor"):
        pack_info(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="values contains NaN"):
        accumulate_along_rays(torch.ones(2), torch.tensor([[float("nan")], [1.0]]), torch.tensor([0, 0]), 1)


def test_volume_rendering_on_meta_tensors_gives_shapes():
    m = torch.ones(5, device="meta")
    info = torch.zeros(2, 2, dtype=torch.long, device="meta")
    w, trans, alphas = render_weight_from_density(m, m, m, packed_info=info)
    assert w.shape == trans.shape == alphas.shape == (5,) and w.device.type == "meta"
    w, trans = render_weight_from_alpha(m, packed_info=info)
    assert w.shape == (5,) and trans.device.type == "meta"
