"""Tests for vq3dlib.data.procedural: exact analytic depth, determinism, dataset items, validation."""

from __future__ import annotations

import math

import pytest
import torch

from vq3dlib.cameras import Cameras, canonical_cameras, look_at, orbit_cameras
from vq3dlib.data import CLASSES, ProceduralScene, ProceduralScenes, batch_cameras, sample_scene


def hit_points(cams: Cameras, depth: torch.Tensor) -> torch.Tensor:
    """World points [B, H, W, 3] of z-depth maps [B, 1, H, W] along the cameras' rays."""
    rays = cams.generate_rays()
    t = depth[:, 0] / rays.z_scale
    return rays.origins + t[..., None] * rays.directions


def test_unit_sphere_centre_depth_is_d_minus_one():
    for d in (2.0, 3.5):
        out = ProceduralScene.single_sphere(radius=1.0).render(canonical_cameras(1, d, 40.0, (9, 9)))
        assert math.isclose(out["depth"][0, 0, 4, 4].item(), d - 1.0, rel_tol=1e-5)
        assert math.isclose(out["disparity"][0, 0, 4, 4].item(), 1.0 / (d - 1.0), rel_tol=1e-5)
        assert out["mask"][0, 0, 4, 4] == 1


def test_depth_matches_analytic_geometry(device):
    # one off-centre sphere on a ground plane; every pixel lies on the sphere, the plane or the sky sphere
    scene = ProceduralScene.single_sphere(
        center=(0.2, -0.1, 0.1), radius=0.4, ground_height=-0.5, sky_radius=15.0
    )
    cams = orbit_cameras(3, 2.5, 20.0, 50.0, (24, 32), device=device, dtype=torch.float64)
    out = scene.render(cams)
    p = hit_points(cams, out["depth"])
    centre = scene.sphere_center[0, 0].to(device=device, dtype=torch.float64)  # float32-rounded as rendered
    on_sphere = ((p - centre).norm(dim=-1) - 0.4).abs() < 1e-6
    on_ground = (p[..., 1] + 0.5).abs() < 1e-6
    on_sky = (p.norm(dim=-1) - 15.0).abs() < 1e-6
    assert (on_sphere | on_ground | on_sky).all()
    mask = out["mask"][:, 0] > 0.5
    assert torch.equal(mask, on_sphere) and mask.any() and on_ground.any() and on_sky.any()
    # the visible surface is the nearest one: a sky pixel's ray never crosses the sphere
    rays = cams.generate_rays()
    oc = rays.origins - centre
    b = (rays.directions * oc).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - 0.4**2)
    crosses = (disc > 1e-9) & (-b - disc.clamp_min(0).sqrt() > 0)
    assert torch.equal(crosses, mask)
    # z-depth is the camera-space z of the hit point (same as projecting it)
    _, z = cams.project(p)
    torch.testing.assert_close(z, out["depth"][:, 0])
    torch.testing.assert_close(out["disparity"], 1.0 / out["depth"])
    assert torch.equal(out["opacity"], torch.ones_like(out["opacity"]))


def test_box_front_face_has_constant_z_depth():
    s = ProceduralScene.single_sphere()
    s.sphere_valid[:] = False
    s.box_valid[0, 0] = True
    s.box_center[0, 0] = torch.zeros(3)
    s.box_half[0, 0] = torch.full((3,), 0.5)
    s.box_yaw[0, 0] = 0.0
    out = s.render(canonical_cameras(1, 3.0, 40.0, (31, 31), dtype=torch.float64))
    mask = out["mask"][0, 0] > 0.5
    # a front-facing square seen head on: all its pixels have z-depth 2.5 (t varies, z does not)
    torch.testing.assert_close(
        out["depth"][0, 0][mask], torch.full((int(mask.sum()),), 2.5, dtype=torch.float64)
    )
    # the square covers |x|, |y| <= 0.5 at z-depth 2.5: half-width in pixels = 0.5 * f / 2.5
    f = (31 / 2) / math.tan(math.radians(20.0))
    assert abs(mask[15].sum().item() - 2 * 0.5 * f / 2.5) <= 1.0
    # a yawed box shows two faces, with varying depth; all hit points lie on the box surface
    s.box_yaw[0, 0] = math.radians(30.0)
    cams = canonical_cameras(1, 3.0, 40.0, (31, 31), dtype=torch.float64)
    out = s.render(cams)
    m = out["mask"][0, 0] > 0.5
    p = hit_points(cams, out["depth"])[0][m]
    c, sn = math.cos(math.radians(30.0)), math.sin(math.radians(30.0))
    local = torch.stack([c * p[:, 0] - sn * p[:, 2], p[:, 1], sn * p[:, 0] + c * p[:, 2]], -1)
    assert (local.abs().max(-1).values - 0.5).abs().max() < 1e-6  # yaw is stored in float32
    assert out["depth"][0, 0][m].std() > 0.01


def test_colours_in_range_and_view_consistent():
    scene = sample_scene(torch.Generator().manual_seed(7))
    cams = orbit_cameras(
        12, 2.7, 15.0, 40.0, (48, 48), dtype=torch.float64, start_azimuth_degrees=-10.0
    )  # 30° apart
    cam0, cam1 = cams[0], cams[1].resize((192, 192))  # view 1 finer, so nearest pixels are close
    out0, out1 = scene.render(cam0), scene.render(cam1)
    assert out0["rgb"].min() >= 0 and out0["rgb"].max() <= 1
    # a 3D point seen in view 0 has the same colour where view 1 sees it (colours depend on the point only)
    p0 = hit_points(cam0, out0["depth"])[0].reshape(-1, 3)
    uv1, z1 = cam1.project(p0[None])
    uv1, z1 = uv1[0], z1[0]
    j, i = uv1[:, 0].floor().long(), uv1[:, 1].floor().long()
    inside = (i >= 0) & (i < 192) & (j >= 0) & (j < 192) & (z1 > 0)
    ii, jj = i.clamp(0, 191), j.clamp(0, 191)
    visible = inside & ((out1["depth"][0, 0, ii, jj] - z1).abs() < 0.01 * z1)  # not occluded in view 1
    assert visible.sum() > 500
    rgb0 = out0["rgb"][0].permute(1, 2, 0).reshape(-1, 3)[visible]
    rgb1 = out1["rgb"][0].permute(1, 2, 0)[ii[visible], jj[visible]]
    diff = (rgb0 - rgb1).abs().max(-1).values
    assert diff.median() < 0.01 and (diff < 0.05).float().mean() > 0.9  # only checker/shape edges differ


def test_sample_scene_deterministic_and_labels():
    a = sample_scene(torch.Generator().manual_seed(3))
    b = sample_scene(torch.Generator().manual_seed(3))
    for name in ("sphere_center", "box_half", "ground_color", "label"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    for label in range(len(CLASSES)):
        s = sample_scene(torch.Generator().manual_seed(label), label=label)
        assert int(s.label) == label
        is_sphere = CLASSES[label].endswith("sphere")
        main_valid = s.sphere_valid[0, 0] if is_sphere else s.box_valid[0, 0]
        assert main_valid
        # the dominant object is larger than every distractor
        main = s.sphere_radius[0, 0] if is_sphere else s.box_half[0, 0].max()
        others = torch.cat(
            [s.sphere_radius[0][s.sphere_valid[0]], s.box_half[0].max(-1).values[s.box_valid[0]]]
        )
        assert (others <= main).all() and (others == main).sum() == 1
        # content lies in the unit-ish ball
        centres = torch.cat([s.sphere_center[0][s.sphere_valid[0]], s.box_center[0][s.box_valid[0]]])
        assert centres.norm(dim=-1).max() < 1.3
    with pytest.raises(ValueError, match="label"):
        sample_scene(torch.Generator(), label=len(CLASSES))


def test_dataset_items_shapes_determinism_and_novel_views():
    ds = ProceduralScenes(size=5, resolution=(16, 24), n_novel_views=3, seed=11)
    item = ds[2]
    assert item["image"].shape == (3, 16, 24) and item["image"].dtype == torch.float32
    assert item["depth"].shape == (1, 16, 24) and item["disparity"].shape == (1, 16, 24)
    assert item["mask"].shape == (1, 16, 24)
    assert item["intrinsics"].shape == (3, 3) and item["cam_to_world"].shape == (4, 4)
    assert item["novel_images"].shape == (3, 3, 16, 24) and item["novel_depths"].shape == (3, 1, 16, 24)
    assert item["novel_intrinsics"].shape == (3, 3, 3) and item["novel_cam_to_world"].shape == (3, 4, 4)
    assert item["label"].dtype == torch.int64 and 0 <= int(item["label"]) < len(CLASSES)
    assert (item["depth"] > 0).all() and item["image"].min() >= 0 and item["image"].max() <= 1
    # deterministic given (seed, i), independent of access order and of the dataset object
    again = ProceduralScenes(size=5, resolution=(16, 24), n_novel_views=3, seed=11)
    _ = again[4]
    for k, v in again[2].items():
        assert torch.equal(v, item[k]), k
    other_seed = ProceduralScenes(size=5, resolution=(16, 24), n_novel_views=3, seed=12)[2]
    assert not torch.equal(other_seed["image"], item["image"])
    assert not torch.equal(ds[3]["image"], item["image"])
    # novel views differ from the canonical one and from each other, and match their cameras
    for v in range(3):
        assert (item["novel_images"][v] - item["image"]).abs().mean() > 1e-3
        assert not torch.allclose(item["novel_cam_to_world"][v], item["cam_to_world"])
    assert not torch.equal(item["novel_images"][0], item["novel_images"][1])
    novel = Cameras(item["novel_intrinsics"], item["novel_cam_to_world"], (16, 24))
    rerender = ds.scene(2).render(novel)
    torch.testing.assert_close(rerender["rgb"], item["novel_images"])
    torch.testing.assert_close(rerender["depth"], item["novel_depths"])
    # canonical camera is canonical_cameras(distance=2.7)
    torch.testing.assert_close(
        item["cam_to_world"], canonical_cameras(1, 2.7, 40.0, (16, 24)).cam_to_world[0]
    )


def test_labels_cover_classes_and_collate():
    ds = ProceduralScenes(size=60, resolution=8, n_novel_views=1, seed=0, max_distractors=0, ground=False)
    labels = torch.stack([ds.scene(i).label[0] for i in range(60)])
    assert labels.min() >= 0 and labels.max() < len(CLASSES)
    assert len(labels.unique()) == len(CLASSES)
    batch = torch.utils.data.default_collate([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 3, 8, 8) and batch["novel_images"].shape == (3, 1, 3, 8, 8)
    cams = batch_cameras(batch)
    assert len(cams) == 3 and cams.image_size == (8, 8)
    assert len(batch_cameras(batch, novel=True)) == 3


def test_zero_novel_views_and_empty_dataset():
    ds = ProceduralScenes(size=2, resolution=8, n_novel_views=0)
    item = ds[0]
    assert item["novel_images"].shape == (0, 3, 8, 8) and item["novel_cam_to_world"].shape == (0, 4, 4)
    assert len(ProceduralScenes(size=0, resolution=8)) == 0
    assert torch.equal(ds[-1]["image"], ds[1]["image"])
    with pytest.raises(IndexError):
        ds[2]


def test_bad_inputs():
    with pytest.raises(ValueError, match="size"):
        ProceduralScenes(size=-1)
    with pytest.raises(ValueError, match="n_novel_views"):
        ProceduralScenes(size=1, n_novel_views=-2)
    with pytest.raises(ValueError, match="height"):
        ProceduralScenes(size=1, resolution=0)
    with pytest.raises(ValueError, match="camera_distance"):
        ProceduralScenes(size=1, camera_distance=25.0, sky_radius=20.0)
    with pytest.raises(TypeError, match="novel_view_sampler"):
        ProceduralScenes(size=1, novel_view_sampler="orbit")
    scene = ProceduralScene.single_sphere()
    with pytest.raises(TypeError, match="cameras"):
        scene.render("camera")
    with pytest.raises(ValueError, match="one per scene"):
        ProceduralScene.cat([scene, scene]).render(canonical_cameras(3, 3.0, 40.0, (4, 4)))
    far = Cameras(
        canonical_cameras(1, 3.0, 40.0, (4, 4)).intrinsics, look_at(torch.tensor([[0.0, 0.0, 30.0]])), (4, 4)
    )
    with pytest.raises(ValueError, match="sky sphere"):
        scene.render(far)
