"""Glue between the compiled kernels and PyTorch: fake (meta) and autograd registrations.

Op modules decorate a function with :func:`on_extension_loaded`; it runs once, right after the
extension has been loaded, and registers ``torch.library.register_fake`` / ``register_autograd``
for that op's kernels. :func:`kernels` returns ``torch.ops.vq3dlib`` with all registrations done.

Example:
    >>> calls = []
    >>> @on_extension_loaded
    ... def _register():
    ...     calls.append(1)
    >>> _register.__name__
    '_register'
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from vq3dlib import _ext

_pending: list[Callable[[], None]] = []
_lock = threading.Lock()


def on_extension_loaded(fn: Callable[[], None]) -> Callable[[], None]:
    """Queues ``fn`` to run once after the extension is loaded (immediately if it already is).

    Example:
        >>> on_extension_loaded(lambda: None) is not None
        True
    """
    with _lock:
        _pending.append(fn)
    if _ext.extension_status()["loaded"]:
        _run_pending()
    return fn


def _run_pending() -> None:
    with _lock:
        todo = list(_pending)
        _pending.clear()
    for fn in todo:
        fn()


def kernels():
    """``torch.ops.vq3dlib`` after loading the extension and running pending registrations.

    Raises ``RuntimeError`` if the extension is unavailable; callers check
    :func:`vq3dlib.backend.use_extension` first.

    Example:
        >>> from vq3dlib.backend import use_extension
        >>> if use_extension("triplane_sample", "cpu"):
        ...     _ = kernels().triplane_sample_fwd
    """
    if not _ext.load_extension():
        raise RuntimeError("the vq3dlib extension is not available; use the reference ops")
    _run_pending()
    return torch.ops.vq3dlib
