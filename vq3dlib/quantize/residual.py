"""Residual quantization: a stack of quantizers, each quantizing what the previous ones left over.

``r_0 = z``, ``q_i = Q_i(r_i)``, ``r_{i+1} = r_i - sg(q_i)``, output ``sum_i q_i``. Indices get a
trailing ``[num_quantizers]`` dimension; losses are summed with per-layer names (``"0/commitment"``,
...) and stats are reported per layer plus ``"perplexity"`` and ``"used_fraction"`` averaged over the
layers.

Example:
    >>> import torch
    >>> from vq3dlib.quantize import ResidualVQ
    >>> rvq = ResidualVQ(16, num_quantizers=3, codebook_size=32)
    >>> z_q, indices, aux = rvq(torch.randn(2, 5, 16))
    >>> z_q.shape, indices.shape
    (torch.Size([2, 5, 16]), torch.Size([2, 5, 3]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vq3dlib._validation import check_tensor
from vq3dlib.quantize.base import Quantizer, QuantizerAux
from vq3dlib.quantize.vq import VectorQuantizer


class ResidualVQ(Quantizer):
    """Residual stack of quantizers sharing one input width.

    Args:
        dim: input width ``D``.
        num_quantizers: number of :class:`VectorQuantizer` layers to build (ignored when
            ``quantizers`` is given).
        codebook_size: codes per layer for the built layers.
        quantizers: optional explicit layers (any channels-last :class:`Quantizer` of width ``dim``,
            e.g. ``FSQ`` or ``LFQ`` with projections).
        channels_last: ``True`` for ``[..., D]`` inputs, ``False`` for ``[B, D, *spatial]``.
        **vq_kwargs: forwarded to every built :class:`VectorQuantizer` (default here:
            ``l2_normalize=False``, since residuals shrink layer after layer).

    Shapes:
        ``z [..., D]`` → ``z_q [..., D]``, ``indices [..., num_quantizers]``, ``aux`` whose ``loss``
        sums the layers' losses; ``stats`` hold each layer's stats as ``"<layer>/perplexity"``,
        ``"<layer>/used_fraction"``, ... and, over all layers, ``"perplexity"`` and ``"used_fraction"``:
        the means of the layers' values (the layers' codebooks may differ in size, so the mean of
        fractions, not the fraction of all codes together).

    Example:
        >>> import torch
        >>> from vq3dlib.quantize import FSQ
        >>> rvq = ResidualVQ(8, quantizers=[FSQ([5, 5, 5], dim=8), FSQ([5, 5, 5], dim=8)]).eval()
        >>> z_q, idx, _ = rvq(torch.randn(4, 8))
        >>> torch.allclose(rvq.indices_to_codes(idx), z_q, atol=1e-5)
        True
    """

    def __init__(
        self,
        dim: int,
        num_quantizers: int = 1,
        codebook_size: int = 1024,
        *,
        quantizers: Sequence[Quantizer] | None = None,
        channels_last: bool = True,
        **vq_kwargs: Any,
    ) -> None:
        super().__init__(dim, channels_last=channels_last)
        if quantizers is None:
            if num_quantizers < 1:
                raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
            vq_kwargs.setdefault("l2_normalize", False)
            quantizers = [VectorQuantizer(dim, codebook_size, **vq_kwargs) for _ in range(num_quantizers)]
        quantizers = list(quantizers)
        if not quantizers:
            raise ValueError("quantizers must not be empty")
        for i, q in enumerate(quantizers):
            if not isinstance(q, Quantizer) or q.dim != dim or not q.channels_last:
                raise ValueError(f"quantizers[{i}] must be a channels-last Quantizer of dim {dim}, got {q!r}")
        self.layers = nn.ModuleList(quantizers)
        self.num_quantizers = len(quantizers)

    def _quantize_rows(self, x: Tensor) -> tuple[Tensor, Tensor, QuantizerAux]:
        residual = x
        out = torch.zeros_like(x)
        all_indices, losses, stats = [], {}, {}
        total = x.sum() * 0.0
        for i, layer in enumerate(self.layers):
            q, idx, aux = layer._quantize_rows(residual)
            residual = residual - q.detach()
            out = out + q
            all_indices.append(idx)
            total = total + aux.loss
            losses.update({f"{i}/{k}": v for k, v in aux.losses.items()})
            stats.update({f"{i}/{k}": v for k, v in aux.stats.items()})
        for key in ("perplexity", "used_fraction"):  # summaries over the layers, next to the per-layer keys
            names = [f"{i}/{key}" for i in range(self.num_quantizers)]
            per_layer = [stats[n].float() for n in names if n in stats]
            if per_layer:
                stats[key] = torch.stack(per_layer).mean()
        return out, torch.stack(all_indices, dim=-1), QuantizerAux(total, losses, stats)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``[*lead, num_quantizers]`` indices → summed outputs in the input layout.

        Example:
            >>> import torch
            >>> ResidualVQ(4, 2, 8).indices_to_codes(torch.zeros(3, 2, dtype=torch.long)).shape
            torch.Size([3, 4])
        """
        check_tensor("indices", indices, integer=True)
        if indices.dim() < 1 or indices.shape[-1] != self.num_quantizers:
            raise ValueError(
                f"indices must have shape [..., {self.num_quantizers}] (one per layer), "
                f"got {list(indices.shape)}"
            )
        rows = sum(layer._indices_to_rows(indices[..., i]) for i, layer in enumerate(self.layers))
        lead = tuple(rows.shape[:-1])
        return self._from_rows(rows.reshape(-1, self.dim), lead)
