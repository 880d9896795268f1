"""Keep freed CPU tensor memory in the process instead of handing it back to the OS every step.

PyTorch allocates CPU tensors with the C library's ``malloc``. With glibc's defaults a buffer of more
than a few MiB is mapped fresh from the OS on allocation and unmapped on free, and the top of the
heap is trimmed whenever a little is free there. A training step or a rendered frame allocates and
frees the same large buffers every time, so each step pays for the kernel zeroing those pages again:
in the demo's training (``vq3d demo``, batch 8) that is ~8,000 page faults per step and 5-6 s of
kernel time per 300 steps (docs/benchmarks.md, "CPU allocator").

:func:`tune_cpu_allocator` raises glibc's mmap threshold to its maximum (32 MiB), serves larger
buffers from the heap too (glibc maps every buffer at or above the threshold afresh, and a
``[2^18, 32]`` float tensor is exactly 32 MiB: a triplane fwd+bwd step of ``triplane_speed.py``
page-faulted ~40,000-50,000 times and spent 60-100 ms in the kernel per step with the threshold
alone), and raises the trim threshold to its maximum, 2 GiB (``mallopt``), so freed buffers are
reused from the heap (with a 1 GiB threshold, the free() that handed back the 1.2 GiB of a dense
render took 100-200 ms of kernel time in whatever call made it). The process's resident memory then
stays near its peak instead of shrinking between steps. The command line and the benchmarks call it
at start; ``VQ3DLIB_TUNE_MALLOC=0`` turns it off. On a C library without ``mallopt`` (macOS, musl)
it does nothing and returns ``False``.

Example:
    >>> from vq3dlib.cpu_allocator import tune_cpu_allocator
    >>> tune_cpu_allocator() in (True, False)
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
GLIBC_DEFAULT_MMAP_MAX = 65536  # glibc's default cap on the number of buffers mapped at once

MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 2**31 - 1  # glibc's largest (an int): trimming a GiB costs 100-200 ms in one free()
ENV_SWITCH = "VQ3DLIB_TUNE_MALLOC"


def _mallopt() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def tune_cpu_allocator(
    mmap_threshold_bytes: int = MMAP_THRESHOLD_BYTES,
    trim_threshold_bytes: int = TRIM_THRESHOLD_BYTES,
    large_buffers_from_heap: bool = True,
) -> bool:
    """Makes glibc keep freed buffers for reuse instead of mapping them afresh (see the module doc).

    Process-wide and idempotent; ``$VQ3DLIB_TUNE_MALLOC=0`` makes it a no-op.

    Args:
        mmap_threshold_bytes: allocations at least this large are mapped from the OS directly
            (glibc accepts at most 32 MiB on 64-bit), unless ``large_buffers_from_heap``.
        trim_threshold_bytes: free memory at the heap's top beyond this is returned to the OS.
        large_buffers_from_heap: serve allocations of every size from the heap (glibc's
            ``M_MMAP_MAX`` = 0); ``False`` restores glibc's default (up to 65,536 mapped buffers).

    Returns:
        whether every setting took effect (``False`` where the C library has no ``mallopt``, when
        switched off, or when glibc refuses a value).

    Example:
        >>> tune_cpu_allocator(mmap_threshold_bytes=2**40)  # more than glibc accepts
        Traceback (most recent call last):
        ...
        ValueError: mmap_threshold_bytes must be in [0, 33554432], got 1099511627776
    """
    for name, value, cap in (
        ("mmap_threshold_bytes", mmap_threshold_bytes, MMAP_THRESHOLD_BYTES),
        ("trim_threshold_bytes", trim_threshold_bytes, 2**31 - 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= cap:
            raise ValueError(f"{name} must be in [0, {cap}], got {value!r}")
    if not isinstance(large_buffers_from_heap, bool):
        raise TypeError(f"large_buffers_from_heap must be a bool, got {large_buffers_from_heap!r}")
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    settings = (
        (_M_MMAP_THRESHOLD, mmap_threshold_bytes),
        (_M_TRIM_THRESHOLD, trim_threshold_bytes),
        (_M_MMAP_MAX, 0 if large_buffers_from_heap else GLIBC_DEFAULT_MMAP_MAX),
    )
    return all([bool(mallopt(option, value)) for option, value in settings])
