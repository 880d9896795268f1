"""Helpers that make one training script run both as a single process and under ``torchrun`` (DDP).

:func:`init_distributed` reads the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables that ``torchrun``
sets and initialises ``torch.distributed`` (NCCL when CUDA is available, gloo otherwise); without
them (or with ``WORLD_SIZE=1``) it does nothing, and every other helper falls back to the
single-process answer (rank 0, world size 1, ``all_reduce_mean`` returns its input).

Example:
    >>> import torch
    >>> from vq3dlib.train.distributed import init_distributed, all_reduce_mean, is_main_process
    >>> info = init_distributed()                      # single process here: a no-op
    >>> info.world_size, is_main_process(), all_reduce_mean(torch.tensor(2.0)).item()
    (1, True, 2.0)
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank``, ``local_rank``, ``world_size`` and the ``device`` to use."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 when not distributed).

    Example:
        >>> rank()
        0
    """
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed).

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank on this machine (``LOCAL_RANK``; 0 when not set).

    Example:
        >>> isinstance(local_rank(), int)
        True
    """
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """Whether this is rank 0 (the process that logs and writes checkpoints).

    Example:
        >>> is_main_process()
        True
    """
    return rank() == 0


def init_distributed(
    backend: str | None = None, device: str | None = None, timeout_s: float = 1800.0
) -> DistInfo:
    """Initialises the process group from ``torchrun``'s environment; a no-op for a single process.

    Args:
        backend: ``"nccl"``/``"gloo"``; default NCCL if the run uses CUDA, else gloo.
        device: ``"cuda"`` or ``"cpu"``; default CUDA when available. With CUDA, this process uses
            ``cuda:LOCAL_RANK`` (and makes it the current device).
        timeout_s: timeout of collective operations.

    Returns:
        :class:`DistInfo` with rank, local rank, world size and device. Calling it again after the
        group exists returns the same information.

    Example:
        >>> init_distributed(device="cpu")
        DistInfo(rank=0, local_rank=0, world_size=1, device=device(type='cpu'))
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available")
    ws = _env_int("WORLD_SIZE", 1)
    lr = local_rank()
    dev = torch.device("cuda", lr) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(dev)
    if ws <= 1 and not is_distributed():
        return DistInfo(0, lr, 1, dev)
    if not is_distributed():
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
        backend = backend or ("nccl" if device == "cuda" else "gloo")
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(dist.get_rank(), lr, dist.get_world_size(), dev)


def barrier() -> None:
    """Waits for all processes (no-op when not distributed).

    Example:
        >>> barrier()
    """
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes, as a new tensor (the input is left unchanged).

    Use it for logging (losses, metrics); gradients are averaged by DDP itself. Integer tensors are
    averaged in float32.

    Example:
        >>> import torch
        >>> all_reduce_mean(torch.tensor([1.0, 3.0]))
        tensor([1., 3.])
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    out = tensor.detach().clone()
    if not out.is_floating_point():
        out = out.float()
    if is_distributed() and world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= world_size()
    return out


def max_over_ranks(value: float, device: torch.device | str = "cpu") -> float:
    """The largest of each process's ``value`` (one all-reduce; the value itself in one process).

    Every rank gets the same number, so decisions taken from it (stop at the time budget, the
    learning rate that follows the time spent) agree across processes. ``device``: where the
    all-reduce runs (the run's device: a CUDA device under NCCL).

    Example:
        >>> max_over_ranks(2.5)
        2.5
    """
    if not (is_distributed() and world_size() > 1):
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def cleanup() -> None:
    """Destroys the process group if one exists (call at the end of a run).

    Waits for every rank first: with gloo, a rank that tears the group down while a peer is still in
    its last collective can make that peer abort ("terminate called without an active exception").

    Example:
        >>> cleanup()
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def launched_distributed() -> bool:
    """Whether this process is one of several started by a launcher (``torchrun`` sets
    ``WORLD_SIZE``), whether or not its process group exists yet or still.

    Example:
        >>> import os
        >>> launched_distributed() == (int(os.environ.get("WORLD_SIZE", "1")) > 1)
        True
    """
    return _env_int("WORLD_SIZE", 1) > 1


def exit_worker(code: int = 0) -> NoReturn:
    """Ends a launched worker process now with ``code``: flushes stdout, stderr and logging, then
    leaves without the interpreter's finalisation.

    A gloo worker whose work is done and whose process group is destroyed can still abort while the
    interpreter finalises ("terminate called without an active exception": gloo's threads; see
    pytorch/pytorch#190489), which turns a finished run into a failed exit status for the launcher.
    Call it last, with every file closed (the ``vq3d`` command does so under ``torchrun``).

    Example:
        >>> callable(exit_worker)  # it ends the process, so it is not called here
        True
    """
    import logging
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing to flush
            pass
    logging.shutdown()
    os._exit(int(code))


def seed_everything(seed: int, per_rank: bool = True) -> int:
    """Seeds torch (CPU and CUDA), numpy and Python ``random``; with ``per_rank``, ``seed + rank``.

    Different seeds per rank give different data augmentation/noise on each process; model weights
    stay identical under DDP, which broadcasts rank 0's parameters when it wraps the model.

    Returns:
        The seed used by this process.

    Example:
        >>> import torch
        >>> seed_everything(3); a = torch.rand(1)
        3
        >>> _ = seed_everything(3); torch.equal(a, torch.rand(1))
        True
    """
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    s = int(seed) + (rank() if per_rank else 0)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s
