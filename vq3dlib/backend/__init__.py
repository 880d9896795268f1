"""One dispatch point: whether the compiled extension or the pure-torch reference runs an op.

:func:`dispatch` answers, for an op, the extension kernels it needs and the tensors' device, whether
the compiled kernels run; otherwise the op's pure-torch reference runs. ``VQ3DLIB_BACKEND=torch``
forces the reference, ``VQ3DLIB_BACKEND=ext`` requires the extension (an error if it cannot run the
op), ``auto`` (default) picks the extension when it is available; :func:`forced` does the same for a
block of code.

This module knows no op: the ops declare themselves and their kernels in the registry of
:mod:`vq3dlib.ops` (``vq3dlib.ops.use_extension(op, device)`` looks the kernels up and asks here).
It imports only the extension loader (:mod:`vq3dlib._ext`). ``python -m vq3dlib.backend`` prints the
report of :mod:`vq3dlib.backend.report` (``--build [--cuda]`` prebuilds the extension).

Example:
    >>> import torch
    >>> from vq3dlib import backend
    >>> with backend.forced("torch"):
    ...     backend.dispatch("triplane_sample", ["triplane_sample_fwd"], torch.device("cpu"))
    False
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch

from vq3dlib import _ext

BACKENDS = ("auto", "torch", "ext")
_forced: list[str] = []


def requested_backend() -> str:
    """The backend asked for: innermost :func:`forced` context, else ``$VQ3DLIB_BACKEND``, else auto.

    Example:
        >>> with forced("torch"):
        ...     requested_backend()
        'torch'
    """
    if _forced:
        return _forced[-1]
    value = os.environ.get("VQ3DLIB_BACKEND", "auto").lower()
    if value not in BACKENDS:
        raise ValueError(f"VQ3DLIB_BACKEND must be one of {BACKENDS}, got {value!r}")
    return value


@contextlib.contextmanager
def forced(backend: str) -> Iterator[None]:
    """Context manager forcing ``"torch"``, ``"ext"`` or ``"auto"`` (tests use it to compare).

    Example:
        >>> with forced("auto"):
        ...     requested_backend()
        'auto'
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _forced.append(backend)
    try:
        yield
    finally:
        _forced.pop()


def kernels_present(kernels: Sequence[str]) -> bool:
    """Whether the loaded extension defines every ``torch.ops.vq3dlib`` kernel named (no build).

    Example:
        >>> kernels_present(["no_such_kernel"])
        False
    """
    namespace = torch.ops.vq3dlib
    for kernel in kernels:
        try:
            getattr(namespace, kernel)
        except (AttributeError, RuntimeError):
            return False
    return True


def kernels_available(kernels: Sequence[str], device: torch.device | str) -> bool:
    """Whether the compiled extension can run ``kernels`` on ``device`` (builds it on first call).

    Example:
        >>> kernels_available(["triplane_sample_fwd"], "cpu") in (True, False)
        True
        >>> kernels_available(["triplane_sample_fwd"], "meta")
        False
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return False
    if not _ext.load_extension(with_cuda=None):
        return False
    if device.type == "cuda" and not _ext.extension_status()["cuda_compiled"]:
        return False
    return kernels_present(kernels)


def dispatch(op: str, kernels: Sequence[str], device: torch.device | str) -> bool:
    """True when op ``op`` should run its compiled ``kernels`` on ``device``, False for the reference.

    ``VQ3DLIB_BACKEND=ext`` (or ``forced("ext")``) turns an extension that cannot run them into a
    ``RuntimeError`` naming ``op``.

    Example:
        >>> with forced("torch"):
        ...     dispatch("triplane_sample", ["triplane_sample_fwd"], "cpu")
        False
    """
    backend = requested_backend()
    if backend == "torch":
        return False
    supported = kernels_available(kernels, device)
    if backend == "ext" and not supported:
        status = _ext.extension_status()
        raise RuntimeError(
            f"VQ3DLIB_BACKEND=ext but the extension cannot run {op!r} on {torch.device(device)} "
            f"(loaded={status['loaded']}, cuda_compiled={status['cuda_compiled']}, error={status['error']})"
        )
    return supported


__all__ = [
    "BACKENDS",
    "dispatch",
    "forced",
    "kernels_available",
    "kernels_present",
    "requested_backend",
]
