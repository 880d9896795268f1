"""Straight-through estimator with the quantizer's losses, in one autograd node that keeps 2 tensors.

:func:`straight_through` computes, for rows ``h`` and the indices of their chosen codes,

- ``z = h / max(|h|, eps)`` (``normalize=True``; else ``z = h``),
- ``q = codebook[indices]`` and ``z_st = z + sg(q - z)`` (the value of ``q``, the gradient of ``z``),
- ``commitment = mean((z - sg(q))^2)`` and ``codebook = mean((sg(z) - q)^2)``,

exactly like the composition of ``safe_normalize``, ``F.mse_loss`` and ``detach`` in
:func:`straight_through_reference`, the test oracle. In a quantizer that composition keeps five
``[N, d]`` tensors alive between forward and backward and allocates as many temporaries; this
node keeps only ``z`` (plus ``[N, 1]`` norms, the indices and the codebook), recomputes ``z - q``
in backward and writes the gradient over it, which keeps the quantizer's peak memory near its
inputs and outputs. The codebook must not change in place between forward and backward (pass a
copy of an EMA-updated buffer; autograd raises if it does).

Example:
    >>> import torch
    >>> from vq3dlib.quantize.straight_through import straight_through
    >>> h = torch.tensor([[3.0, 4.0]], requires_grad=True)
    >>> codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> z_st, commitment, _ = straight_through(h, codebook, torch.tensor([0]))
    >>> z_st.tolist(), round(commitment.item(), 4)
    ([[1.0, 0.0]], 0.4)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from vq3dlib._numerics import NORM_EPS, overflow_bound, safe_normalize
from vq3dlib._validation import has_values


class UnitRows(NamedTuple):
    """``z = (h / scale) / denom``: rows of ``h`` l2-normalised as ``safe_normalize`` does.

    ``scale`` is ``None`` when no row needed scaling against overflow (else ``[N, 1]``);
    ``denom = max(|h / scale|, eps)`` and ``short = |h / scale| <= eps`` are ``[N, 1]``.
    """

    z: Tensor
    scale: Tensor | None
    denom: Tensor
    short: Tensor


@torch.no_grad()
def unit_rows(h: Tensor, *, in_place: bool = False) -> UnitRows:
    """The rows of ``[N, d]`` ``h`` l2-normalised, bit-identical to ``safe_normalize(h, dim=1)``.

    Rows whose largest magnitude could overflow the sum of squares are divided by it first, as in
    ``safe_normalize``; without such rows the norm is taken of ``h`` itself (no scaled copy).
    No gradient is tracked: :func:`straight_through` applies the normalisation's derivative.
    ``in_place=True`` writes ``z`` into ``h``'s memory (for an ``h`` that nothing else reads, such
    as the output of a linear layer, whose backward does not need it).

    Example:
        >>> import torch
        >>> unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0]])).z.tolist()
        [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    y, scale = h, None
    if h.numel() and has_values(h):
        lo, hi = torch.aminmax(h, dim=1, keepdim=True)
        m = torch.maximum(hi, -lo)
        big = overflow_bound(h.dtype, h.shape[1])
        if bool((m > big).any()):
            scale = torch.where(m > big, m, torch.ones_like(m))
            y = h.div_(scale) if in_place else h / scale
    n = torch.linalg.vector_norm(y, dim=1, keepdim=True)
    denom = n.clamp_min(NORM_EPS)
    z = y.div_(denom) if in_place or y is not h else y / denom
    return UnitRows(z.detach(), scale, denom, n <= NORM_EPS)  # in place, z is h itself


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        h: Tensor,
        codebook: Tensor,
        indices: Tensor,
        z: Tensor,
        scale: Tensor | None,
        denom: Tensor | None,
        short: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        out = _code_minus_rows(z, codebook, indices)  # z - q ...
        flat = out.reshape(-1)
        numel = max(flat.numel(), 1)
        loss = torch.dot(flat, flat) / numel
        torch.sub(z, out, out=out)  # ... then z_st = z - (z - q), the rounding of z + (q - z)
        # backward recomputes z - q from the codes (a gather): one [N, d] tensor fewer between passes
        ctx.save_for_backward(z, codebook, indices, scale, denom, short)
        ctx.normalize = denom is not None
        ctx.numel = numel
        return out, loss, loss.clone()

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, g_st: Tensor | None, g_commit: Tensor | None, g_codebook: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        z, codebook, indices, scale, denom, short = ctx.saved_tensors
        c = 2.0 / ctx.numel
        g_h = g_cb = None
        diff = _code_minus_rows(z, codebook, indices)
        if ctx.needs_input_grad[1] and g_codebook is not None:
            g_rows = (diff * (g_codebook * -c)).to(codebook.dtype)
            g_cb = g_rows.new_zeros(codebook.shape).index_add_(0, indices, g_rows)
        if ctx.needs_input_grad[0]:
            g_z = diff  # the gradient is written over z - q
            if g_commit is not None:
                g_z.mul_(g_commit * c)
                if g_st is not None:
                    g_z.add_(g_st)
            elif g_st is not None:
                g_z.copy_(g_st)
            else:
                g_z.zero_()
            if ctx.normalize:
                # y = h / scale: d(y / |y|) = (g - z (z . g)) / |y| where |y| > eps, g / eps elsewhere
                dot = torch.bmm(g_z.unsqueeze(1), z.unsqueeze(2)).view(-1, 1).masked_fill_(short, 0.0)
                g_z.addcmul_(z, dot, value=-1.0).div_(denom)
                if scale is not None:
                    g_z.div_(scale)
            g_h = g_z
        return g_h, g_cb, None, None, None, None, None


def _code_minus_rows(z: Tensor, codebook: Tensor, indices: Tensor) -> Tensor:
    """``z - codebook[indices]`` (in ``z``'s dtype) in the gathered codes' buffer."""
    q = codebook.index_select(0, indices).to(z.dtype)
    return torch.sub(z, q, out=q)


def straight_through(
    h: Tensor, codebook: Tensor, indices: Tensor, *, normalize: bool = True, rows: UnitRows | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Straight-through rows and the two quantizer losses for codes ``q = codebook[indices]``.

    Args:
        h: ``[N, d]`` rows before normalisation (the gradient's destination).
        codebook: ``[K, d]`` codes (gathered in ``h``'s dtype); a gradient reaches it through the
            ``codebook`` loss only.
        indices: ``[N]`` int64, the chosen code of each row.
        normalize: l2-normalise the rows first (overflow-safe, as ``safe_normalize``).
        rows: ``unit_rows(h)`` when the caller has computed it already (to search codes with it).

    Returns:
        ``z_st [N, d]`` with the value of ``q`` and the gradient of ``z``; the scalars
        ``commitment = mean((z - sg(q))^2)`` and ``codebook = mean((sg(z) - q)^2)`` (unweighted;
        zero for ``N = 0``). Differentiable once (no double backward).

    Example:
        >>> import torch
        >>> h = torch.randn(5, 3, requires_grad=True)
        >>> codebook = torch.nn.functional.normalize(torch.randn(8, 3), dim=1)
        >>> indices = torch.tensor([0, 3, 3, 7, 1])
        >>> z_st, commitment, _ = straight_through(h, codebook, indices)
        >>> torch.allclose(z_st, codebook[indices], atol=1e-6), commitment.shape
        (True, torch.Size([]))
    """
    if h.dim() != 2 or codebook.dim() != 2 or codebook.shape[1] != h.shape[1]:
        raise ValueError(
            f"h must be [N, d] and codebook [K, d], got {tuple(h.shape)} and {tuple(codebook.shape)}"
        )
    if indices.shape != h.shape[:1]:
        raise ValueError(f"indices must be [N] = [{h.shape[0]}], got {tuple(indices.shape)}")
    if not normalize:
        return _StraightThrough.apply(h, codebook, indices, h.detach(), None, None, None)
    rows = unit_rows(h) if rows is None else rows
    return _StraightThrough.apply(h, codebook, indices, rows.z, rows.scale, rows.denom, rows.short)


def straight_through_reference(
    h: Tensor, codebook: Tensor, indices: Tensor, *, normalize: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Composition of torch ops that :func:`straight_through` fuses; the oracle of its tests.

    Example:
        >>> import torch
        >>> h, codebook = torch.randn(4, 3, requires_grad=True), torch.randn(6, 3)
        >>> indices = torch.tensor([5, 0, 2, 2])
        >>> fused = straight_through(h, codebook, indices)
        >>> composed = straight_through_reference(h, codebook, indices)
        >>> all(torch.allclose(a, b) for a, b in zip(fused, composed))
        True
    """
    z = safe_normalize(h, dim=1, eps=NORM_EPS) if normalize else h
    q = codebook[indices].to(z.dtype)
    z_st = z + (q - z).detach()
    if z.numel() == 0:
        zero = z.sum() * 0.0 + q.sum() * 0.0
        return z_st, zero, zero
    commitment = torch.nn.functional.mse_loss(z, q.detach())
    codebook_loss = torch.nn.functional.mse_loss(q, z.detach())
    return z_st, commitment, codebook_loss
