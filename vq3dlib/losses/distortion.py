"""Distortion loss of mip-NeRF 360, in O(n) per ray with prefix sums.

For one ray with sample intervals ``[t_start_i, t_end_i]``, midpoints ``m_i`` and weights ``w_i``::

    L = sum_i sum_j w_i w_j |m_i - m_j|  +  1/3 sum_i w_i^2 (t_end_i - t_start_i)

The double sum is O(n^2) as written; with samples sorted along the ray it equals
``2 sum_i w_i (m_i W_<i - (wm)_<i)`` where ``W_<i`` and ``(wm)_<i`` are exclusive prefix sums of ``w``
and ``w m``, which is O(n). The loss pulls the weights of a ray together into one compact interval
(removing "floaters"). Pass normalised distances (e.g. the mip-NeRF 360 ``s`` coordinate, or contracted
distances) when ray lengths differ a lot.

Example:
    >>> import torch
    >>> from vq3dlib.losses.distortion import distortion_loss, distortion_loss_reference
    >>> w = torch.rand(4, 16)
    >>> t = torch.linspace(0, 1, 17).expand(4, 17)
    >>> a = distortion_loss(w, t[:, :-1], t[:, 1:], reduction="none")
    >>> torch.allclose(a, distortion_loss_reference(w, t[:, :-1], t[:, 1:]), atol=1e-5)
    True
"""

from __future__ import annotations

import math

import torch

from vq3dlib._validation import check_choice, check_tensor
from vq3dlib.losses._packed import check_packed, check_sorted_samples
from vq3dlib.packed import check_n_rays, exclusive_sum, pack_info, segment_sum

REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_ray: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_ray
    if reduction == "sum":
        return per_ray.sum()
    if per_ray.numel() == 0:
        return per_ray.sum()  # 0, not NaN, for an empty batch
    return per_ray.mean()


def distortion_loss(
    weights: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor | None = None,
    n_rays: int | None = None,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """mip-NeRF 360 distortion loss, O(n) per ray, on packed or dense samples.

    Samples must be sorted by distance along each ray (as ray marching produces them): with value
    checks on (the default, see :func:`vq3dlib._validation.set_finite_checks`) a ``t_start > t_end``
    or a sample whose ``t_start`` or ``t_end`` is smaller than its predecessor's on the same ray
    raises ``ValueError``.

    Args:
        weights: rendering weights, packed ``[S]`` or dense ``[..., N]``.
        t_starts: interval starts, same shape as ``weights``.
        t_ends: interval ends, same shape as ``weights``.
        ray_indices: ``[S]`` int, ray of each packed sample, sorted; ``None`` for dense input.
        n_rays: number of rays for packed input (default ``ray_indices.max() + 1``, which syncs).
            Dense input has ``prod(weights.shape[:-1])`` rays; any other ``n_rays`` raises
            ``ValueError``.
        reduction: ``"mean"`` over rays, ``"sum"``, or ``"none"`` (per ray: ``[n_rays]`` packed,
            ``[...]`` dense).

    Returns:
        The loss (scalar, or per ray with ``reduction="none"``).

    Example:
        >>> import torch
        >>> w = torch.tensor([0.5, 0.5, 1.0])
        >>> ts, te = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 1.0])
        >>> distortion_loss(w, ts, te, torch.tensor([0, 0, 1]), n_rays=2, reduction="none")
        tensor([0.6667, 0.3333])
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_n_rays(n_rays)
    if ray_indices is None:
        check_tensor("weights", weights, ndim=tuple(range(1, 9)), floating=True, finite=True)
        check_tensor("t_starts", t_starts, shape=tuple(weights.shape), floating=True, finite=True)
        check_tensor("t_ends", t_ends, shape=tuple(weights.shape), floating=True, finite=True)
        rays = math.prod(weights.shape[:-1])
        if n_rays is not None and n_rays != rays:
            raise ValueError(
                f"n_rays={n_rays} contradicts the dense input: weights of shape {list(weights.shape)} "
                f"hold {rays} rays (n_rays is only needed for packed input; leave it None)"
            )
        check_sorted_samples(t_starts, t_ends)
        mid = 0.5 * (t_starts + t_ends)
        w_before = torch.cumsum(weights, -1) - weights
        wm = weights * mid
        wm_before = torch.cumsum(wm, -1) - wm
        bi = 2.0 * (weights * (mid * w_before - wm_before)).sum(-1)
        uni = (weights.square() * (t_ends - t_starts)).sum(-1) / 3.0
        return _reduce(bi + uni, reduction)

    if n_rays is None:
        n_rays = int(ray_indices.max()) + 1 if ray_indices.numel() > 0 else 0
    check_packed(weights, ray_indices, n_rays, t_starts=t_starts, t_ends=t_ends)
    check_sorted_samples(t_starts, t_ends, ray_indices)
    mid = 0.5 * (t_starts + t_ends)
    wm = weights * mid
    before = exclusive_sum(torch.stack([weights, wm], -1), pack_info(ray_indices, n_rays))
    w_before, wm_before = before.unbind(-1)
    per_sample = 2.0 * weights * (mid * w_before - wm_before) + weights.square() * (t_ends - t_starts) / 3.0
    return _reduce(segment_sum(per_sample, ray_indices, n_rays), reduction)


def distortion_loss_reference(
    weights: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor
) -> torch.Tensor:
    """The O(n^2) definition on dense samples ``[..., N]``; returns the per-ray loss ``[...]``.

    The test oracle of :func:`distortion_loss` (does not need samples sorted).

    Example:
        >>> import torch
        >>> distortion_loss_reference(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 1.0]]),
        ...                           torch.tensor([[1.0, 2.0]]))
        tensor([0.6667])
    """
    mid = 0.5 * (t_starts + t_ends)
    pair = (weights[..., :, None] * weights[..., None, :] * (mid[..., :, None] - mid[..., None, :]).abs())
    return pair.sum((-1, -2)) + (weights.square() * (t_ends - t_starts)).sum(-1) / 3.0
