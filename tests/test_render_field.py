"""Tests for vq3dlib.render.field (RadianceField: encoder + head in the renderer's field protocol)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vq3dlib import ContractedTriplane, OccupancyGrid, Renderer, TriplaneField, canonical_cameras
from vq3dlib.render import RadianceField


def _rays(n: int):
    o = torch.tensor([0.0, 0.0, -2.5]).expand(n, 3) + 0.2 * torch.randn(n, 3)
    d = nn.functional.normalize(torch.tensor([0.0, 0.0, 1.0]) + 0.2 * torch.randn(n, 3), dim=-1)
    return o, d


def test_one_scene_field_matches_its_parts_and_trains():
    triplane = ContractedTriplane(16, 4)
    head = TriplaneField(4, 16, density_bias=0.0, mlp_backend="torch")
    field = RadianceField(triplane, head)
    x, d = torch.randn(50, 3), nn.functional.normalize(torch.randn(50, 3), dim=-1)
    density, rgb = field(x, d, torch.zeros(50, dtype=torch.long))
    expected = head(triplane(x))
    torch.testing.assert_close(density, expected.density)
    torch.testing.assert_close(rgb, expected.rgb)
    torch.testing.assert_close(field.density(x), head.density(triplane(x)))
    assert set(dict(field.named_parameters())) == {"encoder.planes"} | {
        f"head.{k}" for k, _ in head.named_parameters()
    }
    # renders, and the renderer's gradients reach both parts
    out = Renderer(step_size=0.05, far=6.0)(field, _rays(32), background=1.0)
    out.rgb.mean().backward()
    assert triplane.planes.grad is not None and triplane.planes.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())


def test_with_planes_renders_a_batch_of_generated_scenes():
    torch.manual_seed(1)
    nerf = RadianceField(ContractedTriplane(channels=4, learnable=False), TriplaneField(4, 16))
    planes = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    field = nerf.with_planes(planes)
    assert field.encoder is nerf.encoder and field.head is nerf.head and field.planes is planes
    assert nerf.planes is None  # the unbound field is unchanged
    x, d = torch.randn(10, 3), torch.randn(10, 3)
    scene = torch.tensor([0] * 5 + [1] * 5)
    density, rgb = field(x, d, scene)
    for k in (0, 1):  # each sample reads its own scene's planes
        alone = nerf.with_planes(planes[k : k + 1].detach())
        sel = scene == k
        d_k, rgb_k = alone(x[sel], d[sel], torch.zeros(5, dtype=torch.long))
        torch.testing.assert_close(density[sel], d_k)
        torch.testing.assert_close(rgb[sel], rgb_k)
        torch.testing.assert_close(field.density(x[sel], scene[sel]), d_k)
    assert not torch.allclose(density[:5], nerf.with_planes(planes[1:].detach())(x[:5], d[:5], scene[:5])[0])
    # the whole pattern: grid from field.density (no detaching), one batched render, channels-first images
    cams = canonical_cameras(2, distance=2.7, fov_degrees=40.0, image_size=(6, 6))
    grid = OccupancyGrid.from_field(field.density, 8, n_scenes=2)
    images = Renderer(step_size=1 / 16)(field, cams, grid=grid).images()
    assert images["rgb"].shape == (2, 3, 6, 6) and not grid.occs.requires_grad
    images["rgb"].mean().backward()
    assert planes.grad is not None and planes.grad[0].abs().sum() > 0 and planes.grad[1].abs().sum() > 0


def test_view_dependent_head_gets_directions():
    head = TriplaneField(4, 16, use_view_dirs=True, mlp_backend="torch")
    field = RadianceField(ContractedTriplane(8, 4), head)
    assert (
        field.use_view_dirs
        and not RadianceField(ContractedTriplane(8, 4), head, use_view_dirs=False).use_view_dirs
    )
    x = torch.randn(20, 3)
    d1 = nn.functional.normalize(torch.randn(20, 3), dim=-1)
    density1, rgb1 = field(x, d1)
    density2, rgb2 = field(x, -d1)
    torch.testing.assert_close(density1, density2)  # geometry does not depend on the view
    assert not torch.allclose(rgb1, rgb2)
    torch.testing.assert_close(field.density(x), density1)


def test_plain_callables_and_tuple_heads():
    calls = []

    def encoder(x):
        return torch.cat([x, x.norm(dim=-1, keepdim=True)], dim=-1)

    def head(features):  # no .density: the field falls back to the full call
        calls.append(features.shape[0])
        return features[:, 3].clamp(min=0), torch.sigmoid(features[:, :3]), None

    field = RadianceField(encoder, head)
    assert field.device is None  # nothing to tell where it lives
    x = torch.randn(6, 3)
    torch.testing.assert_close(field.density(x), x.norm(dim=-1))
    density, rgb = field(x, torch.zeros(6, 3))
    assert density.shape == (6,) and rgb.shape == (6, 3) and calls == [6, 6]
    assert RadianceField(ContractedTriplane(8, 4), TriplaneField(4, 8)).device == torch.device("cpu")


def test_device_follows_planes_and_parameters(device):
    nerf = RadianceField(ContractedTriplane(channels=4, learnable=False), TriplaneField(4, 8)).to(device)
    assert nerf.device.type == device.type
    field = nerf.with_planes(torch.randn(1, 3, 4, 8, 8, device=device))
    assert field.device.type == device.type
    out = Renderer(step_size=0.1)(field, canonical_cameras(1, 2.7, 40.0, (4, 4)))  # CPU cameras, moved
    assert out.rgb.device.type == device.type


def test_bad_inputs():
    tri, head = ContractedTriplane(8, 4), TriplaneField(4, 8)
    with pytest.raises(TypeError, match="encoder"):
        RadianceField("triplane", head)
    with pytest.raises(TypeError, match="head"):
        RadianceField(tri, 3)
    with pytest.raises(TypeError, match="planes"):
        RadianceField(tri, head, planes=[1.0])
    with pytest.raises(TypeError, match="planes"):
        RadianceField(tri, head).with_planes("planes")
    with pytest.raises(TypeError, match="density"):
        RadianceField(tri, lambda f, d: (f[:, 0], f[:, :3]), use_view_dirs=True)
    field = RadianceField(tri, head)
    with pytest.raises(ValueError, match="positions"):
        field(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="directions"):
        field(torch.zeros(4, 3), torch.zeros(3, 3))
    with pytest.raises(TypeError, match="head must return"):
        RadianceField(tri, lambda f: f)(torch.zeros(4, 3), torch.zeros(4, 3))
