"""Volume rendering along rays: weights, transmittance, visibility, accumulation, background.

The functions take the same arguments, in the same order, and return the same outputs as
nerfacc 0.5's ``nerfacc.volrend`` (so code can switch by changing the import), on dense samples
``[..., n_samples]`` (one row per ray) or on packed samples ``[S]`` sorted by ray and described by
``ray_indices [S]`` (+ ``n_rays``) or ``packed_info [n_rays, 2]`` (start, count per ray). Unlike
nerfacc, packed inputs also run on the CPU (compiled kernel or torch reference), inputs are validated
(shapes, devices, sorted ray indices; NaN/Inf densities or opacities → ``ValueError`` naming the
argument; the value checks can be turned off with ``vq3dlib._validation.set_finite_checks``), and
gradients from alpha are exact where an opacity equals 1.

Weights come from the fused kernels of :mod:`vq3dlib.ops.volrend` (one O(n) pass per ray forward
and backward) when the extension is available, else from the torch reference.

Example:
    >>> import torch
    >>> t_starts = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    >>> t_ends = t_starts + 1
    >>> sigmas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
    >>> ray_indices = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    >>> weights, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices=ray_indices)
    >>> trans
    tensor([1.0000, 0.6703, 0.3012, 1.0000, 0.4493, 1.0000, 1.0000])
    >>> rgb = accumulate_along_rays(weights, torch.rand(7, 3), ray_indices, n_rays=3)
    >>> rgb.shape
    torch.Size([3, 3])
"""

from __future__ import annotations

import math

import torch

from vq3dlib._validation import check_range, check_same_device, check_tensor, finite_checks_enabled
from vq3dlib.ops.volrend import weights_from_alpha, weights_from_density
from vq3dlib.packed import check_n_rays, check_packed_info, check_ray_indices, pack_info, segment_sum

__all__ = [
    "accumulate_along_rays",
    "accumulate_depth",
    "accumulate_disparity",
    "accumulate_opacity",
    "composite_background",
    "depth_to_disparity",
    "pack_info",
    "render_transmittance_from_alpha",
    "render_transmittance_from_density",
    "render_visibility_from_alpha",
    "render_visibility_from_density",
    "render_weight_from_alpha",
    "render_weight_from_density",
]


def _packing(
    name: str,
    values: torch.Tensor,
    packed_info: torch.Tensor | None,
    ray_indices: torch.Tensor | None,
    n_rays: int | None,
) -> torch.Tensor | None:
    """Validates the sample layout; returns ``packed_info`` for packed samples, ``None`` for dense."""
    check_n_rays(n_rays)
    if packed_info is None and ray_indices is None:
        if values.dim() == 0:
            raise ValueError(f"{name} must have shape [..., n_samples] (dense) or [S] (packed), got a scalar")
        return None
    if values.dim() != 1:
        raise ValueError(
            f"{name} must be flat [S] when ray_indices or packed_info is given, "
            f"got shape {list(values.shape)}"
        )
    check_same_device(**{name: values, "packed_info": packed_info, "ray_indices": ray_indices})
    if packed_info is not None:
        check_packed_info(packed_info, values.shape[0])
        if n_rays is not None and packed_info.shape[0] != n_rays:
            raise ValueError(f"packed_info must have n_rays = {n_rays} rows, got {packed_info.shape[0]}")
        return packed_info
    check_ray_indices(ray_indices, values.shape[0], n_rays)
    return pack_info(ray_indices, n_rays)


def _check_samples(**tensors: torch.Tensor) -> None:
    """Same shape, floating, one device; the first tensor (densities/opacities) must be finite."""
    first_name, first = next(iter(tensors.items()))
    for name, value in tensors.items():
        check_tensor(name, value, floating=True, finite=name == first_name)
        if value.shape != first.shape:
            raise ValueError(
                f"{name} must have the shape of {first_name} {list(first.shape)}, got {list(value.shape)}"
            )
    check_same_device(**tensors)


def _check_prefix_trans(prefix_trans: torch.Tensor | None, like: torch.Tensor) -> None:
    if prefix_trans is not None:
        check_tensor("prefix_trans", prefix_trans, shape=tuple(like.shape), floating=True, finite=True)
        check_same_device(prefix_trans=prefix_trans, samples=like)


def render_weight_from_density(
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    sigmas: torch.Tensor,
    packed_info: torch.Tensor | None = None,
    ray_indices: torch.Tensor | None = None,
    n_rays: int | None = None,
    prefix_trans: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rendering weights ``w_i = T_i (1 - exp(-sigma_i delta_i))``, ``T_i = exp(-sum_{j<i} sigma_j delta_j)``.

    Args:
        t_starts: ``[..., n_samples]`` dense or ``[S]`` packed interval starts along the rays.
        t_ends: interval ends, shaped like ``t_starts``.
        sigmas: densities ``>= 0``, shaped like ``t_starts``.
        packed_info: ``[n_rays, 2]`` (start, count) per ray for packed samples.
        ray_indices: ``[S]`` ray of each packed sample, sorted (used when ``packed_info`` is None).
        n_rays: number of rays (default ``max(ray_indices) + 1``).
        prefix_trans: optional transmittance ``[...]`` (shaped like ``sigmas``) multiplied into the
            result, e.g. from an earlier chunk of the rays.

    Returns:
        ``(weights, transmittance, alphas)``, each shaped like ``sigmas``. Differentiable w.r.t.
        ``sigmas``, ``t_starts``, ``t_ends`` and ``prefix_trans``.

    Example:
        >>> import torch
        >>> sigmas = torch.rand(2, 16) * 4
        >>> t = torch.linspace(0.0, 1.0, 17).expand(2, 17)
        >>> weights, trans, alphas = render_weight_from_density(t[:, :-1], t[:, 1:], sigmas)
        >>> bool(((weights.sum(-1) - (1 - torch.exp(-(sigmas / 16).sum(-1)))).abs() < 1e-5).all())
        True
    """
    _check_samples(sigmas=sigmas, t_starts=t_starts, t_ends=t_ends)
    check_range("sigmas", sigmas, low=0)
    check_tensor("t_starts", t_starts, finite=True)
    check_tensor("t_ends", t_ends, finite=True)
    if finite_checks_enabled():
        check_range("t_ends - t_starts", t_ends - t_starts, low=0, what=" (t_ends >= t_starts)")
    info = _packing("sigmas", sigmas, packed_info, ray_indices, n_rays)
    _check_prefix_trans(prefix_trans, sigmas)
    weights, trans, alphas = weights_from_density(t_starts, t_ends, sigmas, info)
    if prefix_trans is not None:
        trans = trans * prefix_trans
        weights = weights * prefix_trans
    return weights, trans, alphas


def render_weight_from_alpha(
    alphas: torch.Tensor,
    packed_info: torch.Tensor | None = None,
    ray_indices: torch.Tensor | None = None,
    n_rays: int | None = None,
    prefix_trans: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendering weights ``w_i = T_i alpha_i`` with ``T_i = prod_{j<i} (1 - alpha_j)``.

    Args:
        alphas: ``[..., n_samples]`` dense or ``[S]`` packed opacities in ``[0, 1]``.
        packed_info: ``[n_rays, 2]`` (start, count) per ray for packed samples.
        ray_indices: ``[S]`` ray of each packed sample, sorted (used when ``packed_info`` is None).
        n_rays: number of rays (default ``max(ray_indices) + 1``).
        prefix_trans: optional transmittance shaped like ``alphas`` multiplied into the result.

    Returns:
        ``(weights, transmittance)``, each shaped like ``alphas``.

    Example:
        >>> import torch
        >>> alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> weights, trans = render_weight_from_alpha(alphas, ray_indices=torch.tensor([0, 0, 0, 1, 1, 2, 2]))
        >>> weights
        tensor([0.4000, 0.4800, 0.0120, 0.8000, 0.0200, 0.0000, 0.9000])
    """
    _check_samples(alphas=alphas)
    check_range("alphas", alphas, low=0, high=1)
    info = _packing("alphas", alphas, packed_info, ray_indices, n_rays)
    _check_prefix_trans(prefix_trans, alphas)
    weights, trans = weights_from_alpha(alphas, info)
    if prefix_trans is not None:
        trans = trans * prefix_trans
        weights = weights * prefix_trans
    return weights, trans


def render_transmittance_from_density(
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    sigmas: torch.Tensor,
    packed_info: torch.Tensor | None = None,
    ray_indices: torch.Tensor | None = None,
    n_rays: int | None = None,
    prefix_trans: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transmittance ``T_i = exp(-sum_{j<i} sigma_j delta_j)`` and opacity ``1 - exp(-sigma_i delta_i)``.

    Arguments as :func:`render_weight_from_density`.

    Returns:
        ``(transmittance, alphas)``, each shaped like ``sigmas``.

    Example:
        >>> import torch
        >>> trans, alphas = render_transmittance_from_density(
        ...     torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
        >>> trans
        tensor([1.0000, 0.3679])
    """
    _, trans, alphas = render_weight_from_density(
        t_starts, t_ends, sigmas, packed_info, ray_indices, n_rays, prefix_trans
    )
    return trans, alphas


def render_transmittance_from_alpha(
    alphas: torch.Tensor,
    packed_info: torch.Tensor | None = None,
    ray_indices: torch.Tensor | None = None,
    n_rays: int | None = None,
    prefix_trans: torch.Tensor | None = None,
) -> torch.Tensor:
    """Transmittance ``T_i = prod_{j<i} (1 - alpha_j)``, shaped like ``alphas``.

    Arguments as :func:`render_weight_from_alpha`.

    Example:
        >>> import torch
        >>> render_transmittance_from_alpha(torch.tensor([[0.5, 0.5, 0.5]]))
        tensor([[1.0000, 0.5000, 0.2500]])
    """
    return render_weight_from_alpha(alphas, packed_info, ray_indices, n_rays, prefix_trans)[1]


@torch.no_grad()
def render_visibility_from_alpha(
    alphas: torch.Tensor,
    packed_info: torch.Tensor | None = None,
    ray_indices: torch.Tensor | None = None,
    n_rays: int | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    prefix_trans: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask of the samples worth shading: ``T_i >= early_stop_eps`` and ``alpha_i >= alpha_thre``.

    Samples behind an (almost) opaque prefix of the ray are dropped (early stopping); with
    ``alpha_thre > 0`` (almost) transparent samples too. Not differentiable.

    Returns:
        ``bool`` tensor shaped like ``alphas``.

    Example:
        >>> import torch
        >>> alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> render_visibility_from_alpha(alphas, ray_indices=torch.tensor([0, 0, 0, 1, 1, 2, 2]),
        ...                              early_stop_eps=0.3, alpha_thre=0.2)
        tensor([ True,  True, False,  True, False, False,  True])
    """
    trans = render_transmittance_from_alpha(alphas, packed_info, ray_indices, n_rays, prefix_trans)
    visible = trans >= early_stop_eps
    if alpha_thre > 0:
        visible = visible & (alphas >= alpha_thre)
    return visible


@torch.no_grad()
def render_visibility_from_density(
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    sigmas: torch.Tensor,
    packed_info: torch.Tensor | None = None,
    ray_indices: torch.Tensor | None = None,
    n_rays: int | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    prefix_trans: torch.Tensor | None = None,
) -> torch.Tensor:
    """Like :func:`render_visibility_from_alpha`, from densities and intervals.

    Example:
        >>> import torch
        >>> t = torch.arange(7.0)
        >>> sigmas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> render_visibility_from_density(t, t + 1, sigmas, ray_indices=torch.tensor([0, 0, 0, 1, 1, 2, 2]),
        ...                                early_stop_eps=0.3, alpha_thre=0.2)
        tensor([ True,  True, False,  True, False, False,  True])
    """
    trans, alphas = render_transmittance_from_density(
        t_starts, t_ends, sigmas, packed_info, ray_indices, n_rays, prefix_trans
    )
    visible = trans >= early_stop_eps
    if alpha_thre > 0:
        visible = visible & (alphas >= alpha_thre)
    return visible


def accumulate_along_rays(
    weights: torch.Tensor,
    values: torch.Tensor | None = None,
    ray_indices: torch.Tensor | None = None,
    n_rays: int | None = None,
) -> torch.Tensor:
    """Weighted sum of per-sample ``values`` along each ray (``sum_i w_i v_i``).

    Args:
        weights: ``[..., n_samples]`` dense or ``[S]`` packed rendering weights.
        values: ``[..., n_samples, D]`` or ``[S, D]`` per-sample values; ``None`` accumulates the
            weights themselves (opacity, ``D = 1``).
        ray_indices: ``[S]`` ray of each packed sample (need not be sorted here).
        n_rays: number of rays; required with ``ray_indices``.

    Returns:
        ``[..., D]`` for dense input (``[n_rays, D]`` for ``[n_rays, n_samples]`` weights),
        ``[n_rays, D]`` for packed input; rays without samples get 0. Differentiable.

    Example:
        >>> import torch
        >>> weights = torch.tensor([0.5, 0.5, 1.0])
        >>> values = torch.tensor([[1.0], [3.0], [5.0]])
        >>> accumulate_along_rays(weights, values, torch.tensor([0, 0, 2]), n_rays=3)
        tensor([[2.],
                [0.],
                [5.]])
    """
    check_tensor("weights", weights, floating=True, finite=True)
    if values is None:
        src = weights[..., None]
    else:
        check_tensor("values", values, floating=True, finite=True)
        check_same_device(weights=weights, values=values)
        if values.dim() != weights.dim() + 1 or values.shape[:-1] != weights.shape:
            raise ValueError(
                f"values must have shape {list(weights.shape) + ['D']} (weights shape + [D]), "
                f"got {list(values.shape)}"
            )
        src = weights[..., None] * values
    if ray_indices is None:
        if weights.dim() == 0:
            raise ValueError("weights must have shape [..., n_samples] or [S], got a scalar")
        return src.sum(dim=-2)
    if n_rays is None:
        raise ValueError("n_rays must be given with ray_indices (rays without samples still need a row)")
    check_n_rays(n_rays)
    if weights.dim() != 1:
        raise ValueError(
            f"weights must be flat [S] when ray_indices is given, got shape {list(weights.shape)}"
        )
    check_same_device(weights=weights, ray_indices=ray_indices)
    check_ray_indices(ray_indices, weights.shape[0], n_rays, require_sorted=False)
    return segment_sum(src, ray_indices, n_rays)


def accumulate_opacity(
    weights: torch.Tensor, ray_indices: torch.Tensor | None = None, n_rays: int | None = None
) -> torch.Tensor:
    """Opacity ``sum_i w_i`` per ray, ``[..., 1]`` (dense) or ``[n_rays, 1]`` (packed).

    Example:
        >>> import torch
        >>> accumulate_opacity(torch.tensor([[0.25, 0.5], [0.0, 0.0]]))
        tensor([[0.7500],
                [0.0000]])
    """
    return accumulate_along_rays(weights, None, ray_indices, n_rays)


def accumulate_depth(
    weights: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor | None = None,
    n_rays: int | None = None,
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Expected depth of each ray, ``[..., 1]`` (dense) or ``[n_rays, 1]`` (packed).

    ``sum_i w_i t_i`` with ``t_i`` the interval midpoints, divided by the opacity when
    ``normalize`` (as in ``nerfacc.rendering``: the opacity is clamped to the dtype's epsilon, so
    empty rays get depth 0). ``t`` is distance along the ray: with unit directions, Euclidean
    distance; multiply by ``dot(direction, camera_forward)`` for z-depth.

    Example:
        >>> import torch
        >>> weights = torch.tensor([[0.25, 0.25]])
        >>> t = torch.tensor([[1.0, 3.0]])
        >>> accumulate_depth(weights, t, t + 2)
        tensor([[3.]])
        >>> accumulate_depth(weights, t, t + 2, normalize=False)
        tensor([[1.5000]])
    """
    _check_samples(t_starts=t_starts, t_ends=t_ends)
    mid = (t_starts + t_ends)[..., None] / 2
    depth = accumulate_along_rays(weights, mid, ray_indices, n_rays)
    if normalize:
        opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
        depth = depth / opacity.clamp_min(torch.finfo(depth.dtype).eps)
    return depth


def accumulate_disparity(
    weights: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor | None = None,
    n_rays: int | None = None,
) -> torch.Tensor:
    """Disparity (inverse of the normalised expected depth) per ray: ``sum_i w_i / sum_i w_i t_i``.

    As in NeRF's ``disp_map``; rays with no weight get 0 (with a zero gradient, not NaN).
    Shape ``[..., 1]`` (dense) or ``[n_rays, 1]`` (packed).

    Example:
        >>> import torch
        >>> t = torch.tensor([[1.0, 3.0], [1.0, 3.0]])
        >>> accumulate_disparity(torch.tensor([[0.25, 0.25], [0.0, 0.0]]), t, t + 2)
        tensor([[0.3333],
                [0.0000]])
    """
    unnormalised = accumulate_depth(weights, t_starts, t_ends, ray_indices, n_rays, normalize=False)
    opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
    hit = unnormalised > 0
    safe = torch.where(hit, unnormalised, torch.ones_like(unnormalised))
    return torch.where(hit, opacity / safe, torch.zeros_like(opacity))


#: smallest depth :func:`depth_to_disparity` inverts (smaller positive depths give ``1 / DEPTH_EPS``)
DEPTH_EPS = 1e-6


def depth_to_disparity(depth: torch.Tensor) -> torch.Tensor:
    """Disparity ``1 / depth`` of depth maps or per-ray depths ``[...]``; ``0`` where ``depth <= 0``.

    A depth of 0 means "nothing there" (an empty ray of a render, a pixel without a measurement), so
    its disparity is 0 (infinitely far); positive depths are clamped to ``DEPTH_EPS = 1e-6`` first.
    The one conversion the renderer, the models, training and the command line use. Differentiable
    where ``depth > DEPTH_EPS``.

    Example:
        >>> import torch
        >>> depth_to_disparity(torch.tensor([2.0, 0.0, -1.0, 0.5]))
        tensor([0.5000, 0.0000, 0.0000, 2.0000])
    """
    check_tensor("depth", depth, floating=True)
    return torch.where(depth > 0, 1.0 / depth.clamp_min(DEPTH_EPS), torch.zeros_like(depth))


def composite_background(
    colors: torch.Tensor, opacities: torch.Tensor, background: torch.Tensor | float
) -> torch.Tensor:
    """Composites accumulated colours over a background: ``colors + background * (1 - opacities)``.

    Args:
        colors: ``[..., C]`` accumulated (pre-multiplied) colours.
        opacities: ``[..., 1]`` accumulated opacities.
        background: a number, a ``[C]`` colour, or per-ray colours broadcastable to ``colors``
            (e.g. ``[n_rays, C]`` random backgrounds).

    Returns:
        ``[..., C]`` colours.

    Example:
        >>> import torch
        >>> composite_background(torch.tensor([[0.5, 0.0, 0.0]]), torch.tensor([[0.5]]), torch.ones(3))
        tensor([[1.0000, 0.5000, 0.5000]])
    """
    check_tensor("colors", colors, floating=True)
    if colors.dim() == 0:
        raise ValueError("colors must have shape [..., C], got a scalar")
    check_tensor("opacities", opacities, shape=tuple(colors.shape[:-1]) + (1,), floating=True)
    if isinstance(background, torch.Tensor):
        check_tensor("background", background, floating=True, finite=True)
        check_same_device(colors=colors, background=background)
        try:
            torch.broadcast_shapes(background.shape, colors.shape)
        except RuntimeError:
            raise ValueError(
                f"background must broadcast to colors {list(colors.shape)}, "
                f"got shape {list(background.shape)}"
            ) from None
    elif isinstance(background, bool) or not isinstance(background, (int, float)):
        raise TypeError(f"background must be a number or a torch.Tensor, got {type(background).__name__}")
    elif not math.isfinite(background):
        raise ValueError(f"background must be a finite number, got {background}")
    return colors + background * (1 - opacities)
