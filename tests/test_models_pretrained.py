"""Bundled weights (vq3dlib.models.pretrained, VQ3DModel.save(inference=True) / pretrained)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from conftest import micro_vq3d
from vq3dlib.models import VQ3DModel, pretrained


def test_inference_files_are_small_half_precision_and_reconstruct_like_the_model(tmp_path):
    model = micro_vq3d().eval()
    model.save(tmp_path / "full.safetensors")
    model.save(tmp_path / "small.safetensors", inference=True)
    with safe_open(str(tmp_path / "small.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert f.metadata()["vq3d_contents"] == "inference"
        dtypes = {f.get_tensor(k).dtype for k in keys if k.startswith("decoder.")}
    assert not any(k.startswith("loss.") for k in keys) and dtypes == {torch.float16}
    full_size = (tmp_path / "full.safetensors").stat().st_size
    assert (tmp_path / "small.safetensors").stat().st_size < full_size / 3
    monkey = pytest.MonkeyPatch()
    monkey.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    try:
        loaded = VQ3DModel.pretrained("small")
    finally:
        monkey.undo()
    assert not loaded.training and loaded.config == model.config
    assert next(loaded.decoder.parameters()).dtype == torch.float32
    image = torch.rand(2, 3, 16, 16)
    a, b = model.reconstruct(image), loaded.reconstruct(image)
    assert torch.equal(a.indices, b.indices)  # same codes; the planes differ by float16 rounding only
    torch.testing.assert_close(b.planes, a.planes, atol=2e-2, rtol=2e-2)


def test_unknown_names_list_the_bundled_models(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError, match="holds no weights file"):
        VQ3DModel.pretrained()
    micro_vq3d().save(tmp_path / "alpha.safetensors", inference=True)
    micro_vq3d().save(tmp_path / "beta.safetensors", inference=True)
    assert pretrained.list_pretrained() == ["alpha", "beta"]
    with pytest.raises(ValueError, match=r"'tiny-procedural' \(bundled models: alpha, beta\)"):
        VQ3DModel.pretrained("tiny-procedural")
    with pytest.raises(ValueError, match="name"):
        pretrained.pretrained_path("../alpha")


def test_stage1_model_paths_accept_demo_folders_and_bundled_names(tmp_path, monkeypatch):
    from vq3dlib.train.stage1 import load_stage1_model, stage1_model_file

    demo = tmp_path / "demo"
    (demo / "train").mkdir(parents=True)
    micro_vq3d().save(demo / "train" / "model.safetensors")
    assert stage1_model_file(demo) == demo / "train" / "model.safetensors"
    assert load_stage1_model(demo).config.image_size == 16
    with pytest.raises(FileNotFoundError, match="neither"):
        stage1_model_file(tmp_path)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    micro_vq3d().save(tmp_path / "mine.safetensors", inference=True)
    assert stage1_model_file("mine") == tmp_path / "mine.safetensors"
    with pytest.raises(ValueError, match="bundled models: mine"):
        stage1_model_file("other")
    with pytest.raises(FileNotFoundError, match="not found"):
        stage1_model_file(tmp_path / "missing.safetensors")


def test_the_bundled_model_reconstructs_held_out_scenes_at_its_documented_figures():
    """The shipped `tiny-procedural` weights on the first 16 held-out procedural scenes (docs/training.md)."""
    from vq3dlib.data import ProceduralScenes
    from vq3dlib.models import VQ3DModel
    from vq3dlib.train.evaluate import evaluate_stage1

    model = VQ3DModel.pretrained("tiny-procedural")
    m = evaluate_stage1(model, ProceduralScenes(16, 32, n_novel_views=1, seed=1), batch_size=8)
    assert m["psnr"] == pytest.approx(27.02, abs=0.1), m
    assert m["novel_psnr"] == pytest.approx(21.28, abs=0.15), m
    assert m["own_vs_other_db"] > 8.0 and m["holes_fraction"] == 0.0, m
    # the depth truth at the render's pixel centres (the 32 px depth resized instead reads ~0.10)
    assert m["depth_abs_rel"] == pytest.approx(0.093, abs=0.004), m
    assert m["psnr"] > m["baseline_psnr"] + 5.0
