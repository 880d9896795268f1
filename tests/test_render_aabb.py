"""Tests for vq3dlib.render.aabb (ray–AABB intersection)."""

from __future__ import annotations

import math

import pytest
import torch

from vq3dlib.render.aabb import ray_aabb_intersect

BOX = [-1.0, -0.5, -2.0, 1.0, 0.5, 2.0]


def _inside(points: torch.Tensor, box, tol: float = 1e-4) -> torch.Tensor:
    b = torch.tensor(box, dtype=points.dtype)
    return ((points >= b[:3] - tol) & (points <= b[3:] + tol)).all(-1)


def test_hits_lie_on_box_and_inside_between(device):
    o = (torch.randn(500, 3) * 3).to(device)
    d = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1).to(device)
    t0, t1, hit = ray_aabb_intersect(o, d, BOX)
    assert hit.any() and (~hit).any()
    for frac in (0.0, 0.3, 0.7, 1.0):
        t = t0[hit] + frac * (t1[hit] - t0[hit])
        assert _inside((o[hit] + t[:, None] * d[hit]).cpu(), BOX).all()
    # rays that miss: no point of the forward ray is inside the box (dense check)
    ts = torch.linspace(0, 20, 4001, device=device)
    pts = o[~hit][:, None] + ts[None, :, None] * d[~hit][:, None]
    assert not _inside(pts.cpu(), BOX, tol=-1e-3).any()
    assert torch.isinf(t0[~hit]).all() and torch.isinf(t1[~hit]).all()


def test_rays_starting_inside_start_at_near():
    o = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.2, 1.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    t0, t1, hit = ray_aabb_intersect(o, d, BOX)
    assert hit.all()
    assert t0.tolist() == [0.0, 0.0]
    assert torch.allclose(t1, torch.tensor([2.0, 0.5]))
    t0, _, _ = ray_aabb_intersect(o, d, BOX, near=0.25)
    assert t0.tolist() == [0.25, 0.25]


def test_near_far_clipping_and_behind():
    o = torch.tensor([[0.0, 0.0, -5.0], [0.0, 0.0, 5.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # second ray points away from the box
    t0, t1, hit = ray_aabb_intersect(o, d, BOX, near=0.0, far=4.0)
    assert hit.tolist() == [True, False]
    assert t0[0].item() == 3.0 and t1[0].item() == 4.0
    _, _, hit = ray_aabb_intersect(o, d, BOX, near=torch.tensor([7.5, 0.0]), far=10.0)
    assert hit.tolist() == [False, False]  # near >= exit
    _, _, hit = ray_aabb_intersect(o, d, BOX, near=2.0, far=1.0)
    assert not hit.any()  # near >= far


def test_zero_direction_components_no_nan():
    o = torch.tensor([[0.0, 0.0, -5.0], [3.0, 0.0, -5.0], [1.0, 0.0, -5.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    t0, t1, hit = ray_aabb_intersect(o, d, BOX, miss_value=-1.0)
    assert not torch.isnan(t0).any() and not torch.isnan(t1).any()
    assert hit.tolist() == [True, False, True]  # third ray runs along the box face x = 1
    assert t0[1].item() == -1.0


def test_matches_nerfacc_torch_reference():
    from nerfacc.grid import _ray_aabb_intersect

    o = torch.randn(1000, 3) * 2
    d = torch.nn.functional.normalize(torch.randn(1000, 3), dim=-1)
    ours = ray_aabb_intersect(o, d, BOX)
    theirs = _ray_aabb_intersect(o, d, torch.tensor([BOX]), near_plane=0.0)
    assert torch.equal(ours[2], theirs[2][:, 0])
    assert torch.equal(ours[0], theirs[0][:, 0]) and torch.equal(ours[1], theirs[1][:, 0])


def test_per_ray_boxes_broadcast_and_batch_dims():
    o = torch.zeros(2, 4, 3)
    d = torch.tensor([1.0, 0.0, 0.0]).expand(2, 4, 3)
    boxes = torch.tensor([[-1.0, -1, -1, 1, 1, 1], [-2.0, -1, -1, 2, 1, 1]])[:, None].expand(2, 4, 6)
    _, t1, hit = ray_aabb_intersect(o, d, boxes)
    assert hit.all() and t1.shape == (2, 4)
    assert t1[0].tolist() == [1.0] * 4 and t1[1].tolist() == [2.0] * 4


def test_gradcheck_float64():
    o = torch.tensor([[0.1, 0.2, -3.0], [0.3, -0.1, 0.0]], dtype=torch.float64, requires_grad=True)
    d = torch.tensor([[0.05, 0.02, 1.0], [0.2, 0.9, 0.1]], dtype=torch.float64, requires_grad=True)
    box = torch.tensor(BOX, dtype=torch.float64, requires_grad=True)
    fn = lambda o, d, b: ray_aabb_intersect(o, d, b, near=-math.inf)[:2]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (o, d, box))


def test_empty_batch():
    t0, t1, hit = ray_aabb_intersect(torch.zeros(0, 3), torch.zeros(0, 3), BOX)
    assert t0.shape == t1.shape == hit.shape == (0,)


def test_bad_inputs():
    o, d = torch.zeros(3, 3), torch.ones(3, 3)
    with pytest.raises(ValueError, match="origins"):
        ray_aabb_intersect(torch.zeros(3, 2), d, BOX)
    with pytest.raises(ValueError, match="directions"):
        ray_aabb_intersect(o, torch.ones(4, 3), BOX)
    with pytest.raises(ValueError, match="NaN"):
        ray_aabb_intersect(torch.full((3, 3), math.nan), d, BOX)
    with pytest.raises(ValueError, match="aabb"):
        ray_aabb_intersect(o, d, [1.0, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="aabb"):
        ray_aabb_intersect(o, d, [0.0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="near"):
        ray_aabb_intersect(o, d, BOX, near=torch.zeros(5))
    with pytest.raises(TypeError, match="origins"):
        ray_aabb_intersect([[0.0, 0, 0]], d, BOX)


def test_value_checks_switched_off_skip_the_box_and_nan_checks():
    from vq3dlib import _validation
    from vq3dlib.render.aabb import as_aabb

    _validation.set_finite_checks(False)
    try:  # no value is read (no device sync): an inverted box and a NaN near pass unchecked
        assert as_aabb([1.0, 0, 0, 0, 1, 1], torch.zeros(1)).shape == (6,)
        ray_aabb_intersect(torch.zeros(2, 3), torch.ones(2, 3), BOX, near=torch.tensor([0.0, math.nan]))
    finally:
        _validation.set_finite_checks(True)
    with pytest.raises(ValueError, match="min < max"):
        as_aabb([1.0, 0, 0, 0, 1, 1], torch.zeros(1))
