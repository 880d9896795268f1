"""VQ3DModel (stage 1): shapes, losses, scenes, persistence, errors, and that it learns."""

from __future__ import annotations

import pytest
import torch

from conftest import fast_vq3d, micro_vq3d
from vq3dlib import ProceduralScenes, VQ3DModel
from vq3dlib.metrics import depth_abs_rel, psnr
from vq3dlib.models import Scene, get_config


def test_forward_outputs_and_loss_terms():
    model = micro_vq3d(distortion_weight=0.01)
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
        "render_l2",
        "quantizer",
        "depth",
        "lifting_depth",
        "distortion",
        "adversarial",
        "adversarial_novel",
    }
    assert torch.isclose(out["loss"], sum(out["losses"].values()))
    assert all(bool(torch.isfinite(v)) for v in out["losses"].values())  # distortion with the background
    out["loss"].backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in model.discriminator_parameters())


def test_reconstruct_render_and_decode_indices():
    model = micro_vq3d().eval()
    images = torch.rand(3, 3, 16, 16)
    scene = model.reconstruct(images)
    assert isinstance(scene, Scene) and len(scene) == 3
    views = scene.render(model.canonical_cameras(6)).images()  # two cameras per scene
    assert views["rgb"].shape == (6, 3, 8, 8) and views["depth"].shape == (6, 1, 8, 8)
    torch.testing.assert_close(views["rgb"][:3], views["rgb"][3:])
    again = model.decode_indices(scene.indices)
    torch.testing.assert_close(again.planes, scene.planes)
    with pytest.raises(ValueError, match="multiple of the scenes"):
        scene.render(model.canonical_cameras(4))


def test_save_load_round_trip(tmp_path):
    model = micro_vq3d().eval()
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
    model = micro_vq3d()
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
    size = tuple(out["depth"].shape[-2:])
    true_depth = torch.nn.functional.interpolate(item["depth"][None], size=size, mode="nearest-exact")
    scene = true_depth < 10  # the evaluation's pixels: the far sky left out
    abs_rel = float(depth_abs_rel(out["depth"], true_depth, scene, max_depth=10.0).mean())
    baseline = float(psnr(images.mean((2, 3), keepdim=True).expand_as(images), images).mean())
    return fit, abs_rel, baseline


def test_micro_model_learns_quickly():
    torch.manual_seed(0)
    images = ProceduralScenes(size=1, resolution=16, n_novel_views=0, seed=3)[0]["image"][None]
    model = micro_vq3d(novel_views=0, adversarial_weight=0.0)
    opt = torch.optim.Adam(model.generator_parameters(), lr=2e-3)
    losses = []
    for step in range(25):
        out = model(images, step=step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["losses"]["l2"].detach()))
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5


def test_tiny_overfits_one_scene_and_depth_loss_helps():  # ~15 s on 2 cores: part of the default suite
    fit, abs_rel, baseline = _fit_one_scene(100, use_depth=True)
    assert fit > baseline + 5.0, (fit, baseline)
    assert abs_rel < 0.21, abs_rel  # 0.18 here; a constant depth scores about 0.26
    _, abs_rel_without, _ = _fit_one_scene(100, use_depth=False)
    assert abs_rel < abs_rel_without - 0.03, (abs_rel, abs_rel_without)  # 0.18 against 0.24 here


def test_stage2_samples_decode_to_renderable_scenes():
    from vq3dlib.models import CodePrior

    model = micro_vq3d().eval()
    prior = CodePrior.from_config(model.config).eval()
    indices = prior.sample(
        2, labels=torch.tensor([0, 3]), top_k=20, generator=torch.Generator().manual_seed(0)
    )
    assert indices.shape == (2, model.config.num_tokens)
    scene = model.decode_indices(indices)
    views = scene.render(model.canonical_cameras(2)).images()
    assert views["rgb"].shape == (2, 3, 8, 8) and torch.isfinite(views["rgb"]).all()


# ----------------------------------------------------------------------------- code indices


@pytest.mark.parametrize("quantizer", ["vq", "fsq", "lfq", "residual"])
def test_prior_samples_and_codes_decode_for_every_quantizer(quantizer):
    from vq3dlib.models import CodePrior

    model = fast_vq3d(quantizer=quantizer, code_dim=6, fsq_levels=(5, 4, 3), residual_depth=2).eval()
    cfg = model.config
    g, depth = cfg.grid_size, (cfg.residual_depth,) if quantizer == "residual" else ()
    # stage 1 codes, flattened as stage 2 sees them, decode to the same scene as reconstruct()
    images = torch.rand(2, 3, 16, 16)
    scene = model.reconstruct(images)
    assert scene.indices.shape == (2, g, g, *depth)
    flat = scene.indices.reshape(2, -1)
    assert flat.shape == (2, cfg.prior_seq_len)
    for layout in (flat, scene.indices.reshape(2, cfg.num_tokens, *depth), scene.indices):
        decoded = model.decode_indices(layout)
        torch.testing.assert_close(decoded.planes, scene.planes, rtol=1e-4, atol=1e-5)
        assert torch.equal(decoded.indices, scene.indices)
    # prior samples -> scenes -> renders
    prior = CodePrior.from_config(cfg).eval()
    codes = prior.sample(2, labels=torch.tensor([0, 1]), top_k=8, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, cfg.prior_seq_len)
    sampled = model.decode_indices(codes)
    assert isinstance(sampled, Scene) and sampled.indices.shape == (2, g, g, *depth)
    views = sampled.render(model.canonical_cameras(2)).images()
    assert views["rgb"].shape == (2, 3, 8, 8) and torch.isfinite(views["rgb"]).all()
    with pytest.raises(ValueError, match="indices must have shape"):
        model.decode_indices(torch.zeros(2, cfg.prior_seq_len + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="indices must be in"):
        model.decode_indices(torch.full_like(codes, cfg.vocab_size))


# ----------------------------------------------------------------------------- contraction


def test_contraction_none_trains_and_l2_is_rejected():
    model = fast_vq3d(contraction="none", novel_views=0, adversarial_weight=0.0)
    assert model.renderer.spacing == "t"
    assert model.occupancy(torch.zeros(1, 3, 16, 16, 16)).contraction == "none"
    out = model(torch.rand(2, 3, 16, 16), depth=torch.rand(2, 1, 16, 16))
    assert out["reconstruction"].shape == (2, 3, 16, 16) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in model.encoder.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="contraction='l2' is not supported"):
        fast_vq3d(contraction="l2")


# ----------------------------------------------------------------------------- rendered features + SR


def test_field_features_are_rendered_and_feed_the_super_resolution_head():
    model = fast_vq3d(
        field_out_features=4, super_resolution=True, super_resolution_hidden=8, novel_views=0,
        adversarial_weight=0.0,
    )  # fmt: skip
    first = model.super_resolution.net[0]
    assert (first.in_channels, first.out_channels) == (3 + 4, 8)  # [rgb, features] -> hidden width
    with torch.no_grad():  # the refiner's output conv starts at zero (no gradient to its inputs): wake it
        model.super_resolution.net[-1].weight.normal_(0, 0.1)
    images = torch.rand(2, 3, 16, 16)
    out = model(images)
    assert out["features"].shape == (2, 4, 8, 8) and out["features"].dtype == torch.float32
    assert out["render"].shape == (2, 3, 8, 8) and out["reconstruction"].shape == (2, 3, 16, 16)
    out["losses"]["l2"].backward()
    head = model.field.density_net[-1].weight.grad  # rows: density, rgb (3), features (4)
    assert float(head[4:].abs().sum()) > 0  # the loss reaches the field's feature outputs
    # the features change the reconstruction: zero them and the SR output changes
    with torch.no_grad():
        sr = model.super_resolution
        assert not torch.allclose(sr(out["render"], out["features"]), sr(out["render"], out["features"] * 0))
    # a background colours rgb only
    scene = model.eval().reconstruct(images)
    cams = model.canonical_cameras(2)
    plain, white = scene.render(cams).images(), scene.render(cams, 1.0).images()
    torch.testing.assert_close(white["features"], plain["features"])
    torch.testing.assert_close(white["rgb"], plain["rgb"] + (1 - plain["opacity"]))
    with pytest.raises(ValueError, match="super_resolution"):
        fast_vq3d(field_out_features=4, super_resolution=False)


def test_super_resolution_head_matches_its_plain_layout_computation():
    from vq3dlib.models.vq3d import SuperResolution

    torch.manual_seed(0)
    sr = SuperResolution(16, hidden=8, features=4)
    for p in sr.parameters():
        torch.nn.init.normal_(p, std=0.2)
    rgb = torch.rand(2, 3, 8, 8, requires_grad=True)
    feats = torch.rand(2, 4, 8, 8, requires_grad=True)
    out = sr(rgb, feats)
    assert out.shape == (2, 3, 16, 16) and out.is_contiguous()  # the usual layout for its users
    up = torch.nn.functional.interpolate(rgb, size=(16, 16), mode="bilinear", align_corners=False)
    upf = torch.nn.functional.interpolate(feats, size=(16, 16), mode="bilinear", align_corners=False)
    ref = up + sr.net(torch.cat([up, upf], 1).contiguous())  # the same convolutions, NCHW
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g_out = torch.autograd.grad(out.square().sum(), [rgb, feats])
    g_ref = torch.autograd.grad(ref.square().sum(), [rgb, feats])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- paper-scale config


def _check_full_forward(model, size: int, render: int) -> None:
    images = torch.rand(1, 3, size, size)
    out = model(images, depth=torch.rand(1, 1, size, size), step=10**6)
    assert out["reconstruction"].shape == (1, 3, size, size) and out["reconstruction"].dtype == torch.float32
    assert out["render"].shape == (1, 3, render, render)
    for key in ("depth", "disparity", "opacity"):
        assert out[key].shape == (1, 1, render, render) and out[key].dtype == torch.float32
    g = size // 8
    assert out["indices"].shape == (1, g, g) and out["indices"].dtype == torch.long
    assert out["novel_rgb"].shape == (1, 3, render, render)
    assert set(out["losses"]) == {"l2", "render_l2", "quantizer", "depth", "adversarial", "adversarial_novel"}
    out["loss"].backward()
    for part in (model.encoder, model.decoder, model.super_resolution):
        assert all(p.grad is not None for p in part.parameters() if p.requires_grad)


REDUCED_256 = dict(
    encoder_depth=1, decoder_depth=1, render_resolution=16, samples_per_ray=16, occupancy_resolution=16,
    perceptual_weight=0.0,
)  # fmt: skip


def test_imagenet256_widths_forward_backward_at_reduced_size():
    # paper widths (768, 12 heads, codebook 8192 x 32, conv refine, SR) with 1 block and 64 px
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = VQ3DModel.from_config("imagenet256", image_size=64, plane_resolution=64, **REDUCED_256)
        cfg = model.config
        assert (cfg.encoder_width, cfg.codebook_size, cfg.code_dim) == (768, 8192, 32)
        _check_full_forward(model, 64, 16)
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow
def test_imagenet256_forward_backward_at_256px():
    _check_full_forward(VQ3DModel.from_config("imagenet256", **REDUCED_256), 256, 16)


# ----------------------------------------------------------------------------- MLP backend persistence


def _rewrite(src, dst, rename=None, **meta):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        metadata = {**f.metadata(), "vq3d_sha256": None, **meta}  # as another tool would write it
    state = load_file(str(src))
    if rename:
        state = {rename(k): v for k, v in state.items()}
    save_file(state, str(dst), metadata={k: v for k, v in metadata.items() if v is not None})


def test_save_records_the_mlp_backend_and_load_rejects_a_mismatch(tmp_path, monkeypatch):
    from safetensors import safe_open

    from vq3dlib.models import field as field_module

    model = fast_vq3d(mlp_backend="auto").eval()  # resolves to torch here (no tinycudann on CPU)
    assert model.field.mlp_backend == "torch"
    path = tmp_path / "m.safetensors"
    model.save(path)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["vq3d_mlp_backend"] == "torch"
    loaded = VQ3DModel.load(path)
    assert loaded.field.mlp_backend == "torch" and loaded.config == model.config
    # a file whose field was written by tiny-cuda-nn (faked: its metadata and weight names)
    monkeypatch.setattr(field_module, "_tcnn_module", lambda: None)
    tcnn_names = lambda k: k.replace("density_net.0.weight", "density_net.net.params")  # noqa: E731
    fake = tmp_path / "tcnn.safetensors"
    _rewrite(path, fake, tcnn_names, vq3d_mlp_backend="tcnn")
    with pytest.raises(RuntimeError, match="mlp_backend='tcnn'"):
        VQ3DModel.load(fake)
    old = tmp_path / "old.safetensors"  # no backend metadata: inferred from the weight names
    _rewrite(path, old, tcnn_names, vq3d_mlp_backend=None)
    with pytest.raises(RuntimeError, match="mlp_backend='tcnn'"):
        VQ3DModel.load(old)
    lying = tmp_path / "lying.safetensors"  # metadata says torch, weights say otherwise
    _rewrite(path, lying, tcnn_names)
    with pytest.raises(RuntimeError, match="mlp_backend='torch'"):
        VQ3DModel.load(lying)


# ----------------------------------------------------------------------------- meshes and counts


def test_param_counts_prints_a_table():
    lines: list[str] = []
    counts = fast_vq3d().param_counts(print_fn=lines.append)
    assert len(lines) == len(counts) + 1 and lines[-1].startswith("total")
    assert f"{sum(counts.values()):,d}" in lines[-1]


def test_novel_views_rendered_only_when_used_and_grid_shared(monkeypatch):
    model = micro_vq3d(adversarial_start_step=5, sampling="march", contraction="linf")
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


def test_save_is_checksummed_atomic_and_refuses_nonfinite_weights(tmp_path):
    model = micro_vq3d()
    path = tmp_path / "model.safetensors"
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt: its tensors do not match the sha256"):
        VQ3DModel.load(tmp_path / "flipped.safetensors")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match="refusing to save the model: 1 non-finite"):
        model.save(path)
    loaded = VQ3DModel.load(path)  # the earlier file is untouched
    assert torch.isfinite(next(loaded.parameters())).all()
