"""Stage 2: a decoder-only transformer prior over code indices, with KV-cache sampling.

The sequence seen by the transformer is ``[class token, c_0, ..., c_{N-2}]`` and position ``t``
predicts code ``c_t``. The class token embeds the label, or a learned "null" label (index
``num_classes``) for unconditional modelling; labels are dropped to null with probability
``class_dropout`` during training so that classifier-free guidance works at sampling time.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` over an explicit
:class:`KVCache`, so sampling costs one token's work per step.

Example:
    >>> import torch
    >>> from vq3dlib.models.prior import CodePrior
    >>> prior = CodePrior(vocab_size=32, seq_len=16, num_classes=4, width=32, depth=1, heads=2)
    >>> codes = torch.randint(0, 32, (2, 16))
    >>> prior.loss(codes, torch.tensor([0, 3])).shape
    torch.Size([])
    >>> prior.sample(3, labels=1, top_k=8, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 16])
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from vq3dlib._validation import check_positive, check_tensor, has_values
from vq3dlib.models.vit import init_vit_weights

if TYPE_CHECKING:
    from vq3dlib.models.configs import VQ3DConfig


class KVCache:
    """Keys and values of every layer for incremental decoding.

    ``keys``/``values`` are ``[depth, B, heads, max_len, head_dim]``; the first ``length``
    positions are filled.

    Example:
        >>> cache = KVCache(depth=2, batch_size=3, heads=4, max_len=10, head_dim=8)
        >>> cache.keys.shape, cache.length
        (torch.Size([2, 3, 4, 10, 8]), 0)
    """

    def __init__(
        self,
        depth: int,
        batch_size: int,
        heads: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (depth, batch_size, heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        """Positions the cache can hold."""
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        """Sequences in the cache."""
        return self.keys.shape[1]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional :class:`KVCache`.

    Example:
        >>> attn = CausalSelfAttention(16, heads=2)
        >>> attn(torch.zeros(1, 5, 16)).shape
        torch.Size([1, 5, 16])
    """

    def __init__(self, width: int, heads: int, *, dropout: float = 0.0, qkv_bias: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"heads ({heads}) must divide width ({width})")
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, T, D]``; with a cache, ``x`` continues the cached positions."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # no dropout on the attention weights: it would take SDPA off its fused kernels
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            start = cache.length
            cache.keys[layer, :, :, start : start + t] = k
            cache.values[layer, :, :, start : start + t] = v
            k = cache.keys[layer, :, :, : start + t]
            v = cache.values[layer, :, :, : start + t]
            if t == 1:  # one new query sees every cached position
                out = F.scaled_dot_product_attention(q, k, v)
            elif start == 0:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # several new queries after a filled cache: query i sees keys <= start + i
                rows = torch.arange(start, start + t, device=x.device)[:, None]
                mask = rows >= torch.arange(start + t, device=x.device)[None, :]
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.proj_drop(self.proj(out))


class PriorBlock(nn.Module):
    """Pre-norm transformer block: causal attention + MLP, each residual.

    Hand-written rather than timm's ``Block`` (which the ViT encoder/decoder use) because timm's
    attention has no KV cache: this block threads a :class:`KVCache` through
    :class:`CausalSelfAttention` so that sampling costs one token's work per step. The MLP is timm's.

    Example:
        >>> block = PriorBlock(16, heads=2)
        >>> block(torch.zeros(2, 3, 16)).shape
        torch.Size([2, 3, 16])
    """

    def __init__(
        self, width: int, heads: int, mlp_ratio: float = 4.0, *, dropout: float = 0.0, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout=dropout, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(width)
        # dropout on the residual branch only, not on the hidden layer (4x the values to draw)
        self.mlp = Mlp(width, int(width * mlp_ratio), drop=(0.0, dropout))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, T, D]``."""
        x = x + self.attn(self.norm1(x), cache, layer)
        return x + self.mlp(self.norm2(x))


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Sets every logit below the ``k``-th largest (per row) to ``-inf``; ``None`` keeps all.

    Ties with the ``k``-th value are kept.

    Example:
        >>> top_k_filter(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2)
        tensor([[-inf, 3., 2., -inf]])
    """
    if k is None or k >= logits.shape[-1]:
        return logits
    check_positive("top_k", k)
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filter: keeps the smallest set of top logits whose probability mass reaches ``p``.

    The most likely token is always kept; ``None`` or ``p >= 1`` keeps all.

    Example:
        >>> probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
        >>> top_p_filter(probs.log(), 0.7).isfinite()
        tensor([[ True,  True, False, False]])
    """
    if p is None or p >= 1.0:
        return logits
    if not 0.0 < p:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove_sorted = mass_before >= p
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draws one index per row of ``[B, V]`` logits; ``temperature=0`` is greedy (argmax).

    Example:
        >>> sample_logits(torch.tensor([[0.0, 5.0, 1.0]]), temperature=0.0)
        tensor([1])
    """
    check_tensor("logits", logits, ndim=2, floating=True)
    check_positive("temperature", temperature, allow_zero=True)
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


#: classifier-free guidance scale of the command line's and the demo's samples: with the demo's
#: prior, scale 6 lifts the class accuracy of samples from 0.49 to 0.81 (docs/training.md)
DEFAULT_CFG_SCALE = 6.0

#: top-k filtering of the command line's and the demo's samples (``None``: every code): with the
#: demo's prior, keeping the 16 most likely codes per token lifts the class accuracy of samples from
#: 0.81 to 0.86 on average over three judges and lowers their FID (docs/training.md)
DEFAULT_TOP_K = 16


class CodePrior(nn.Module):
    """Class-conditional autoregressive transformer over ``seq_len`` code indices.

    Args:
        vocab_size: number of codes ``V``.
        seq_len: codes per image ``N`` (the token grid, row-major).
        num_classes: class labels; 0 for an unconditional prior. Label ``num_classes`` is the
            null label (unconditional / classifier-free guidance).
        width, depth, heads, mlp_ratio: transformer sizes.
        dropout: dropout (training only) of the embeddings and of the attention's and MLP's outputs
            before each residual sum.
        class_dropout: probability that :meth:`loss` replaces a label by the null label.
        qkv_bias: bias in the qkv projection.

    Example:
        >>> prior = CodePrior(vocab_size=8, seq_len=4, num_classes=2, width=16, depth=1, heads=2)
        >>> prior(torch.zeros(5, 4, dtype=torch.long), torch.ones(5, dtype=torch.long)).shape
        torch.Size([5, 4, 8])
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        num_classes: int = 0,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        *,
        dropout: float = 0.0,
        class_dropout: float = 0.1,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        check_positive("vocab_size", vocab_size)
        check_positive("seq_len", seq_len)
        check_positive("num_classes", num_classes, allow_zero=True)
        check_positive("width", width)
        check_positive("depth", depth, allow_zero=True)
        check_positive("heads", heads)
        if width % heads:
            raise ValueError(f"heads ({heads}) must divide width ({width})")
        if not 0.0 <= class_dropout < 1.0:
            raise ValueError(f"class_dropout must be in [0, 1), got {class_dropout}")
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.num_classes = num_classes
        self.width = width
        self.heads = heads
        self.class_dropout = class_dropout
        self.token_embed = nn.Embedding(vocab_size, width)
        self.class_embed = nn.Embedding(num_classes + 1, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, seq_len, width))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            PriorBlock(width, heads, mlp_ratio, dropout=dropout, qkv_bias=qkv_bias) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)
        self.apply(init_vit_weights)
        for param in (self.token_embed.weight, self.class_embed.weight, self.pos_embed):
            nn.init.trunc_normal_(param, std=0.02)
        for block in self.blocks:  # GPT-2 style: scale residual projections by depth
            nn.init.trunc_normal_(block.attn.proj.weight, std=0.02 / math.sqrt(2 * max(depth, 1)))
            nn.init.trunc_normal_(block.mlp.fc2.weight, std=0.02 / math.sqrt(2 * max(depth, 1)))

    @classmethod
    def from_config(cls, cfg: VQ3DConfig) -> CodePrior:
        """The prior for a config: ``cfg.vocab_size`` codes, ``cfg.prior_seq_len`` positions.

        Example:
            >>> from vq3dlib.models.configs import get_config
            >>> p = CodePrior.from_config(get_config("tiny"))
            >>> p.vocab_size, p.seq_len, p.num_classes
            (512, 64, 6)
        """
        return cls(
            cfg.vocab_size,
            cfg.prior_seq_len,
            cfg.num_classes,
            cfg.prior_width,
            cfg.prior_depth,
            cfg.prior_heads,
            cfg.prior_mlp_ratio,
            dropout=cfg.prior_dropout,
            class_dropout=cfg.prior_class_dropout,
            qkv_bias=cfg.qkv_bias,
        )

    @property
    def null_label(self) -> int:
        """The label index meaning "no class" (``num_classes``)."""
        return self.num_classes

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)

    # -- inputs ------------------------------------------------------------------------------
    def _labels(self, labels: torch.Tensor | int | None, batch: int, device: torch.device) -> torch.Tensor:
        if labels is None:
            return torch.full((batch,), self.null_label, dtype=torch.long, device=device)
        if isinstance(labels, int):
            labels = torch.full((batch,), labels, dtype=torch.long, device=device)
        check_tensor("labels", labels, shape=(batch,), integer=True)
        if labels.device != device:
            raise ValueError(f"labels is on {labels.device} but the model/indices are on {device}")
        if has_values(labels) and labels.numel() and (
            int(labels.min()) < 0 or int(labels.max()) > self.num_classes
        ):
            raise ValueError(
                f"labels must be in [0, {self.num_classes}] ({self.num_classes} = null label), "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        return labels.long()

    def _check_indices(self, name: str, indices: torch.Tensor, max_len: int) -> None:
        check_tensor(name, indices, ndim=2, integer=True)
        if indices.shape[1] > max_len:
            raise ValueError(f"{name} has {indices.shape[1]} positions, at most {max_len} allowed")
        if has_values(indices) and indices.numel() and (
            int(indices.min()) < 0 or int(indices.max()) >= self.vocab_size
        ):
            raise ValueError(
                f"{name} must be code indices in [0, {self.vocab_size}), got values in "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )

    def _device(self) -> torch.device:
        return self.pos_embed.device

    def _run(self, x: torch.Tensor, start: int, cache: KVCache | None) -> torch.Tensor:
        x = self.drop(x + self.pos_embed[:, start : start + x.shape[1]])
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return self.head(self.norm(x))

    # -- training ----------------------------------------------------------------------------
    def forward(self, indices: torch.Tensor, labels: torch.Tensor | int | None = None) -> torch.Tensor:
        """Teacher-forced logits: ``logits[:, t]`` predicts ``indices[:, t]`` from ``indices[:, :t]``.

        Args:
            indices: ``[B, T]`` integer codes, ``T <= seq_len``.
            labels: ``[B]`` integer labels (or one int, or ``None`` for the null label).

        Returns:
            ``[B, T, vocab_size]`` float logits.

        Example:
            >>> prior = CodePrior(vocab_size=8, seq_len=4, width=16, depth=1, heads=2)
            >>> prior(torch.zeros(2, 3, dtype=torch.long)).shape
            torch.Size([2, 3, 8])
        """
        self._check_indices("indices", indices, self.seq_len)
        b, t = indices.shape
        labels = self._labels(labels, b, indices.device)
        x = torch.cat([self.class_embed(labels)[:, None], self.token_embed(indices)], dim=1)[:, :t]
        return self._run(x, 0, None)

    def loss(self, indices: torch.Tensor, labels: torch.Tensor | int | None = None) -> torch.Tensor:
        """Mean next-code cross-entropy; in training mode labels drop to null with ``class_dropout``.

        Example:
            >>> prior = CodePrior(vocab_size=8, seq_len=4, num_classes=3, width=16, depth=1, heads=2)
            >>> prior.loss(torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 2])).item() > 0
            True
        """
        self._check_indices("indices", indices, self.seq_len)
        labels = self._labels(labels, indices.shape[0], indices.device)
        if self.training and self.class_dropout > 0 and self.num_classes > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.class_dropout
            labels = labels.masked_fill(drop, self.null_label)
        logits = self(indices, labels)
        return F.cross_entropy(logits.reshape(-1, self.vocab_size).float(), indices.reshape(-1))

    # -- incremental decoding ----------------------------------------------------------------
    def new_cache(self, batch_size: int) -> KVCache:
        """An empty :class:`KVCache` for ``batch_size`` sequences on the model's device/dtype.

        Example:
            >>> prior = CodePrior(vocab_size=8, seq_len=4, width=16, depth=2, heads=2)
            >>> prior.new_cache(3).keys.shape
            torch.Size([2, 3, 2, 4, 8])
        """
        check_positive("batch_size", batch_size, allow_zero=True)
        param = self.pos_embed
        return KVCache(
            self.depth, batch_size, self.heads, self.seq_len, self.width // self.heads,
            device=param.device, dtype=param.dtype,
        )

    def prefill(
        self, cache: KVCache, labels: torch.Tensor | int | None = None, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Runs the class token and an optional code ``prefix`` ``[B, P]`` into an empty cache.

        Returns:
            ``[B, vocab_size]`` logits for code ``P`` (the first code after the prefix).

        Example:
            >>> prior = CodePrior(vocab_size=8, seq_len=4, width=16, depth=1, heads=2)
            >>> cache = prior.new_cache(2)
            >>> prior.prefill(cache, prefix=torch.zeros(2, 1, dtype=torch.long)).shape, cache.length
            (torch.Size([2, 8]), 2)
        """
        if cache.length != 0:
            raise ValueError(f"prefill needs an empty cache, this one holds {cache.length} positions")
        b, device = cache.batch_size, self._device()
        labels = self._labels(labels, b, device)
        x = self.class_embed(labels)[:, None]
        if prefix is not None:
            self._check_indices("prefix", prefix, self.seq_len - 1)
            if prefix.shape[0] != b:
                raise ValueError(f"prefix must have {b} rows (the cache batch size), got {prefix.shape[0]}")
            x = torch.cat([x, self.token_embed(prefix)], dim=1)
        return self._run(x, 0, cache)[:, -1]

    def decode_step(self, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
        """Appends one code per sequence (``tokens [B]``) and returns the next logits ``[B, V]``.

        Example:
            >>> prior = CodePrior(vocab_size=8, seq_len=4, width=16, depth=1, heads=2)
            >>> cache = prior.new_cache(2); _ = prior.prefill(cache)
            >>> prior.decode_step(cache, torch.tensor([1, 2])).shape
            torch.Size([2, 8])
        """
        check_tensor("tokens", tokens, shape=(cache.batch_size,), integer=True)
        if cache.length == 0:
            raise ValueError("decode_step needs a cache filled by prefill first")
        if cache.length >= self.seq_len:
            raise ValueError(f"the cache is full ({cache.length} positions = seq_len)")
        self._check_indices("tokens", tokens[:, None], 1)
        return self._run(self.token_embed(tokens)[:, None], cache.length, cache)[:, -1]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | int | None = None,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        prefix: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Samples ``n`` code sequences with the KV cache (runs in eval mode).

        Args:
            n: number of sequences.
            labels: ``[n]`` labels, one int for all, or ``None`` (null label = unconditional).
            temperature: softmax temperature; 0 is greedy.
            top_k: keep the ``k`` most likely codes per step.
            top_p: nucleus sampling mass.
            cfg_scale: classifier-free guidance ``uncond + s * (cond - uncond)``; 1 disables it.
            prefix: ``[n, P]`` codes to continue from (kept as the first ``P`` outputs).
            generator: random generator on the model's device, for reproducible samples.

        Returns:
            ``[n, seq_len]`` long code indices.

        Example:
            >>> prior = CodePrior(vocab_size=8, seq_len=4, num_classes=2, width=16, depth=1, heads=2)
            >>> g = torch.Generator().manual_seed(1)
            >>> prior.sample(2, torch.tensor([0, 1]), cfg_scale=2.0, top_p=0.9, generator=g).shape
            torch.Size([2, 4])
        """
        check_positive("n", n, allow_zero=True)
        device = self._device()
        labels = self._labels(labels, n, device)
        if not math.isfinite(cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        guided = cfg_scale != 1.0
        if guided and self.num_classes == 0:
            raise ValueError("cfg_scale != 1 needs a class-conditional prior (num_classes > 0)")
        if prefix is not None:
            self._check_indices("prefix", prefix, self.seq_len - 1)
            if prefix.shape[0] != n:
                raise ValueError(f"prefix must have n={n} rows, got {prefix.shape[0]}")
        out = [prefix.long()] if prefix is not None else []
        start = 0 if prefix is None else prefix.shape[1]
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self.null_label)])
            prefix = None if prefix is None else prefix.repeat(2, 1)
        was_training = self.training
        self.eval()
        try:
            cache = self.new_cache(labels.shape[0])
            logits = self.prefill(cache, labels, prefix)
            for t in range(start, self.seq_len):
                if guided:
                    cond, uncond = logits.float().chunk(2)
                    logits = uncond + cfg_scale * (cond - uncond)
                token = sample_logits(
                    logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
                )
                out.append(token[:, None])
                if t + 1 < self.seq_len:
                    logits = self.decode_step(cache, token.repeat(2) if guided else token)
        finally:
            self.train(was_training)
        return torch.cat(out, dim=1) if out else torch.zeros(n, 0, dtype=torch.long, device=device)
