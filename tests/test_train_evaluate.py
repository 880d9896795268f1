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
        "own_psnr",
        "other_psnr",
        "own_vs_other_db",
        "baseline_own_vs_other_db",
        "holes_fraction",
        "novel_holes_fraction",
    }
    assert set(m) == keys and m["n_images"] == 3
    images = torch.stack([data[i]["image"] for i in range(3)])
    expected = psnr(images.mean(0, keepdim=True).expand_as(images), images).mean()
    assert m["baseline_psnr"] == pytest.approx(float(expected), rel=1e-5)
    own_colour = psnr(images.mean((2, 3), keepdim=True).expand_as(images), images).mean()
    assert m["baseline_colour_psnr"] == pytest.approx(float(own_colour), rel=1e-5)
    assert 0 <= m["depth_delta1"] <= 1 and 0 <= m["codebook_used"] <= 1
    assert m["own_vs_other_db"] == pytest.approx(m["own_psnr"] - m["other_psnr"])
    assert m["holes_fraction"] == 0.0 and m["novel_holes_fraction"] == 0.0  # stratified: always opaque
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


def test_own_and_other_psnr_against_a_direct_computation():
    from vq3dlib.train.evaluate import own_and_other_psnr

    g = torch.Generator().manual_seed(0)
    targets = torch.rand(4, 3, 5, 5, generator=g)
    preds = (targets + 0.05 * torch.randn(4, 3, 5, 5, generator=g)).clamp(0, 1)
    own, other = own_and_other_psnr(preds, targets)
    for i in range(4):
        assert own[i].item() == pytest.approx(float(psnr(preds[i : i + 1], targets[i : i + 1])), abs=1e-3)
        others = [float(psnr(preds[i : i + 1], targets[j : j + 1])) for j in range(4) if j != i]
        assert other[i].item() == pytest.approx(sum(others) / 3, abs=1e-3)
    assert bool((own > other + 5).all())  # close to their own targets only
    same, _ = own_and_other_psnr(preds[:1].expand(4, -1, -1, -1).contiguous(), targets)
    with pytest.raises(ValueError, match="at least 2"):
        own_and_other_psnr(preds[:1], targets[:1])
    assert same.shape == (4,)


def test_depth_truth_is_taken_at_the_render_pixel_centres_when_the_dataset_can_render_it():
    from vq3dlib.cameras import canonical_cameras
    from vq3dlib.train.evaluate import _true_depth
    from vq3dlib.train.loop import get_batch

    ds = ProceduralScenes(4, 32, n_novel_views=0, seed=1)
    cams = canonical_cameras(4, 2.7, 40.0, (16, 16))
    batch = get_batch(ds, torch.arange(4))
    exact = _true_depth(ds, batch, cams, 16)
    # the scene rendered at 16 px: a resize of the 32 px depth samples a point off each pixel's ray
    assert exact.shape == (4, 1, 16, 16)
    for k in range(4):
        assert torch.equal(exact[k], ProceduralScenes(4, 16, n_novel_views=0, seed=1)[k]["depth"])
    resized = torch.nn.functional.interpolate(batch["depth"], size=(16, 16), mode="nearest-exact")
    assert (exact != resized).any()  # at object edges
    sub = torch.utils.data.Subset(ds, [2, 3])
    sub_batch = get_batch(sub, torch.arange(2))
    assert torch.equal(_true_depth(sub, sub_batch, cams[:2], 16), exact[2:])
    from vq3dlib.train.loop import MemoryDataset

    cached = MemoryDataset(sub, progress=False)  # the trainer's in-memory copy of the held-out set
    assert torch.equal(_true_depth(cached, get_batch(cached, torch.arange(2)), cams[:2], 16), exact[2:])
    plain = [{"image": torch.zeros(3, 32, 32), "depth": batch["depth"][k]} for k in range(2)]
    assert torch.equal(_true_depth(plain, get_batch(plain, torch.arange(2)), cams[:2], 16), resized[:2])
