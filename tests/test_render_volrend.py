"""Volume rendering: kernels vs references, nerfacc equality, edge cases, validation."""

from __future__ import annotations

import math

import pytest
import torch

from vq3dlib import backend
from vq3dlib.ops import extension_supports
from vq3dlib.ops import volrend as ops
from vq3dlib.packed import pack_info
from vq3dlib.render import volrend as vr

nerfacc = pytest.importorskip("nerfacc")


def _packed(counts: list[int], device, dtype=torch.float32, seed: int = 0):
    """Random packed samples for rays with the given sample counts (zeros allowed)."""
    g = torch.Generator().manual_seed(seed)
    counts_t = torch.tensor(counts, dtype=torch.long)
    n = int(counts_t.sum())
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), counts_t)
    deltas = torch.rand(n, generator=g, dtype=torch.float64) * 0.2
    t_starts = torch.rand(n, generator=g, dtype=torch.float64)
    sigmas = torch.rand(n, generator=g, dtype=torch.float64) * 6
    to = dict(device=device, dtype=dtype)
    return (t_starts.to(**to), (t_starts + deltas).to(**to), sigmas.to(**to), ray_indices.to(device))


def _dense(n_rays: int, n_samples: int, device, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    edges = torch.cumsum(torch.rand(n_rays, n_samples + 1, generator=g, dtype=torch.float64) * 0.1, dim=-1)
    sigmas = torch.rand(n_rays, n_samples, generator=g, dtype=torch.float64) * 6
    to = dict(device=device, dtype=dtype)
    return edges[:, :-1].to(**to), edges[:, 1:].to(**to), sigmas.to(**to)


COUNTS = [3, 0, 5, 1, 0, 0, 7, 2, 0]  # empty rays at the start of the middle and at the end


def _need_ext(op: str, device) -> None:
    if not extension_supports(op, device):
        pytest.skip(f"extension cannot run {op} on {device}")


def _run(fn, mode: str, *args, **kwargs):
    with backend.forced(mode):
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- kernels vs references


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["packed", "dense"])
def test_density_kernel_matches_reference(kernel_target, dtype, layout):
    device = kernel_target.device
    _need_ext("render_weight_from_density", device)
    if layout == "packed":
        ts, te, sg, ri = _packed(COUNTS, device, dtype)
        kw = dict(ray_indices=ri, n_rays=len(COUNTS))
    else:
        ts, te, sg = _dense(6, 11, device, dtype)
        kw = {}
    results = {}
    for mode in ("torch", "ext"):
        leaves = [x.clone().requires_grad_(True) for x in (ts, te, sg)]
        with kernel_target.forced("kernel" if mode == "ext" else mode):
            outs = vr.render_weight_from_density(*leaves, **kw)
        g = torch.Generator().manual_seed(1)
        cot = [torch.randn(o.shape, generator=g, dtype=dtype).to(device) for o in outs]
        grads = torch.autograd.grad(outs, leaves, cot)
        results[mode] = (outs, grads)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    ref, ext = results["torch"][0] + results["torch"][1], results["ext"][0] + results["ext"][1]
    for a, b in zip(ref, ext, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("layout", ["packed", "dense"])
def test_alpha_kernel_matches_reference_including_opaque_samples(kernel_target, layout):
    device = kernel_target.device
    _need_ext("render_weight_from_alpha", device)
    dtype = torch.float64
    if layout == "packed":
        _, _, sg, ri = _packed(COUNTS, device, dtype)
        alphas = (sg / 6).clone()
        alphas[[1, 5]] = 1.0  # fully opaque samples: gradients must stay exact (no division by 1 - a)
        kw = dict(ray_indices=ri, n_rays=len(COUNTS))
    else:
        alphas = _dense(4, 9, device, dtype)[2] / 6
        alphas[1, 3] = 1.0
        kw = {}
    results = {}
    for mode in ("torch", "ext"):
        leaf = alphas.clone().requires_grad_(True)
        with kernel_target.forced("kernel" if mode == "ext" else mode):
            outs = vr.render_weight_from_alpha(leaf, **kw)
        cot = [torch.ones_like(o) * (i + 1) for i, o in enumerate(outs)]
        results[mode] = outs + torch.autograd.grad(outs, [leaf], cot)
    for a, b in zip(results["torch"], results["ext"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(results["ext"][-1]).all()


@pytest.mark.parametrize("mode", ["torch", "kernel"])
@pytest.mark.parametrize("layout", ["packed", "dense"])
def test_gradcheck_density(kernel_target, mode, layout):
    device = kernel_target.device
    if mode == "kernel":
        _need_ext("render_weight_from_density", device)
    if layout == "packed":
        ts, te, sg, ri = _packed([2, 0, 3, 1], device, torch.float64)
        kw = dict(ray_indices=ri, n_rays=4)
    else:
        ts, te, sg = _dense(2, 4, device, torch.float64)
        kw = {}
    leaves = [x.clone().requires_grad_(True) for x in (ts, te, sg)]

    def fn(a, b, c):
        return vr.render_weight_from_density(a, b, c, **kw)

    with kernel_target.forced(mode):
        assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("mode", ["torch", "kernel"])
@pytest.mark.parametrize("layout", ["packed", "dense"])
def test_gradcheck_alpha(kernel_target, mode, layout):
    device = kernel_target.device
    if mode == "kernel":
        _need_ext("render_weight_from_alpha", device)
    if layout == "packed":
        _, _, sg, ri = _packed([2, 0, 3, 1], device, torch.float64)
        alphas, kw = sg / 7, dict(ray_indices=ri, n_rays=4)
    else:
        alphas, kw = _dense(2, 4, device, torch.float64)[2] / 7, {}
    leaf = alphas.clone().requires_grad_(True)
    with kernel_target.forced(mode):
        assert torch.autograd.gradcheck(lambda a: vr.render_weight_from_alpha(a, **kw), [leaf])


def test_kernel_fake_and_autograd_registrations():
    _need_ext("render_weight_from_density", "cpu")
    from vq3dlib.ops._library import kernels

    k = kernels()
    ts, te, sg, ri = _packed([2, 0, 3], "cpu", torch.float64)
    info = pack_info(ri, 3)
    args = (ts.requires_grad_(), te.requires_grad_(), sg.requires_grad_(), info, 0)
    torch.library.opcheck(k.volrend_density_fwd, args)
    torch.library.opcheck(k.volrend_alpha_fwd, ((sg.detach() / 7).requires_grad_(), info, 0))


def test_long_packed_ray_is_accurate_in_float32():
    # One long ray after many samples: a naive flat float32 cumsum would lose precision here.
    counts = [400] * 50 + [20000]
    ts, te, sg, ri = _packed(counts, "cpu", torch.float64)
    ref = vr.render_weight_from_density(ts, te, sg, ray_indices=ri)
    for mode in ("torch", "auto"):
        out = _run(vr.render_weight_from_density, mode, ts.float(), te.float(), sg.float(), ray_indices=ri)
        for a, b in zip(out, ref, strict=True):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_reference_is_per_ray_next_to_huge_optical_depths(device, dtype):
    # Far contracted steps (delta ~ 1e9) give huge sigma * delta on some rays; a ray packed after them
    # must keep its own precision (a flat cumsum over all rays minus the ray's start returned T = 1).
    far_ts = torch.tensor([0.0, 1e9, 2e9, 3e9], dtype=torch.float64)
    far_sg = torch.tensor([1e8, 1e8, 5e7, 1e8], dtype=torch.float64)  # sigma * delta up to 1e17
    near_ts = torch.arange(10, dtype=torch.float64) * 0.1
    near_sg = torch.full((10,), 19.2, dtype=torch.float64)  # optical depth 1.92 per sample
    ts = torch.cat([far_ts, near_ts, far_ts])
    te = torch.cat([far_ts + 1e9, near_ts + 0.1, far_ts + 1e9])
    sg = torch.cat([far_sg, near_sg, far_sg])
    ri = torch.repeat_interleave(torch.arange(3), torch.tensor([4, 10, 4]))
    tau = near_sg * 0.1
    expected_near = torch.exp(-(torch.cumsum(tau, 0) - tau))  # last sample: exp(-17.28) = 3.1e-8
    expected_far = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    expected = torch.cat([expected_far, expected_near, expected_far])
    to = dict(device=device, dtype=dtype)
    args = (ts.to(**to), te.to(**to), sg.to(**to))
    _, trans_ref, _ = ops.weights_from_density_reference(*args, pack_info(ri.to(device), 3))
    torch.testing.assert_close(trans_ref.double().cpu(), expected, rtol=1e-5, atol=0.0)
    if extension_supports("render_weight_from_density", device):
        _, trans_ext, _ = _run(vr.render_weight_from_density, "ext", *args, ray_indices=ri.to(device))
        torch.testing.assert_close(trans_ref, trans_ext, rtol=1e-5, atol=0.0)


# --------------------------------------------------------------------------- nerfacc equality


@pytest.mark.parametrize("mode", ["torch", "auto"])
def test_dense_matches_nerfacc(mode):
    ts, te, sg = _dense(5, 13, "cpu")
    prefix = torch.rand(5, 13)
    with backend.forced(mode):
        ours = vr.render_weight_from_density(ts, te, sg, prefix_trans=prefix)
        ours_t = vr.render_transmittance_from_density(ts, te, sg)
        alphas = ours[2]
        ours_a = vr.render_weight_from_alpha(alphas)
        ours_ta = vr.render_transmittance_from_alpha(alphas, prefix_trans=prefix)
        vis_d = vr.render_visibility_from_density(ts, te, sg, early_stop_eps=0.3, alpha_thre=0.2)
        vis_a = vr.render_visibility_from_alpha(alphas, early_stop_eps=0.3, alpha_thre=0.2)
    theirs = nerfacc.render_weight_from_density(ts, te, sg, prefix_trans=prefix.clone())
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_t, nerfacc.render_transmittance_from_density(ts, te, sg), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_a, nerfacc.render_weight_from_alpha(alphas), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ref_ta = nerfacc.render_transmittance_from_alpha(alphas, prefix_trans=prefix.clone())
    torch.testing.assert_close(ours_ta, ref_ta)
    # thresholds are compared with >=; allow disagreement only for values within float noise of them
    trans = ours_t[0]
    ref_vis = nerfacc.render_visibility_from_density(ts, te, sg, early_stop_eps=0.3, alpha_thre=0.2)
    near = ((trans - 0.3).abs() < 1e-6) | ((alphas - 0.2).abs() < 1e-6)
    assert torch.equal(vis_d | near, ref_vis | near)
    ref_vis_a = nerfacc.render_visibility_from_alpha(alphas, early_stop_eps=0.3, alpha_thre=0.2)
    assert torch.equal(vis_a | near, ref_vis_a | near)


def test_dense_gradients_match_nerfacc():
    ts, te, sg = _dense(3, 8, "cpu", torch.float64)
    cots = [torch.rand(3, 8, dtype=torch.float64) for _ in range(3)]
    grads = []
    for fn in (vr.render_weight_from_density, nerfacc.render_weight_from_density):
        leaves = [x.clone().requires_grad_(True) for x in (ts, te, sg)]
        grads.append(torch.autograd.grad(fn(*leaves), leaves, cots))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_accumulation_matches_nerfacc_rendering():
    ts, te, sg, ri = _packed(COUNTS, "cpu")
    rgbs = torch.rand(ts.shape[0], 3)
    bkgd = torch.tensor([0.2, 0.4, 0.6])
    n_rays = len(COUNTS)
    weights, _, _ = vr.render_weight_from_density(ts, te, sg, ray_indices=ri, n_rays=n_rays)
    colors = vr.accumulate_along_rays(weights, rgbs, ri, n_rays)
    opacity = vr.accumulate_opacity(weights, ri, n_rays)
    depth = vr.accumulate_depth(weights, ts, te, ri, n_rays)
    for ours, theirs in (
        (colors, nerfacc.accumulate_along_rays(weights, rgbs, ri, n_rays)),
        (opacity, nerfacc.accumulate_along_rays(weights, None, ri, n_rays)),
    ):
        torch.testing.assert_close(ours, theirs)
    # nerfacc.rendering itself runs on CPU for dense samples
    dts, dte, dsg = _dense(4, 10, "cpu")
    drgb = torch.rand(4, 10, 3)
    ref_c, ref_o, ref_d, _ = nerfacc.rendering(
        dts, dte, rgb_sigma_fn=lambda *_: (drgb, dsg), render_bkgd=bkgd
    )
    w = vr.render_weight_from_density(dts, dte, dsg)[0]
    o = vr.accumulate_opacity(w)
    torch.testing.assert_close(vr.composite_background(vr.accumulate_along_rays(w, drgb), o, bkgd), ref_c)
    torch.testing.assert_close(o, ref_o)
    torch.testing.assert_close(vr.accumulate_depth(w, dts, dte), ref_d)
    assert depth.shape == (n_rays, 1) and torch.all(depth[torch.tensor(COUNTS) == 0] == 0)


@pytest.mark.cuda
def test_packed_matches_nerfacc_on_cuda():
    ts, te, sg, ri = _packed(COUNTS, "cuda")
    n_rays = len(COUNTS)
    for mode in ("torch", "auto"):
        leaves = [x.clone().requires_grad_(True) for x in (ts, te, sg)]
        ref_leaves = [x.clone().requires_grad_(True) for x in (ts, te, sg)]
        with backend.forced(mode):
            ours = vr.render_weight_from_density(*leaves, ray_indices=ri, n_rays=n_rays)
            ours_a = vr.render_weight_from_alpha(ours[2].detach(), ray_indices=ri, n_rays=n_rays)
        theirs = nerfacc.render_weight_from_density(*ref_leaves, ray_indices=ri, n_rays=n_rays)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        ref_a = nerfacc.render_weight_from_alpha(ours[2].detach(), ray_indices=ri, n_rays=n_rays)
        for a, b in zip(ours_a, ref_a, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        ours[0].sum().backward()
        theirs[0].sum().backward()
        torch.testing.assert_close(leaves[2].grad, ref_leaves[2].grad, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("mode", ["torch", "auto"])
def test_weights_properties(device, mode):
    ts, te, sg, ri = _packed(COUNTS, device, torch.float64)
    n_rays = len(COUNTS)
    with backend.forced(mode):
        w, trans, alphas = vr.render_weight_from_density(ts, te, sg, ray_indices=ri, n_rays=n_rays)
    tau = sg * (te - ts)
    total = torch.zeros(n_rays, dtype=torch.float64, device=device).index_add(0, ri, tau)
    opacity = vr.accumulate_opacity(w, ri, n_rays)[:, 0]
    torch.testing.assert_close(opacity, 1 - torch.exp(-total))  # sum of weights = 1 - final transmittance
    first = pack_info(ri, n_rays)[:, 0][torch.tensor(COUNTS, device=device) > 0]
    assert torch.all(trans[first] == 1)
    same_ray = ri[1:] == ri[:-1]
    assert torch.all(trans[1:][same_ray] <= trans[:-1][same_ray])
    assert torch.all((alphas >= 0) & (alphas <= 1)) and torch.all(w >= 0)


def test_packed_equals_dense_and_packed_info_equals_ray_indices(device):
    ts, te, sg = _dense(4, 6, device)
    dense = vr.render_weight_from_density(ts, te, sg)
    ri = torch.arange(4, device=device).repeat_interleave(6)
    flat = [x.reshape(-1) for x in (ts, te, sg)]
    packed = vr.render_weight_from_density(*flat, ray_indices=ri)
    via_info = vr.render_weight_from_density(*flat, packed_info=pack_info(ri, 4))
    for a, b, c in zip(dense, packed, via_info, strict=True):
        torch.testing.assert_close(a.reshape(-1), b)
        torch.testing.assert_close(b, c)


def test_prefix_trans_scales_weights_and_transmittance():
    ts, te, sg, ri = _packed([3, 4], "cpu")
    prefix = torch.rand(7)
    w0, t0, a0 = vr.render_weight_from_density(ts, te, sg, ray_indices=ri)
    w1, t1, a1 = vr.render_weight_from_density(ts, te, sg, ray_indices=ri, prefix_trans=prefix)
    torch.testing.assert_close(w1, w0 * prefix)
    torch.testing.assert_close(t1, t0 * prefix)
    torch.testing.assert_close(a1, a0)


def test_depth_disparity_and_background():
    t = torch.tensor([[1.0, 3.0], [2.0, 4.0], [1.0, 2.0]])
    w = torch.tensor([[0.5, 0.5], [0.0, 0.8], [0.0, 0.0]], requires_grad=True)
    depth = vr.accumulate_depth(w, t, t + 1)
    disp = vr.accumulate_disparity(w, t, t + 1)
    torch.testing.assert_close(depth[:2], torch.tensor([[2.5], [4.5]]))
    torch.testing.assert_close(disp[:2], 1 / depth[:2])
    assert depth[2].item() == 0 and disp[2].item() == 0
    disp.sum().backward()
    assert torch.isfinite(w.grad).all()
    colors = torch.tensor([[0.5, 0.5, 0.5]])
    out = vr.composite_background(colors, torch.tensor([[0.5]]), torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.5, 0.5]]))
    torch.testing.assert_close(vr.composite_background(colors, torch.tensor([[1.0]]), 1.0), colors)


def test_half_sigmas_promote_with_float_intervals():
    ts, te, sg = _dense(2, 5, "cpu")
    out = vr.render_weight_from_density(ts, te, sg.half())
    ref = vr.render_weight_from_density(ts, te, sg.half().float())
    assert out[0].dtype == torch.float32
    torch.testing.assert_close(out[0], ref[0])


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("mode", ["torch", "kernel"])
def test_zero_samples(kernel_target, mode):
    device = kernel_target.device
    empty = torch.zeros(0, device=device, requires_grad=True)
    ri = torch.zeros(0, dtype=torch.long, device=device)
    with kernel_target.forced(mode):
        w, trans, alphas = vr.render_weight_from_density(empty, empty, empty, ray_indices=ri, n_rays=3)
        wa, ta = vr.render_weight_from_alpha(empty, ray_indices=ri, n_rays=0)
        dense = vr.render_weight_from_density(torch.zeros(4, 0), torch.zeros(4, 0), torch.zeros(4, 0))
    assert w.shape == trans.shape == alphas.shape == wa.shape == (0,)
    assert dense[0].shape == (4, 0)
    assert torch.equal(vr.accumulate_along_rays(w, None, ri, 3), torch.zeros(3, 1, device=device))
    assert vr.accumulate_along_rays(w, torch.zeros(0, 3, device=device), ri, 0).shape == (0, 3)
    w.sum().backward()
    assert empty.grad.shape == (0,)


@pytest.mark.parametrize("mode", ["torch", "kernel"])
def test_empty_rays_and_zero_length_intervals(kernel_target, mode):
    device = kernel_target.device
    ts = torch.tensor([0.0, 1.0, 1.0, 0.5, 0.7], device=device)
    te = torch.tensor([1.0, 1.0, 2.0, 0.6, 0.7], device=device)  # samples 1 and 4 have zero length
    sg = torch.tensor([1.0, 50.0, 1.0, 2.0, 9.0], device=device)
    ri = torch.tensor([1, 1, 1, 3, 3], device=device)  # rays 0, 2, 4 are empty
    with kernel_target.forced(mode):
        w, trans, alphas = vr.render_weight_from_density(ts, te, sg, ray_indices=ri, n_rays=5)
    assert alphas[1] == 0 and w[1] == 0 and w[4] == 0
    torch.testing.assert_close(trans[2], trans[1])  # a zero-length interval does not attenuate
    opacity = vr.accumulate_opacity(w, ri, 5)
    assert torch.all(opacity[[0, 2, 4]] == 0)


# --------------------------------------------------------------------------- validation


def test_nan_sigmas_raise():
    ts, te, sg = _dense(2, 3, "cpu")
    sg[0, 1] = float("nan")
    with pytest.raises(ValueError, match="sigmas"):
        vr.render_weight_from_density(ts, te, sg)
    with pytest.raises(ValueError, match="alphas"):
        vr.render_weight_from_alpha(sg)


def test_bad_inputs_raise():
    ts, te, sg, ri = _packed([2, 3], "cpu")
    with pytest.raises(ValueError, match="sorted"):
        vr.render_weight_from_density(ts, te, sg, ray_indices=ri.flip(0))
    with pytest.raises(ValueError, match="ray_indices"):
        vr.render_weight_from_density(ts, te, sg, ray_indices=ri, n_rays=1)
    with pytest.raises(ValueError, match="t_ends"):
        vr.render_weight_from_density(ts, te[:-1], sg)
    with pytest.raises(ValueError, match="flat"):
        vr.render_weight_from_density(ts[None], te[None], sg[None], ray_indices=ri)
    with pytest.raises(ValueError, match="packed_info"):
        vr.render_weight_from_alpha(sg / 7, packed_info=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="ray_indices"):
        vr.render_weight_from_alpha(sg / 7, ray_indices=ri.float())
    with pytest.raises(TypeError, match="sigmas"):
        vr.render_weight_from_density(ts, te, ri)
    with pytest.raises(ValueError, match="n_rays"):
        vr.accumulate_along_rays(sg, None, ri)
    with pytest.raises(ValueError, match="values"):
        vr.accumulate_along_rays(sg, torch.zeros(4, 3), ri, 2)
    with pytest.raises(ValueError, match="background"):
        vr.composite_background(torch.zeros(4, 3), torch.zeros(4, 1), torch.zeros(2))
    with pytest.raises(ValueError, match="prefix_trans"):
        vr.render_weight_from_density(ts, te, sg, ray_indices=ri, prefix_trans=torch.ones(2))


@pytest.mark.parametrize("mode", ["torch", "auto", "cuda-emu"])
def test_packed_info_with_gaps_and_reordered_rays(mode):
    # nerfacc-style packed_info may address any runs; samples outside every ray get zeros
    ts, te, sg, _ = _packed([9], "cpu", torch.float64)
    info = torch.tensor([[5, 3], [0, 2], [2, 0]])  # ray 0 = samples 5..7, ray 1 = samples 0..1; 2-4, 8 unused
    with backend.forced(mode):
        w, trans, alphas = vr.render_weight_from_density(ts, te, sg, packed_info=info)
        wa, ta = vr.render_weight_from_alpha(alphas, packed_info=info)
    for idx in ([5, 6, 7], [0, 1]):
        ref = vr.render_weight_from_density(ts[idx], te[idx], sg[idx])
        for a, b in zip((w, trans, alphas), ref, strict=True):
            torch.testing.assert_close(a[idx], b)
        torch.testing.assert_close(wa[idx], ref[0])
    unused = [2, 3, 4, 8]
    assert torch.all(w[unused] == 0) and torch.all(trans[unused] == 0) and torch.all(wa[unused] == 0)


def test_sample_values_are_validated_by_name():
    from vq3dlib.render.volrend import (
        composite_background,
        render_weight_from_alpha,
        render_weight_from_density,
    )

    t = torch.linspace(0.0, 1.0, 5)
    ts, te, sig = t[:-1].clone(), t[1:].clone(), torch.ones(4)
    ri = torch.zeros(4, dtype=torch.long)
    w, _, _ = render_weight_from_density(ts, te, sig, ray_indices=ri)
    torch.testing.assert_close(w.sum(), 1 - torch.exp(torch.tensor(-1.0)))
    bad_ts = ts.clone()
    bad_ts[1] = math.nan
    with pytest.raises(ValueError, match="t_starts contains NaN"):
        render_weight_from_density(bad_ts, te, sig, ray_indices=ri)
    with pytest.raises(ValueError, match=r"t_ends - t_starts must lie in \[0, inf\] \(t_ends >= t_starts\)"):
        render_weight_from_density(te, ts, sig, ray_indices=ri)
    with pytest.raises(ValueError, match=r"sigmas must lie in \[0, inf\], got values in \[-1.0, 1.0\]"):
        render_weight_from_density(ts, te, torch.tensor([1.0, -1.0, 1.0, 1.0]), ray_indices=ri)
    with pytest.raises(ValueError, match=r"alphas must lie in \[0, 1\], got values in \[0.5, 1.5\]"):
        render_weight_from_alpha(torch.tensor([0.5, 1.5]), ray_indices=ri[:2])
    with pytest.raises(ValueError, match="background must be a finite number"):
        composite_background(torch.zeros(1, 3), torch.zeros(1, 1), math.nan)
