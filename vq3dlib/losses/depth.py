"""Depth supervision from pseudo-ground-truth (monocular estimates known up to scale and shift).

* :func:`align_scale_shift` — per-image closed-form least-squares scale and shift (MiDaS-style), in
  depth or disparity space, with robust variants (median/MAD normalisation, trimmed least squares).
* :func:`aligned_depth_loss` — loss between a rendered depth map and the aligned pseudo-GT.
* :func:`pointwise_depth_loss` — the VQ3D loss on the rendering weights of every sample along a ray,
  on packed (nerfacc layout) or dense ``[..., N]`` samples.
* :func:`map_disparity_range` — maps a relative disparity robustly onto a metric range (an alignment
  of the target that does not depend on the current rendering).

Example:
    >>> import torch
    >>> from vq3dlib.losses.depth import align_scale_shift
    >>> pred = torch.rand(2, 8, 8) + 0.5
    >>> aligned, scale, shift = align_scale_shift(pred, 3 * pred + 1, space="depth")
    >>> scale, shift
    (tensor([3.0000, 3.0000]), tensor([1.0000, 1.0000]))
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vq3dlib._validation import check_choice, check_positive, check_tensor
from vq3dlib.losses._packed import check_packed
from vq3dlib.packed import segment_sum

SPACES = ("depth", "disparity")
METHODS = ("lsq", "median", "trimmed")
RHOS = ("l2", "l1", "huber")
REDUCTIONS = ("mean", "sum", "none")


class Alignment(NamedTuple):
    """Result of :func:`align_scale_shift`: ``aligned = scale * pred + shift`` (in the fit space).

    Attributes:
        aligned: ``[B, ...]`` the aligned map, shape of ``pred``.
        scale: ``[B]`` per-image scale.
        shift: ``[B]`` per-image shift.

    Example:
        >>> import torch
        >>> pred = torch.tensor([[1.0, 2.0, 3.0]])
        >>> a = align_scale_shift(pred, 2 * pred - 1, space="depth")
        >>> a.aligned, a.scale, a.shift
        (tensor([[1., 3., 5.]]), tensor([2.]), tensor([-1.]))
        >>> aligned, scale, shift = a                    # a NamedTuple: unpacks like a tuple
    """

    aligned: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (like.dim() - 1))


def _lsq(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``scale, shift [B]``: ``scale * x + shift ≈ y`` over ``mask`` (rows of ``[B, P]``)."""
    m = mask.to(x.dtype)
    n = m.sum(1)
    x0 = torch.where(mask, x, torch.zeros_like(x))
    y0 = torch.where(mask, y, torch.zeros_like(y))
    mx = x0.sum(1) / n.clamp_min(1)
    my = y0.sum(1) / n.clamp_min(1)
    dx = (x0 - mx[:, None]) * m
    dy = (y0 - my[:, None]) * m
    var = dx.square().sum(1)
    cov = (dx * dy).sum(1)
    # constant x (up to rounding): any scale fits equally well; take scale 0, shift mean(y)
    tol = n * (16 * torch.finfo(x.dtype).eps * x0.abs().amax(1)).square()
    degenerate = var <= tol
    scale = torch.where(degenerate, torch.zeros_like(var), cov / torch.where(degenerate, 1.0, var))
    shift = my - scale * mx
    return _identity_if_empty(scale, shift, n == 0)


def _identity_if_empty(
    scale: torch.Tensor, shift: torch.Tensor, empty: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.where(empty, 1.0, scale), torch.where(empty, 0.0, shift)


def _masked_median(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row median of ``v [B, P]`` over ``mask`` (mean of the two middle values; 0 for an empty row)."""
    med = torch.where(mask, v, torch.full_like(v, float("nan"))).nanquantile(0.5, dim=1)
    return torch.where(mask.any(1), med, torch.zeros_like(med))


def _median_deviations(
    x: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: median, median absolute deviation from it, and mean absolute deviation from it."""
    med = _masked_median(x, mask)
    dev = (x - med[:, None]).abs()
    mad = _masked_median(dev, mask)
    mean_dev = torch.where(mask, dev, torch.zeros_like(dev)).sum(1) / mask.sum(1).clamp_min(1).to(x.dtype)
    return med, mad, mean_dev


def _fit(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, method: str, trim: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if method == "lsq":
        return _lsq(x, y, mask)
    if method == "median":
        med_x, mad_x, mean_dev_x = _median_deviations(x, mask)
        med_y, mad_y, mean_dev_y = _median_deviations(y, mask)
        tol = 16 * torch.finfo(x.dtype).eps * med_x.abs().clamp_min(1e-30)
        # more than half of the pixels share the median value: the MAD is 0 although pred varies;
        # fall back to the mean absolute deviation (in both maps) for such images
        use_mad = mad_x > tol
        spread_x = torch.where(use_mad, mad_x, mean_dev_x)
        spread_y = torch.where(use_mad, mad_y, mean_dev_y)
        degenerate = spread_x <= tol  # constant pred
        scale = torch.where(
            degenerate, torch.zeros_like(spread_x), spread_y / torch.where(degenerate, 1.0, spread_x)
        )
        # deviation ratios lose the sign; take it from the median of the (median-centred) products,
        # which outliers cannot flip, else (when that is 0) from their sum, the covariance
        prod = ((x - med_x[:, None]) * (y - med_y[:, None])).detach()
        cov = torch.where(mask, prod, torch.zeros_like(prod)).sum(1)
        sign_stat = _masked_median(prod, mask)
        negative = torch.where(sign_stat != 0, sign_stat < 0, cov < 0)
        scale = torch.where(negative, -scale, scale)
        shift = med_y - scale * med_x
        return _identity_if_empty(scale, shift, ~mask.any(1))
    # trimmed: fit, drop the largest `trim` fraction of residuals per image, refit
    scale, shift = _lsq(x, y, mask)
    res = (scale[:, None] * x + shift[:, None] - y).abs().detach()
    nan = torch.full_like(res, float("nan"))
    thr = torch.where(mask, res, nan).nanquantile(1.0 - trim, dim=1, keepdim=True)
    keep = mask & (res <= thr)
    return _lsq(x, y, keep)


def _check_batched(name: str, value: torch.Tensor) -> None:
    """``value`` must be a float ``[B, ...]`` tensor with at least one dimension after the image dim."""
    check_tensor(name, value, floating=True)
    if value.dim() < 2:
        raise ValueError(
            f"{name} must have shape [B, ...]: a per-image batch dimension B and at least one pixel (or "
            f"ray) dimension, since scale and shift are fitted per image; got shape {list(value.shape)} "
            f"(for a single image pass {name}[None])"
        )


def _prepare(value: torch.Tensor, space: str, eps: float) -> torch.Tensor:
    return 1.0 / value.clamp_min(eps) if space == "disparity" else value


def align_scale_shift(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    space: str = "disparity",
    method: str = "lsq",
    trim: float = 0.2,
    eps: float = 1e-6,
) -> Alignment:
    """Per-image scale and shift so that ``scale * pred + shift ≈ target`` (MiDaS-style).

    The first dimension indexes images; each image gets its own ``scale, shift``. Inputs need at
    least two dimensions (``[B, P]``, ``[B, H, W]``, ...): a 1-D tensor raises ``ValueError`` (use
    ``x[None]`` for one image).

    Args:
        pred: ``[B, ...]`` map to align (e.g. a monocular depth estimate), ``ndim >= 2``.
        target: ``[B, ...]`` map to align to, same shape.
        mask: optional ``[B, ...]`` bool, the pixels that take part in the fit.
        space: ``"disparity"``: ``pred`` and ``target`` are depths, both are inverted (``1/max(x, eps)``)
            and the fit is done on disparities; ``"depth"``: the values are fitted as given (use it
            also when both inputs are already disparities).
        method: ``"lsq"`` closed-form least squares; ``"median"`` robust median/MAD normalisation:
            the medians and the median absolute deviations (MAD) of ``pred`` and ``target`` are
            matched, ``scale = ±MAD(target) / MAD(pred)`` with the sign of the median of the centred
            products ``(pred - med) (target - med)``, ``shift = med(target) - scale * med(pred)``;
            unlike MiDaS' mean absolute deviation it tolerates up to (nearly) half of the pixels
            being gross outliers (an image where more than half of ``pred`` equals its median, so
            that its MAD is 0, falls back to mean absolute deviations); ``"trimmed"`` least squares
            refitted without the ``trim`` fraction of largest residuals per image.
        trim: fraction of pixels dropped by ``method="trimmed"``, in ``[0, 1)``.
        eps: lower clamp of depths before inversion.

    Returns:
        ``Alignment(aligned [B, ...], scale [B], shift [B])``, ``aligned`` in the fit space.
        Differentiable in ``pred`` and ``target`` (detach if the alignment should carry no gradient).
        Degenerate images never give NaN: an empty mask gives ``scale=1, shift=0``; a constant
        ``pred`` gives ``scale=0`` and ``shift`` a central value of ``target`` (mean for ``"lsq"``,
        median for ``"median"``); a constant ``target`` gives ``scale=0``.

    Example:
        >>> import torch
        >>> depth = torch.rand(1, 16) + 1.0
        >>> mono = 1.0 / depth * 0.5 - 0.1          # disparity up to scale 0.5 and shift -0.1
        >>> a = align_scale_shift(mono, 1.0 / depth, space="depth")
        >>> torch.allclose(a.aligned, 1.0 / depth, atol=1e-5)
        True
    """
    _check_batched("pred", pred)
    check_tensor("pred", pred, ndim=tuple(range(2, 9)), floating=True, finite=True)
    check_tensor("target", target, shape=tuple(pred.shape), floating=True, device=pred.device, finite=True)
    if mask is not None:
        check_tensor("mask", mask, shape=tuple(pred.shape), dtypes=(torch.bool,), device=pred.device)
    check_choice("space", space, SPACES)
    check_choice("method", method, METHODS)
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"trim must be in [0, 1), got {trim}")
    check_positive("eps", eps)
    x = _prepare(pred, space, eps)
    y = _prepare(target, space, eps)
    b, p = pred.shape[0], math.prod(pred.shape[1:])
    m = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
    scale, shift = _fit(x.reshape(b, p), y.reshape(b, p), m.reshape(b, p), method, trim)
    return Alignment(_expand(scale, x) * x + _expand(shift, x), scale, shift)


def _rho(r: torch.Tensor, rho: str, delta: float) -> torch.Tensor:
    if rho == "l2":
        return r.square()
    if rho == "l1":
        return r.abs()
    return F.huber_loss(r, torch.zeros_like(r), reduction="none", delta=delta)


def _masked_reduce(per: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if mask is not None:
        per = torch.where(mask, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    total = per.sum()
    if reduction == "sum":
        return total
    count = per.numel() if mask is None else int(mask.sum())
    return total / max(count, 1)


def aligned_depth_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    space: str = "disparity",
    method: str = "lsq",
    align: str = "target",
    rho: str = "l1",
    huber_delta: float = 1.0,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> torch.Tensor:
    """Loss between a rendered depth map and a pseudo-GT map known only up to scale and shift.

    Args:
        pred: ``[B, ...]`` rendered depth (carries the gradient), ``ndim >= 2`` (fit per image).
        target: ``[B, ...]`` pseudo-ground-truth depth, same shape.
        mask: optional ``[B, ...]`` bool of valid pixels (fit and loss use only these).
        space: compare in ``"disparity"`` (both inverted first) or ``"depth"`` (values as given);
            see :func:`align_scale_shift`.
        method: alignment fit, ``"lsq"``, ``"median"`` or ``"trimmed"``.
        align: ``"target"`` aligns the pseudo-GT onto the rendering, without gradient through the
            fit (VQ3D); ``"pred"`` aligns the rendering onto the pseudo-GT with the gradient flowing
            through the fit (MiDaS' scale-and-shift-invariant loss).
        rho: penalty on the residual: ``"l2"`` (``r^2``), ``"l1"`` (``|r|``) or ``"huber"``
            (``torch.nn.functional.huber_loss`` with ``huber_delta``).
        huber_delta: Huber threshold.
        eps: depth clamp before inversion.
        reduction: ``"mean"`` over valid pixels, ``"sum"``, or ``"none"`` (``[B, ...]``, zero off-mask).

    Example:
        >>> import torch
        >>> depth = torch.rand(2, 8, 8) + 1.0
        >>> aligned_depth_loss(depth, 1.0 / (2.0 / depth + 0.3)).item() < 1e-5   # same up to affine disparity
        True
    """
    _check_batched("pred", pred)
    _check_batched("target", target)
    # checked here under the caller's names: align="target" passes them to align_scale_shift swapped
    check_tensor("pred", pred, floating=True, finite=True)
    check_tensor("target", target, floating=True, finite=True)
    check_choice("align", align, ("target", "pred"))
    check_choice("rho", rho, RHOS)
    check_choice("reduction", reduction, REDUCTIONS)
    check_positive("huber_delta", huber_delta)
    if align == "target":
        with torch.no_grad():
            gt = align_scale_shift(target, pred, mask, space=space, method=method, eps=eps).aligned
        residual = _prepare(pred, space, eps) - gt
    else:
        fitted = align_scale_shift(pred, target, mask, space=space, method=method, eps=eps).aligned
        residual = fitted - _prepare(target, space, eps)
    return _masked_reduce(_rho(residual, rho, huber_delta), mask, reduction)


def pointwise_depth_loss(
    weights: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    target: torch.Tensor,
    ray_indices: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    target_space: str = "disparity",
    align: bool = True,
    method: str = "lsq",
    rho: str = "l2",
    huber_delta: float = 1.0,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> torch.Tensor:
    """VQ3D's pointwise depth loss on the rendering weights of every sample.

    For every ray with samples at ``t_i`` (interval midpoints), weights ``w_i`` and disparities
    ``d_i = 1 / max(t_i, eps)``::

        L_ray = sum_i w_i * rho(d_i - d*_ray)

    where ``d*`` is the pseudo-GT disparity aligned per image (scale and shift, least squares, no
    gradient through the fit) to the rendered disparity ``D_ray = sum_i w_i d_i`` (a transparent ray
    renders disparity 0, i.e. infinite depth).

    Why it sharpens the weights: with squared ``rho``, opacity ``a = sum_i w_i`` and the weighted mean
    ``m = D / a``, ``L_ray = a (m - d*)^2 + sum_i w_i (d_i - m)^2``: the first term is the usual loss on
    the rendered (accumulated) disparity, which is ``(D - d*)^2`` when ``a = 1``; the second is the
    weighted variance of the sample disparities. A loss on ``D`` alone is satisfied by any weight
    distribution with the right mean (e.g. two surfaces around the target); this one also asks every
    sample with weight to sit at the target, so the weights collapse onto one surface. L1 and Huber
    behave alike with a robust penalty.

    Args:
        weights: rendering weights, packed ``[S]`` (with ``ray_indices``) or dense ``[B, ..., N]``.
        t_starts: interval starts, shape of ``weights``.
        t_ends: interval ends, shape of ``weights``.
        target: pseudo-GT ``[B, ...]``, one value per ray, first dim = image (alignment is per image,
            so with ``align=True`` it needs ``ndim >= 2``; ``[R]`` is accepted with ``align=False``).
            Packed input: rays are ``target.flatten()`` in order, so ``n_rays = target.numel()``.
            Dense input: ``weights.shape[:-1] == target.shape``.
        ray_indices: ``[S]`` int64, sorted ray of each packed sample; ``None`` for dense input.
        mask: optional ``[B, ...]`` bool of rays with valid pseudo-GT (fit and loss use only these).
        target_space: ``"disparity"`` (e.g. DPT/MiDaS output) or ``"depth"`` (inverted first).
        align: align the target per image (set ``False`` if it is metric already).
        method: alignment fit (``"lsq"``, ``"median"``, ``"trimmed"``, see :func:`align_scale_shift`).
        rho: ``"l2"`` (``r^2``), ``"l1"`` or ``"huber"`` (with ``huber_delta``).
        huber_delta: Huber threshold (in disparity units).
        eps: distance clamp before inversion (guards ``t -> 0``).
        reduction: ``"mean"`` over valid rays, ``"sum"``, or ``"none"`` (per ray, ``target.shape``).

    Example:
        >>> import torch
        >>> w = torch.softmax(torch.randn(2, 4, 8), -1)            # 2 images x 4 rays x 8 samples
        >>> t = torch.linspace(1.0, 3.0, 9).expand(2, 4, 9)
        >>> target = torch.rand(2, 4)                               # relative disparity
        >>> loss = pointwise_depth_loss(w, t[..., :-1], t[..., 1:], target)
        >>> bool(loss >= 0)
        True
    """
    check_choice("target_space", target_space, SPACES)
    check_choice("method", method, METHODS)
    check_choice("rho", rho, RHOS)
    check_choice("reduction", reduction, REDUCTIONS)
    check_positive("huber_delta", huber_delta)
    check_positive("eps", eps)
    check_tensor("target", target, ndim=tuple(range(1, 9)), floating=True, device=weights.device, finite=True)
    if align:
        _check_batched("target", target)
    if mask is not None:
        check_tensor("mask", mask, shape=tuple(target.shape), dtypes=(torch.bool,), device=target.device)

    if ray_indices is None:
        check_tensor("weights", weights, shape=tuple(target.shape) + (None,), floating=True, finite=True)
        check_tensor("t_starts", t_starts, shape=tuple(weights.shape), floating=True, finite=True)
        check_tensor("t_ends", t_ends, shape=tuple(weights.shape), floating=True, finite=True)
    else:
        check_packed(weights, ray_indices, target.numel(), t_starts=t_starts, t_ends=t_ends)

    disp = 1.0 / (0.5 * (t_starts + t_ends)).clamp_min(eps)
    gt = 1.0 / target.clamp_min(eps) if target_space == "depth" else target
    if align:
        with torch.no_grad():
            if ray_indices is None:
                rendered = (weights * disp).sum(-1)
            else:
                rendered = segment_sum(weights * disp, ray_indices, target.numel()).reshape(target.shape)
            gt = align_scale_shift(gt, rendered, mask, space="depth", method=method).aligned
    gt = gt.detach()

    if ray_indices is None:
        per_ray = (weights * _rho(disp - gt[..., None], rho, huber_delta)).sum(-1)
    else:
        flat = gt.reshape(-1)
        per_sample = weights * _rho(disp - flat[ray_indices], rho, huber_delta)
        per_ray = segment_sum(per_sample, ray_indices, target.numel()).reshape(target.shape)
    return _masked_reduce(per_ray, mask, reduction)


def map_disparity_range(
    disparity: torch.Tensor, depth_range: tuple[float, float], low: float = 0.02
) -> torch.Tensor:
    """Maps each image's disparity robustly onto ``[1/far, 1/near]`` (no gradient).

    The ``low`` and ``1 - low`` quantiles of every image go to ``1/far`` and ``1/near`` (values
    beyond them are clamped): a relative (scale/shift-free) pseudo disparity becomes a plausible
    metric one for a camera whose scene spans ``depth_range``, without depending on the current
    rendering (least-squares alignment to a flat rendering, as in :func:`pointwise_depth_loss` with
    ``align=True``, collapses the target to a constant early in training). Use the result with
    ``align=False``. A constant image maps to ``1/far``.

    Args:
        disparity: ``[B, ...]`` relative disparity, one image per row of the first dimension.
        depth_range: ``(near, far)`` with ``0 < near < far``.
        low: quantile in ``[0, 0.5)`` mapped to ``1/far`` (``1 - low`` to ``1/near``).

    Returns:
        ``[B, ...]`` disparity in ``[1/far, 1/near]``, detached.

    Example:
        >>> import torch
        >>> d = map_disparity_range(torch.linspace(0, 1, 101).reshape(1, 1, 101), (1.0, 10.0), low=0.0)
        >>> round(float(d.min()), 3), round(float(d.max()), 3)
        (0.1, 1.0)
    """
    check_tensor("disparity", disparity, ndim=tuple(range(1, 9)), floating=True, finite=True)
    if len(depth_range) != 2 or not 0 < depth_range[0] < depth_range[1]:
        raise ValueError(f"depth_range must be (near, far) with 0 < near < far, got {tuple(depth_range)}")
    if not 0.0 <= low < 0.5:
        raise ValueError(f"low must be in [0, 0.5), got {low}")
    disparity = disparity.detach()
    if disparity.numel() == 0:
        return disparity.clone()
    flat = disparity.reshape(disparity.shape[0], -1)
    lo = torch.quantile(flat, low, dim=1)
    hi = torch.quantile(flat, 1 - low, dim=1)
    shape = (-1,) + (1,) * (disparity.dim() - 1)
    unit = ((disparity - lo.reshape(shape)) / (hi - lo).clamp_min(1e-8).reshape(shape)).clamp(0, 1)
    near, far = depth_range
    return 1 / far + unit * (1 / near - 1 / far)
