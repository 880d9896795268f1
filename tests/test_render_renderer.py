"""Tests for vq3dlib.render.renderer (Renderer)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from vq3dlib.render.occupancy import OccupancyGrid
from vq3dlib.render.renderer import Renderer

BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def box_field(sigma: float, color=(0.2, 0.4, 0.6)):
    c = torch.tensor(color)

    def field(x, d, s):
        inside = (x.abs() <= 1).all(-1).to(x.dtype)
        return sigma * inside, c.to(x).expand(len(x), 3)

    return field


def sphere_field(radius: float = 0.5, sigma: float = 200.0):
    def field(x, d, s):
        return sigma * (x.norm(dim=-1) < radius).to(x.dtype), torch.ones(len(x), 3, dtype=x.dtype)

    return field


def _rays(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.tensor([0.0, 0.0, 1.0]) + 0.2 * torch.randn(n, 3, generator=g)
    d = torch.nn.functional.normalize(d, dim=-1)
    return o, d


def test_constant_density_box_matches_beer_lambert(device):
    grid = OccupancyGrid(BOX, 8, contraction="none").to(device)
    renderer = Renderer(grid, step_size=0.01, spacing="t", early_stop_eps=0.0, background=[1.0, 1.0, 1.0])
    o, d = (t.to(device) for t in _rays(64))
    out = renderer(box_field(0.7), (o, d))
    from vq3dlib.render.aabb import ray_aabb_intersect

    t0, t1, hit = ray_aabb_intersect(o, d, BOX)
    length = torch.where(hit, t1 - t0, torch.zeros_like(t0))
    opacity = 1 - torch.exp(-0.7 * length)
    assert torch.allclose(out.opacity, opacity, atol=1e-4)
    expected_rgb = torch.tensor([0.2, 0.4, 0.6], device=device) * opacity[:, None] + (1 - opacity)[:, None]
    assert torch.allclose(out.rgb, expected_rgb, atol=1e-4)
    # expected depth of an exponential distribution truncated to [t0, t1]
    lam = 0.7
    mean = t0 + 1 / lam - length * torch.exp(-lam * length) / (1 - torch.exp(-lam * length)).clamp(min=1e-12)
    assert torch.allclose(out.depth[hit], mean[hit], atol=1e-3)
    assert torch.allclose(out.disparity[hit], 1 / out.depth[hit])


def test_opaque_sphere_depth_and_early_stop():
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.2, -3.0], [0.0, 2.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    full = Renderer(step_size=0.005, early_stop_eps=0.0, far=10.0, spacing="t")(sphere_field(), (o, d))
    early = Renderer(step_size=0.005, early_stop_eps=1e-4, far=10.0, spacing="t")(sphere_field(), (o, d))
    surface = torch.tensor([2.5, 3 - math.sqrt(0.25 - 0.04)])
    assert torch.allclose(full.depth[:2], surface, atol=0.01)
    assert full.opacity[2] == 0 and full.depth[2] == 0 and full.disparity[2] == 0
    assert (early.ray_indices < 2).sum() < (full.ray_indices < 2).sum() * 0.6  # hits stop early
    assert torch.allclose(early.rgb, full.rgb, atol=1e-3)
    assert torch.allclose(early.depth, full.depth, atol=1e-3)


def test_grid_skipping_matches_dense_rendering():
    field = sphere_field(0.6, sigma=5.0)
    grid = OccupancyGrid.from_field(lambda x, s: field(x, x, s)[0], resolution=32, dilation=1)
    o, d = _rays(200)
    kw = dict(step_size=0.01, early_stop_eps=0.0, far=8.0)
    dense = Renderer(None, **kw)(field, (o, d))
    skipped = Renderer(grid, **kw)(field, (o, d))
    assert skipped.weights.numel() < dense.weights.numel() / 3
    assert torch.allclose(skipped.rgb, dense.rgb, atol=1e-5)
    assert torch.allclose(skipped.opacity, dense.opacity, atol=1e-5)


def test_multi_scene_batch_equals_separate_renders():
    radii = torch.tensor([0.3, 0.6, 0.9])

    def field(x, d, s):
        return 20.0 * (x.norm(dim=-1) < radii[s]).float(), torch.stack([s.float() / 2] * 3, -1)

    grid = OccupancyGrid.from_field(lambda x, s: field(x, x, s)[0], resolution=24, n_scenes=3, dilation=1)
    o, d = _rays(90)
    scene = torch.arange(3).repeat_interleave(30)
    r = Renderer(grid, step_size=0.01, spacing="contracted")
    both = r(field, (o, d, scene))
    assert torch.equal(both.ray_indices.unique_consecutive(), both.ray_indices.unique())
    for k in range(3):
        single = OccupancyGrid(resolution=24)
        single.binaries.copy_(grid.binaries[k : k + 1])
        rays = slice(30 * k, 30 * (k + 1))
        alone = r(lambda x, dd, s, k=k: field(x, dd, torch.full_like(s, k)), (o[rays], d[rays]), grid=single)
        assert torch.allclose(alone.rgb, both.rgb[rays], atol=1e-6)
        assert torch.allclose(alone.depth, both.depth[rays], atol=1e-5)
    assert both.opacity[:30].mean() < both.opacity[60:].mean()


def test_rays_objects_cameras_and_z_scale():
    o, d = _rays(12)
    z_scale = torch.rand(12) * 0.5 + 0.5
    rays = SimpleNamespace(
        origins=o.view(2, 2, 3, 3),
        directions=d.view(2, 2, 3, 3),
        scene_index=torch.zeros(2, 2, 3, dtype=torch.long),
        z_scale=z_scale.view(2, 2, 3),
    )
    r = Renderer(step_size=0.01, spacing="t", far=8.0)
    out = r(sphere_field(0.8), rays)
    flat = r(sphere_field(0.8), (o, d))
    assert out.rgb.shape == (2, 2, 3, 3) and out.depth.shape == (2, 2, 3)
    assert torch.allclose(out.depth.reshape(-1), flat.depth * z_scale, atol=1e-6)
    cams = SimpleNamespace(generate_rays=lambda: rays)
    assert torch.equal(r(sphere_field(0.8), cams).rgb, out.rgb)


def test_packed_outputs_reproduce_images_and_chunking():
    o, d = _rays(50)
    field = sphere_field(0.7, 3.0)
    big = Renderer(step_size=0.02, far=8.0)(field, (o, d))
    small = Renderer(step_size=0.02, far=8.0, chunk_size=7)(field, (o, d))
    assert torch.equal(big.ray_indices, small.ray_indices)
    assert torch.allclose(big.rgb, small.rgb, atol=1e-6) and torch.allclose(big.weights, small.weights)
    acc = torch.zeros(50).index_add_(0, big.ray_indices, big.weights)
    assert torch.allclose(acc, big.opacity, atol=1e-6)
    # weights = T * alpha with T the product of (1 - alpha) of earlier samples of the same ray
    ray0 = big.ray_indices == big.ray_indices[0]
    mid = ((big.t_starts + big.t_ends)[ray0] / 2)[:, None]
    dens = field(o[big.ray_indices[ray0]] + mid * d[big.ray_indices[ray0]], None, None)[0]
    alpha = 1 - torch.exp(-dens * (big.t_ends - big.t_starts)[ray0])
    trans = torch.cumprod(torch.cat([torch.ones(1), 1 - alpha[:-1]]), 0)
    assert torch.allclose(big.weights[ray0], trans * alpha, atol=1e-6)


def test_gradients_reach_field_parameters_and_rays():
    sigma = torch.tensor(2.0, requires_grad=True)
    color = torch.tensor([0.1, 0.5, 0.9], requires_grad=True)
    o, d = _rays(16)
    o.requires_grad_(True)

    def field(x, dd, s):
        return sigma * torch.exp(-(x * x).sum(-1)), color.expand(len(x), 3) * torch.ones_like(x)

    out = Renderer(step_size=0.02, far=8.0, early_stop_eps=1e-3)(field, (o, d), background=0.5)
    (out.rgb.sum() + out.depth.sum()).backward()
    assert sigma.grad is not None and sigma.grad.abs() > 0
    assert color.grad is not None and color.grad.abs().sum() > 0
    assert o.grad is not None and o.grad.abs().sum() > 0


def test_empty_batch_and_no_hits():
    r = Renderer(OccupancyGrid(BOX, 4, contraction="none"), step_size=0.1)
    out = r(box_field(1.0), (torch.zeros(0, 3), torch.zeros(0, 3)))
    assert out.rgb.shape == (0, 3) and out.weights.shape == (0,)
    miss = r(box_field(1.0), (torch.tensor([[5.0, 5, 5]]), torch.tensor([[0.0, 0, 1]])), background=0.25)
    assert miss.rgb.tolist() == [[0.25, 0.25, 0.25]] and miss.opacity.item() == 0


def test_bad_inputs():
    r = Renderer(step_size=0.1, far=5.0)
    o, d = _rays(4)
    nan_field = lambda x, dd, s: (torch.full((len(x),), math.nan), torch.zeros(len(x), 3))  # noqa: E731
    with pytest.raises(ValueError, match="NaN or Inf density"):
        Renderer(step_size=0.1, far=5.0, early_stop_eps=0.0)(nan_field, (o, d))
    with pytest.raises(ValueError, match="NaN or Inf density"):
        r(nan_field, (o, d))
    with pytest.raises(ValueError, match="density"):
        r(lambda x, dd, s: (torch.zeros(len(x), 2), torch.zeros(len(x), 3)), (o, d))
    with pytest.raises(TypeError, match="pair"):
        r(lambda x, dd, s: torch.zeros(len(x)), (o, d))
    with pytest.raises(TypeError, match="rays"):
        r(box_field(1.0), o)
    with pytest.raises(ValueError, match="scene_index"):
        zeros = torch.zeros(4, dtype=torch.long)
        r(box_field(1.0), (o, d, zeros), scene_index=zeros)
    with pytest.raises(TypeError, match="field"):
        r("field", (o, d))
    with pytest.raises(ValueError, match="spacing"):
        Renderer(spacing="log")
    for near in (-0.5, float("nan")):  # rendering marches from it without a value check
        with pytest.raises(ValueError, match="near must be >= 0"):
            Renderer(near=near)
    with pytest.raises(TypeError, match="grid"):
        Renderer(grid="grid")


@pytest.mark.parametrize("spacing", ["t", "contracted"])
def test_step_length_matches_the_marched_steps(spacing):
    from vq3dlib.render import ray_march

    renderer = Renderer(step_size=0.05, spacing=spacing, far=1e3 if spacing == "t" else 1e10)
    origins = torch.tensor([[0.2, 0.1, -0.3], [0.0, -3.0, 1.0], [5.0, 2.0, -7.5]])
    directions = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 1.0]])
    directions = directions / directions.norm(dim=-1, keepdim=True)
    samples = ray_march(origins, directions, None, step_size=0.05, spacing=spacing, far=renderer.far)
    first = torch.stack([(samples.ray_indices == i).nonzero()[0, 0] for i in range(3)])
    marched = (samples.t_ends - samples.t_starts)[first]
    torch.testing.assert_close(renderer.step_length(origins), marched)
    with pytest.raises(ValueError, match="positions"):
        renderer.step_length(torch.zeros(4, 2))


def test_images_are_channels_first_views_of_the_outputs():
    from vq3dlib import canonical_cameras

    cams = canonical_cameras(2, distance=3.0, fov_degrees=40.0, image_size=(5, 7))
    rgb = torch.tensor([0.2, 0.4, 0.6], requires_grad=True)

    def field(x, d, s):  # a red ball for scene 0, a bigger one for scene 1
        radius = torch.where(s == 0, 0.5, 0.9)
        return 50.0 * (x.norm(dim=-1) < radius).to(x.dtype), rgb.expand(len(x), 3)

    out = Renderer(step_size=0.02, spacing="t", far=6.0)(field, cams)
    images = out.images()
    assert set(images) == {"rgb", "depth", "disparity", "opacity"}
    assert images["rgb"].shape == (2, 3, 5, 7)
    assert all(images[k].shape == (2, 1, 5, 7) for k in ("depth", "disparity", "opacity"))
    assert torch.equal(images["rgb"], out.rgb.permute(0, 3, 1, 2))
    for key in ("depth", "disparity", "opacity"):
        assert torch.equal(images[key][:, 0], getattr(out, key))
    assert images["opacity"][1].sum() > images["opacity"][0].sum()  # the bigger ball covers more pixels
    images["rgb"].sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        Renderer(step_size=0.1, far=5.0)(field, _rays(3)).images()


def test_jitter_per_call_overrides_the_training_mode():
    o, d = _rays(8)
    field = box_field(1.0)
    r = Renderer(OccupancyGrid(BOX, 4, contraction="none"), step_size=0.1, spacing="t", jitter=True)
    assert r.training
    clean = r(field, (o, d), jitter=False)
    assert torch.equal(clean.t_starts, r(field, (o, d), jitter=False).t_starts)  # deterministic
    r.eval()
    assert torch.equal(clean.t_starts, r(field, (o, d)).t_starts)  # same as eval mode's default
    jittered = r(field, (o, d), jitter=True)  # jitter even in eval mode when asked
    assert not torch.equal(jittered.t_starts[:5], clean.t_starts[:5])
    r.train()
    assert not torch.equal(r(field, (o, d)).t_starts[:5], clean.t_starts[:5])  # default: jitter in training


class _RecordingCameras:
    """A ``Cameras`` stand-in that records where the renderer moves it."""

    def __init__(self, rays, moves: list):
        self.rays, self.moves = rays, moves

    def to(self, device):
        self.moves.append(torch.device(device))
        return _RecordingCameras(self.rays.to(device), self.moves)

    def generate_rays(self):
        return self.rays


def test_cameras_move_to_the_field_or_grid_device(device):
    from vq3dlib import canonical_cameras

    rays = canonical_cameras(1, distance=3.0, fov_degrees=40.0, image_size=(3, 3)).generate_rays()
    moves: list = []
    cams = _RecordingCameras(rays, moves)  # on the CPU

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor(3.0))

        def forward(self, x, d, s):
            return self.weight * (x.norm(dim=-1) < 0.5), torch.ones(len(x), 3, device=x.device)

    def plain(x, d, s):
        return 3.0 * (x.norm(dim=-1) < 0.5), torch.ones(len(x), 3, device=x.device)

    r = Renderer(step_size=0.05, spacing="t", far=6.0)
    out = r(Field().to(device), cams)  # the field's parameters decide
    assert (
        [m.type for m in moves] == [device.type]
        and out.rgb.device.type == device.type
        and out.opacity.sum() > 0
    )
    out = r(plain, cams, grid=OccupancyGrid(resolution=4).to(device))  # a plain function: the grid's
    assert [m.type for m in moves] == [device.type] * 2 and out.rgb.device.type == device.type
    r(plain, cams)  # nothing to follow: the cameras stay
    assert len(moves) == 2
    r(Field().to(device), (rays.origins.to(device), rays.directions.to(device)))  # tuples: used as given
    assert len(moves) == 2


def test_bad_field_values_and_backgrounds_are_named():
    r = Renderer(step_size=0.1, far=5.0)
    o, d = _rays(4)
    nan_rgb = lambda x, dd, s: (torch.ones(len(x)), torch.full((len(x), 3), math.nan))  # noqa: E731
    with pytest.raises(ValueError, match="NaN or Inf rgb"):
        r(nan_rgb, (o, d))
    negative = lambda x, dd, s: (torch.full((len(x),), -1.0), torch.zeros(len(x), 3))  # noqa: E731
    with pytest.raises(ValueError, match=r"field density must lie in \[0, inf\].*\[-1.0, -1.0\]"):
        r(negative, (o, d))
    with pytest.raises(ValueError, match="background contains NaN"):
        Renderer(background=math.nan)
    good = lambda x, dd, s: (torch.zeros(len(x)), torch.zeros(len(x), 3))  # noqa: E731
    with pytest.raises(ValueError, match=r"background must be a number, \[3\] or per-ray.*got shape \[5\]"):
        Renderer(step_size=0.1, far=5.0, background=torch.ones(5))(good, (o, d))
    # a valid per-ray background shows through an empty field exactly
    bg = torch.rand(4, 3)
    out = r(good, (o, d), background=bg)
    torch.testing.assert_close(out.rgb, bg)


def _layered_field(x, d, s):
    """Two scenes of shells at |x|_inf = 0.3 and 1.5 (scene 1 denser), and a faint fog between."""
    m = x.abs().amax(-1)
    shell = ((m - 0.3).abs() < 0.05) | ((m - 1.5).abs() < 0.2)
    sigma = torch.where(shell, 40.0 * (1 + s.to(x.dtype)), torch.full_like(m, 0.05))
    return sigma, torch.stack([m, s.to(x.dtype).expand_as(m), torch.ones_like(m)], -1)


@pytest.mark.parametrize("max_samples, jitter", [(1024, False), (1024, True), (45, False)])
def test_marching_in_rounds_until_opaque_keeps_the_samples_of_one_full_march(
    monkeypatch, max_samples, jitter
):
    import vq3dlib.render.renderer as renderer_module

    grid = OccupancyGrid(None, 16, contraction="linf", n_scenes=2)
    grid.binaries[1, :, 4:12, 4:12, 4:12] = False  # scene 1 hollow in the middle
    g = torch.Generator().manual_seed(0)
    o = torch.randn(300, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, -4.0])
    d = torch.nn.functional.normalize(
        torch.tensor([0.0, 0.0, 1.0]) + 0.4 * torch.randn(300, 3, generator=g), dim=-1
    )
    scene = torch.arange(300) % 2
    renderer = Renderer(grid, step_size=0.02, max_samples=max_samples, early_stop_eps=1e-3, alpha_thre=1e-4)
    evaluated = []

    def counted(x, dd, s):
        evaluated.append(len(x))
        return _layered_field(x, dd, s)

    def render(first_round):
        monkeypatch.setattr(renderer_module, "FIRST_ROUND_SAMPLES", first_round)
        evaluated.clear()
        torch.manual_seed(1)
        out = renderer(counted, (o, d), scene_index=scene, jitter=jitter)
        return out, sum(evaluated[:-1])  # pre-pass samples (the last call is the final field)

    one, prepass_one = render(max_samples)  # a single round: every ray marched to its end
    rounds, prepass_rounds = render(4)
    for name in ("ray_indices", "t_starts", "t_ends", "weights", "rgb", "depth", "opacity"):
        assert torch.equal(getattr(rounds, name), getattr(one, name)), name
    assert (one.opacity > 0.99).float().mean() > 0.5  # most rays do end opaque
    assert prepass_rounds < 0.8 * prepass_one  # and are not evaluated behind their surface


def test_nan_from_a_fields_density_method_is_named():
    class Field:
        def density(self, x, s):
            return torch.full((len(x),), math.nan)

        def __call__(self, x, d, s):
            return torch.ones(len(x)), torch.ones(len(x), 3)

    renderer = Renderer(OccupancyGrid(resolution=8), step_size=0.05)
    rays = (torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="field.density must lie in"):
        renderer(Field(), rays)


@pytest.mark.parametrize("spacing", ["contracted", "t"])
def test_without_autograd_the_prepass_values_are_reused_for_the_render(spacing):
    grid = OccupancyGrid(None, 16, contraction="linf", n_scenes=2)
    g = torch.Generator().manual_seed(0)
    o = torch.randn(200, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, -4.0])
    d = torch.nn.functional.normalize(
        torch.tensor([0.0, 0.0, 1.0]) + 0.4 * torch.randn(200, 3, generator=g), dim=-1
    )
    scene = torch.arange(200) % 2
    calls = []

    class Field:
        def density(self, x, s):
            calls.append("density")
            return _layered_field(x, None, s)[0]

        def __call__(self, x, dd, s):
            calls.append("field")
            return _layered_field(x, dd, s)

    renderer = Renderer(grid, step_size=0.02, early_stop_eps=1e-3, far=12.0, spacing=spacing)
    with_grad = renderer(Field(), (o, d), scene_index=scene)
    assert calls[-1] == "field" and "density" in calls  # density pre-pass, then the field at the kept samples
    calls.clear()
    with torch.no_grad():
        without = renderer(Field(), (o, d), scene_index=scene)
    assert set(calls) == {"field"}  # the pre-pass evaluates the whole field, once per sample
    for name in ("ray_indices", "t_starts", "t_ends"):
        assert torch.equal(getattr(without, name), getattr(with_grad, name)), name
    for name in ("rgb", "depth", "opacity", "weights"):
        torch.testing.assert_close(
            getattr(without, name), getattr(with_grad, name).detach(), rtol=0, atol=1e-6
        )
    assert with_grad.opacity.mean() > 0.5
