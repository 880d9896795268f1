"""Overflow-safe norms: ``|x|_2`` and ``x / |x|_2`` for vectors whose squares overflow.

Example:
    >>> import torch
    >>> from vq3dlib._numerics import safe_normalize
    >>> safe_normalize(torch.tensor([[3e30, 4e30]]))
    tensor([[0.6000, 0.8000]])
"""

from __future__ import annotations

import torch

NORM_EPS = 1e-12  # safe_normalize divides rows shorter than this by it instead


def overflow_bound(dtype: torch.dtype, size: int) -> float:
    """Largest entry magnitude whose square, summed over ``size`` entries, cannot overflow ``dtype``.

    Example:
        >>> overflow_bound(torch.float32, 4) > 1e18
        True
    """
    return (torch.finfo(dtype).max / max(size, 1)) ** 0.5 / 2


def scaled_norm(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, scale)`` with ``|x|_2 = n * scale`` over ``dim`` (kept); ``scale = 1`` unless ``x.x`` overflows.

    Rows whose largest entry exceeds ``sqrt(finfo.max / D) / 2`` are divided by it (detached) before
    the norm; the others give exactly ``x.norm(dim=dim, keepdim=True)`` and its gradient.

    Example:
        >>> n, s = scaled_norm(torch.tensor([[3e30, 4e30], [3.0, 4.0]]))
        >>> n.squeeze(-1).tolist(), (s.squeeze(-1) / torch.tensor([4e30, 1.0])).tolist()
        ([1.25, 5.0], [1.0, 1.0])
    """
    big = overflow_bound(x.dtype, x.shape[dim] if x.dim() else 1)
    if x.numel() == 0:
        m = x.detach().sum(dim=dim, keepdim=True)
    else:
        m = x.detach().abs().amax(dim=dim, keepdim=True)
    scale = torch.where(m > big, m, torch.ones_like(m))
    return (x / scale).norm(dim=dim, keepdim=True), scale


def safe_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``|x|_2`` over ``dim`` (kept) without overflow (``inf`` only when the norm itself overflows).

    Example:
        >>> safe_norm(torch.tensor([[3e20, 4e20]])) / 1e20
        tensor([[5.]])
    """
    n, scale = scaled_norm(x, dim)
    return n * scale


def safe_normalize(x: torch.Tensor, dim: int = -1, eps: float = NORM_EPS) -> torch.Tensor:
    """``x / max(|x|_2, eps)`` over ``dim`` without overflow; equals ``F.normalize`` for ordinary rows.

    Example:
        >>> safe_normalize(torch.tensor([[0.0, 2.0]]))
        tensor([[0., 1.]])
    """
    n, scale = scaled_norm(x, dim)
    return (x / scale) / n.clamp_min(eps)
