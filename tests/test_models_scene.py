"""Scenes of a VQ3D model (vq3dlib.models.scene): selection, rendering, turntables, density, meshes."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import fast_vq3d, micro_vq3d


def test_export_mesh_of_a_sphere_density():
    pytest.importorskip("skimage")
    model = micro_vq3d().eval()
    scene = model.reconstruct(torch.rand(1, 3, 16, 16))
    # replace the learned density by an analytic sphere to check the meshing path end to end
    model.density = lambda planes, points, index: 20.0 * (points.norm(dim=-1) < 0.5).float()
    for threshold in (10.0, None):  # None: 50% opacity per cell, ln 2 / (2 / 23) = 8.0, inside [0, 20]
        verts, faces = scene.export_mesh(resolution=24, threshold=threshold)
        radius = verts.norm(dim=-1)
        assert faces.shape[1] == 3 and verts.shape[1] == 3
        assert float(radius.mean()) == pytest.approx(0.5, abs=0.06)


def test_mesh_threshold_levels():
    from vq3dlib.models.scene import mesh_threshold

    volume = torch.zeros(8, 8, 8)
    volume[2:6, 2:6, 2:6] = 100.0
    assert mesh_threshold(volume, 0.1) == pytest.approx(math.log(2) / 0.1)  # 50% opacity over one cell
    with pytest.warns(UserWarning, match="outside the sampled density range"):
        assert mesh_threshold(volume, 1e-4) == pytest.approx(50.0)  # middle of [0, 100]
    with pytest.raises(ValueError, match="constant"):
        mesh_threshold(torch.ones(4, 4, 4), 0.1)


def test_export_mesh_automatic_threshold_on_the_model_density():
    pytest.importorskip("skimage")
    import warnings

    from vq3dlib.models.scene import mesh_threshold

    model = fast_vq3d().eval()
    scene = model.reconstruct(torch.rand(1, 3, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verts, faces = scene.export_mesh(resolution=16)
        volume = scene.density_volume(16)
        level = mesh_threshold(volume, 2.0 / 15)
    assert verts.shape[0] > 0 and faces.shape[0] > 0 and int(faces.max()) < verts.shape[0]
    assert float(verts.abs().max()) <= model.config.scene_bound + 1e-5
    # the vertices lie on the chosen level set of the real density (up to trilinear interpolation)
    err = (scene.density(verts) - level).abs().median()
    assert float(err) < 0.25 * float(volume.max() - volume.min())


def test_scene_selection_and_the_render_result():
    model = micro_vq3d().eval()
    scene = model.reconstruct(torch.rand(3, 3, 16, 16))
    one, tail = scene[1], scene[-2:]
    assert len(one) == 1 and len(tail) == 2 and torch.equal(one.planes, scene.planes[1:2])
    assert torch.equal(tail.indices, scene.indices[1:])
    with pytest.raises(IndexError):
        scene[3]
    out = one.render(model.canonical_cameras(1))
    assert out.rgb.shape == (1, 8, 8, 3) and out.grid is None and out.features is not None  # stratified
    images = out.images()
    assert set(images) == {"rgb", "depth", "disparity", "opacity", "features", "image"}
    assert images["rgb"].shape == (1, 3, 8, 8) and images["image"].shape == (1, 3, 16, 16)
    march = micro_vq3d(sampling="march", contraction="linf", field_out_features=0, super_resolution=False)
    march = march.eval()
    out = march.reconstruct(torch.rand(1, 3, 16, 16)).render(march.canonical_cameras(1))
    assert out.grid is not None and out.features is None
    assert set(out.images()) == {"rgb", "depth", "disparity", "opacity", "image"}


def test_turntables_swing_around_the_input_view_with_a_fixed_jitter():
    from vq3dlib.models.scene import DEFAULT_SWEEP, render_turntable, turntable_cameras

    model = micro_vq3d().eval()
    cams = turntable_cameras(model.config, 4, resolution=16)
    assert len(cams) == 4 and cams.image_size == (16, 16)
    azimuth = torch.rad2deg(torch.atan2(cams.centers[:, 0], cams.centers[:, 2]))
    assert float(azimuth.abs().max()) == pytest.approx(DEFAULT_SWEEP / 2, abs=1e-3)
    norms = cams.centers.norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, model.config.camera_distance))
    scene = model.reconstruct(torch.rand(2, 3, 16, 16))
    a, b = render_turntable(scene, n_frames=3, index=1), render_turntable(scene, n_frames=3, index=1)
    assert a["rgb"].shape == (3, 3, 8, 8) and a["depth"].shape == (3, 1, 8, 8)
    assert torch.equal(a["rgb"], b["rgb"]) and float(a["rgb"].min()) >= 0 and float(a["rgb"].max()) <= 1


def _counts(mesh) -> str:
    return f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces, watertight={mesh.is_watertight}"


def test_meshes_are_closed_where_the_surface_meets_the_meshing_cube():
    pytest.importorskip("skimage")
    trimesh = pytest.importorskip("trimesh")
    from skimage.measure import marching_cubes

    model = micro_vq3d().eval()
    scene = model.reconstruct(torch.rand(1, 3, 16, 16))
    # a ground slab (y < -0.2) that runs out of the meshed cube on four sides, and a ball on it
    model.density = lambda planes, x, index: (
        20.0 * ((x[:, 1] < -0.2) | ((x - 0.3).norm(dim=-1) < 0.3)).float()
    )
    verts, faces = scene.export_mesh(resolution=20, threshold=10.0)
    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy())
    print("closed mesh:", _counts(mesh))
    assert mesh.is_watertight and len(mesh.faces) > 100
    assert float(verts.abs().max()) <= model.config.scene_bound
    bottom, cell = float(verts[:, 1].min()), 2 * model.config.scene_bound / 19
    assert -model.config.scene_bound < bottom < -model.config.scene_bound + cell  # the slab's cap
    # marching cubes of the unpadded volume leaves the slab open at the cube's faces
    v, f, _, _ = marching_cubes(scene.density_volume(20).numpy(), level=10.0)
    open_mesh = trimesh.Trimesh(v, f)
    print("unpadded mesh:", _counts(open_mesh))
    assert not open_mesh.is_watertight


def test_mesh_vertex_colours_are_the_colours_the_renderer_composites():
    pytest.importorskip("skimage")
    model = micro_vq3d().eval()
    scene = model.reconstruct(torch.rand(1, 3, 16, 16))
    points = torch.rand(50, 3) * 2 - 1
    index = torch.zeros(50, dtype=torch.long)
    eye = torch.tensor([0.0, 0.0, model.config.camera_distance])
    dirs = torch.nn.functional.normalize(points - eye, dim=-1)
    _, rendered_rgb = model._field_fn(scene.planes)(points, dirs, index)  # what the renderer composites
    torch.testing.assert_close(scene.colors(points), rendered_rgb[:, :3].clamp(0, 1))
    model.density = lambda planes, x, i: 20.0 * (x.norm(dim=-1) < 0.6).float()
    mesh = scene.mesh(resolution=16, threshold=10.0)
    print("coloured ball:", _counts(mesh))
    assert mesh.is_watertight
    expected = (scene.colors(torch.from_numpy(mesh.vertices).float()) * 255).round()
    assert torch.equal(torch.from_numpy(mesh.visual.vertex_colors[:, :3]).float(), expected)
    assert (mesh.visual.vertex_colors[:, 3] == 255).all()
    assert scene.mesh(resolution=16, threshold=10.0, colors=False).visual.kind is None


def test_view_cameras_place_any_camera():
    from vq3dlib.models.scene import view_cameras

    model = micro_vq3d().eval()
    cfg = model.config
    cams = view_cameras(cfg, yaw=[0.0, 90.0, 0.0], pitch=[0.0, 0.0, 45.0], distance=2.0, resolution=12)
    expected = torch.tensor([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0], [0.0, 2.0**0.5, 2.0**0.5]])
    torch.testing.assert_close(cams.centers, expected, atol=1e-5, rtol=0)
    assert cams.image_size == (12, 12)
    front = view_cameras(cfg)  # the canonical camera of the model
    torch.testing.assert_close(front.cam_to_world, model.canonical_cameras(1).cam_to_world, atol=1e-6, rtol=0)
    torch.testing.assert_close(front.intrinsics, model.canonical_cameras(1).intrinsics)
    narrow = view_cameras(cfg, fov_degrees=cfg.fov_degrees / 2)
    assert float(narrow.intrinsics[0, 0, 0]) > 2 * float(front.intrinsics[0, 0, 0])  # focal ∝ 1/tan(fov/2)
    with pytest.raises(ValueError, match="yaw and pitch"):
        view_cameras(cfg, yaw=[0.0, 1.0], pitch=[0.0, 1.0, 2.0])
