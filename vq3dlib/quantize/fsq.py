"""Finite scalar quantization (Mentzer et al. 2023, "FSQ: VQ-VAE made simple").

Each of ``len(levels)`` channels is bounded with a shifted ``tanh`` and rounded to one of ``L_i``
values; the implicit codebook is the product grid (``prod(levels)`` codes), so there is no codebook
to learn, no auxiliary loss and no collapse. Codes lie in ``[-1, 1]``: channel ``i`` takes values
``(k - L_i // 2) / (L_i // 2)`` for ``k = 0 .. L_i - 1``, and the index is ``sum_i k_i * prod_{j<i} L_j``
(first channel least significant) — the paper's definitions.

Example:
    >>> import torch
    >>> from vq3dlib.quantize import FSQ
    >>> fsq = FSQ([8, 5, 5, 5])
    >>> z_q, indices, aux = fsq(torch.randn(3, 4))
    >>> fsq.codebook_size, indices.shape
    (1000, torch.Size([3]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vq3dlib._validation import check_tensor, finite_checks_enabled, has_values
from vq3dlib.quantize.base import Quantizer, QuantizerAux, sparse_usage_stats

#: most values one channel may take: beyond 2**24 float32 cannot tell neighbouring grid values apart
MAX_LEVEL = 1 << 24


def check_levels(levels: Sequence[int]) -> list[int]:
    """Validates FSQ levels and returns them as ints; raises ``ValueError``/``TypeError`` naming ``levels``.

    Each level is an integer in ``[3, 2**24]`` (a level of 2 is degenerate: the shifted ``tanh`` puts
    half of all inputs on one value, as vector-quantize-pytorch refuses it too), and the product of
    all levels (the codebook size) must fit int64.

    Example:
        >>> check_levels((8, 5, 5, 5))
        [8, 5, 5, 5]
    """
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise TypeError(f"levels must be a sequence of ints, got {levels!r}")
    if not levels or any(isinstance(v, bool) or int(v) != v for v in levels):
        raise ValueError(f"levels must be a non-empty sequence of ints >= 3, got {list(levels)}")
    out = [int(v) for v in levels]
    if any(v < 3 or v > MAX_LEVEL for v in out):
        raise ValueError(
            f"levels must be ints in [3, {MAX_LEVEL}] (a level of 2 is degenerate, larger ones exceed "
            f"float32 precision), got {out}"
        )
    size = 1
    for v in out:
        size *= v
    if size >= 1 << 63:
        raise ValueError(f"levels {out} give {size} codes, more than int64 indices hold (2**63 - 1)")
    return out


def _round_ste(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Rounds to the nearest grid step in ``[low, high]`` with a straight-through gradient."""
    return x + (torch.minimum(torch.maximum(x.round(), low), high) - x).detach()


class FSQ(Quantizer):
    """Finite scalar quantizer with configurable levels per channel.

    Args:
        levels: number of values per code channel, each in ``[3, 2**24]`` (e.g. ``[8, 5, 5, 5]``;
            see :func:`check_levels`).
        dim: input width ``D``; when it differs from ``len(levels)`` linear projections map to and
            from the code channels. ``None`` means ``len(levels)``.
        channels_last: ``True`` for ``[..., D]`` inputs, ``False`` for ``[B, D, *spatial]``.
        eps: keeps the bound slightly wider than the grid so ``tanh`` reaches the end values.

    Shapes:
        ``z [..., D]`` → ``z_q [..., D]``, ``indices [...]`` (int64 in ``[0, prod(levels))``),
        ``aux`` with a zero ``loss`` and ``stats`` ``perplexity``, ``used_fraction``.

    Example:
        >>> import torch
        >>> fsq = FSQ([5, 3])
        >>> codes = fsq.indices_to_codes(torch.arange(15))
        >>> bool((fsq.codes_to_indices(codes) == torch.arange(15)).all())
        True
    """

    def __init__(
        self,
        levels: Sequence[int],
        dim: int | None = None,
        *,
        channels_last: bool = True,
        eps: float = 1e-3,
    ) -> None:
        levels = check_levels(levels)
        super().__init__(len(levels) if dim is None else dim, channels_last=channels_last)
        self.levels = levels
        self.code_dim = len(levels)
        self.eps = float(eps)
        self.codebook_size = 1
        for v in levels:
            self.codebook_size *= v
        basis = [1]
        for v in levels[:-1]:
            basis.append(basis[-1] * v)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.long), persistent=False)
        project = self.dim != self.code_dim
        self.project_in: nn.Module = nn.Linear(self.dim, self.code_dim) if project else nn.Identity()
        self.project_out: nn.Module = nn.Linear(self.code_dim, self.dim) if project else nn.Identity()

    def quantize(self, z: Tensor) -> Tensor:
        """``[..., len(levels)]`` → codes on the grid in ``[-1, 1]`` (straight-through rounding).

        Example:
            >>> import torch
            >>> FSQ([3, 3]).quantize(torch.tensor([[-9.0, 0.1]]))
            tensor([[-1., 0.]])
        """
        levels = self._levels.to(z.dtype)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        bounded = torch.tanh(z + shift) * half_l - offset
        half_width = (self._levels // 2).to(z.dtype)
        # eps widens the bound past the end values; for levels above 1000 that reaches the next step
        top = (self._levels - 1 - self._levels // 2).to(z.dtype)
        return _round_ste(bounded, -half_width, top) / half_width

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """``[..., len(levels)]`` grid codes → ``[...]`` int64 indices.

        Values between grid points are rounded to the nearest one. Raises ``ValueError``/``TypeError``
        naming ``codes`` for a wrong last dimension, a non-float dtype, NaN/Inf values or values off
        the grid's range (the value checks follow :func:`vq3dlib._validation.set_finite_checks`).

        Example:
            >>> import torch
            >>> FSQ([3, 3]).codes_to_indices(torch.tensor([[1.0, -1.0]]))
            tensor([2])
        """
        check_tensor("codes", codes, last_dim=self.code_dim, floating=True, finite=True)
        k = self._grid_steps(codes)
        if codes.numel() and finite_checks_enabled() and has_values(codes):
            if bool(((k < 0) | (k >= self._levels)).any()):
                top = [(v - 1 - v // 2) / (v // 2) for v in self.levels]
                raise ValueError(
                    f"codes must lie on the grid of levels {self.levels}: channel i in [-1, top[i]] with "
                    f"top = {top}, got values in [{float(codes.min())}, {float(codes.max())}]"
                )
        return (k * self._basis).sum(dim=-1)

    def _grid_steps(self, codes: Tensor) -> Tensor:
        """Grid step ``k_i`` in ``[0, L_i)`` of every code channel (unchecked)."""
        half_width = self._levels // 2
        return (codes * half_width.to(codes.dtype)).round().long() + half_width

    def _codes_to_indices(self, codes: Tensor) -> Tensor:
        return (self._grid_steps(codes) * self._basis).sum(dim=-1)

    def indices_to_grid(self, indices: Tensor) -> Tensor:
        """``[...]`` indices → ``[..., len(levels)]`` grid codes (before the out-projection).

        Example:
            >>> import torch
            >>> FSQ([3, 3]).indices_to_grid(torch.tensor([2]))
            tensor([[ 1., -1.]])
        """
        self._check_indices(indices, self.codebook_size)
        k = (indices.unsqueeze(-1) // self._basis) % self._levels
        half_width = self._levels // 2
        return (k - half_width).float() / half_width.float()

    def _quantize_rows(self, x: Tensor) -> tuple[Tensor, Tensor, QuantizerAux]:
        h = self.project_in(x)
        exact = self.quantize(h.float())
        # indices from the float32 grid point: half precision can round a code onto a neighbour (or
        # past the top of a level >= 256), which would index another code or none
        indices = self._codes_to_indices(exact.detach())  # input already checked
        codes = exact.to(h.dtype)
        out = self.project_out(codes)
        zero = out.sum() * 0.0
        return out, indices, QuantizerAux(zero, {}, sparse_usage_stats(indices, self.codebook_size))

    def _indices_to_rows(self, indices: Tensor) -> Tensor:
        return self.project_out(self.indices_to_grid(indices))

    def extra_repr(self) -> str:
        return f"levels={self.levels}, dim={self.dim}, channels_last={self.channels_last}"
