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
    march = micro_vq3d(sampling="march", field_out_features=0, super_resolution=False).eval()
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
