"""Fixed-count stratified intervals for feed-forward scenes: the box, the outside, the background.

A generator that predicts a new scene for every image cannot afford an occupancy grid per scene and
step, and its early scenes are not yet sparse. :func:`stratified_intervals` places a fixed number of
intervals on every ray, in three parts (mip-NeRF 360's layout, with a closing background interval):

1. ``n_inner = round(inner_fraction * n_samples)`` intervals linear in ``t`` over the part of the ray
   inside the scene box (``aabb``, default ``[-1, 1]^3``) (clipped to ``[near, far]``);
2. the other ``n_samples - n_inner`` intervals linear in disparity ``1 / t`` from the box exit to
   ``far`` (contracted space is covered evenly);
3. one background interval ``[far, INFINITY]``: any positive density there is opaque, so every ray
   ends on the field's colour at the contraction's boundary (a learned sky) and renders no holes.

Rays that miss the box get zero-length inner intervals at ``near`` and spend their outer intervals
between ``near`` and ``far``. With ``jitter`` each interval boundary inside a part moves by a uniform
fraction of its part's spacing (stratified sampling); starts and ends stay contiguous and sorted.

Example:
    >>> import torch
    >>> o, d = torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    >>> t0, t1 = stratified_intervals(o, d, 6, near=1.0, far=100.0, inner_fraction=0.5)
    >>> t0.shape, [round(t, 3) for t in t0[0, :3].tolist()], t1[0, 2].item()
    (torch.Size([1, 7]), [2.0, 2.667, 3.333], 4.0)
    >>> t0[0, -1].item(), t1[0, -1].item() == INFINITY
    (100.0, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vq3dlib._validation import check_positive, check_tensor
from vq3dlib.render.aabb import ray_aabb_intersect

#: end of the closing background interval (any density > 0 makes it opaque)
INFINITY = 1e10


def _edges(n: int, jitter: bool, like: Tensor) -> Tensor:
    """``[N, n + 1]`` fractions in ``[0, 1]``, evenly spaced (inner edges jittered when asked)."""
    rays = like.shape[0]
    base = torch.linspace(0.0, 1.0, n + 1, dtype=like.dtype, device=like.device).expand(rays, n + 1)
    if not jitter or n < 2:
        return base.contiguous()
    shift = (torch.rand(rays, n - 1, dtype=like.dtype, device=like.device) - 0.5) / n
    inner = base[:, 1:-1] + shift
    return torch.cat([base[:, :1], inner, base[:, -1:]], dim=1)


def stratified_intervals(
    origins: Tensor,
    directions: Tensor,
    n_samples: int,
    *,
    near: float,
    far: float,
    aabb: Sequence[float] | Tensor = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0),
    inner_fraction: float = 0.75,
    jitter: bool = False,
) -> tuple[Tensor, Tensor]:
    """Interval starts and ends ``[N, n_samples + 1]`` along each ray (see the module docstring).

    Args:
        origins: ``[N, 3]`` ray origins.
        directions: ``[N, 3]`` unit ray directions.
        n_samples: intervals before the background interval (``>= 1``).
        near, far: the ray segment (``0 <= near < far``); the background interval starts at ``far``.
        aabb: the scene box ``[xmin, ymin, zmin, xmax, ymax, zmax]``.
        inner_fraction: share of the ``n_samples`` intervals inside the box (in ``[0, 1]``; at least
            one interval always lies outside, so the segment up to ``far`` is covered).
        jitter: stratified random offsets (training).

    Returns:
        ``(t_starts, t_ends)``, each ``[N, n_samples + 1]``, sorted along each ray, contiguous
        (``t_ends[:, i] == t_starts[:, i + 1]``); the last interval is ``[far, INFINITY]``.

    Example:
        >>> o = torch.tensor([[0.0, 3.0, 3.0]]); d = torch.tensor([[0.0, 0.0, -1.0]])  # misses the box
        >>> t0, t1 = stratified_intervals(o, d, 4, near=1.0, far=9.0, inner_fraction=0.5)
        >>> [round(t, 3) for t in t0[0].tolist()], t1[0, :2].tolist()
        ([1.0, 1.0, 1.0, 1.8, 9.0], [1.0, 1.0])
    """
    check_tensor("origins", origins, shape=(None, 3), floating=True)
    check_tensor("directions", directions, shape=tuple(origins.shape), dtypes=(origins.dtype,))
    check_positive("n_samples", n_samples)
    check_positive("far", far)
    check_positive("near", near, allow_zero=True)
    if not near < far:
        raise ValueError(f"near ({near}) must be < far ({far})")
    if not 0.0 <= inner_fraction <= 1.0:
        raise ValueError(f"inner_fraction must be in [0, 1], got {inner_fraction}")
    n_inner = min(int(round(inner_fraction * n_samples)), n_samples - 1)  # >= 1 interval outside
    n_outer = n_samples - n_inner
    # a ray that misses the box gets t_in = t_out = near: zero-length inner intervals, outer from near
    t_in, t_out, _ = ray_aabb_intersect(origins, directions, aabb, near=near, far=far, miss_value=near)
    parts = []
    if n_inner:  # n_outer >= 1 always
        parts.append(t_in[:, None] + (t_out - t_in)[:, None] * _edges(n_inner, jitter, origins)[:, :-1])
    if n_outer:
        s0 = 1.0 / t_out.clamp(min=1e-6)
        s1 = 1.0 / far
        s = s0[:, None] + (s1 - s0[:, None]) * _edges(n_outer, jitter, origins)[:, :-1]
        parts.append(1.0 / s)
    starts = torch.cat([*parts, torch.full_like(t_in[:, None], far)], dim=1)
    ends = torch.cat([starts[:, 1:], torch.full_like(t_in[:, None], INFINITY)], dim=1)
    return starts, ends


__all__ = ["INFINITY", "stratified_intervals"]
