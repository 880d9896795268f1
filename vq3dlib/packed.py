"""Packed samples: one flat ``[S]`` tensor holding the samples of many rays, one run (segment) per ray.

The layout of nerfacc (and of :func:`vq3dlib.render.ray_march`): samples sorted by ray, described by
``ray_indices [S]`` (int64, non-decreasing, the ray of each sample, with ``n_rays``) or by
``packed_info [n_rays, 2]`` (the ``(start, count)`` of each ray's run). These are the primitives every
packed computation of the library uses — the kernels' wrappers (:mod:`vq3dlib.ops.volrend`), volume
rendering (:mod:`vq3dlib.render.volrend`), importance sampling (:mod:`vq3dlib.render.pdf`) and the
packed losses (:mod:`vq3dlib.losses`):

* :func:`check_n_rays`, :func:`check_ray_indices` — validation (value checks sync with the device;
  they are skipped with :func:`vq3dlib._validation.set_finite_checks` off);
* :func:`pack_info` — ``ray_indices`` → ``packed_info``; :func:`segment_positions` — the reverse map
  (the input position, ray and rank of every sample a ray covers);
* :func:`segment_sum` — per-ray sums; :func:`exclusive_sum` and :func:`exclusive_prod` — exclusive
  scans restarted at every ray; :func:`pad_segments` — rays as rows of a padded ``[n_rays, width]``.

The scans are computed per ray, on the runs padded to ``[n_rays, max_count + 1]`` (sums accumulate
in float64): a ray's result never depends on the other rays' values, however large. (One global
cumulative sum minus the total at each ray's start would lose a ray's precision to the rays before
it.) Memory is ``O(n_rays · max_count)``.

Example:
    >>> import torch
    >>> ray_indices = torch.tensor([0, 0, 0, 2, 2])
    >>> info = pack_info(ray_indices, n_rays=3)
    >>> info.tolist()
    [[0, 3], [3, 0], [3, 2]]
    >>> values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> exclusive_sum(values, info).tolist(), segment_sum(values, ray_indices, 3).tolist()
    ([0.0, 1.0, 3.0, 0.0, 4.0], [6.0, 0.0, 9.0])
"""

from __future__ import annotations

import torch

from vq3dlib._validation import check_tensor, finite_checks_enabled, has_values

__all__ = [
    "check_n_rays",
    "check_packed_info",
    "check_ray_indices",
    "exclusive_prod",
    "exclusive_sum",
    "pack_info",
    "packed_info_from_counts",
    "pad_segments",
    "segment_positions",
    "segment_sum",
]


def check_n_rays(n_rays: object) -> None:
    """Raises unless ``n_rays`` is ``None`` or an int ``>= 0`` (``TypeError`` / ``ValueError``).

    Example:
        >>> check_n_rays(3); check_n_rays(None)
        >>> try:
        ...     check_n_rays(2.0)
        ... except TypeError as e:
        ...     print(e)
        n_rays must be an int, got float
    """
    if n_rays is None:
        return
    if isinstance(n_rays, bool) or not isinstance(n_rays, int):
        raise TypeError(f"n_rays must be an int, got {type(n_rays).__name__}")
    if n_rays < 0:
        raise ValueError(f"n_rays must be >= 0, got {n_rays}")


def check_ray_indices(
    ray_indices: torch.Tensor, n_samples: int, n_rays: int | None = None, *, require_sorted: bool = True
) -> None:
    """Checks ``ray_indices [n_samples]``: integer, in ``[0, n_rays)``, non-decreasing if ``require_sorted``.

    The range and order checks read the values (a host sync on CUDA); like the NaN checks they are
    skipped when value checks are off and for meta/fake tensors.

    Example:
        >>> import torch
        >>> check_ray_indices(torch.tensor([0, 0, 1]), 3, n_rays=2)
        >>> try:
        ...     check_ray_indices(torch.tensor([1, 0]), 2)
        ... except ValueError as e:
        ...     print(e)
        ray_indices must be sorted (non-decreasing): packed samples are grouped by ray
    """
    check_tensor("ray_indices", ray_indices, shape=(n_samples,), integer=True)
    check_n_rays(n_rays)
    if not finite_checks_enabled() or n_samples == 0 or not has_values(ray_indices):
        return
    lo, hi = int(ray_indices.min()), int(ray_indices.max())
    if lo < 0 or (n_rays is not None and hi >= n_rays):
        bound = f"[0, n_rays={n_rays})" if n_rays is not None else ">= 0"
        raise ValueError(f"ray_indices must be in {bound}, got values in [{lo}, {hi}]")
    if require_sorted and n_samples > 1 and bool((ray_indices[1:] < ray_indices[:-1]).any()):
        raise ValueError("ray_indices must be sorted (non-decreasing): packed samples are grouped by ray")


def check_packed_info(packed_info: object, n_samples: int | None = None) -> None:
    """Checks ``packed_info [n_rays, 2]``: integer ``(start, count)`` pairs, ``start, count >= 0``, each
    run inside ``[0, n_samples)`` (``TypeError`` / ``ValueError`` naming ``packed_info``).

    The value checks read the values (a host sync on CUDA); like the NaN checks they are skipped when
    value checks are off and for meta/fake tensors.

    Example:
        >>> import torch
        >>> check_packed_info(torch.tensor([[0, 2], [2, 1]]), 3)
        >>> try:
        ...     check_packed_info(torch.tensor([[0, -2]]), 3)
        ... except ValueError as e:
        ...     print(e)
        packed_info must hold counts >= 0 (column 1), got -2 (ray 0)
    """
    check_tensor("packed_info", packed_info, shape=(None, 2), integer=True)
    assert isinstance(packed_info, torch.Tensor)
    if not finite_checks_enabled() or packed_info.shape[0] == 0 or not has_values(packed_info):
        return
    for column, what in ((1, "counts"), (0, "starts")):
        values = packed_info[:, column]
        lo = int(values.min())
        if lo < 0:
            ray = int((values < 0).nonzero()[0, 0])
            raise ValueError(f"packed_info must hold {what} >= 0 (column {column}), got {lo} (ray {ray})")
    if n_samples is not None:
        end = int((packed_info[:, 0] + packed_info[:, 1]).max())
        if end > n_samples:
            raise ValueError(f"packed_info addresses samples outside [0, {n_samples}) (runs end at {end})")


@torch.no_grad()
def pack_info(ray_indices: torch.Tensor, n_rays: int | None = None) -> torch.Tensor:
    """``packed_info [n_rays, 2]`` (start, count) of each ray from sorted ``ray_indices [S]``.

    Rays without samples get count 0 (and the start of the next ray). Uses ``torch.searchsorted``,
    so it is deterministic and needs ``ray_indices`` sorted.

    Args:
        ray_indices: ``[S]`` integer ray of each sample, non-decreasing, ``>= 0`` (and ``< n_rays``);
            checked by :func:`check_ray_indices` (a value check, skipped when value checks are off).
        n_rays: number of rays; default ``max(ray_indices) + 1`` (0 when there are no samples; a sync).

    Returns:
        ``[n_rays, 2]`` int64 tensor on the device of ``ray_indices``.

    Example:
        >>> import torch
        >>> pack_info(torch.tensor([0, 0, 2, 2, 2]), n_rays=4).tolist()
        [[0, 2], [2, 0], [2, 3], [5, 0]]
    """
    check_tensor("ray_indices", ray_indices, ndim=1)
    check_ray_indices(ray_indices, ray_indices.shape[0], n_rays)
    ray_indices = ray_indices.long()
    if n_rays is None:
        n_rays = int(ray_indices.max()) + 1 if ray_indices.numel() > 0 else 0
    rays = torch.arange(n_rays, device=ray_indices.device, dtype=torch.long)
    starts = torch.searchsorted(ray_indices, rays, side="left")
    ends = torch.searchsorted(ray_indices, rays, side="right")
    return torch.stack([starts, ends - starts], dim=-1)


def packed_info_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """``packed_info [n_rays, 2]`` (start, count) of a packing with ``counts [n_rays]`` samples per ray.

    What :func:`pack_info` gives for the ray indices of that packing, without searching them: for
    code that knows how many samples each ray holds (e.g. from ``torch.bincount``).

    Example:
        >>> import torch
        >>> packed_info_from_counts(torch.tensor([2, 0, 3, 0])).tolist()
        [[0, 2], [2, 0], [2, 3], [5, 0]]
    """
    check_tensor("counts", counts, ndim=1, dtypes=(torch.long,))
    return torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=-1)


def segment_positions(
    packed_info: torch.Tensor, n_samples: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The samples the rays of ``packed_info`` cover, in ray order: ``(positions, rays, ranks)``.

    For every covered sample: its index into the ``[n_samples]`` input, its ray, and its rank within
    the ray (0 for a ray's first sample). Any ``packed_info`` is accepted (gaps, reordered rays);
    runs reaching outside ``[0, n_samples)`` raise ``ValueError`` (a value check, host sync).

    Example:
        >>> import torch
        >>> positions, rays, ranks = segment_positions(torch.tensor([[3, 2], [0, 1]]), 5)
        >>> positions.tolist(), rays.tolist(), ranks.tolist()
        ([3, 4, 0], [0, 0, 1], [0, 1, 0])
    """
    check_packed_info(packed_info, n_samples)
    starts, counts = packed_info[:, 0].long(), packed_info[:, 1].long()
    n_rays = packed_info.shape[0]
    device = packed_info.device
    total = int(counts.sum()) if n_rays > 0 else 0
    rays = torch.repeat_interleave(torch.arange(n_rays, device=device), counts, output_size=total)
    first = (torch.cumsum(counts, 0) - counts)[rays]  # integer offsets: exact
    ranks = torch.arange(total, device=device) - first
    positions = starts[rays] + ranks
    if total > 0 and (int(positions.min()) < 0 or int(positions.max()) >= n_samples):
        raise ValueError(f"packed_info addresses samples outside [0, {n_samples})")
    return positions, rays, ranks


def segment_sum(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Sums ``values [S, ...]`` per ray into ``[n_rays, ...]`` (rays without samples get 0; differentiable).

    ``ray_indices [S]`` need not be sorted here.

    Example:
        >>> import torch
        >>> segment_sum(torch.ones(4), torch.tensor([1, 1, 1, 3]), 4)
        tensor([0., 3., 0., 1.])
    """
    out = values.new_zeros((n_rays,) + tuple(values.shape[1:]))
    return out.index_add(0, ray_indices.long(), values)


def _scan(
    values: torch.Tensor, packed_info: torch.Tensor, identity: float, dtype: torch.dtype, op
) -> torch.Tensor:
    n = values.shape[0]
    positions, rays, ranks = segment_positions(packed_info, n)
    n_rays = packed_info.shape[0]
    width = int(packed_info[:, 1].max()) if n_rays > 0 else 0
    trailing = tuple(values.shape[1:])
    padded = values.new_full((n_rays, width + 1, *trailing), identity, dtype=dtype)
    padded = padded.index_put((rays, ranks + 1), values[positions].to(dtype))
    scanned = op(padded, dim=1)[rays, ranks]  # column k = the scan over the ray's first k samples
    return values.new_zeros((n, *trailing), dtype=dtype).index_put((positions,), scanned)


def exclusive_sum(
    values: torch.Tensor, packed_info: torch.Tensor, *, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Exclusive prefix sum of ``values [S, ...]`` along dim 0, restarted at every ray.

    Sample ``k`` of a ray gets the sum of the ray's samples before it (0 for its first sample).
    Accumulated in float64, per ray (see the module docstring); differentiable.

    Args:
        values: ``[S, ...]`` packed values.
        packed_info: ``[n_rays, 2]`` (start, count) of each ray (:func:`pack_info`); samples no ray
            covers get 0.
        dtype: dtype of the result (default ``values.dtype``).

    Returns:
        ``[S, ...]``.

    Example:
        >>> import torch
        >>> exclusive_sum(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([[0, 2], [2, 2]]))
        tensor([0., 1., 0., 3.])
    """
    out = _scan(values, packed_info, 0.0, torch.float64, torch.cumsum)
    return out.to(values.dtype if dtype is None else dtype)


def exclusive_prod(values: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    """Exclusive prefix product of ``values [S, ...]`` along dim 0, restarted at every ray.

    Sample ``k`` of a ray gets the product of the ray's samples before it (1 for its first sample);
    samples no ray covers get 0. Computed in ``values.dtype`` with ``torch.cumprod`` (whose gradient
    is exact where a value is 0).

    Example:
        >>> import torch
        >>> exclusive_prod(torch.tensor([0.5, 0.5, 0.5, 0.2]), torch.tensor([[0, 3], [3, 1]]))
        tensor([1.0000, 0.5000, 0.2500, 1.0000])
    """
    return _scan(values, packed_info, 1.0, values.dtype, torch.cumprod)


def pad_segments(values: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    """Packed runs ``[E]`` → ``[n_rays, max(max_count, 1)]``: each row a ray, padded with its last value.

    Rays without samples are rows of zeros.

    Example:
        >>> import torch
        >>> pad_segments(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[0, 2], [2, 0], [2, 1]]))
        tensor([[1., 2.],
                [0., 0.],
                [3., 3.]])
    """
    check_packed_info(packed_info, values.shape[0] if values.dim() == 1 else None)
    starts, counts = packed_info[:, 0].long(), packed_info[:, 1].long()
    n_rays = packed_info.shape[0]
    width = max(int(counts.max()) if n_rays > 0 else 0, 1)
    if values.numel() == 0:
        return values.new_zeros(n_rays, width)
    col = torch.arange(width, device=values.device)
    index = starts[:, None] + torch.minimum(col[None, :], (counts[:, None] - 1).clamp_min(0))
    gathered = values[index.clamp(0, values.numel() - 1)]
    return torch.where(counts[:, None] == 0, torch.zeros_like(gathered), gathered)
