"""Lifting image-aligned decoder features onto the triplane through the input camera."""

import math

import pytest
import torch

from vq3dlib.cameras import canonical_cameras
from vq3dlib.models.decoder import TriplaneDecoder
from vq3dlib.models.lifting import PlaneLifting, _texel_world_points, lifting_grids
from vq3dlib.ops.triplane import triplane_sample


def test_xy_texels_sample_the_pixel_they_project_to():
    """A feature map that is one at a single pixel lights the xy texels that pixel's ray crosses."""
    size, res, dist, fov = 16, 32, 2.7, 40.0
    lift = PlaneLifting(res, camera_distance=dist, fov_degrees=fov, channels=1, contraction="none")
    row, col = 4, 11
    feats = torch.zeros(1, 3, size, size)
    feats[0, 0, row, col] = 1.0
    xy = lift(feats)[0, 0, 0]  # [R (y), R (x)]
    y_idx, x_idx = divmod(int(xy.argmax()), res)
    points = _texel_world_points(res, 0, 1.0, "none")
    x, y = points[y_idx, x_idx, 0].item(), points[y_idx, x_idx, 1].item()
    # project the brightest texel with the canonical camera: it must land in pixel (row, col)
    rays = canonical_cameras(1, dist, fov, (size, size)).generate_rays()
    direction = rays.directions[0, row, col]
    t = dist / -direction[2]
    hit = rays.origins[0, row, col] + t * direction  # where the pixel's ray crosses z = 0
    texel = 2.0 / res
    assert abs(hit[0].item() - x) <= texel and abs(hit[1].item() - y) <= texel


def test_xz_and_yz_planes_see_column_and_row_means():
    res = 8
    lift = PlaneLifting(res, camera_distance=2.0, fov_degrees=60.0, channels=1)
    feats = torch.zeros(1, 3, 8, 8)
    feats[0, 1, :, 6:] = 1.0  # xz channel: right columns
    feats[0, 2, 0:2, :] = 1.0  # yz channel: top rows
    planes = lift(feats)[0, :, 0]
    xz, yz = planes[1], planes[2]  # xz: rows z, columns x; yz: rows z, columns y
    assert float(xz[:, : res // 2].abs().max()) == 0.0  # -x half: the left columns are dark
    assert float(xz[res // 2, -2:].min()) > 0.5
    assert float(yz[:, : res // 2].abs().max()) == 0.0  # -y half (image bottom) dark
    assert float(yz[res // 2, -1]) > 0.5  # +y (image top)


def test_texels_behind_the_camera_fade_to_zero():
    grids, fade = lifting_grids(16, camera_distance=0.5, fov_degrees=40.0, contraction="none")
    points = _texel_world_points(16, 1, 1.0, "none")
    behind = points[..., 2] >= 0.5
    assert bool(behind.any()) and float(fade[1][behind].max()) == 0.0
    assert float(fade[0].min()) == 1.0  # the xy plane lies at z = 0, in front of the camera
    assert grids.shape == (3, 16, 16, 2) and bool(torch.isfinite(grids).all())


def test_linf_texels_reach_the_far_field():
    pts = _texel_world_points(32, 0, 1.0, "linf")
    assert float(pts[..., :2].abs().max()) > 10  # the outer texels are far away
    assert float(pts[..., 2].abs().max()) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"), [(dict(contraction="l2"), "contraction"), (dict(fov_degrees=180.0), "fov")]
)
def test_bad_lifting_arguments(kwargs, match):
    args = dict(resolution=8, camera_distance=2.0, fov_degrees=40.0) | kwargs
    with pytest.raises(ValueError, match=match):
        lifting_grids(**args)


def test_decoder_with_lifting_shapes_gradients_and_checks():
    lift = PlaneLifting(16, camera_distance=2.7, fov_degrees=40.0, channels=4)
    sizes = dict(grid_size=4, width=16, depth=1, heads=2, plane_resolution=16)
    dec = TriplaneDecoder(**sizes, plane_channels=4, lifting=lift)
    tokens = torch.randn(2, 16, 16, requires_grad=True)
    planes = dec(tokens)
    assert planes.shape == (2, 3, 4, 16, 16)
    planes.square().sum().backward()
    assert dec.lift_head.weight.grad is not None and float(dec.lift_head.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="lifting"):
        TriplaneDecoder(**sizes, plane_channels=8, lifting=lift)


def test_lifted_plane_renders_an_image_feature_where_the_camera_sees_it():
    """End to end with the triplane sampler: the feature of the image centre lies on the optical axis."""
    lift = PlaneLifting(32, camera_distance=2.7, fov_degrees=40.0, channels=1)
    feats = torch.zeros(1, 3, 8, 8)
    feats[0, 0, 3:5, 3:5] = 1.0  # image centre, xy channel
    planes = lift(feats)
    on_axis = triplane_sample(planes, torch.tensor([[0.0, 0.0, 0.3]]), contraction="linf", reduce="sum")
    off_axis = triplane_sample(planes, torch.tensor([[0.8, 0.8, 0.0]]), contraction="linf", reduce="sum")
    assert on_axis.item() > 0.5 and off_axis.item() == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(on_axis.item())
