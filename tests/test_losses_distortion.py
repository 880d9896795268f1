"""Tests for vq3dlib.losses.distortion: O(n) prefix-sum form vs the O(n^2) definition."""

from __future__ import annotations

import pytest
import torch

from vq3dlib._validation import finite_checks_enabled, set_finite_checks
from vq3dlib.losses.distortion import distortion_loss, distortion_loss_reference


def _dense(rays=6, n=11, dtype=torch.float64, device="cpu"):
    w = torch.rand(rays, n, dtype=dtype, device=device)
    edges = torch.cumsum(torch.rand(rays, n + 1, dtype=dtype, device=device), -1)
    return w, edges[:, :-1], edges[:, 1:]


def _packed(w, ts, te, keep):
    ri = torch.arange(w.shape[0], device=w.device)[:, None].expand_as(w)[keep]
    return w[keep], ts[keep], te[keep], ri


def test_dense_equals_reference(device):
    w, ts, te = _dense(dtype=torch.float32, device=device)
    fast = distortion_loss(w, ts, te, reduction="none")
    torch.testing.assert_close(fast, distortion_loss_reference(w, ts, te))


def test_dense_gradients_equal_reference(device):
    w, ts, te = (x.requires_grad_() for x in _dense(device=device))
    g = torch.rand(w.shape[0], dtype=w.dtype, device=device)  # arbitrary per-ray output gradient
    fast = torch.autograd.grad((distortion_loss(w, ts, te, reduction="none") * g).sum(), (w, ts, te))
    ref = torch.autograd.grad((distortion_loss_reference(w, ts, te) * g).sum(), (w, ts, te))
    for name, a, b in zip(("weights", "t_starts", "t_ends"), fast, ref, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")
        assert a.abs().sum() > 0, name


def test_packed_equals_reference_values_and_gradients(device):
    w, ts, te = _dense(device=device)
    keep = torch.rand(w.shape, device=device) > 0.4
    keep[1] = False  # a ray without samples
    keep[2] = False
    keep[2, 3] = True  # a ray with one sample
    wp, tsp, tep, ri = _packed(w, ts, te, keep)
    wp.requires_grad_()
    tsp.requires_grad_()
    tep.requires_grad_()
    packed = distortion_loss(wp, tsp, tep, ri, n_rays=w.shape[0], reduction="none")
    # the oracle on the dense copy, restricted to the kept samples (masked samples have weight 0)
    w_d = torch.zeros_like(w).masked_scatter(keep, wp)
    ts_d = ts.masked_scatter(keep, tsp)
    te_d = te.masked_scatter(keep, tep)
    ref = distortion_loss_reference(w_d, ts_d, te_d)
    torch.testing.assert_close(packed, ref)
    assert packed[1].item() == 0.0
    torch.testing.assert_close(packed[2], wp.detach()[ri == 2].square().sum() * (te - ts)[2, 3] / 3)
    g = torch.rand(w.shape[0], dtype=w.dtype, device=device)
    g_packed = torch.autograd.grad((packed * g).sum(), (wp, tsp, tep))
    g_ref = torch.autograd.grad((ref * g).sum(), (wp, tsp, tep))
    for name, a, b in zip(("weights", "t_starts", "t_ends"), g_packed, g_ref, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")
        assert a.abs().sum() > 0, name


def test_packed_equals_dense():
    w, ts, te = _dense(dtype=torch.float32)
    keep = torch.ones_like(w, dtype=torch.bool)
    wp, tsp, tep, ri = _packed(w, ts, te, keep)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(distortion_loss(wp, tsp, tep, ri, reduction=reduction),
                                   distortion_loss(w, ts, te, reduction=reduction))


def test_gradcheck_packed_and_dense():
    w, ts, te = _dense(rays=3, n=5)
    keep = torch.rand(w.shape) > 0.3
    wp, tsp, tep, ri = _packed(w, ts, te, keep)
    inputs = tuple(x.clone().requires_grad_() for x in (wp, tsp, tep))
    assert torch.autograd.gradcheck(lambda a, b, c: distortion_loss(a, b, c, ri, 3, reduction="none"), inputs)
    inputs = tuple(x.clone().requires_grad_() for x in (w, ts, te))
    assert torch.autograd.gradcheck(lambda a, b, c: distortion_loss(a, b, c, reduction="none"), inputs)


def test_long_float32_batch_keeps_precision():
    # the global prefix sum runs over 200k samples; per-ray results must not drift
    w, ts, te = _dense(rays=4000, n=48, dtype=torch.float32)
    ri = torch.arange(4000)[:, None].expand(4000, 48).reshape(-1)
    packed = distortion_loss(w.reshape(-1), ts.reshape(-1), te.reshape(-1), ri, reduction="none")
    torch.testing.assert_close(packed, distortion_loss(w, ts, te, reduction="none"), rtol=1e-4, atol=1e-4)


def test_compact_weights_have_lower_loss():
    t = torch.linspace(0, 1, 33, dtype=torch.float64)
    ts, te = t[:-1][None], t[1:][None]
    peaked = torch.zeros(1, 32, dtype=torch.float64)
    peaked[0, 10] = 1.0
    spread = torch.full((1, 32), 1.0 / 32, dtype=torch.float64)
    assert distortion_loss(peaked, ts, te) < distortion_loss(spread, ts, te)


def test_empty_inputs():
    z = torch.zeros(0)
    ri = torch.zeros(0, dtype=torch.long)
    per = distortion_loss(z, z, z, ri, n_rays=3, reduction="none")
    assert per.shape == (3,) and (per == 0).all()
    assert distortion_loss(z, z, z, ri).item() == 0.0  # n_rays inferred as 0, mean of nothing is 0
    assert distortion_loss(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0.0


def test_bad_input():
    w, ts, te = _dense(rays=2, n=3)
    tsp, tep = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 1.0])  # sorted along rays 0, 0, 1
    with pytest.raises(ValueError, match="t_starts"):
        distortion_loss(w, ts[:, :2], te)
    with pytest.raises(ValueError, match="reduction"):
        distortion_loss(w, ts, te, reduction="max")
    with pytest.raises(ValueError, match="ray_indices must be sorted"):
        distortion_loss(torch.rand(3), tsp, tep, torch.tensor([1, 0, 0]), 2)
    with pytest.raises(ValueError, match="ray_indices"):
        distortion_loss(torch.rand(3), tsp, tep, torch.tensor([0, 0]), 2)
    with pytest.raises(TypeError, match="n_rays"):
        distortion_loss(torch.rand(3), tsp, tep, torch.tensor([0, 0, 1]), 2.0)
    with pytest.raises(ValueError, match="NaN"):
        nan = torch.full((3,), float("nan"))
        distortion_loss(nan, tsp, tep, torch.tensor([0, 0, 1]), 2)


def test_unsorted_samples_are_rejected():
    ri = torch.tensor([0, 0, 1, 1])
    w = torch.rand(4)
    ts, te = torch.tensor([0.0, 1.0, 0.5, 2.0]), torch.tensor([1.0, 2.0, 1.5, 3.0])
    distortion_loss(w, ts, te, ri, 2)  # sorted within each ray; ray 1 may start before ray 0 ends
    with pytest.raises(ValueError, match="t_starts must be <= t_ends"):
        distortion_loss(w, ts, torch.tensor([1.0, 0.5, 1.5, 3.0]), ri, 2)
    with pytest.raises(ValueError, match="sorted along each ray"):  # ray 0: second sample first
        distortion_loss(w, ts.flip(0), te.flip(0), torch.tensor([0, 0, 1, 1]), 2)
    with pytest.raises(ValueError, match="sorted along each ray"):  # same starts, ends out of order
        distortion_loss(w, torch.zeros(4), torch.tensor([2.0, 1.0, 1.0, 1.0]), ri, 2)
    wd, tsd, ted = _dense(rays=3, n=5)
    distortion_loss(wd, tsd, ted)
    with pytest.raises(ValueError, match="sorted along each ray"):
        distortion_loss(wd, tsd.flip(-1), ted.flip(-1))
    with pytest.raises(ValueError, match="t_starts must be <= t_ends"):
        distortion_loss(wd, ted, tsd)


def test_sortedness_check_follows_the_value_check_switch():
    wd, tsd, ted = _dense(rays=3, n=5)
    unsorted_s, unsorted_e = tsd.flip(-1), ted.flip(-1)
    before = finite_checks_enabled()
    set_finite_checks(False)
    try:
        fast = distortion_loss(wd, unsorted_s, unsorted_e, reduction="none")  # no check, no error
    finally:
        set_finite_checks(before)
    # (and the O(n) form is then wrong: the check guards against exactly this)
    assert not torch.allclose(fast, distortion_loss_reference(wd, unsorted_s, unsorted_e))
    meta = torch.empty(3, 5, device="meta")  # no values to check on meta tensors
    assert distortion_loss(meta, meta, meta.flip(-1), reduction="none").shape == (3,)


def test_dense_n_rays_must_match_the_shape():
    w, ts, te = _dense(rays=4, n=3)
    torch.testing.assert_close(distortion_loss(w, ts, te, n_rays=4), distortion_loss(w, ts, te))
    with pytest.raises(ValueError, match=r"n_rays=5 contradicts the dense input.*4 rays"):
        distortion_loss(w, ts, te, n_rays=5)
    w3, ts3, te3 = (x.reshape(2, 2, 3) for x in (w, ts, te))
    assert distortion_loss(w3, ts3, te3, n_rays=4, reduction="none").shape == (2, 2)
    with pytest.raises(TypeError, match="n_rays"):
        distortion_loss(w, ts, te, n_rays=4.0)
