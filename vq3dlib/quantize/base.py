"""The interface every quantizer shares: layout handling, input checks, the ``aux`` record and stats.

Every quantizer is called as ``z_q, indices, aux = quantizer(z)`` where ``z`` is channels-last
``[..., D]`` (``channels_last=True``, the default) or channels-first ``[B, D, *spatial]``
(``channels_last=False``, e.g. ``[B, C, H, W]`` feature maps). ``z_q`` has the layout and shape of
``z``; ``indices`` has the shape of ``z`` without its channel dimension (plus a trailing
``[num_quantizers]`` dimension for :class:`~vq3dlib.quantize.ResidualVQ`).

Example:
    >>> import torch
    >>> from vq3dlib.quantize.base import usage_stats
    >>> s = usage_stats(torch.tensor([0., 2., 2.]))
    >>> round(float(s["perplexity"]), 3), round(float(s["used_fraction"]), 3)
    (2.0, 0.667)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vq3dlib._validation import check_tensor, has_values


@dataclass
class QuantizerAux:
    """What a quantizer returns besides ``z_q`` and ``indices``.

    Attributes:
        loss: scalar total auxiliary loss to add to the training objective (already weighted).
        losses: the weighted terms that sum to ``loss`` (e.g. ``"commitment"``, ``"codebook"``,
            ``"entropy"``); scalar tensors.
        stats: detached scalar tensors for logging: ``"perplexity"`` (exp of the entropy of the code
            histogram of this batch) and ``"used_fraction"`` (fraction of codes used in this batch),
            plus quantizer-specific entries.

    Example:
        >>> import torch
        >>> aux = QuantizerAux(torch.tensor(0.5), {"commitment": torch.tensor(0.5)}, {})
        >>> float(aux.loss)
        0.5
    """

    loss: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)

    def log_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{name: float}`` of the loss, its terms and the stats, for a training logger.

        Example:
            >>> import torch
            >>> QuantizerAux(torch.tensor(1.0), {}, {"perplexity": torch.tensor(3.0)}).log_dict("vq/")
            {'vq/loss': 1.0, 'vq/perplexity': 3.0}
        """
        out = {f"{prefix}loss": float(self.loss.detach())}
        out.update({f"{prefix}{k}": float(v.detach()) for k, v in self.losses.items()})
        out.update({f"{prefix}{k}": float(v.detach()) for k, v in self.stats.items()})
        return out


def usage_stats(counts: Tensor) -> dict[str, Tensor]:
    """Perplexity and used fraction from a histogram of code counts.

    Args:
        counts: ``[K]`` non-negative counts per code (float or int).

    Returns:
        ``{"perplexity": [], "used_fraction": []}``; both 0 for an all-zero histogram.

    Example:
        >>> import torch
        >>> float(usage_stats(torch.tensor([1, 1, 1, 1]))["perplexity"])
        4.0
    """
    counts = counts.detach().float()
    total = counts.sum()
    probs = counts / total.clamp_min(1e-12)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    empty = total <= 0
    perplexity = torch.where(empty, torch.zeros_like(entropy), entropy.exp())
    used = (counts > 0).float().mean() if counts.numel() else counts.new_zeros(())
    return {"perplexity": perplexity, "used_fraction": used}


def sparse_usage_stats(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """:func:`usage_stats` from raw indices without allocating ``[K]`` (for huge implicit codebooks).

    Args:
        indices: integer tensor of any shape with values in ``[0, codebook_size)``.
        codebook_size: number of codes ``K``.

    Example:
        >>> import torch
        >>> float(sparse_usage_stats(torch.tensor([3, 3, 7, 7]), 2 ** 40)["perplexity"])
        2.0
    """
    if indices.numel() == 0 or not has_values(indices):  # nothing to count (or a meta tensor)
        zero = torch.zeros((), device=indices.device)
        return {"perplexity": zero, "used_fraction": zero.clone()}
    _, counts = torch.unique(indices.detach().reshape(-1), return_counts=True)
    stats = usage_stats(counts)
    stats["used_fraction"] = torch.tensor(counts.numel() / codebook_size, device=indices.device)
    return stats


class Quantizer(nn.Module):
    """Base class: converts inputs to ``[N, D]`` rows and back, checks them, and holds the layout flag.

    Subclasses implement ``_quantize_rows(x: [N, D]) -> (z_q [N, D], indices [N, ...], aux)`` and
    ``_indices_to_rows(indices) -> [..., D]``.

    Args:
        dim: channel width ``D`` of the input.
        channels_last: ``True`` for ``[..., D]`` inputs, ``False`` for ``[B, D, *spatial]``.

    Example:
        >>> import torch
        >>> from vq3dlib.quantize import FSQ
        >>> q = FSQ([5, 5, 5], channels_last=False)
        >>> z_q, idx, aux = q(torch.randn(2, 3, 4, 4))
        >>> z_q.shape, idx.shape
        (torch.Size([2, 3, 4, 4]), torch.Size([2, 4, 4]))
    """

    def __init__(self, dim: int, *, channels_last: bool = True) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.channels_last = bool(channels_last)

    # -- layout -----------------------------------------------------------------------------------
    def _check_input(self, z: Tensor, name: str = "z", *, finite: bool = True) -> None:
        check_tensor(name, z, floating=True, finite=finite)
        ref = next(iter(self.parameters()), None)
        ref = ref if ref is not None else next(iter(self.buffers()), None)
        if ref is not None and z.device != ref.device:
            raise ValueError(
                f"{name} is on {z.device} but the quantizer is on {ref.device}; move one with .to()"
                + (" (for shapes only, quantizer.to('meta'))" if z.device.type == "meta" else "")
            )
        if self.channels_last:
            if z.dim() < 1 or z.shape[-1] != self.dim:
                raise ValueError(
                    f"{name} must have shape [..., {self.dim}] (channels_last=True), got {list(z.shape)}"
                )
        else:
            if z.dim() < 2 or z.shape[1] != self.dim:
                raise ValueError(
                    f"{name} must have shape [B, {self.dim}, ...] (channels_last=False), got {list(z.shape)}"
                )

    def _to_rows(self, z: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """``z`` → ``[N, D]`` rows and the channels-last shape to restore."""
        if not self.channels_last:
            z = z.movedim(1, -1)
        lead = tuple(z.shape[:-1])
        return z.reshape(-1, self.dim), lead

    def _from_rows(self, rows: Tensor, lead: tuple[int, ...]) -> Tensor:
        out = rows.reshape(*lead, rows.shape[-1])
        if not self.channels_last:
            out = out.movedim(-1, 1)
        return out

    def _check_indices(self, indices: Tensor, codebook_size: int) -> None:
        check_tensor("indices", indices, integer=True)
        if not indices.numel() or not has_values(indices):  # nothing to read (or a meta tensor)
            return
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= codebook_size:
            raise ValueError(f"indices must lie in [0, {codebook_size}), got values in [{lo}, {hi}]")

    # -- interface --------------------------------------------------------------------------------
    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, QuantizerAux]:
        """Quantizes ``z``: ``[..., D]`` (or ``[B, D, *spatial]``) → ``(z_q, indices, aux)``.

        ``z_q`` has the shape and layout of ``z``, ``indices`` the shape of ``z`` without its channel
        dimension; ``aux`` is a :class:`QuantizerAux` (``loss``, ``losses``, ``stats``).

        Example:
            >>> import torch
            >>> from vq3dlib.quantize import FSQ
            >>> z_q, indices, aux = FSQ([3, 3])(torch.tensor([[5.0, -5.0], [0.1, 0.0]]))
            >>> z_q, indices, float(aux.loss)
            (tensor([[ 1., -1.],
                    [ 0.,  0.]]), tensor([2, 4]), 0.0)
        """
        self._check_input(z)
        rows, lead = self._to_rows(z)
        z_q, indices, aux = self._quantize_rows(rows)
        return self._from_rows(z_q, lead), indices.reshape(*lead, *indices.shape[1:]), aux

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Maps ``indices`` (as returned by ``forward``) back to outputs in the input layout.

        ``[*lead] → [*lead, D]`` (channels last) or ``[B, *spatial] → [B, D, *spatial]``.

        Example:
            >>> import torch
            >>> from vq3dlib.quantize import FSQ
            >>> fsq = FSQ([3, 3], channels_last=False)
            >>> fsq.indices_to_codes(torch.tensor([[[2, 4]]]))   # [B=1, H=1, W=2] -> [1, 2, 1, 2]
            tensor([[[[ 1.,  0.]],
            <BLANKLINE>
                     [[-1.,  0.]]]])
        """
        rows = self._indices_to_rows(indices)
        lead = tuple(rows.shape[:-1])
        return self._from_rows(rows.reshape(-1, rows.shape[-1]), lead)

    def _quantize_rows(self, x: Tensor) -> tuple[Tensor, Tensor, QuantizerAux]:  # pragma: no cover
        raise NotImplementedError

    def _indices_to_rows(self, indices: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError
