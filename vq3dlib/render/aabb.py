"""Ray–AABB intersection (slab test), differentiable, with near/far clipping.

Example:
    >>> import torch
    >>> from vq3dlib.render.aabb import ray_aabb_intersect
    >>> o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    >>> d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> t_near, t_far, hit = ray_aabb_intersect(o, d, [-1, -1, -1, 1, 1, 1])
    >>> t_near.tolist(), t_far.tolist(), hit.tolist()
    ([2.0, 0.0, inf], [4.0, 1.0, inf], [True, True, False])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vq3dlib._validation import check_same_device, check_tensor, finite_checks_enabled, has_values
from vq3dlib.ops.march import ray_box_slabs


def as_aabb(aabb: Tensor | Sequence[float], like: Tensor, name: str = "aabb") -> Tensor:
    """Turns a box given as a sequence or tensor ``[..., 6]`` into a tensor on ``like``'s device/dtype.

    Checks ``min < max`` on every axis (a value check: skipped, like the NaN checks, when
    :func:`vq3dlib._validation.set_finite_checks` turned them off, so it never syncs then).

    Example:
        >>> as_aabb([-1, -1, -1, 1, 1, 1], torch.zeros(1)).tolist()
        [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    """
    box = torch.as_tensor(aabb, dtype=like.dtype, device=like.device)
    check_tensor(name, box, last_dim=6, finite=True)
    if finite_checks_enabled() and has_values(box) and bool((box[..., 3:] <= box[..., :3]).any()):
        raise ValueError(
            f"{name} must be {{xmin, ymin, zmin, xmax, ymax, zmax}} with min < max, got {box.tolist()}"
        )
    return box


def ray_aabb_intersect(
    origins: Tensor,
    directions: Tensor,
    aabb: Tensor | Sequence[float],
    near: float | Tensor = 0.0,
    far: float | Tensor = math.inf,
    miss_value: float = math.inf,
) -> tuple[Tensor, Tensor, Tensor]:
    """Where rays enter and leave an axis-aligned box, clipped to ``[near, far]``.

    A ray starting inside the box gets ``t_near = near`` (0 by default); a ray that misses the box,
    hits it only behind ``near``/beyond ``far``, or touches it in a single point gets ``hit = False`` and
    ``miss_value`` in both outputs (``inf`` like nerfacc). Zero direction components are handled
    (no NaN). Differentiable with respect to origins, directions and the box.

    Args:
        origins: ``[..., 3]`` ray origins.
        directions: ``[..., 3]`` ray directions (any length; ``t`` is in multiples of them).
        aabb: ``[6]`` or ``[..., 6]`` (broadcast against the rays), ``{xmin, ymin, zmin, xmax, ymax, zmax}``.
        near: scalar or ``[...]`` per-ray lower bound on ``t``.
        far: scalar or ``[...]`` per-ray upper bound on ``t``.
        miss_value: value written to ``t_near``/``t_far`` of rays that miss.

    Returns:
        ``(t_near [...], t_far [...], hit [...] bool)``.

    Example:
        >>> t0, t1, hit = ray_aabb_intersect(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [0, 2.0, 0]]),
        ...                                  [-1, -1, -1, 1, 1, 1])
        >>> t0.tolist(), t1.tolist()
        ([0.0, 0.0], [1.0, 0.5])
    """
    check_tensor("origins", origins, last_dim=3, floating=True, finite=True)
    check_tensor("directions", directions, shape=tuple(origins.shape), dtypes=(origins.dtype,), finite=True)
    check_same_device(origins=origins, directions=directions)
    box = as_aabb(aabb, origins)
    batch = origins.shape[:-1]
    near_t = torch.as_tensor(near, dtype=origins.dtype, device=origins.device)
    far_t = torch.as_tensor(far, dtype=origins.dtype, device=origins.device)
    for name, value in (("near", near_t), ("far", far_t)):
        if value.dim() and tuple(value.shape) != tuple(batch):
            raise ValueError(f"{name} must be a scalar or have shape {list(batch)}, got {list(value.shape)}")
        if finite_checks_enabled() and has_values(value) and bool(torch.isnan(value).any()):
            raise ValueError(f"{name} must not contain NaN")
    t_min, t_max = ray_box_slabs(origins, directions, box)
    t_near = torch.maximum(t_min, near_t)
    t_far = torch.minimum(t_max, far_t)
    hit = t_far > t_near
    miss = torch.full_like(t_near, miss_value)
    return torch.where(hit, t_near, miss), torch.where(hit, t_far, miss), hit
