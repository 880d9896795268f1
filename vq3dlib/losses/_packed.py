"""Segment reductions over packed samples (nerfacc layout), in pure torch.

Packed samples are ``S`` samples from ``n_rays`` rays stored flat; ``ray_indices [S]`` (int64, sorted
by ray) says which ray each sample belongs to. Dense samples ``[..., N]`` are the same thing with a
fixed number of samples per ray. These helpers are private to :mod:`vq3dlib.losses`.

Example:
    >>> import torch
    >>> ri = torch.tensor([0, 0, 2])
    >>> segment_sum(torch.tensor([1.0, 2.0, 3.0]), ri, 3)
    tensor([3., 0., 3.])
"""

from __future__ import annotations

import torch

from vq3dlib._validation import check_positive, check_tensor, finite_checks_enabled, has_values


def check_packed(
    weights: torch.Tensor,
    ray_indices: torch.Tensor,
    n_rays: int,
    **others: torch.Tensor,
) -> None:
    """Validates a packed batch: 1-D float ``weights`` and ``others``, sorted in-range ``ray_indices``.

    The sortedness and range checks need a host sync; like the NaN checks they are skipped when
    :func:`vq3dlib._validation.set_finite_checks` turned checks off.

    Example:
        >>> import torch
        >>> check_packed(torch.ones(2), torch.tensor([0, 1]), 2, t_starts=torch.zeros(2))
    """
    check_tensor("weights", weights, ndim=1, floating=True, finite=True)
    check_tensor("ray_indices", ray_indices, shape=(weights.shape[0],), integer=True, device=weights.device)
    if not isinstance(n_rays, int) or isinstance(n_rays, bool):
        raise TypeError(f"n_rays must be an int, got {type(n_rays).__name__}")
    check_positive("n_rays", n_rays, allow_zero=True)
    for name, value in others.items():
        check_tensor(
            name, value, shape=(weights.shape[0],), floating=True, device=weights.device, finite=True
        )
    if finite_checks_enabled() and ray_indices.numel() > 0 and has_values(ray_indices):
        if bool((ray_indices[1:] < ray_indices[:-1]).any()):
            raise ValueError("ray_indices must be sorted (samples grouped by ray, as nerfacc packs them)")
        lo, hi = int(ray_indices.min()), int(ray_indices.max())
        if lo < 0 or hi >= n_rays:
            raise ValueError(f"ray_indices must lie in [0, n_rays={n_rays}), got values in [{lo}, {hi}]")


def check_sorted_samples(
    t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor | None = None
) -> None:
    """Raises ``ValueError`` unless every interval has ``t_start <= t_end`` and samples are sorted
    along each ray (``t_starts`` and ``t_ends`` non-decreasing within a ray: along the last dim for
    dense ``[..., N]`` input, over consecutive samples of one ray for packed ``[S]`` input).

    A value check (host sync): skipped when :func:`vq3dlib._validation.set_finite_checks` turned
    checks off and for meta/fake tensors, like the NaN checks.

    Example:
        >>> import torch
        >>> check_sorted_samples(torch.tensor([0.0, 1.0, 0.5]), torch.tensor([1.0, 2.0, 0.7]),
        ...                      torch.tensor([0, 0, 1]))
    """
    if not (finite_checks_enabled() and t_starts.numel() > 0 and has_values(t_starts) and has_values(t_ends)):
        return
    inverted = t_starts > t_ends
    if bool(inverted.any()):
        raise ValueError(
            f"t_starts must be <= t_ends, got t_starts > t_ends at {int(inverted.sum())} sample(s)"
        )
    if ray_indices is None:
        down_s = t_starts[..., 1:] < t_starts[..., :-1]
        down_e = t_ends[..., 1:] < t_ends[..., :-1]
    else:
        same_ray = ray_indices[1:] == ray_indices[:-1]
        down_s = same_ray & (t_starts[1:] < t_starts[:-1])
        down_e = same_ray & (t_ends[1:] < t_ends[:-1])
    bad = down_s | down_e
    if bool(bad.any()):
        raise ValueError(
            f"samples must be sorted along each ray (t_starts and t_ends non-decreasing within a ray, as "
            f"ray marching gives them); {int(bad.sum())} sample(s) come before their predecessor"
        )


def segment_sum(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Sums ``values [S]`` per ray into ``[n_rays]`` (differentiable).

    Example:
        >>> import torch
        >>> segment_sum(torch.ones(4), torch.tensor([1, 1, 1, 3]), 4)
        tensor([0., 3., 0., 1.])
    """
    out = values.new_zeros((n_rays,) + tuple(values.shape[1:]))
    return out.index_add(0, ray_indices, values)


def exclusive_segment_cumsum(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Exclusive prefix sum of ``values [S, ...]`` along dim 0, restarted at every (sorted) ray.

    One global cumulative sum (accumulated in float64 so long batches do not lose precision) minus
    the running total at each ray's first sample. O(S) time and memory.

    Example:
        >>> import torch
        >>> exclusive_segment_cumsum(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 1, 1]), 2)
        tensor([0., 1., 0., 3.])
    """
    if values.numel() == 0:
        return values.clone()
    acc = values.to(torch.float64)
    exclusive = torch.cumsum(acc, 0) - acc
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    first = starts[ray_indices]
    return (exclusive - exclusive[first]).to(values.dtype)
