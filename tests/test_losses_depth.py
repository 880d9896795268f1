"""Tests for vq3dlib.losses.depth: scale/shift alignment, aligned depth loss, VQ3D pointwise loss."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vq3dlib.losses.depth import align_scale_shift, aligned_depth_loss, pointwise_depth_loss

# ----------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("method", ["lsq", "median", "trimmed"])
def test_alignment_recovers_known_scale_shift(device, method):
    pred = torch.rand(3, 10, 12, device=device, dtype=torch.float64) + 0.5
    scale = torch.tensor([2.0, 0.3, -1.5], device=device, dtype=torch.float64)
    shift = torch.tensor([0.5, -0.2, 4.0], device=device, dtype=torch.float64)
    target = scale[:, None, None] * pred + shift[:, None, None]
    a = align_scale_shift(pred, target, space="depth", method=method)
    torch.testing.assert_close(a.scale, scale)
    torch.testing.assert_close(a.shift, shift)
    torch.testing.assert_close(a.aligned, target)


def test_alignment_in_disparity_space(device):
    depth = torch.rand(2, 64, device=device, dtype=torch.float64) * 5 + 1
    mono_depth = 1.0 / (0.5 / depth + 0.1)  # disparity = 0.5 * true disparity + 0.1
    a = align_scale_shift(mono_depth, depth, space="disparity")
    torch.testing.assert_close(a.scale, torch.full((2,), 2.0, dtype=torch.float64, device=device))
    torch.testing.assert_close(a.shift, torch.full((2,), -0.2, dtype=torch.float64, device=device))
    torch.testing.assert_close(a.aligned, 1.0 / depth)


def test_alignment_ignores_masked_pixels():
    pred = torch.rand(2, 100, dtype=torch.float64)
    target = 3 * pred - 1
    mask = torch.rand(2, 100) > 0.3
    corrupted = torch.where(mask, target, torch.full_like(target, 1e6))
    a = align_scale_shift(pred, corrupted, mask, space="depth")
    torch.testing.assert_close(a.scale, torch.full((2,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(a.shift, torch.full((2,), -1.0, dtype=torch.float64))


def test_robust_alignment_resists_outliers():
    pred = torch.rand(1, 400, dtype=torch.float64)
    target = 2 * pred + 0.5
    target[:, :20] += 50.0  # 5% gross outliers
    lsq = align_scale_shift(pred, target, space="depth", method="lsq")
    trimmed = align_scale_shift(pred, target, space="depth", method="trimmed", trim=0.2)
    assert (lsq.shift - 0.5).abs().item() > 1.0
    torch.testing.assert_close(trimmed.scale, torch.tensor([2.0], dtype=torch.float64))
    torch.testing.assert_close(trimmed.shift, torch.tensor([0.5], dtype=torch.float64))


def test_median_alignment_resists_outliers():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 400, dtype=torch.float64, generator=gen)
    scale = torch.tensor([2.0, -1.5], dtype=torch.float64)
    shift = torch.tensor([0.5, 3.0], dtype=torch.float64)
    target = scale[:, None] * pred + shift[:, None]
    target[:, :20] += 50.0  # 5% gross outliers
    lsq = align_scale_shift(pred, target, space="depth", method="lsq")
    med = align_scale_shift(pred, target, space="depth", method="median")
    assert ((lsq.shift - shift).abs() > 1.0).all()
    # median/MAD: the 5% one-sided outliers only move the medians by a few percentiles of the inliers
    # (a mean absolute deviation would grow by 0.05 * 50 = 2.5 and give scales of about 10)
    torch.testing.assert_close(med.scale, scale, rtol=0.15, atol=0.0)
    torch.testing.assert_close(med.shift, shift, rtol=0.0, atol=0.15)
    inliers = (med.aligned - target)[:, 20:].abs()
    assert inliers.median() < 0.1


def test_median_alignment_is_exact_when_most_pred_values_are_equal():
    # more than half of pred sits at its median (MAD 0): falls back to mean absolute deviations
    pred = torch.cat([torch.full((1, 60), 2.0), torch.rand(1, 40) + 2.5], 1).double()
    target = -0.7 * pred + 4.0
    a = align_scale_shift(pred, target, space="depth", method="median")
    torch.testing.assert_close(a.scale, torch.tensor([-0.7], dtype=torch.float64))
    torch.testing.assert_close(a.shift, torch.tensor([4.0], dtype=torch.float64))


@pytest.mark.parametrize("method", ["lsq", "median", "trimmed"])
def test_alignment_degenerate_cases_are_finite(method):
    pred = torch.rand(4, 30)
    target = torch.rand(4, 30)
    target[0] = 2.5  # constant target
    pred[1] = 0.7  # constant pred
    mask = torch.ones(4, 30, dtype=torch.bool)
    mask[2] = False  # empty mask
    a = align_scale_shift(pred, target, mask, space="depth", method=method)
    assert torch.isfinite(a.aligned).all() and torch.isfinite(a.scale).all() and torch.isfinite(a.shift).all()
    assert a.scale[0].item() == 0.0 and a.shift[0].item() == pytest.approx(2.5)
    torch.testing.assert_close(a.aligned[0], torch.full((30,), 2.5))
    assert a.scale[1].item() == 0.0
    assert target[1].min() <= a.shift[1] <= target[1].max()  # a central value of the target
    if method == "lsq":
        torch.testing.assert_close(a.shift[1], target[1].mean())
    assert a.scale[2].item() == 1.0 and a.shift[2].item() == 0.0


@pytest.mark.parametrize("method", ["lsq", "median", "trimmed"])
def test_alignment_degenerate_cases_have_finite_gradients(method):
    pred = torch.rand(4, 30, dtype=torch.float64)
    target = torch.rand(4, 30, dtype=torch.float64)
    target[0] = 2.5  # constant target
    pred[1] = 0.7  # constant pred
    mask = torch.ones(4, 30, dtype=torch.bool)
    mask[2] = False  # empty mask
    pred.requires_grad_()
    target.requires_grad_()
    a = align_scale_shift(pred, target, mask, space="depth", method=method)
    total = a.aligned.sum() + a.scale.sum() + a.shift.sum()
    g_pred, g_target = torch.autograd.grad(total, (pred, target))
    assert torch.isfinite(g_pred).all() and torch.isfinite(g_target).all()
    assert (g_target[2] == 0).all()  # an empty mask fits nothing: identity, no gradient to the target
    torch.testing.assert_close(g_pred[2], torch.ones(30, dtype=torch.float64))  # aligned = pred
    # disparity space inverts the maps first; a constant target stays finite there too
    d = align_scale_shift(pred, target, mask, space="disparity", method=method)
    grads = torch.autograd.grad(d.aligned.sum() + d.scale.sum() + d.shift.sum(), (pred, target))
    assert all(torch.isfinite(g).all() for g in grads)


def test_alignment_empty_batch():
    a = align_scale_shift(torch.zeros(0, 5), torch.zeros(0, 5))
    assert a.aligned.shape == (0, 5) and a.scale.shape == (0,)


def test_alignment_gradcheck():
    pred = torch.rand(2, 6, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 6, dtype=torch.float64, requires_grad=True)
    fn = lambda p, t: align_scale_shift(p, t, space="depth").aligned
    assert torch.autograd.gradcheck(fn, (pred, target))


def test_alignment_bad_input():
    with pytest.raises(ValueError, match="target"):
        align_scale_shift(torch.rand(2, 3), torch.rand(2, 4))
    with pytest.raises(ValueError, match="method"):
        align_scale_shift(torch.rand(2, 3), torch.rand(2, 3), method="ransac")
    with pytest.raises(ValueError, match="space"):
        align_scale_shift(torch.rand(2, 3), torch.rand(2, 3), space="log")
    with pytest.raises(TypeError, match="mask"):
        align_scale_shift(torch.rand(2, 3), torch.rand(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="pred"):
        align_scale_shift(torch.full((2, 3), float("nan")), torch.rand(2, 3))
    with pytest.raises(ValueError, match="trim"):
        align_scale_shift(torch.rand(2, 3), torch.rand(2, 3), method="trimmed", trim=1.0)


def test_alignment_rejects_1d_input():
    # [N] has no per-image batch dimension: each "image" would be one pixel
    with pytest.raises(ValueError, match=r"pred must have shape \[B, \.\.\.\].*pred\[None\]"):
        align_scale_shift(torch.rand(5), torch.rand(5))
    with pytest.raises(ValueError, match=r"pred must have shape \[B, \.\.\.\]"):
        aligned_depth_loss(torch.rand(5) + 1, torch.rand(5) + 1)
    with pytest.raises(ValueError, match=r"target must have shape \[B, \.\.\.\]"):
        aligned_depth_loss(torch.rand(1, 5) + 1, torch.rand(5) + 1)
    w, ts, te = _rays(b=1, p=5)
    with pytest.raises(ValueError, match=r"target must have shape \[B, \.\.\.\]"):
        pointwise_depth_loss(w[0], ts[0], te[0], torch.rand(5, dtype=torch.float64))
    # without alignment one value per ray is fine
    loss = pointwise_depth_loss(w[0], ts[0], te[0], torch.rand(5, dtype=torch.float64), align=False)
    assert torch.isfinite(loss)
    assert align_scale_shift(torch.rand(5)[None], torch.rand(5)[None]).scale.shape == (1,)


# ----------------------------------------------------------------------------- aligned depth loss


def test_aligned_depth_loss_zero_for_affine_disparity_and_positive_otherwise():
    depth = torch.rand(2, 8, 8, dtype=torch.float64) + 1
    mono = 1.0 / (3.0 / depth + 0.2)
    assert aligned_depth_loss(depth, mono).item() < 1e-12
    assert aligned_depth_loss(depth, mono, align="pred").item() < 1e-12
    other = torch.rand(2, 8, 8, dtype=torch.float64) + 1
    assert aligned_depth_loss(depth, other).item() > 1e-3


def test_aligned_depth_loss_no_gradient_through_target_alignment():
    depth = (torch.rand(1, 20, dtype=torch.float64) + 1).requires_grad_()
    target = torch.rand(1, 20, dtype=torch.float64) + 1
    loss = aligned_depth_loss(depth, target, rho="l2", space="depth", reduction="sum")
    (g,) = torch.autograd.grad(loss, depth)
    fixed = align_scale_shift(target, depth.detach(), space="depth").aligned
    torch.testing.assert_close(g, 2 * (depth.detach() - fixed))


def test_aligned_depth_loss_mask_and_reduction():
    depth = torch.rand(2, 10) + 1
    target = torch.rand(2, 10) + 1
    mask = torch.rand(2, 10) > 0.5
    per = aligned_depth_loss(depth, target, mask, reduction="none")
    assert per.shape == (2, 10) and (per[~mask] == 0).all()
    mean = aligned_depth_loss(depth, target, mask)
    torch.testing.assert_close(mean, per.sum() / mask.sum())


# ----------------------------------------------------------------------------- pointwise depth loss


def _rays(b=2, p=5, n=7, dtype=torch.float64, opacity=1.0):
    w = torch.softmax(torch.randn(b, p, n, dtype=dtype), -1) * opacity
    edges = torch.sort(torch.rand(b, p, n + 1, dtype=dtype) * 4 + 0.5, -1).values
    return w, edges[..., :-1], edges[..., 1:]


@pytest.mark.parametrize("opacity", [1.0, 0.6])
def test_pointwise_l2_equals_accumulated_loss_plus_weighted_variance(opacity):
    w, ts, te = _rays(opacity=opacity)
    target = torch.rand(2, 5, dtype=torch.float64)
    loss = pointwise_depth_loss(w, ts, te, target, align=False, reduction="none")
    d = 2.0 / (ts + te)
    a = w.sum(-1)
    rendered = (w * d).sum(-1)
    m = rendered / a
    variance = (w * (d - m[..., None]) ** 2).sum(-1)
    torch.testing.assert_close(loss, a * (m - target) ** 2 + variance)
    if opacity == 1.0:
        torch.testing.assert_close(loss, (rendered - target) ** 2 + variance)


def test_pointwise_identity_with_alignment():
    w, ts, te = _rays()
    target = torch.rand(2, 5, dtype=torch.float64)
    loss = pointwise_depth_loss(w, ts, te, target, reduction="none")
    d = 2.0 / (ts + te)
    rendered = (w * d).sum(-1)
    aligned = align_scale_shift(target, rendered, space="depth").aligned
    variance = (w * (d - rendered[..., None]) ** 2).sum(-1)
    torch.testing.assert_close(loss, (rendered - aligned) ** 2 + variance)


def test_pointwise_prefers_a_single_surface():
    # same rendered disparity, one concentrated and one split weight distribution
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    ts, te = t - 0.01, t + 0.01
    one = torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    d = 1.0 / t
    # split between samples 0 and 2, with the same expected disparity as `one`
    lam = (d[0, 1] - d[0, 2]) / (d[0, 0] - d[0, 2])
    split = torch.tensor([[lam, 0.0, 1 - lam, 0.0]], dtype=torch.float64)
    target = torch.tensor([0.5], dtype=torch.float64)
    # accumulated disparities agree; pointwise penalises the split one
    ld_one = pointwise_depth_loss(one, ts, te, target, align=False, reduction="sum")
    ld_split = pointwise_depth_loss(split, ts, te, target, align=False, reduction="sum")
    torch.testing.assert_close((split * d).sum(), (one * d).sum())
    assert ld_one.item() < 1e-9 and ld_split.item() > 1e-3


def _pack(w, ts, te):
    """Drops a random subset of samples (they get weight 0 in the dense copy)."""
    keep = torch.rand(w.shape) > 0.3
    keep[0, 0] = False  # one ray keeps nothing
    w_dense = torch.where(keep, w, torch.zeros_like(w))
    flat_keep = keep.reshape(-1, w.shape[-1])
    ray_ids = torch.arange(flat_keep.shape[0])[:, None].expand_as(flat_keep)[flat_keep]
    return w_dense, (w_dense.reshape(-1, w.shape[-1])[flat_keep], ts.reshape(flat_keep.shape)[flat_keep],
                     te.reshape(flat_keep.shape)[flat_keep], ray_ids)


@pytest.mark.parametrize("rho", ["l2", "l1", "huber"])
@pytest.mark.parametrize("method", ["lsq", "median", "trimmed"])
def test_pointwise_packed_equals_dense(rho, method):
    w, ts, te = _rays(b=3, p=6, n=9)
    w_dense, (wp, tsp, tep, ri) = _pack(w, ts, te)
    w_dense.requires_grad_()
    wp = wp.detach().requires_grad_()
    target = torch.rand(3, 6, dtype=torch.float64)
    mask = torch.rand(3, 6) > 0.2
    kw = dict(rho=rho, method=method, mask=mask, huber_delta=0.05)
    dense = pointwise_depth_loss(w_dense, ts, te, target, **kw)
    packed = pointwise_depth_loss(wp, tsp, tep, target, ri, **kw)
    torch.testing.assert_close(packed, dense)
    (gd,) = torch.autograd.grad(dense, w_dense)
    (gp,) = torch.autograd.grad(packed, wp)
    keep = w_dense.detach() != 0
    torch.testing.assert_close(gp, gd[keep])


def test_pointwise_gradient_skips_alignment():
    w, ts, te = _rays()
    w.requires_grad_()
    target = torch.rand(2, 5, dtype=torch.float64)
    loss = pointwise_depth_loss(w, ts, te, target, reduction="sum")
    (g,) = torch.autograd.grad(loss, w)
    d = 2.0 / (ts + te)
    aligned = align_scale_shift(target, (w.detach() * d).sum(-1), space="depth").aligned
    torch.testing.assert_close(g, (d - aligned[..., None]) ** 2)


def test_pointwise_mask_zeroes_rays_and_mean_counts_valid_rays():
    w, ts, te = _rays()
    w.requires_grad_()
    target = torch.rand(2, 5, dtype=torch.float64)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, :3] = True
    per = pointwise_depth_loss(w, ts, te, target, mask=mask, reduction="none")
    assert (per[~mask] == 0).all()
    mean = pointwise_depth_loss(w, ts, te, target, mask=mask)
    torch.testing.assert_close(mean, per.sum() / 6)
    (g,) = torch.autograd.grad(mean, w)
    assert (g[~mask] == 0).all()


def test_pointwise_depth_target_and_zero_distance_guard():
    w, ts, te = _rays()
    ts[..., 0] = 0.0
    te[..., 0] = 0.0  # a sample at t = 0
    depth = torch.rand(2, 5, dtype=torch.float64) + 1
    loss = pointwise_depth_loss(w, ts, te, depth, target_space="depth", eps=1e-3)
    assert torch.isfinite(loss)
    same = pointwise_depth_loss(w, ts, te, 1.0 / depth, eps=1e-3)
    torch.testing.assert_close(loss, same)


def test_pointwise_empty_inputs():
    target = torch.rand(1, 4)
    loss = pointwise_depth_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0), target,
                                torch.zeros(0, dtype=torch.long), reduction="none")
    assert loss.shape == (1, 4) and (loss == 0).all()
    empty = torch.zeros(0, 4, 3)
    assert pointwise_depth_loss(empty, empty, empty, torch.zeros(0, 4)) == 0


def test_pointwise_bad_input():
    w, ts, te = _rays(dtype=torch.float32)
    target = torch.rand(2, 5)
    with pytest.raises(ValueError, match="weights"):
        pointwise_depth_loss(w, ts, te, torch.rand(2, 4))
    with pytest.raises(ValueError, match="rho"):
        pointwise_depth_loss(w, ts, te, target, rho="cauchy")
    with pytest.raises(ValueError, match="sorted"):
        pointwise_depth_loss(torch.rand(3), torch.rand(3), torch.rand(3), target, torch.tensor([2, 1, 0]))
    with pytest.raises(ValueError, match="n_rays"):
        pointwise_depth_loss(torch.rand(3), torch.rand(3), torch.rand(3), target, torch.tensor([0, 1, 10]))
    with pytest.raises(TypeError, match="ray_indices"):
        pointwise_depth_loss(torch.rand(3), torch.rand(3), torch.rand(3), target, torch.tensor([0.0, 1, 2]))
    with pytest.raises(ValueError, match="weights"):
        pointwise_depth_loss(torch.full_like(w, float("nan")), ts, te, target)


# ----------------------------------------------------------------------------- docs


def test_docs_example_runs():
    text = (Path(__file__).resolve().parents[1] / "docs" / "losses.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/losses.md", "exec"), {})


# ----------------------------------------------------------------------------- map_disparity_range


def test_map_disparity_range_is_per_image_robust_and_shift_scale_free():
    from vq3dlib.losses import map_disparity_range

    d = torch.stack([torch.linspace(0, 1, 100), torch.linspace(5, 50, 100)]).reshape(2, 1, 10, 10)
    d.requires_grad_(True)
    mapped = map_disparity_range(d, (2.0, 20.0))
    assert mapped.shape == d.shape and not mapped.requires_grad
    for img in mapped:
        assert float(img.min()) == pytest.approx(1 / 20) and float(img.max()) == pytest.approx(1 / 2)
    torch.testing.assert_close(mapped[0], mapped[1])  # per image; scale/shift invariant
    assert (mapped[0].flatten().diff() >= 0).all()  # order preserved
    spiked = d.detach().clone()
    spiked[:, 0, 0, 0] = 1e4  # an outlier: clamped to 1/near, the bulk keeps its spread
    middle = map_disparity_range(spiked, (2.0, 20.0))[:, 0, 5, 0]
    assert ((middle > 0.2) & (middle < 0.35)).all(), middle
    squashed = map_disparity_range(spiked, (2.0, 20.0), low=0.0)[:, 0, 5, 0]  # min/max: not robust
    assert (squashed < 0.06).all(), squashed
    assert torch.allclose(map_disparity_range(torch.ones(1, 4, 4), (1.0, 10.0)), torch.tensor(0.1))
    assert map_disparity_range(torch.zeros(0, 4, 4), (1.0, 10.0)).shape == (0, 4, 4)
    with pytest.raises(ValueError, match="depth_range"):
        map_disparity_range(d, (5.0, 1.0))
    with pytest.raises(ValueError, match="low"):
        map_disparity_range(d, (1.0, 5.0), low=0.5)
    with pytest.raises(ValueError, match="disparity contains NaN"):
        map_disparity_range(torch.full((1, 4), float("nan")), (1.0, 5.0))


@pytest.mark.parametrize("align", ["target", "pred"])
def test_aligned_depth_loss_names_the_argument_holding_nan(align):
    from vq3dlib.losses.depth import aligned_depth_loss

    good = torch.rand(1, 16) + 1.0
    bad = good.clone()
    bad[0, 3] = float("nan")
    assert float(aligned_depth_loss(good, good, align=align)) < 1e-6
    with pytest.raises(ValueError, match="^pred contains NaN"):
        aligned_depth_loss(bad, good, align=align)
    with pytest.raises(ValueError, match="^target contains NaN"):
        aligned_depth_loss(good, bad, align=align)
