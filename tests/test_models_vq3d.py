"""VQ3DModel (stage 1): shapes, losses, scenes, persistence, errors, and that it learns."""

from __future__ import annotations

import pytest
import torch

from vq3dlib import ProceduralScenes, VQ3DModel
from vq3dlib.metrics import depth_pearson, psnr
from vq3dlib.models import Scene, get_config
from vq3dlib.models.vq3d import map_disparity_range

MICRO = dict(image_size=16, patch_size=4, plane_resolution=16, render_resolution=8, samples_per_ray=32)


def _micro(**kw) -> VQ3DModel:
    return VQ3DModel.from_config("tiny", **{**MICRO, **kw})


def test_depth_loss_starts_at_its_step():
    model = _micro(depth_start_step=5, adversarial_weight=0.0)
    images, depth = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    assert "depth" not in model(images, depth=depth, step=4)["losses"]
    assert model(images, depth=depth, step=5)["losses"]["depth"] > 0
    with pytest.raises(ValueError, match="depth_start_step"):
        _micro(depth_start_step=-1)


def test_forward_outputs_and_loss_terms():
    model = _micro(distortion_weight=0.01)
    images = torch.rand(2, 3, 16, 16)
    out = model(images, depth=torch.rand(2, 1, 16, 16), step=10_000)
    assert out["reconstruction"].shape == (2, 3, 16, 16)
    assert out["render"].shape == (2, 3, 8, 8)
    for key in ("depth", "disparity", "opacity"):
        assert out[key].shape == (2, 1, 8, 8)
    assert out["indices"].shape == (2, 4, 4) and out["indices"].dtype == torch.long
    assert out["planes"].shape == (2, 3, 16, 16, 16)
    assert out["novel_rgb"].shape == (2, 3, 8, 8)
    assert set(out["losses"]) == {
        "l2",
        "quantizer",
        "depth",
        "distortion",
        "adversarial",
        "adversarial_novel",
    }
    assert torch.isclose(out["loss"], sum(out["losses"].values()))
    out["loss"].backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in model.discriminator_parameters())


def test_adversarial_terms_start_late_and_discriminator_step():
    model = _micro()
    images = torch.rand(2, 3, 16, 16)
    early = model(images, step=0)
    assert "adversarial" not in early["losses"]
    late = model(images, step=model.config.adversarial_start_step)
    assert "adversarial" in late["losses"]
    d = model.discriminator_loss(images, late)
    assert set(d) == {"canonical", "novel", "loss"} and torch.isfinite(d["loss"])
    d["loss"].backward()
    assert all(p.grad is not None for p in model.disc_canonical.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())


def test_reconstruct_render_and_decode_indices():
    model = _micro().eval()
    images = torch.rand(3, 3, 16, 16)
    scene = model.reconstruct(images)
    assert isinstance(scene, Scene) and len(scene) == 3
    views = scene.render(model.canonical_cameras(6))  # two cameras per scene
    assert views["rgb"].shape == (6, 3, 8, 8) and views["depth"].shape == (6, 1, 8, 8)
    torch.testing.assert_close(views["rgb"][:3], views["rgb"][3:])
    again = model.decode_indices(scene.indices)
    torch.testing.assert_close(again.planes, scene.planes)
    with pytest.raises(ValueError, match="multiple of the scenes"):
        scene.render(model.canonical_cameras(4))


def test_export_mesh_of_a_sphere_density():
    pytest.importorskip("skimage")
    model = _micro().eval()
    scene = model.reconstruct(torch.rand(1, 3, 16, 16))
    # replace the learned density by an analytic sphere to check the meshing path end to end
    model.density = lambda planes, points, index: 20.0 * (points.norm(dim=-1) < 0.5).float()
    verts, faces = scene.export_mesh(resolution=24, threshold=10.0)
    radius = verts.norm(dim=-1)
    assert faces.shape[1] == 3 and verts.shape[1] == 3
    assert float(radius.mean()) == pytest.approx(0.5, abs=0.06)


def test_save_load_round_trip(tmp_path):
    model = _micro().eval()
    path = tmp_path / "vq3d.safetensors"
    model.save(path)
    loaded = VQ3DModel.load(path).eval()
    assert loaded.config == model.config
    images = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded.reconstruct(images).planes, model.reconstruct(images).planes)
    with pytest.raises(ValueError, match="no vq3d_config metadata"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        VQ3DModel.load(tmp_path / "other.safetensors")


def test_imagenet256_on_meta_device():
    with pytest.raises(FileNotFoundError, match="VQ3DLIB_LPIPS_WEIGHTS"):
        VQ3DModel.from_config("tiny", perceptual_weight=0.1)  # weights are a local file, never downloaded
    with torch.device("meta"):
        model = VQ3DModel.from_config("imagenet256", perceptual_weight=0.0)
    counts = model.param_counts()
    assert 80e6 < counts["encoder"] < 95e6  # ViT-base-like
    assert model.config.codebook_size == 8192 and model.config.code_dim == 32


def test_bad_inputs():
    model = _micro()
    with pytest.raises(ValueError, match="images must have shape"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="images contains NaN"):
        model(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="depth must have shape"):
        model(torch.rand(2, 3, 16, 16), depth=torch.rand(2, 16, 16))
    with pytest.raises(TypeError, match="cameras must be"):
        model.render(torch.zeros(1, 3, 16, 16, 16), "front")
    with pytest.raises(ValueError, match="depth_align must be one of"):
        get_config("tiny", depth_align="median")


def test_map_disparity_range_is_per_image_and_robust():
    d = torch.stack([torch.linspace(0, 1, 100), torch.linspace(5, 50, 100)]).reshape(2, 10, 10)
    mapped = map_disparity_range(d, (2.0, 20.0))
    for img in mapped:
        assert float(img.min()) == pytest.approx(1 / 20) and float(img.max()) == pytest.approx(1 / 2)
    torch.testing.assert_close(mapped[0], mapped[1])  # scale/shift invariant


def _fit_one_scene(steps: int, use_depth: bool, seed: int = 0):
    torch.manual_seed(seed)
    item = ProceduralScenes(size=2, resolution=32, n_novel_views=0, seed=0)[0]
    images, disparity = item["image"][None], item["disparity"][None]
    model = VQ3DModel.from_config("tiny", novel_views=0, adversarial_weight=0.0)
    opt = torch.optim.Adam(model.generator_parameters(), lr=1e-3)
    for step in range(steps):
        out = model(images, depth=disparity if use_depth else None, step=step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(images)
    fit = float(psnr(out["reconstruction"].clamp(0, 1), images).mean())
    corr = float(depth_pearson(out["depth"], item["depth"][None]).mean())
    baseline = float(psnr(images.mean((2, 3), keepdim=True).expand_as(images), images).mean())
    return fit, corr, baseline


def test_micro_model_learns_quickly():
    torch.manual_seed(0)
    images = ProceduralScenes(size=1, resolution=16, n_novel_views=0, seed=3)[0]["image"][None]
    model = _micro(novel_views=0, adversarial_weight=0.0)
    opt = torch.optim.Adam(model.generator_parameters(), lr=2e-3)
    losses = []
    for step in range(25):
        out = model(images, step=step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["losses"]["l2"].detach()))
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5


@pytest.mark.slow
def test_tiny_overfits_one_scene_and_depth_loss_helps():
    fit, corr, baseline = _fit_one_scene(100, use_depth=True)
    assert fit > baseline + 5.0, (fit, baseline)
    assert corr > 0.6, corr
    _, corr_without, _ = _fit_one_scene(100, use_depth=False)
    assert corr > corr_without + 0.3, (corr, corr_without)


def test_stage2_samples_decode_to_renderable_scenes():
    from vq3dlib.models import CodePrior

    model = _micro().eval()
    prior = CodePrior.from_config(model.config).eval()
    indices = prior.sample(
        2, labels=torch.tensor([0, 3]), top_k=20, generator=torch.Generator().manual_seed(0)
    )
    assert indices.shape == (2, model.config.num_tokens)
    scene = model.decode_indices(indices)
    views = scene.render(model.canonical_cameras(2))
    assert views["rgb"].shape == (2, 3, 8, 8) and torch.isfinite(views["rgb"]).all()


def test_novel_views_rendered_only_when_used_and_grid_shared(monkeypatch):
    model = _micro(adversarial_start_step=5)
    images = torch.rand(2, 3, 16, 16)
    calls = []
    occupancy = model.occupancy
    monkeypatch.setattr(model, "occupancy", lambda planes: calls.append(1) or occupancy(planes))
    model.train()
    assert model(images, step=4)["novel_rgb"] is None  # no loss uses them yet: not rendered
    assert model(images, step=5)["novel_rgb"].shape == (2, 3, 8, 8)
    assert len(calls) == 2  # one occupancy grid per forward, shared by canonical and novel renders
    model.eval()
    with torch.no_grad():
        assert model(images, step=0)["novel_rgb"].shape == (2, 3, 8, 8)  # previews show them
