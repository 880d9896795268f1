"""Importance sampling along rays by inverse transform sampling of a piecewise-constant pdf.

Proposal-style samplers (mip-NeRF 360, nerfacc's ``PropNetEstimator``) render a cheap proposal
field, turn its weights into a pdf over the ray's bins, and draw the next round of samples from it.
Here a ray's bins are ``n_bins + 1`` sorted edges ``[..., n_bins + 1]``; the pdf is constant inside
each bin, so the cdf is piecewise linear and inverted exactly by linear interpolation.

:func:`importance_sampling` follows ``nerfacc.importance_sampling`` (cdf values at the edges in,
``n + 1`` interval edges and ``n`` samples out, same sample positions): deterministic mode draws
at the cdf quantiles ``(k + 1/2) / n``; stratified mode shifts them by one uniform jitter per ray.
It runs on any device (pure torch), takes dense ``[..., n_edges]`` or packed edges, and returns
dense ``[n_rays, n + 1]`` / ``[n_rays, n]``. :func:`sample_from_pdf` takes per-bin weights instead.

Example:
    >>> import torch
    >>> bins = torch.tensor([[0.0, 1.0, 2.0]])
    >>> intervals, samples = sample_from_pdf(bins, torch.tensor([[1.0, 3.0]]), 4)
    >>> samples
    tensor([[0.5000, 1.1667, 1.5000, 1.8333]])
    >>> intervals
    tensor([[0.1667, 0.8333, 1.3333, 1.6667, 2.0000]])
"""

from __future__ import annotations

import torch

from vq3dlib._validation import check_same_device, check_tensor, finite_checks_enabled, has_values
from vq3dlib.packed import pad_segments

__all__ = ["importance_sampling", "sample_from_pdf"]

_FLAT_CDF = 1e-10  # cdf steps below this are treated as empty bins (as nerfacc does)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _check_sorted(name: str, values: torch.Tensor) -> None:
    if not (finite_checks_enabled() and values.shape[-1] > 1 and has_values(values)):
        return
    if bool((values[..., 1:] < values[..., :-1]).any()):
        raise ValueError(f"{name} must be non-decreasing along the last dimension")


def _invert_cdf(
    bins: torch.Tensor, cdfs: torch.Tensor, n: int, stratified: bool, generator: torch.Generator | None
) -> torch.Tensor:
    lo, hi = cdfs[..., :1], cdfs[..., -1:]
    flat = (hi - lo) <= 0
    if bool(flat.any()):
        # Rays without probability mass are sampled uniformly in t.
        extent = (bins[..., -1:] - bins[..., :1]).clamp_min(torch.finfo(bins.dtype).tiny)
        uniform = (bins - bins[..., :1]) / extent
        cdfs = torch.where(flat, uniform.to(cdfs.dtype), cdfs)
        lo, hi = cdfs[..., :1], cdfs[..., -1:]
    if stratified:
        bias = torch.rand(lo.shape, dtype=cdfs.dtype, device=cdfs.device, generator=generator)
    else:
        bias = torch.full_like(lo, 0.5)
    steps = torch.arange(n, dtype=cdfs.dtype, device=cdfs.device)
    u = lo + (steps + bias) * ((hi - lo) / n)
    u = torch.minimum(u, hi)
    last = cdfs.shape[-1] - 1
    idx = torch.searchsorted(cdfs.contiguous(), u.contiguous(), right=True)
    i0, i1 = (idx - 1).clamp(0, last), idx.clamp(0, last)
    c0, c1 = cdfs.gather(-1, i0), cdfs.gather(-1, i1)
    t0, t1 = bins.gather(-1, i0), bins.gather(-1, i1)
    span = c1 - c0
    empty = span < _FLAT_CDF
    frac = ((u - c0) / torch.where(empty, torch.ones_like(span), span)).to(bins.dtype)
    return torch.where(empty, (t0 + t1) / 2, t0 + frac * (t1 - t0))


def _intervals(samples: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    t_min, t_max = bins[..., :1], bins[..., -1:]
    if samples.shape[-1] == 1:
        return torch.cat([t_min, t_max], dim=-1)
    mids = (samples[..., 1:] + samples[..., :-1]) / 2
    first = torch.maximum(2 * samples[..., :1] - mids[..., :1], t_min)
    last = torch.minimum(2 * samples[..., -1:] - mids[..., -1:], t_max)
    return torch.cat([first, mids, last], dim=-1)


def importance_sampling(
    bins: torch.Tensor,
    cdfs: torch.Tensor,
    n_intervals_per_ray: int,
    stratified: bool = False,
    *,
    packed_info: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws ``n_intervals_per_ray`` sorted samples per ray by inverting a piecewise-linear cdf.

    Sample ``k`` of a ray is the cdf inverse at ``u_k = c_0 + (k + b) (c_last - c_0) / n`` with
    ``b = 1/2`` (deterministic) or one uniform ``b`` in ``[0, 1)`` per ray (``stratified``), so
    cdfs need not be normalised. New interval edges are the midpoints between samples, the outer
    two mirrored and clipped to the ray's first/last edge (as nerfacc). Rays whose cdf is flat are
    sampled uniformly in ``t`` (nerfacc puts all of their samples on the last edge).

    Args:
        bins: ``[..., n_edges]`` sorted edges per ray, or packed ``[E]`` with ``packed_info``.
        cdfs: non-decreasing cdf values at the edges, shaped like ``bins``.
        n_intervals_per_ray: samples per ray ``n >= 1``.
        stratified: jitter the quantiles (training) instead of using their centres.
        packed_info: ``[n_rays, 2]`` (start, count) of each ray's edges in packed ``bins``; rays
            with fewer than 2 edges get zero-length intervals at their edge (0 if none).
        generator: random generator for the stratified jitter.

    Returns:
        ``(intervals, samples)``: ``[..., n + 1]`` edges and ``[..., n]`` samples (``[n_rays, ...]``
        for packed input), sorted along each ray and inside ``[bins[0], bins[-1]]``. Gradients
        flow to ``bins`` (usually called under ``torch.no_grad()``).

    Example:
        >>> import torch
        >>> edges = torch.tensor([0.0, 1.0, 0.0, 1.0, 2.0])
        >>> cdfs = torch.tensor([0.0, 0.5, 0.0, 0.5, 1.0])
        >>> info = torch.tensor([[0, 2], [2, 3]])
        >>> intervals, samples = importance_sampling(edges, cdfs, 2, packed_info=info)
        >>> samples
        tensor([[0.2500, 0.7500],
                [0.5000, 1.5000]])
        >>> intervals
        tensor([[0.0000, 0.5000, 1.0000],
                [0.0000, 1.0000, 2.0000]])
    """
    _check_count("n_intervals_per_ray", n_intervals_per_ray)
    check_tensor("bins", bins, floating=True, finite=True)
    check_tensor("cdfs", cdfs, shape=tuple(bins.shape), floating=True, finite=True)
    check_same_device(bins=bins, cdfs=cdfs, packed_info=packed_info)
    if packed_info is not None:
        check_tensor("packed_info", packed_info, shape=(None, 2), integer=True)
        if bins.dim() != 1:
            raise ValueError(f"bins must be flat [E] when packed_info is given, got shape {list(bins.shape)}")
        bins, cdfs = pad_segments(bins, packed_info), pad_segments(cdfs, packed_info)
    elif bins.dim() == 0 or bins.shape[-1] < 2:
        raise ValueError(f"bins must have shape [..., n_edges] with n_edges >= 2, got {list(bins.shape)}")
    _check_sorted("bins", bins)
    _check_sorted("cdfs", cdfs)
    samples = _invert_cdf(bins, cdfs, n_intervals_per_ray, stratified, generator)
    return _intervals(samples, bins), samples


def sample_from_pdf(
    bins: torch.Tensor,
    weights: torch.Tensor,
    n_samples: int,
    stratified: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws ``n_samples`` sorted samples per ray from the pdf ``weights / sum(weights)`` over ``bins``.

    Args:
        bins: ``[..., n_bins + 1]`` sorted bin edges per ray.
        weights: ``[..., n_bins]`` non-negative bin weights (e.g. rendering weights of a proposal
            pass); rays whose weights sum to 0 are sampled uniformly in ``t``.
        n_samples: samples per ray ``>= 1``.
        stratified: one uniform jitter per ray instead of the quantile centres.
        generator: random generator for the stratified jitter.

    Returns:
        ``(intervals [..., n_samples + 1], samples [..., n_samples])`` as :func:`importance_sampling`.

    Example:
        >>> import torch
        >>> bins = torch.linspace(0.0, 4.0, 5).expand(3, 5)
        >>> weights = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).expand(3, 4)
        >>> intervals, samples = sample_from_pdf(bins, weights, 8, stratified=True)
        >>> bool(((samples >= 1) & (samples <= 2)).all())
        True
    """
    _check_count("n_samples", n_samples)
    check_tensor("bins", bins, floating=True, finite=True)
    if bins.dim() == 0 or bins.shape[-1] < 2:
        raise ValueError(f"bins must have shape [..., n_bins + 1] with n_bins >= 1, got {list(bins.shape)}")
    weights_shape = tuple(bins.shape[:-1]) + (bins.shape[-1] - 1,)
    check_tensor("weights", weights, shape=weights_shape, floating=True, finite=True)
    check_same_device(bins=bins, weights=weights)
    if finite_checks_enabled() and weights.numel() > 0 and has_values(weights) and bool((weights < 0).any()):
        raise ValueError("weights must be non-negative")
    cdfs = torch.cat([torch.zeros_like(weights[..., :1]), torch.cumsum(weights, dim=-1)], dim=-1)
    return importance_sampling(bins, cdfs, n_samples, stratified, generator=generator)
