"""Tests for vq3dlib.metrics: PSNR, SSIM, aligned depth metrics, codebook usage, FID."""

from __future__ import annotations

import math

import pytest
import torch

from vq3dlib import metrics
from vq3dlib.metrics import (
    INCEPTION_ENV,
    FIDFeatures,
    codebook_usage,
    depth_abs_rel,
    depth_delta,
    depth_pearson,
    frechet_distance,
    load_inception_features,
    psnr,
    ssim,
)

# --------------------------------------------------------------------------------------- PSNR


def test_psnr_matches_definition_per_image():
    pred, target = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    got = psnr(pred, target)
    for i in range(3):
        mse = ((pred[i] - target[i]) ** 2).mean()
        assert got[i].item() == pytest.approx(-10 * math.log10(mse.item()), rel=1e-5)


def test_psnr_data_range_and_identity():
    pred, target = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(psnr(255 * pred, 255 * target, data_range=255.0), psnr(pred, target))
    assert torch.isinf(psnr(pred, pred)).all()


def test_psnr_mask_ignores_pixels_outside():
    target = torch.rand(2, 3, 6, 6)
    pred = target + 0.1
    mask = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    mask[:, :, :3] = True
    corrupted = torch.where(mask, pred, torch.rand_like(pred))
    torch.testing.assert_close(psnr(corrupted, target, mask=mask), torch.full((2,), 20.0), atol=1e-3, rtol=0)
    mask[1] = False
    assert torch.isnan(psnr(corrupted, target, mask=mask)[1])


def test_psnr_empty_batch_and_errors():
    assert psnr(torch.rand(0, 3, 4, 4), torch.rand(0, 3, 4, 4)).shape == (0,)
    with pytest.raises(ValueError, match="target"):
        psnr(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5))
    with pytest.raises(ValueError, match="mask"):
        psnr(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), mask=torch.ones(1, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), data_range=0)
    with pytest.raises(TypeError, match="pred"):
        psnr(torch.ones(1, 3, 4, 4, dtype=torch.int64), torch.rand(1, 3, 4, 4))


# --------------------------------------------------------------------------------------- SSIM


def test_ssim_constant_images_closed_form():
    # zero variance: SSIM = (2ab + c1) / (a^2 + b^2 + c1) whatever the window
    a, b = 0.3, 0.7
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    c1 = 0.01**2
    want = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(x, y).item() == pytest.approx(want, rel=1e-5)
    assert ssim(x, y, padding="same").item() == pytest.approx(want, rel=1e-5)


def test_ssim_properties():
    x = torch.rand(2, 3, 24, 24)
    noisy1 = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    noisy2 = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    torch.testing.assert_close(ssim(x, noisy1), ssim(noisy1, x))
    assert (ssim(x, noisy1) > ssim(x, noisy2)).all()
    assert ssim(x, noisy2).shape == (2,)
    assert ssim(x[:0], x[:0]).shape == (0,)


def test_ssim_errors():
    with pytest.raises(ValueError, match="window_size"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="window_size"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), window_size=4)
    with pytest.raises(ValueError, match="padding"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), padding="zeros")
    with pytest.raises(ValueError, match="pred"):
        ssim(torch.rand(3, 16, 16), torch.rand(3, 16, 16))


# -------------------------------------------------------------------------------------- depth


def _depth(b=2, h=8, w=8):
    return torch.rand(b, 1, h, w, dtype=torch.float64) * 4 + 1.0


def test_depth_metrics_invariant_to_alignment():
    d = _depth()
    affine_disp = 1.0 / (2.5 / d + 0.1)
    assert (depth_abs_rel(affine_disp, d) < 1e-9).all()
    assert (depth_delta(affine_disp, d) == 1).all()
    affine_depth = 3.0 * d - 0.5
    assert (depth_abs_rel(affine_depth, d, space="depth") < 1e-9).all()
    # without alignment a 10% scale error is 0.1 AbsRel and within 1.25 but not within 1.05
    torch.testing.assert_close(depth_abs_rel(1.1 * d, d, space=None), torch.full((2,), 0.1, dtype=d.dtype))
    assert (depth_delta(1.1 * d, d, space=None) == 1).all()
    assert (depth_delta(1.1 * d, d, threshold=1.05, space=None) == 0).all()


def test_depth_abs_rel_matches_manual_alignment():
    from vq3dlib.losses import align_scale_shift

    d = _depth(1, 6, 6)
    pred = d + 0.5 * torch.rand_like(d)
    scale, shift = align_scale_shift(pred, d, space="depth")[1:]
    aligned = scale * pred + shift
    want = ((aligned - d).abs() / d).mean()
    assert depth_abs_rel(pred, d, space="depth").item() == pytest.approx(want.item(), rel=1e-9)
    ratio = torch.maximum(aligned / d, d / aligned)
    assert depth_delta(pred, d, threshold=1.02, space="depth").item() == pytest.approx(
        (ratio < 1.02).double().mean().item()
    )


def test_depth_max_depth_caps_aligned_depth():
    target = torch.linspace(1.0, 4.0, 64).reshape(1, 1, 8, 8)
    pred = target.clone()
    pred[..., 0, 0] = 1e4  # one far outlier dominates the mean relative error unless capped
    uncapped = depth_abs_rel(pred, target, space=None)
    capped = depth_abs_rel(pred, target, space=None, max_depth=10.0)
    torch.testing.assert_close(capped, torch.tensor([(10.0 - 1.0) / 1.0 / 64]))
    assert float(uncapped) > 100 * float(capped)
    # disparity space: an aligned disparity near 0 would be a huge depth; capped at max_depth
    pred_disp = 1.0 / target
    pred_disp[..., 0, 0] = -5.0  # after the fit, this pixel's aligned disparity is <= 0
    aligned, _, _ = metrics._aligned_depths(1.0 / pred_disp.abs(), target, None, "disparity", 1e-6, 10.0)
    assert float(aligned.max()) <= 10.0
    # the cap changes nothing when every aligned depth is below it
    torch.testing.assert_close(depth_abs_rel(target, target, max_depth=10.0), depth_abs_rel(target, target))
    assert depth_delta(pred, target, space=None, max_depth=10.0) == depth_delta(pred, target, space=None)
    with pytest.raises(ValueError, match="max_depth"):
        depth_abs_rel(pred, target, max_depth=0.0)


def test_depth_masks_and_invalid_target():
    d = _depth()
    pred = 1.0 / (2.0 / d + 0.3)
    mask = torch.ones_like(d, dtype=torch.bool)
    mask[:, :, :2] = False
    pred_bad = torch.where(mask, pred, torch.full_like(pred, 1e3))
    assert (depth_abs_rel(pred_bad, d, mask) < 1e-9).all()
    # target 0 / inf pixels are invalid without an explicit mask
    d_bad = torch.where(mask, d, torch.zeros_like(d))
    d_bad[:, :, 0, 0] = float("inf")
    assert (depth_abs_rel(pred_bad, d_bad) < 1e-9).all()
    mask[1] = False
    out = depth_delta(pred, d, mask)
    assert torch.isnan(out[1]) and out[0] == 1


def test_depth_pearson_matches_corrcoef():
    pred, target = _depth(3), _depth(3)
    got = depth_pearson(pred, target)
    for i in range(3):
        want = torch.corrcoef(torch.stack([pred[i].flatten(), target[i].flatten()]))[0, 1]
        assert got[i].item() == pytest.approx(want.item(), rel=1e-9)
    torch.testing.assert_close(depth_pearson(2 * target + 1, target), torch.ones(3, dtype=target.dtype))


def test_depth_errors():
    d = _depth()
    with pytest.raises(ValueError, match="space"):
        depth_abs_rel(d, d, space="log")
    with pytest.raises(ValueError, match="threshold"):
        depth_delta(d, d, threshold=1.0)
    with pytest.raises(ValueError, match="target"):
        depth_abs_rel(d, d[:, :, :4])


# ----------------------------------------------------------------------------------- codebook


def test_codebook_usage_formula():
    u = codebook_usage(torch.tensor([0, 0, 1, 2]), codebook_size=4)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert u["perplexity"].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    assert u["used_fraction"].item() == pytest.approx(0.75)
    assert u["counts"].tolist() == [2, 1, 1, 0]
    k = 16
    uniform = codebook_usage(torch.arange(k).repeat(3), k)
    assert uniform["perplexity"].item() == pytest.approx(k, rel=1e-5)
    assert codebook_usage(torch.full((7,), 3), k)["perplexity"].item() == pytest.approx(1.0)


def test_codebook_usage_edge_cases():
    empty = codebook_usage(torch.zeros(0, dtype=torch.long), 8)
    assert empty["perplexity"].item() == 0 and empty["used_fraction"].item() == 0
    with pytest.raises(ValueError, match="indices"):
        codebook_usage(torch.tensor([0, 8]), 8)
    with pytest.raises(TypeError, match="indices"):
        codebook_usage(torch.tensor([0.0, 1.0]), 8)
    with pytest.raises(ValueError, match="codebook_size"):
        codebook_usage(torch.tensor([0]), 0)


# ---------------------------------------------------------------------------------------- FID


def test_frechet_distance_diagonal_closed_form():
    g = torch.Generator().manual_seed(1)
    d = 6
    mu1, mu2 = torch.randn(d, generator=g), torch.randn(d, generator=g)
    s1, s2 = torch.rand(d, generator=g) + 0.1, torch.rand(d, generator=g) + 0.1
    want = (mu1 - mu2).square().sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()
    got = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_frechet_distance_full_covariance_properties():
    g = torch.Generator().manual_seed(2)
    d = 5
    a, b = (torch.randn(d, d, generator=g, dtype=torch.float64) for _ in range(2))
    s1, s2 = a @ a.T + 0.1 * torch.eye(d), b @ b.T
    mu1, mu2 = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(2))
    assert abs(frechet_distance(mu1, s1, mu1, s1).item()) < 1e-8
    fd = frechet_distance(mu1, s1, mu2, s2)
    assert fd.item() == pytest.approx(frechet_distance(mu2, s2, mu1, s1).item(), rel=1e-9)
    # rotating both distributions by the same orthogonal matrix leaves the distance unchanged
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    assert frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T).item() == pytest.approx(fd.item())
    scipy_linalg = pytest.importorskip("scipy.linalg")
    covmean = scipy_linalg.sqrtm((s1 @ s2).numpy()).real
    want = (mu1 - mu2).square().sum().item() + torch.trace(s1 + s2).item() - 2 * covmean.trace()
    assert fd.item() == pytest.approx(want, rel=1e-7)


def test_frechet_distance_errors():
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3).fill_(float("nan")), torch.eye(3))


def test_fid_features_statistics_and_merge():
    feats = torch.randn(50, 4, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    acc = FIDFeatures()
    acc.update_features(feats[:20])
    acc.update_features(feats[20:])
    mu, cov = acc.compute()
    torch.testing.assert_close(mu, feats.mean(0))
    torch.testing.assert_close(cov, torch.cov(feats.T))
    a, b = FIDFeatures(), FIDFeatures()
    a.update_features(feats[:7])
    b.update_features(feats[7:])
    a.merge(b)
    torch.testing.assert_close(a.compute()[1], cov)
    assert a.fid(acc).abs().item() < 1e-8


def test_fid_features_with_extractor_and_errors():
    proj = torch.randn(12, 3)
    acc = FIDFeatures(lambda x: x.flatten(1) @ proj)
    images = torch.rand(8, 3, 2, 2)
    acc.update(images)
    torch.testing.assert_close(acc.compute()[0].float(), (images.flatten(1) @ proj).mean(0))
    with pytest.raises(ValueError, match="columns"):
        acc.update_features(torch.randn(4, 5))
    with pytest.raises(ValueError, match="at least 2"):
        FIDFeatures().compute()
    with pytest.raises(ValueError, match="extractor"):
        FIDFeatures().update(images)
    with pytest.raises(TypeError, match="extractor"):
        FIDFeatures(extractor=3)


# ---------------------------------------------------------------------------------- Inception


def test_load_inception_missing_file_errors(monkeypatch, tmp_path):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=INCEPTION_ENV):
        load_inception_features()
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt") as e:
        load_inception_features(missing)
    assert INCEPTION_ENV in str(e.value) and "never downloads" in str(e.value)
    monkeypatch.setenv(INCEPTION_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_inception_features()
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="Inception-v3"):
        load_inception_features(bad)


@pytest.fixture(scope="module")
def inception_state():
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    net = tv.inception_v3(weights=None, aux_logits=True, init_weights=False)
    return net.state_dict()


def test_load_inception_from_env_and_safetensors(monkeypatch, tmp_path, inception_state):
    from safetensors.torch import save_file

    pt, st = tmp_path / "inc.pt", tmp_path / "inc.safetensors"
    torch.save(inception_state, pt)  # full torchvision dict, AuxLogits + fc included
    save_file({k: v.contiguous() for k, v in inception_state.items() if not k.startswith("AuxLogits")}, st)
    monkeypatch.setenv(INCEPTION_ENV, str(pt))
    for model in (load_inception_features(), load_inception_features(st)):
        assert not model.training
        got = model.state_dict()
        key = "net.Mixed_7c.branch_pool.conv.weight"
        torch.testing.assert_close(got[key], inception_state[key.removeprefix("net.")])
        assert not any(k.startswith(("net.AuxLogits", "net.fc")) for k in got)


@pytest.mark.slow
def test_inception_features_forward(tmp_path, inception_state):
    pt = tmp_path / "inc.pt"
    torch.save(inception_state, pt)
    model = load_inception_features(pt)
    with torch.no_grad():
        f = model(torch.rand(2, 3, 32, 32))
    assert f.shape == (2, 2048) and torch.isfinite(f).all()


def test_psnr_refuses_nan_pixels_by_name():
    from vq3dlib.metrics import psnr

    a = torch.rand(1, 3, 4, 4)
    b = a.clone()
    b[0, 0, 0, 0] = float("nan")
    assert float(psnr(a, a.clamp(0.1, 0.9))) > 0
    with pytest.raises(ValueError, match="target contains NaN"):
        psnr(a, b)
    with pytest.raises(ValueError, match="pred contains NaN"):
        psnr(b, a)
