"""Importance sampling: samples follow the pdf, are sorted and inside the bins; nerfacc parity on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vq3dlib.render.pdf import importance_sampling, sample_from_pdf


def _random_bins(n_rays: int, n_bins: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    widths = torch.rand(n_rays, n_bins, generator=g, dtype=dtype) + 0.05  # unequal bin widths
    bins = torch.cat([torch.zeros(n_rays, 1, dtype=dtype), torch.cumsum(widths, -1)], -1) + 0.5
    weights = torch.rand(n_rays, n_bins, generator=g, dtype=dtype) ** 3
    return bins, weights


def _cdf_at(samples: torch.Tensor, bins: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """Normalised piecewise-linear cdf of each ray evaluated at its samples (numpy oracle)."""
    cdf = torch.cat([torch.zeros_like(weights[:, :1]), torch.cumsum(weights, -1)], -1)
    cdf = cdf / cdf[:, -1:]
    rows = zip(samples.numpy(), bins.numpy(), cdf.numpy(), strict=True)
    return np.stack([np.interp(s, b, c) for s, b, c in rows])


def test_deterministic_samples_sit_at_cdf_quantiles():
    bins, weights = _random_bins(6, 10)
    n = 16
    intervals, samples = sample_from_pdf(bins, weights, n)
    expected = (np.arange(n) + 0.5) / n
    np.testing.assert_allclose(_cdf_at(samples, bins, weights), np.broadcast_to(expected, (6, n)), atol=1e-9)
    assert intervals.shape == (6, n + 1) and samples.shape == (6, n)


def test_histogram_of_many_samples_matches_pdf():
    bins, weights = _random_bins(1, 8, seed=3)
    n = 20000
    _, samples = sample_from_pdf(bins, weights, n)
    counts = np.histogram(samples[0].numpy(), bins=bins[0].numpy())[0]
    pdf = (weights[0] / weights[0].sum()).numpy()
    np.testing.assert_allclose(counts / n, pdf, atol=2.0 / n)


def test_stratified_samples_pooled_over_rays_follow_pdf():
    bins, weights = _random_bins(1, 6, seed=5)
    n_rays, n = 4000, 8
    g = torch.Generator().manual_seed(0)
    bins_r, weights_r = bins.expand(n_rays, -1), weights.expand(n_rays, -1)
    _, samples = sample_from_pdf(bins_r, weights_r, n, stratified=True, generator=g)
    counts = np.histogram(samples.reshape(-1).numpy(), bins=bins[0].numpy())[0]
    pdf = (weights[0] / weights[0].sum()).numpy()
    np.testing.assert_allclose(counts / counts.sum(), pdf, atol=0.01)
    u = _cdf_at(samples, bins.expand(n_rays, -1), weights.expand(n_rays, -1))
    # one jitter per ray: sample k lies in quantile stratum [k/n, (k+1)/n)
    k = np.arange(n)
    assert np.all(u >= k / n - 1e-9) and np.all(u <= (k + 1) / n + 1e-9)


@pytest.mark.parametrize("stratified", [False, True])
def test_sorted_inside_bins_and_intervals_bracket_samples(device, stratified):
    bins, weights = _random_bins(5, 7, seed=1)
    bins, weights = bins.to(device), weights.to(device)
    weights[2] = 0.0
    weights[3, 2:] = 0.0  # empty bins
    intervals, samples = sample_from_pdf(bins, weights, 9, stratified)
    assert torch.all(samples[:, 1:] >= samples[:, :-1])
    assert torch.all(intervals[:, 1:] >= intervals[:, :-1])
    assert torch.all(samples >= bins[:, :1]) and torch.all(samples <= bins[:, -1:])
    assert torch.all(intervals[:, :1] >= bins[:, :1]) and torch.all(intervals[:, -1:] <= bins[:, -1:])
    assert torch.all(intervals[:, :-1] <= samples) and torch.all(samples <= intervals[:, 1:])
    occupied = torch.zeros_like(samples, dtype=torch.bool)
    for i in range(2):  # ray 3 only has mass in its first two bins
        occupied |= (samples[3] >= bins[3, i]) & (samples[3] <= bins[3, i + 1])
    assert torch.all(occupied[3])


def test_zero_weight_ray_is_sampled_uniformly():
    bins = torch.tensor([[0.0, 1.0, 3.0, 4.0]])
    _, samples = sample_from_pdf(bins, torch.zeros(1, 3), 4)
    torch.testing.assert_close(samples, torch.tensor([[0.5, 1.5, 2.5, 3.5]]))


def test_determinism_and_generator():
    bins, weights = _random_bins(3, 5)
    a = sample_from_pdf(bins, weights, 7)
    b = sample_from_pdf(bins, weights, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    s1 = sample_from_pdf(bins, weights, 7, True, generator=torch.Generator().manual_seed(4))[1]
    s2 = sample_from_pdf(bins, weights, 7, True, generator=torch.Generator().manual_seed(4))[1]
    s3 = sample_from_pdf(bins, weights, 7, True, generator=torch.Generator().manual_seed(5))[1]
    assert torch.equal(s1, s2) and not torch.equal(s1, s3) and not torch.equal(s1, a[1])


def test_packed_equals_dense_and_single_sample():
    bins, weights = _random_bins(3, 4)
    cdfs = torch.cat([torch.zeros(3, 1, dtype=bins.dtype), torch.cumsum(weights, -1)], -1)
    dense = importance_sampling(bins, cdfs, 5)
    # ray 1 keeps only its first 3 edges in the packed layout; an empty ray is appended
    keep = [5, 3, 5]
    flat_bins = torch.cat([bins[i, :k] for i, k in enumerate(keep)])
    flat_cdfs = torch.cat([cdfs[i, :k] for i, k in enumerate(keep)])
    info = torch.tensor([[0, 5], [5, 3], [8, 5], [13, 0]])
    packed = importance_sampling(flat_bins, flat_cdfs, 5, packed_info=info)
    for a, b in zip(dense, packed, strict=True):
        torch.testing.assert_close(a[[0, 2]], b[[0, 2]])
        assert torch.all(b[3] == 0)
    short = importance_sampling(bins[1:2, :3], cdfs[1:2, :3], 5)
    torch.testing.assert_close(packed[1][1:2], short[1])
    intervals, samples = importance_sampling(bins, cdfs, 1)
    torch.testing.assert_close(intervals, bins[:, [0, -1]])
    assert samples.shape == (3, 1)


def test_bad_inputs_raise():
    bins, weights = _random_bins(2, 3)
    with pytest.raises(ValueError, match="n_samples"):
        sample_from_pdf(bins, weights, 0)
    with pytest.raises(TypeError, match="n_samples"):
        sample_from_pdf(bins, weights, 2.0)
    with pytest.raises(ValueError, match="weights"):
        sample_from_pdf(bins, -weights, 4)
    with pytest.raises(ValueError, match="weights"):
        sample_from_pdf(bins, weights[:, :2], 4)
    with pytest.raises(ValueError, match="bins"):
        sample_from_pdf(bins.flip(-1), weights, 4)
    with pytest.raises(ValueError, match="bins"):
        importance_sampling(bins[:, :1], bins[:, :1], 4)
    with pytest.raises(ValueError, match="cdfs"):
        importance_sampling(bins, bins.flip(-1), 4)
    nan = weights.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weights"):
        sample_from_pdf(bins, nan, 4)


@pytest.mark.cuda
def test_matches_nerfacc_importance_sampling_on_cuda():
    nerfacc = pytest.importorskip("nerfacc")
    from nerfacc.data_specs import RayIntervals

    bins, weights = _random_bins(64, 12, dtype=torch.float32)
    bins, weights = bins.cuda(), weights.cuda() + 1e-3
    cdfs = torch.cat([torch.zeros_like(weights[:, :1]), torch.cumsum(weights, -1)], -1)
    ref_intervals, ref_samples = nerfacc.importance_sampling(RayIntervals(vals=bins), cdfs, 24, False)
    intervals, samples = importance_sampling(bins, cdfs, 24)
    torch.testing.assert_close(samples, ref_samples.vals, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(intervals, ref_intervals.vals, rtol=1e-4, atol=1e-5)
