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


@pytest.mark.parametrize("depth_channels", [None, 1])
def test_uniform_depth_bins_give_the_plain_lifting(depth_channels):
    plain = PlaneLifting(8, camera_distance=2.7, fov_degrees=40.0, channels=2)
    deep = PlaneLifting(8, camera_distance=2.7, fov_degrees=40.0, channels=2, depth_bins=5,
                        depth_channels=depth_channels)
    feats = torch.randn(2, 6, 8, 8)
    uniform = torch.cat([feats, torch.zeros(2, 5, 8, 8)], dim=1)  # equal logits
    torch.testing.assert_close(deep(uniform), plain(feats))


def test_with_logits_returns_the_depth_bins_and_gradients_reach_every_channel():
    lift = PlaneLifting(8, camera_distance=2.7, fov_degrees=40.0, channels=2, depth_bins=4,
                        depth_channels=1)
    feats = torch.randn(2, 10, 8, 8, requires_grad=True)
    planes, bins = lift(feats, with_logits=True)
    torch.testing.assert_close(planes, lift(feats))
    assert torch.equal(bins, feats[:, 6:])
    (planes.square().sum() + bins.sum()).backward()
    assert feats.grad.abs().amax(dim=(0, 2, 3)).gt(0).all()  # xy, both side planes' parts, the bins


def test_only_the_last_depth_channels_follow_the_depth_bins():
    lift = PlaneLifting(8, camera_distance=2.7, fov_degrees=40.0, channels=2, depth_bins=4,
                        depth_channels=1)
    plain = PlaneLifting(8, camera_distance=2.7, fov_degrees=40.0, channels=2)
    feats = torch.randn(1, 6, 8, 8)
    logits = torch.randn(1, 4, 8, 8) * 5
    out, ref = lift(torch.cat([feats, logits], dim=1)), plain(feats)
    torch.testing.assert_close(out[:, :, 0], ref[:, :, 0])  # channel 0: plain means on every plane
    assert not torch.allclose(out[:, 1:, 1], ref[:, 1:, 1])  # channel 1 of xz/yz: at the depth
    with pytest.raises(ValueError, match="depth_channels"):
        PlaneLifting(8, camera_distance=2.7, fov_degrees=40.0, channels=2, depth_bins=4, depth_channels=3)


def test_depth_bins_place_a_pixel_feature_at_its_predicted_depth():
    """A column's feature with all its depth mass in one bin lights the xz texels at that depth only."""
    res, dist, bins = 32, 2.7, 8
    lift = PlaneLifting(res, camera_distance=dist, fov_degrees=40.0, channels=1, depth_bins=bins,
                        contraction="none")
    feats = torch.zeros(1, 3 + bins, 16, 16)
    feats[0, 1, :, 8] = 1.0  # xz channel: one column near the image centre
    k = 3
    feats[0, 3:] = -30.0
    feats[0, 3 + k] = 30.0  # every pixel predicts depth bin k
    xz = lift(feats)[0, 1, 0]  # [R (z), R (x)]
    lit = xz > 0.25 * float(xz.max())
    z = _texel_world_points(res, 1, 1.0, "none")[..., 2]
    from vq3dlib.models.lifting import depth_bin_coordinate

    t = depth_bin_coordinate(dist - z, dist)
    bin_of_texel = ((t + 1) / 2 * bins).floor()
    assert bool(lit.any())
    assert set(bin_of_texel[lit].long().tolist()) <= {k - 1, k, k + 1}  # bilinear: at most a neighbour
    assert float(xz[bin_of_texel.long() == k].max()) == float(xz.max())


def test_lifting_depth_loss_is_lowest_at_the_target_bin_and_skips_unmeasured_pixels():
    from vq3dlib.models.lifting import depth_bin_coordinate, lifting_depth_loss

    bins, dist = 16, 2.7
    depth = torch.tensor([[[2.0, 5.0]]])  # [1, 1, 2]
    t = depth_bin_coordinate(depth, dist)
    centre = ((t + 1) / 2 * bins - 0.5).round().long()  # nearest bin of each pixel
    scores = []
    for shift in (0, 2, 5):
        peak = (centre[0, 0] + shift).float()  # [2]
        logits = -(torch.arange(bins).float()[:, None] - peak).square()[None, :, None, :] / 2
        scores.append(float(lifting_depth_loss(logits, 1 / depth, dist)))
    assert scores[0] < scores[1] < scores[2]
    logits = torch.randn(1, bins, 1, 2, requires_grad=True)
    loss = lifting_depth_loss(logits, torch.tensor([[[0.5, 0.0]]]), dist)  # second pixel unmeasured
    loss.backward()
    assert float(logits.grad[..., 1].abs().max()) == 0.0 and float(logits.grad[..., 0].abs().max()) > 0
    assert float(lifting_depth_loss(logits.detach(), torch.zeros(1, 1, 2), dist)) == 0.0
    with pytest.raises(ValueError, match="disparity"):
        lifting_depth_loss(logits, torch.ones(1, 2, 2), dist)


def test_bad_depth_bins_are_rejected():
    with pytest.raises(ValueError, match="depth_bins"):
        PlaneLifting(8, camera_distance=2.0, fov_degrees=40.0, channels=1, depth_bins=-1)
    lift = PlaneLifting(8, camera_distance=2.0, fov_degrees=40.0, channels=1, depth_bins=4)
    with pytest.raises(ValueError, match="features"):
        lift(torch.zeros(1, 3, 8, 8))  # the 4 depth channels are missing


def test_model_trains_the_lifting_depth_bins_from_the_depth():
    from vq3dlib.models import VQ3DModel

    micro = dict(render_resolution=8, lifting_depth_bins=8, lifting_depth_weight=0.01)
    model = VQ3DModel.from_config("tiny", **micro).train()
    images, depth = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32) + 0.1
    out = model(images, depth=depth, step=0)
    assert "lifting_depth" in out["losses"] and float(out["losses"]["lifting_depth"].detach()) > 0
    out["losses"]["lifting_depth"].backward()
    grad = model.decoder.lift_head.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert "lifting_depth" not in model(images, step=0)["losses"]  # no depth, no term
    off = VQ3DModel.from_config("tiny", render_resolution=8, lifting_depth_weight=0.0).train()
    assert "lifting_depth" not in off(images, depth=depth, step=0)["losses"]  # weight 0


def test_the_lifting_depth_loss_needs_depth_bins_and_a_depth_scale():
    from vq3dlib.models import get_config

    with pytest.raises(ValueError, match="lifting_depth_bins"):
        get_config("tiny", lifting_depth_bins=0)  # tiny trains its bins: weight without bins
    with pytest.raises(ValueError, match="lsq"):
        get_config("tiny", depth_align="lsq")
    with pytest.raises(ValueError, match="lifting_depth_channels"):
        get_config("tiny", lifting_depth_channels=17)  # tiny's planes have 16 channels
    assert get_config("tiny", lifting_depth_bins=0, lifting_depth_weight=0.0).lifting_depth_bins == 0
