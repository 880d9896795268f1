"""Concurrent CPU work: a few threads, each running its ops on one thread of its own.

PyTorch parallelises every CPU op across the process's threads (OpenMP): each op is a parallel
region that ends when its slowest thread is done. When another process keeps a core busy, one of
those threads is often off its core, and every short op waits for it: a rendered frame, which runs
~1,400 ops, took up to 5× longer beside one busy process on 2 cores (docs/benchmarks.md), where a
few long ops (dense sampling) took 1.3–1.5× longer. :func:`map_concurrently` runs independent pieces of work
(chunks of rays) on a pool of threads instead, each piece's ops on a single thread, so no op waits
for another thread and the pieces balance themselves (a free thread takes the next). This
library's kernels that share their work out as they go (the marching kernel) run on all the pool's
threads from each piece (``set_thread_cpu_threads(1, kernels=threads)``).

The per-thread thread count is set by the C++ extension (``torch.set_num_threads`` sets the whole
process's); without it :func:`map_concurrently` runs the pieces one after the other, each op on the
process's threads as usual.

Example:
    >>> import torch
    >>> from vq3dlib.cpu_threads import map_concurrently
    >>> map_concurrently(lambda x: (x * 2).sum().item(), [torch.ones(3), torch.ones(4)], threads=2)
    [6.0, 8.0]
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from vq3dlib._validation import (
    check_positive,
    checked_values,
    checks_suppressed,
    inner_checks_off,
    values_checked_once,
)

T = TypeVar("T")
R = TypeVar("R")

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_worker = threading.local()


def _forget_pools_after_fork() -> None:
    # a forked child has none of the parent's threads: its pools would never run what they are given
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def set_thread_cpu_threads(n: int, kernels: int | None = None) -> int:
    """Sets how many threads the CPU ops started from the calling thread use, for this thread only,
    and returns the count it had. ``kernels`` (``None``: left as it is; 0: the same as the ops) sets
    how many threads this library's kernels that share their work out as they go (the marching
    kernel) use instead. Needs the C++ extension (``RuntimeError`` without it).

    Example:
        >>> import threading, torch
        >>> def worker(out):
        ...     set_thread_cpu_threads(1)
        ...     out.append(torch.get_num_threads())
        >>> out = []
        >>> if extension_available():
        ...     t = threading.Thread(target=worker, args=(out,)); t.start(); t.join()
        ... else:
        ...     out = [1]
        >>> out
        [1]
    """
    check_positive("n", n, integer=True)
    if kernels is not None:
        check_positive("kernels", kernels, integer=True, allow_zero=True)
    if not extension_available():
        raise RuntimeError("set_thread_cpu_threads needs the vq3dlib C++ extension, which is not loaded")
    return int(torch.ops.vq3dlib.set_thread_cpu_threads(int(n), None if kernels is None else int(kernels)))


@contextlib.contextmanager
def ops_on_one_thread() -> Iterator[None]:
    """Runs the CPU ops started from the calling thread inside on one thread (this thread's count
    is restored after; without the C++ extension nothing changes).

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with ops_on_one_thread():
        ...     inside = torch.get_num_threads()
        >>> inside == (1 if extension_available() else before), torch.get_num_threads() == before
        (True, True)
    """
    if not extension_available():
        yield
        return
    previous = set_thread_cpu_threads(1)
    try:
        yield
    finally:
        set_thread_cpu_threads(previous)


def extension_available() -> bool:
    """Whether the C++ extension (and so :func:`set_thread_cpu_threads`) is available.

    Example:
        >>> isinstance(extension_available(), bool)
        True
    """
    from vq3dlib._ext import load_extension

    return load_extension() and hasattr(torch.ops.vq3dlib, "set_thread_cpu_threads")


def _start_worker(threads: int) -> None:
    # torch's ops on this thread alone; the marching kernel, whose threads take blocks of rays as
    # they go, on the pool's count (it keeps its share of the cores beside other busy processes)
    set_thread_cpu_threads(1, kernels=threads)
    _worker.active = True


def _pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(
                threads, thread_name_prefix="vq3dlib-cpu", initializer=_start_worker, initargs=(threads,)
            )
        return _pools[threads]


def map_concurrently(fn: Callable[[T], R], items: Iterable[T], threads: int) -> list[R]:
    """``[fn(x) for x in items]``, computed on ``threads`` threads whose ops run on one thread each.

    The pieces run with the caller's autograd mode (``no_grad``, ``inference_mode``) and value-check
    settings (:func:`~vq3dlib._validation.inner_checks_off`, and the caller's
    :func:`~vq3dlib._validation.values_checked_once` scope, shared); ``fn`` must be safe to call from
    several threads at once (pure functions of their inputs are). The first exception raised by a
    piece is raised here. Runs in the caller, one piece after the other, when ``threads`` is 1, when
    there is a single item, when called from inside a piece, or without the C++ extension.

    Args:
        fn: the work on one piece.
        items: the pieces.
        threads: how many pieces run at once (≥ 1).

    Returns:
        ``fn``'s results, in the order of ``items``.

    Example:
        >>> import torch
        >>> pieces = torch.arange(12.0).chunk(4)
        >>> map_concurrently(lambda x: x.square().sum().item(), pieces, threads=2)
        [5.0, 50.0, 149.0, 302.0]
    """
    check_positive("threads", threads, integer=True)
    items = list(items)
    if threads == 1 or len(items) <= 1 or getattr(_worker, "active", False) or not extension_available():
        return [fn(x) for x in items]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    checks_off, checked = checks_suppressed(), checked_values()

    def piece(x: T) -> R:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode() if inference else torch.set_grad_enabled(grad))
            if checks_off:
                stack.enter_context(inner_checks_off())
            if checked is not None:
                stack.enter_context(values_checked_once(checked))
            return fn(x)

    return list(_pool(threads).map(piece, items))
