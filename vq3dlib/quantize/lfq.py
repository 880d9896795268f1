"""Lookup-free quantization (Yu et al. 2023, MAGVIT-v2) with its entropy auxiliary loss.

Each of ``d = log2(K)`` code channels is quantized to its sign, ``±codebook_scale``; the index
reads the signs as bits, first channel most significant (``x > 0`` is bit 1). The entropy loss
``per_sample_entropy - diversity_gamma * codebook_entropy`` uses the soft assignment
``p(c | x) = softmax_c(2 * inv_temperature * <x, c>)`` over all ``K`` codes; it is accumulated in row
chunks with recomputation in backward, so ``N x K`` is never held in memory.

Example:
    >>> import torch
    >>> from vq3dlib.quantize import LFQ
    >>> lfq = LFQ(16, codebook_size=2 ** 8)
    >>> z_q, indices, aux = lfq(torch.randn(4, 10, 16))
    >>> indices.shape, sorted(aux.losses)
    (torch.Size([4, 10]), ['entropy'])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vq3dlib._validation import check_positive, check_tensor
from vq3dlib.quantize.base import Quantizer, QuantizerAux, sparse_usage_stats

#: most bits per code: int64 indices (and 2**bits as a size) must not overflow
MAX_BITS = 62
#: most codes the training entropy loss enumerates (it evaluates every code for every row)
MAX_ENTROPY_CODES = 1 << 24
_CHUNK_ELEMENTS = 1 << 22


def _entropy_terms(x: Tensor, codebook: Tensor, inv_temperature: float, eps: float) -> tuple[Tensor, Tensor]:
    """Sums over the rows of ``x``: (``sum_n p_n [K]``, ``sum_n H(p_n)``)."""
    prob = torch.softmax(2.0 * inv_temperature * (x @ codebook.t()), dim=-1)
    ent = -(prob * prob.clamp_min(eps).log()).sum()
    return prob.sum(dim=0), ent


class LFQ(Quantizer):
    """Lookup-free quantizer: sign per channel, implicit codebook of ``2^d`` codes.

    Args:
        dim: input width ``D``; projections are added when ``D != log2(codebook_size)``. Without
            ``codebook_size`` at most ``MAX_BITS = 62`` (int64 indices).
        codebook_size: ``K``, a power of two; ``None`` means ``2 ** dim``.
        entropy_loss_weight: weight of the entropy auxiliary loss (training mode only; it enumerates
            every code, so training with more than ``MAX_ENTROPY_CODES = 2**24`` codes needs ``0``).
        diversity_gamma: weight of the codebook (batch) entropy inside the entropy loss.
        commitment_loss_weight: weight of ``|x - sg(q)|^2``; 0 disables it.
        inv_temperature: inverse temperature of the soft assignment used by the entropy loss.
        codebook_scale: code values are ``±codebook_scale``.
        entropy_chunk_size: rows per chunk for the entropy loss (default: ~16 MiB of probabilities).
        channels_last: ``True`` for ``[..., D]`` inputs, ``False`` for ``[B, D, *spatial]``.

    Shapes:
        ``z [..., D]`` → ``z_q [..., D]``, ``indices [...]`` (int64), ``aux`` with ``losses``
        ``entropy`` [+ ``commitment``] and ``stats`` ``perplexity``, ``used_fraction``
        [+ ``per_sample_entropy``, ``codebook_entropy`` in training].

    Example:
        >>> import torch
        >>> lfq = LFQ(3)
        >>> lfq.indices_to_codes(torch.tensor([0, 5]))
        tensor([[-1., -1., -1.],
                [ 1., -1.,  1.]])
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int | None = None,
        *,
        entropy_loss_weight: float = 0.1,
        diversity_gamma: float = 1.0,
        commitment_loss_weight: float = 0.0,
        inv_temperature: float = 100.0,
        codebook_scale: float = 1.0,
        entropy_chunk_size: int | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__(dim, channels_last=channels_last)
        check_positive("dim", dim, integer=True)
        if codebook_size is None and dim > MAX_BITS:
            raise ValueError(
                f"dim={dim} bits give 2**{dim} codes; int64 indices hold at most {MAX_BITS} bits: pass "
                f"codebook_size <= 2**{MAX_BITS} (dim is then projected)"
            )
        codebook_size = 2**dim if codebook_size is None else int(codebook_size)
        if codebook_size < 2 or codebook_size & (codebook_size - 1) or codebook_size > 2**MAX_BITS:
            raise ValueError(
                f"codebook_size must be a power of two in [2, 2**{MAX_BITS}], got {codebook_size}"
            )
        check_positive("inv_temperature", inv_temperature)
        check_positive("codebook_scale", codebook_scale)
        if entropy_chunk_size is not None:
            check_positive("entropy_chunk_size", entropy_chunk_size)
        self.codebook_size = codebook_size
        self.code_dim = int(math.log2(codebook_size))
        self.entropy_loss_weight = float(entropy_loss_weight)
        self.diversity_gamma = float(diversity_gamma)
        self.commitment_loss_weight = float(commitment_loss_weight)
        self.inv_temperature = float(inv_temperature)
        self.codebook_scale = float(codebook_scale)
        self.entropy_chunk_size = entropy_chunk_size
        project = self.dim != self.code_dim
        self.project_in: nn.Module = nn.Linear(self.dim, self.code_dim) if project else nn.Identity()
        self.project_out: nn.Module = nn.Linear(self.code_dim, self.dim) if project else nn.Identity()
        self.register_buffer("_bits", 2 ** torch.arange(self.code_dim - 1, -1, -1), persistent=False)

    def indices_to_bits(self, indices: Tensor) -> Tensor:
        """``[...]`` indices → ``[..., d]`` code values ``±codebook_scale`` (before projection).

        Example:
            >>> import torch
            >>> LFQ(2).indices_to_bits(torch.tensor([1]))
            tensor([[-1.,  1.]])
        """
        self._check_indices(indices, self.codebook_size)
        bits = (indices.unsqueeze(-1) & self._bits) != 0
        return torch.where(bits, self.codebook_scale, -self.codebook_scale).float()

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """``[..., d]`` codes (or any pre-quantization values) → ``[...]`` indices from their signs.

        Raises ``ValueError``/``TypeError`` naming ``codes`` for a last dimension other than
        ``d = log2(codebook_size)``, a non-float dtype or NaN/Inf values.

        Example:
            >>> import torch
            >>> LFQ(2).codes_to_indices(torch.tensor([[0.3, -2.0]]))
            tensor([2])
        """
        check_tensor("codes", codes, last_dim=self.code_dim, floating=True, finite=True)
        return self._codes_to_indices(codes)

    def _codes_to_indices(self, codes: Tensor) -> Tensor:
        return ((codes > 0).long() * self._bits).sum(dim=-1)

    def _entropy(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean per-sample entropy, entropy of the batch-mean assignment), chunked over rows."""
        n = x.shape[0]
        codebook = self.indices_to_bits(torch.arange(self.codebook_size, device=x.device)).to(x.dtype)
        chunk = self.entropy_chunk_size or max(1, _CHUNK_ELEMENTS // self.codebook_size)
        prob_sum = x.new_zeros(self.codebook_size)
        ent_sum = x.new_zeros(())
        recompute = torch.is_grad_enabled() and x.requires_grad and n > chunk
        for start in range(0, n, chunk):
            args = (x[start : start + chunk], codebook, self.inv_temperature, 1e-5)
            p, e = (
                checkpoint(_entropy_terms, *args, use_reentrant=False) if recompute else _entropy_terms(*args)
            )
            prob_sum = prob_sum + p
            ent_sum = ent_sum + e
        avg = prob_sum / n
        codebook_entropy = -(avg * avg.clamp_min(1e-5).log()).sum()
        return ent_sum / n, codebook_entropy

    def _quantize_rows(self, x: Tensor) -> tuple[Tensor, Tensor, QuantizerAux]:
        h = self.project_in(x).float()
        q = torch.where(h > 0, self.codebook_scale, -self.codebook_scale)
        indices = self._codes_to_indices(h.detach())  # input already checked
        z_st = h + (q - h).detach()
        out = self.project_out(z_st.to(x.dtype))
        zero = out.sum() * 0.0
        losses: dict[str, Tensor] = {}
        stats = sparse_usage_stats(indices, self.codebook_size)
        entropy = self.entropy_loss_weight != 0 or self.codebook_size <= MAX_ENTROPY_CODES
        if self.training and h.shape[0] > 0 and entropy:
            if self.codebook_size > MAX_ENTROPY_CODES:
                raise ValueError(
                    f"the entropy loss sums over all {self.codebook_size} codes (2**{self.code_dim}); at "
                    f"most 2**{MAX_ENTROPY_CODES.bit_length() - 1} are supported in training: use a "
                    "smaller codebook_size, entropy_loss_weight=0, or eval()"
                )
            per_sample, batch = self._entropy(h)
            losses["entropy"] = self.entropy_loss_weight * (per_sample - self.diversity_gamma * batch)
            stats["per_sample_entropy"] = per_sample.detach()
            stats["codebook_entropy"] = batch.detach()
        else:
            losses["entropy"] = zero
        if self.commitment_loss_weight > 0:
            losses["commitment"] = (
                zero if h.shape[0] == 0 else self.commitment_loss_weight * ((h - q) ** 2).mean()
            )
        return out, indices, QuantizerAux(sum(losses.values(), zero), losses, stats)

    def _indices_to_rows(self, indices: Tensor) -> Tensor:
        return self.project_out(self.indices_to_bits(indices))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, "
            f"entropy_loss_weight={self.entropy_loss_weight}, channels_last={self.channels_last}"
        )
