"""ViT-VQGAN style vector quantizer: low-dimensional, l2-normalised codes, EMA or loss-trained codebook.

The nearest-code search runs in row chunks under ``no_grad`` (never an ``N x K`` matrix for large
``N``), the codes are gathered by indexing and the gradient passes straight through, so the only
tensors autograd keeps are ``O(N x code_dim)``. Under ``torch.distributed`` the EMA statistics are
all-reduced and dead-code restarts draw identical samples on every rank, so all ranks keep
bit-identical codebooks.

Example:
    >>> import torch
    >>> from vq3dlib.quantize import VectorQuantizer
    >>> vq = VectorQuantizer(64, codebook_size=512, code_dim=8)
    >>> z_q, indices, aux = vq(torch.randn(2, 16, 64))
    >>> z_q.shape, indices.shape, sorted(aux.losses)
    (torch.Size([2, 16, 64]), torch.Size([2, 16]), ['commitment'])
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq3dlib._validation import check_choice, check_positive, check_tensor, has_values
from vq3dlib.quantize.base import Quantizer, QuantizerAux, usage_stats
from vq3dlib.quantize.distributed import all_gather_stack, all_reduce_sum, world_size
from vq3dlib.quantize.straight_through import straight_through, unit_rows

_METRICS = ("euclidean", "dot")
_CHUNK_ELEMENTS = 1 << 20  # scores per chunk: 4 MiB of float32, near cache size


def _default_chunk(codebook_size: int, device: torch.device) -> int:
    budget = _CHUNK_ELEMENTS if device.type == "cpu" else _CHUNK_ELEMENTS * 32  # GPUs: fewer, larger launches
    return max(1, budget // max(codebook_size, 1))


_POOL: ThreadPoolExecutor | None = None
_POOL_KEY: tuple[int, int] = (0, 0)  # (threads, pid): a forked child must not reuse the parent's pool
_POOL_LOCK = threading.Lock()


def _single_threaded_worker() -> None:
    torch.get_num_threads()  # lazily initialise this thread's intra-op settings first ...
    torch.set_num_threads(1)  # ... then make its ops (and MKL) run on this thread alone


def _cpu_pool(n_threads: int) -> ThreadPoolExecutor:
    """A pool of single-threaded torch workers (created once; restores the global thread count)."""
    global _POOL, _POOL_KEY
    with _POOL_LOCK:
        key = (n_threads, os.getpid())
        if _POOL is None or _POOL_KEY != key:
            if _POOL is not None and _POOL_KEY[1] == key[1]:
                _POOL.shutdown(wait=True)
            _POOL = ThreadPoolExecutor(n_threads, thread_name_prefix="vq3dlib-nearest")
            _POOL_KEY = key
            barrier = threading.Barrier(n_threads)
            list(_POOL.map(lambda _: (_single_threaded_worker(), barrier.wait()), range(n_threads)))
            torch.set_num_threads(n_threads)  # the workers' set_num_threads(1) touched the global default
        return _POOL


def _search_rows(z: Tensor, cb_t: Tensor, neg_sq: Tensor | None, out: Tensor, scores: Tensor) -> None:
    """Serial chunk loop: ``scores`` (``[chunk, K]``) for that many rows at a time, argmax into ``out``."""
    chunk = scores.shape[0]
    for start in range(0, z.shape[0], chunk):
        zc = z[start : start + chunk]
        s = scores[: zc.shape[0]]
        if neg_sq is None:
            torch.mm(zc, cb_t, out=s)
        else:
            torch.addmm(neg_sq, zc, cb_t, alpha=2.0, out=s)
        torch.argmax(s, dim=1, out=out[start : start + chunk])


def nearest_code_reference(z: Tensor, codebook: Tensor, *, metric: str = "euclidean") -> Tensor:
    """Brute-force nearest code (materialises ``[N, K]``); the test oracle for :func:`nearest_code`.

    Args:
        z: ``[N, d]`` vectors.
        codebook: ``[K, d]`` codes.
        metric: ``"euclidean"`` (smallest L2 distance) or ``"dot"`` (largest inner product; equal to
            the euclidean nearest code when both sides are l2-normalised).

    Returns:
        ``[N]`` int64 indices.

    Example:
        >>> import torch
        >>> nearest_code_reference(torch.tensor([[0.9, 0.1]]), torch.eye(2))
        tensor([0])
    """
    check_choice("metric", metric, _METRICS)
    if metric == "dot":
        return (z @ codebook.t()).argmax(dim=1)
    return torch.cdist(z.unsqueeze(0), codebook.unsqueeze(0)).squeeze(0).argmin(dim=1)


@torch.no_grad()
def nearest_code(
    z: Tensor, codebook: Tensor, *, metric: str = "euclidean", chunk_size: int | None = None
) -> Tensor:
    """Index of the nearest code for every row of ``z``, computed ``chunk_size`` rows at a time.

    Peak extra memory is ``chunk_size x K`` scores instead of ``N x K``; no gradient is tracked
    (indices are not differentiable).

    Args:
        z: ``[N, d]`` vectors.
        codebook: ``[K, d]`` codes (same dtype and device as ``z``).
        metric: ``"euclidean"`` or ``"dot"`` (see :func:`nearest_code_reference`).
        chunk_size: rows per chunk; default keeps each chunk's scores near 4 MiB on CPU (near cache size,
            which is faster than one large matrix product).

    Returns:
        ``[N]`` int64 indices.

    Example:
        >>> import torch
        >>> cb = torch.randn(100, 4)
        >>> z = cb[[5, 7, 5]] + 1e-3
        >>> nearest_code(z, cb, chunk_size=2)
        tensor([5, 7, 5])
    """
    check_tensor("z", z, ndim=2, floating=True)
    check_tensor("codebook", codebook, ndim=2, last_dim=z.shape[1], dtypes=(z.dtype,), device=z.device)
    check_choice("metric", metric, _METRICS)
    n, k = z.shape[0], codebook.shape[0]
    chunk = _default_chunk(k, z.device) if chunk_size is None else int(chunk_size)
    check_positive("chunk_size", chunk)
    out = torch.empty(n, dtype=torch.long, device=z.device)
    if n == 0:
        return out
    cb_t = codebook.t().contiguous()
    # euclidean: argmin |z|^2 - 2 z.c + |c|^2  ==  argmax 2 z.c - |c|^2  (|z|^2 is constant per row)
    neg_sq = -(codebook * codebook).sum(dim=1) if metric == "euclidean" else None
    n_threads = torch.get_num_threads()
    if z.device.type != "cpu" or n_threads == 1 or n < 4 * n_threads * chunk:
        _search_rows(z, cb_t, neg_sq, out, z.new_empty(min(chunk, n), k))
        return out
    # CPU, large N: each thread runs its own serial loop over a contiguous share of the rows, so the
    # cache-sized chunks need no per-chunk synchronisation between threads (which is what makes many
    # small intra-op-parallel calls slow, above all on a loaded machine). The threads' score buffers
    # are allocated here: allocated by a pool thread they came from its own malloc arena, which grew
    # by a buffer (8 MiB with 8 MiB chunks) on each of several calls instead of reusing the freed one
    scores = z.new_empty(n_threads, chunk, k)
    bounds = [round(i * n / n_threads) for i in range(n_threads + 1)]
    jobs = [
        _cpu_pool(n_threads).submit(_search_rows, z[a:b], cb_t, neg_sq, out[a:b], scores[i])
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]
    for job in jobs:
        job.result()
    return out


class VectorQuantizer(Quantizer):
    """Vector quantizer with factorised, l2-normalised codes (ViT-VQGAN) and optional EMA codebook.

    ``x [N, dim] → project_in → z_e [N, code_dim] (l2-normalised) → nearest code c → straight-through
    z_e + sg(c - z_e) → project_out → [N, dim]``. Losses: ``commitment = beta * |z_e - sg(c)|^2``
    and, without EMA, ``codebook = codebook_loss_weight * |sg(z_e) - c|^2`` (means over elements).
    With ``ema=True`` the codes follow exponential moving averages of their assigned vectors
    (``decay``) with Laplace smoothing (``eps``) of the cluster sizes, updated in training mode only.

    Args:
        dim: input channel width ``D``.
        codebook_size: number of codes ``K``.
        code_dim: code width ``d``; ``None`` or ``dim`` means no projections.
        l2_normalize: normalise inputs and codes (nearest = largest cosine). ``False`` gives the
            classic VQ-VAE with euclidean distance.
        beta: commitment loss weight.
        ema: EMA codebook updates (codes are buffers) instead of a codebook loss (codes are a
            parameter).
        decay: EMA decay.
        eps: Laplace smoothing constant of the EMA cluster sizes.
        codebook_loss_weight: weight of the codebook loss (``ema=False`` only).
        dead_code_steps: re-seed a code from the current batch's vectors once it has gone unused
            for this many consecutive training steps; ``None`` disables restarts.
        chunk_size: rows per chunk in the nearest-code search (default: ~4 MiB of scores).
        channels_last: ``True`` for ``[..., D]`` inputs, ``False`` for ``[B, D, *spatial]``.
        sync_distributed: all-reduce statistics and share restart samples when ``torch.distributed``
            is initialised with more than one process.

    Shapes:
        ``z [..., D]`` → ``z_q [..., D]``, ``indices [...]`` (int64), ``aux`` (:class:`QuantizerAux`
        with ``losses`` ``commitment`` [+ ``codebook``] and ``stats`` ``perplexity``,
        ``used_fraction`` [+ ``restarted`` in training]).

    Example:
        >>> import torch
        >>> vq = VectorQuantizer(32, codebook_size=64, code_dim=4, channels_last=False).eval()
        >>> z_q, idx, aux = vq(torch.randn(2, 32, 5, 5))
        >>> torch.allclose(vq.indices_to_codes(idx), z_q, atol=1e-6)
        True
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        code_dim: int | None = None,
        *,
        l2_normalize: bool = True,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        codebook_loss_weight: float = 1.0,
        dead_code_steps: int | None = None,
        chunk_size: int | None = None,
        channels_last: bool = True,
        sync_distributed: bool = True,
    ) -> None:
        super().__init__(dim, channels_last=channels_last)
        check_positive("codebook_size", codebook_size)
        code_dim = dim if code_dim is None else code_dim
        check_positive("code_dim", code_dim)
        check_positive("beta", beta, allow_zero=True)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        check_positive("eps", eps)
        if dead_code_steps is not None:
            check_positive("dead_code_steps", dead_code_steps)
        if chunk_size is not None:
            check_positive("chunk_size", chunk_size)
        self.codebook_size = int(codebook_size)
        self.code_dim = int(code_dim)
        self.l2_normalize = bool(l2_normalize)
        self.beta = float(beta)
        self.ema = bool(ema)
        self.decay = float(decay)
        self.eps = float(eps)
        self.codebook_loss_weight = float(codebook_loss_weight)
        self.dead_code_steps = dead_code_steps
        self.chunk_size = chunk_size
        self.sync_distributed = bool(sync_distributed)

        project = self.code_dim != dim
        self.project_in: nn.Module = nn.Linear(dim, self.code_dim) if project else nn.Identity()
        self.project_out: nn.Module = nn.Linear(self.code_dim, dim) if project else nn.Identity()

        embed = torch.randn(self.codebook_size, self.code_dim)
        if self.l2_normalize:
            embed = F.normalize(embed, dim=1)
        if self.ema:
            self.register_buffer("embed", embed)
            self.register_buffer("ema_cluster_size", torch.ones(self.codebook_size))
            self.register_buffer("ema_embed_sum", embed.clone())
        else:
            self.embed = nn.Parameter(embed)
        self.register_buffer("unused_steps", torch.zeros(self.codebook_size, dtype=torch.long))

    # -- codebook ---------------------------------------------------------------------------------
    @property
    def codebook(self) -> Tensor:
        """``[K, code_dim]`` code vectors as used for the search (normalised if ``l2_normalize``).

        Example:
            >>> import torch
            >>> vq = VectorQuantizer(16, codebook_size=8, code_dim=4)
            >>> vq.codebook.shape, torch.allclose(vq.codebook.norm(dim=1), torch.ones(8))
            (torch.Size([8, 4]), True)
        """
        return F.normalize(self.embed, dim=1) if self.l2_normalize else self.embed

    def codebook_usage(self) -> dict[str, Tensor]:
        """Per-code usage to log: ``unused_steps [K]`` and, with EMA, ``ema_cluster_size [K]``.

        Example:
            >>> VectorQuantizer(8, 16).codebook_usage()["unused_steps"].shape
            torch.Size([16])
        """
        out = {"unused_steps": self.unused_steps.clone()}
        if self.ema:
            out["ema_cluster_size"] = self.ema_cluster_size.clone()
        return out

    def _synced(self) -> bool:
        return self.sync_distributed and world_size() > 1

    # -- forward ----------------------------------------------------------------------------------
    def _check_input(self, z: Tensor, name: str = "z") -> None:
        # the NaN/Inf check runs on the projected rows (see _quantize_rows): a non-finite input
        # value makes its projected row non-finite, and the projection is ``dim / code_dim`` smaller
        super()._check_input(z, name, finite=not isinstance(self.project_in, nn.Linear))
        if isinstance(self.project_in, nn.Linear) and z.dtype != self.project_in.weight.dtype:
            raise TypeError(
                f"{name} has dtype {z.dtype} but the quantizer's projection is "
                f"{self.project_in.weight.dtype}: convert one (e.g. quantizer.to({z.dtype}))"
            )

    def _quantize_rows(self, x: Tensor) -> tuple[Tensor, Tensor, QuantizerAux]:
        h = self.project_in(x)
        # a linear layer's output is ours to overwrite (its backward does not read it): normalise it
        # in place; the identity "projection" returns the caller's tensor
        projected = isinstance(self.project_in, nn.Linear)
        if projected:
            check_tensor("z", h, finite=True)
        rows = unit_rows(h, in_place=projected) if self.l2_normalize else None
        z_e = rows.z if rows is not None else h.detach()  # no gradient: straight_through applies it
        # straight_through keeps the codebook for backward: the EMA update below rewrites the buffer
        codebook = self.codebook if self.l2_normalize or not self.ema else self.embed.clone()
        metric = "dot" if self.l2_normalize else "euclidean"
        indices = nearest_code(
            z_e.to(codebook.dtype), codebook.detach(), metric=metric, chunk_size=self.chunk_size
        )
        # the gradient reaches the codebook parameter (ema=False) through the codebook loss only
        z_st, commitment, codebook_loss = straight_through(
            h, codebook, indices, normalize=self.l2_normalize, rows=rows
        )
        losses = {"commitment": self.beta * commitment}
        if not self.ema:
            losses["codebook"] = self.codebook_loss_weight * codebook_loss
        out = self.project_out(z_st)

        stats: dict[str, Tensor] = {}
        if not has_values(indices):  # meta tensors: shapes only, no statistics or codebook update
            counts = torch.zeros(self.codebook_size, dtype=codebook.dtype, device=indices.device)
            return out, indices, QuantizerAux(sum(losses.values()), losses, usage_stats(counts))
        counts = torch.bincount(indices, minlength=self.codebook_size).to(codebook.dtype)
        if self.training:
            counts, restarted = self._update(z_e.to(codebook.dtype), indices, counts)
            stats["restarted"] = torch.tensor(float(restarted), device=z_e.device)
        stats = {**usage_stats(counts), **stats}
        total = sum(losses.values())
        return out, indices, QuantizerAux(total, losses, stats)

    @torch.no_grad()
    def _update(self, z: Tensor, indices: Tensor, counts: Tensor) -> tuple[Tensor, int]:
        """EMA update and dead-code restart from this step's (globally reduced) assignments."""
        k, d = self.codebook_size, self.code_dim
        synced = self._synced()
        if self.ema:
            stats = torch.zeros(k, d + 1, dtype=z.dtype, device=z.device)
            stats[:, :d].index_add_(0, indices, z)
            stats[:, d] = counts
            if synced:
                all_reduce_sum(stats)
            sums, counts = stats[:, :d], stats[:, d]
            self.ema_cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
            self.ema_embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
            n = self.ema_cluster_size.sum()
            smoothed = (self.ema_cluster_size + self.eps) / (n + k * self.eps) * n
            self.embed.copy_(self.ema_embed_sum / smoothed.unsqueeze(1))
        elif synced:
            counts = all_reduce_sum(counts.clone())
        self.unused_steps.copy_(
            torch.where(counts > 0, torch.zeros_like(self.unused_steps), self.unused_steps + 1)
        )
        restarted = 0
        if self.dead_code_steps is not None:
            dead = torch.nonzero(self.unused_steps >= self.dead_code_steps).squeeze(1)
            if dead.numel():
                restarted = self._restart(z, dead, synced)
        return counts, restarted

    def _restart(self, z: Tensor, dead: Tensor, synced: bool) -> int:
        """Re-seeds codes ``dead`` with vectors of the current batch, identically on every rank."""
        m, d = dead.numel(), self.code_dim
        cand = torch.zeros(m, d + 1, dtype=z.dtype, device=z.device)
        if z.shape[0] > 0:
            pick = torch.randint(0, z.shape[0], (m,), device=z.device)
            cand[:, :d] = z[pick]
            cand[:, d] = 1.0  # this rank had vectors to offer
        gathered = all_gather_stack(cand) if synced else cand.unsqueeze(0)  # [world, m, d + 1]
        valid = torch.nonzero(gathered[:, 0, d] > 0).squeeze(1)
        if valid.numel() == 0:
            return 0
        # code j takes the sample of the (j mod #valid)-th rank that had vectors: same on every rank
        ranks = valid[torch.arange(m, device=z.device) % valid.numel()]
        new = gathered[ranks, torch.arange(m, device=z.device), :d]
        if self.l2_normalize:
            new = F.normalize(new, dim=1)
        self.embed.data[dead] = new.to(self.embed.dtype)
        if self.ema:
            self.ema_embed_sum[dead] = new
            self.ema_cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0
        return m

    def _indices_to_rows(self, indices: Tensor) -> Tensor:
        self._check_indices(indices, self.codebook_size)
        return self.project_out(self.codebook[indices])

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, code_dim={self.code_dim}, "
            f"l2_normalize={self.l2_normalize}, ema={self.ema}, beta={self.beta}, "
            f"dead_code_steps={self.dead_code_steps}, channels_last={self.channels_last}"
        )
