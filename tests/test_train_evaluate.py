"""Tests for vq3dlib.train.evaluate: metric keys, baselines, RNG left untouched, oracle sanity."""

from __future__ import annotations

import pytest
import torch

from vq3dlib.data import ProceduralScenes
from vq3dlib.metrics import psnr
from vq3dlib.models import VQ3DModel
from vq3dlib.train.evaluate import evaluate_stage1

MICRO = dict(image_size=16, render_resolution=8, plane_resolution=16, plane_channels=8, samples_per_ray=8,
             occupancy_resolution=16, encoder_width=32, encoder_heads=2, decoder_width=32, decoder_heads=2,
             codebook_size=32, code_dim=8, field_hidden_dim=16)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # micro tensors: one thread is fastest and immune to a busy machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VQ3DModel.from_config("tiny", **MICRO)


def test_metrics_and_baselines(model):
    data = ProceduralScenes(3, 16, n_novel_views=2, seed=5)
    state = torch.get_rng_state()
    m = evaluate_stage1(model, data, batch_size=2)
    assert torch.equal(state, torch.get_rng_state())  # evaluation does not disturb training randomness
    assert model.training  # mode restored
    keys = {
        "psnr",
        "ssim",
        "novel_psnr",
        "depth_abs_rel",
        "depth_delta1",
        "baseline_psnr",
        "baseline_colour_psnr",
        "baseline_novel_psnr",
        "baseline_novel_colour_psnr",
        "baseline_depth_abs_rel",
        "baseline_depth_delta1",
        "codebook_perplexity",
        "codebook_used",
        "n_images",
    }
    assert set(m) == keys and m["n_images"] == 3
    images = torch.stack([data[i]["image"] for i in range(3)])
    expected = psnr(images.mean(0, keepdim=True).expand_as(images), images).mean()
    assert m["baseline_psnr"] == pytest.approx(float(expected), rel=1e-5)
    own_colour = psnr(images.mean((2, 3), keepdim=True).expand_as(images), images).mean()
    assert m["baseline_colour_psnr"] == pytest.approx(float(own_colour), rel=1e-5)
    assert 0 <= m["depth_delta1"] <= 1 and 0 <= m["codebook_used"] <= 1
    assert all(v == v for v in m.values())  # no NaN
    # deterministic: same numbers twice
    assert evaluate_stage1(model, data, batch_size=3) == pytest.approx(m, rel=1e-4)


def test_max_items_and_image_only_data(model, tmp_path):
    from PIL import Image

    from vq3dlib.data import ImageFolderDataset

    for i in range(2):
        Image.new("RGB", (16, 16), (100 * i, 50, 50)).save(tmp_path / f"{i}.png")
    m = evaluate_stage1(model, ImageFolderDataset(tmp_path, 16), batch_size=4)
    assert m["n_images"] == 2 and "novel_psnr" not in m and "depth_abs_rel" not in m
    assert evaluate_stage1(model, ProceduralScenes(4, 16), max_items=1)["n_images"] == 1
    with pytest.raises(ValueError, match="empty"):
        evaluate_stage1(model, ProceduralScenes(0, 16))
