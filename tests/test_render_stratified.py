"""Stratified intervals (box, outside, background) and the renderer's ``sampling="stratified"``."""

import pytest
import torch

from vq3dlib.render import Renderer
from vq3dlib.render.stratified import INFINITY, stratified_intervals


def _rays(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    origins = torch.tensor([0.0, 0.0, 2.7]).expand(n, 3) + 0.2 * torch.randn(n, 3, generator=g)
    target = 0.8 * (torch.rand(n, 3, generator=g) * 2 - 1)
    return origins.contiguous(), torch.nn.functional.normalize(target - origins, dim=-1)


@pytest.mark.parametrize("jitter", [False, True])
def test_intervals_sorted_contiguous_and_closed_by_the_background(jitter):
    o, d = _rays()
    torch.manual_seed(1)
    t0, t1 = stratified_intervals(o, d, 12, near=0.5, far=100.0, inner_fraction=0.5, jitter=jitter)
    assert t0.shape == t1.shape == (64, 13)
    assert torch.equal(t1[:, :-1], t0[:, 1:])  # contiguous
    assert bool((t1 >= t0).all()) and bool((t0[:, 1:] >= t0[:, :-1]).all())
    assert bool((t0[:, -1] == 100.0).all()) and bool((t1[:, -1] == INFINITY).all())
    # the first half covers exactly the part of the ray inside the box [-1, 1]^3
    p_in, p_out = o + t0[:, :1] * d, o + t0[:, 6:7] * d
    assert float(p_in.abs().amax(-1).sub(1).abs().max()) < 1e-4
    assert float(p_out.abs().amax(-1).sub(1).abs().max()) < 1e-4


def test_outer_intervals_are_linear_in_disparity():
    o, d = torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    t0, _ = stratified_intervals(o, d, 8, near=1.0, far=1000.0, inner_fraction=0.5)
    outer = torch.cat([t0[0, 4:8], torch.tensor([1000.0])])  # box exit at t = 4 ... far
    steps = (1 / outer).diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-4)
    assert t0[0, 4].item() == pytest.approx(4.0)


def test_jitter_moves_boundaries_but_keeps_the_parts():
    o, d = _rays(8)
    plain, _ = stratified_intervals(o, d, 8, near=0.5, far=50.0, inner_fraction=0.5)
    torch.manual_seed(0)
    jittered, _ = stratified_intervals(o, d, 8, near=0.5, far=50.0, inner_fraction=0.5, jitter=True)
    assert not torch.equal(plain, jittered)
    for col in (0, 4, 8):  # part boundaries stay: box entry, box exit, far
        assert torch.allclose(plain[:, col], jittered[:, col])


def test_rays_that_miss_the_box_spend_their_samples_outside():
    o, d = torch.tensor([[0.0, 3.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    t0, t1 = stratified_intervals(o, d, 6, near=1.0, far=10.0, inner_fraction=0.5)
    assert bool(((t1 - t0)[0, :3] == 0).all())  # zero-length inner intervals
    assert t0[0, 3].item() == pytest.approx(1.0) and t0[0, 6].item() == 10.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(near=2.0, far=1.0), "near"),
        (dict(near=0.5, far=10.0, inner_fraction=1.5), "inner_fraction"),
        (dict(near=-1.0, far=10.0), "near"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    o, d = _rays(2)
    with pytest.raises(ValueError, match=match):
        stratified_intervals(o, d, 4, **kwargs)


def _ball_field(x, d, s):
    inside = x.norm(dim=-1) < 0.5
    rgb = torch.where(inside[:, None], torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    return 200.0 * inside.float() + 1e-6, rgb  # the tiny density makes only the background opaque


def test_renderer_stratified_is_opaque_with_the_far_colour_behind_the_scene():
    r = Renderer(sampling="stratified", max_samples=64, near=1.0, far=100.0, aabb=[-1, -1, -1, 1, 1, 1])
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.9, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    out = r(_ball_field, (o, d))
    assert torch.allclose(out.opacity, torch.ones(2))  # the background interval closes every ray
    assert out.rgb[0, 0].item() > 0.95  # the ball
    assert out.rgb[1, 2].item() > 0.99  # the field's colour at far (blue)
    assert out.depth[0].item() == pytest.approx(2.5, abs=0.1)  # 3% of the weight on the background
    assert out.depth[1].item() == pytest.approx(100.0, rel=0.01)  # background counted at far
    assert out.grid is None and out.t_starts.numel() == 2 * 65


def test_renderer_stratified_gradients_reach_the_field():
    r = Renderer(sampling="stratified", max_samples=16, near=1.0, far=50.0)
    colour = torch.tensor([0.2, 0.4, 0.6], requires_grad=True)
    sigma = torch.tensor(2.0, requires_grad=True)

    def field(x, d, s):
        return sigma * (x.norm(dim=-1) < 1).float() + 1e-2, colour.expand(len(x), 3)

    o, d = _rays(4)
    out = r(field, (o, d))
    (out.rgb.sum() + out.depth.sum()).backward()
    assert colour.grad is not None and bool(torch.isfinite(colour.grad).all())
    assert sigma.grad is not None and float(sigma.grad.abs()) > 0


def test_renderer_rejects_unknown_sampling():
    with pytest.raises(ValueError, match="sampling"):
        Renderer(sampling="dense")
    with pytest.raises(ValueError, match="inner_fraction"):
        Renderer(sampling="stratified", inner_fraction=-0.1)


def test_stratified_depth_is_robust_to_weight_on_the_far_background():
    """5% of the weight on the background at far = 1000 moves the depth of a surface at 2 by ~5%."""
    r = Renderer(sampling="stratified", max_samples=32, near=1.0, far=1000.0)

    def field(x, d, s):  # a half-transparent slab at z in [0.95, 1.0] in front of the box centre
        slab = (x[:, 2] < 1.0) & (x[:, 2] > 0.95)
        return 60.0 * slab.float() + 1e-9, torch.ones(len(x), 3)

    out = r(field, (torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]])))
    assert out.opacity.item() == pytest.approx(1.0)
    assert 2.0 < out.depth.item() < 2.2  # expected depth would be ~50
