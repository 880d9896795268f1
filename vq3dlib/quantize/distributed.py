"""Small ``torch.distributed`` helpers the quantizers use to keep every rank's codebook identical.

All helpers are no-ops (return their input) when ``torch.distributed`` is not initialised or the
world has one process, so single-process code pays nothing.

Example:
    >>> import torch
    >>> from vq3dlib.quantize.distributed import all_reduce_sum, world_size
    >>> world_size()
    1
    >>> all_reduce_sum(torch.ones(2))
    tensor([1., 1.])
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed).

    Example:
        >>> world_size()
        1
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sums ``t`` over all ranks in place (and returns it); identity in a single process.

    Example:
        >>> import torch
        >>> all_reduce_sum(torch.tensor([2.0]))
        tensor([2.])
    """
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_stack(t: Tensor) -> Tensor:
    """``[*S] → [world, *S]``: the tensor from every rank, in rank order (same shape on all ranks).

    Example:
        >>> import torch
        >>> all_gather_stack(torch.zeros(3)).shape
        torch.Size([1, 3])
    """
    n = world_size()
    if n == 1:
        return t.unsqueeze(0)
    out = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(out, t.contiguous())
    return torch.stack(out)
