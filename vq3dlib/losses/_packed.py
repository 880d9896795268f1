"""Input checks of the losses over packed samples (nerfacc layout); private to :mod:`vq3dlib.losses`.

Packed samples are ``S`` samples from ``n_rays`` rays stored flat; ``ray_indices [S]`` (int64, sorted
by ray) says which ray each sample belongs to. Dense samples ``[..., N]`` are the same thing with a
fixed number of samples per ray. The packed-segment primitives themselves (ray-index checks, per-ray
sums, exclusive scans) are :mod:`vq3dlib.packed`; these helpers add the losses' checks of the
per-sample tensors and of the sample order along each ray.

Example:
    >>> import torch
    >>> check_packed(torch.ones(3), torch.tensor([0, 0, 2]), 3, t_starts=torch.zeros(3))
"""

from __future__ import annotations

import torch

from vq3dlib._validation import check_tensor, finite_checks_enabled, has_values
from vq3dlib.packed import check_n_rays, check_ray_indices


def check_packed(
    weights: torch.Tensor,
    ray_indices: torch.Tensor,
    n_rays: int,
    **others: torch.Tensor,
) -> None:
    """Validates a packed batch: 1-D float ``weights`` and ``others``, sorted in-range ``ray_indices``.

    The sortedness and range checks (:func:`vq3dlib.packed.check_ray_indices`) need a host sync; like
    the NaN checks they are skipped when :func:`vq3dlib._validation.set_finite_checks` turned checks off.

    Example:
        >>> import torch
        >>> check_packed(torch.ones(2), torch.tensor([0, 1]), 2, t_starts=torch.zeros(2))
    """
    check_tensor("weights", weights, ndim=1, floating=True, finite=True)
    check_tensor("ray_indices", ray_indices, shape=(weights.shape[0],), integer=True, device=weights.device)
    check_n_rays(n_rays)
    for name, value in others.items():
        check_tensor(
            name, value, shape=(weights.shape[0],), floating=True, device=weights.device, finite=True
        )
    check_ray_indices(ray_indices, weights.shape[0], n_rays)


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
