"""One dispatch point: whether the compiled extension or the pure-torch reference runs an op.

:func:`dispatch` answers, for an op, the extension kernels it needs and the tensors' device, whether
the compiled kernels run; otherwise the op's pure-torch reference runs. ``VQ3DLIB_BACKEND=torch``
forces the reference, ``VQ3DLIB_BACKEND=ext`` requires the extension (an error if it cannot run the
op), ``auto`` (default) picks the extension when it is available; :func:`forced` does the same for a
block of code. ``VQ3DLIB_BACKEND=cuda-emu`` runs the CUDA kernels' code emulated on the CPU, on CPU
tensors (:mod:`vq3dlib._emu`; for tests, never chosen by ``auto``; an error where it cannot run).

This module knows no op: the ops declare themselves and their kernels in the registry of
:mod:`vq3dlib.ops` (``vq3dlib.ops.use_extension(op, device)`` looks the kernels up and asks here).
It imports only the extension loaders (:mod:`vq3dlib._ext`, :mod:`vq3dlib._emu`).
``python -m vq3dlib.backend`` prints the report of :mod:`vq3dlib.backend.report` (``--build [--cuda]``
prebuilds the extension).

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

from vq3dlib import _emu, _ext

BACKENDS = ("auto", "torch", "ext", "cuda-emu")
EMULATED = "cuda-emu"
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
    """Context manager forcing a backend of :data:`BACKENDS` for a block (tests use it to compare).

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


def library_name(backend: str | None = None) -> str:
    """The ``torch.ops`` library whose kernels ``backend`` (default: the requested one) runs.

    Example:
        >>> library_name("cuda-emu"), library_name("auto")
        ('vq3dlib_emu', 'vq3dlib')
    """
    return _emu.NAMESPACE if (backend or requested_backend()) == EMULATED else "vq3dlib"


def kernels_present(kernels: Sequence[str], library: str = "vq3dlib") -> bool:
    """Whether the loaded ``torch.ops.<library>`` defines every kernel named (no build).

    Example:
        >>> kernels_present(["no_such_kernel"])
        False
    """
    namespace = getattr(torch.ops, library)
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
    if backend == EMULATED:
        return _emulation_runs(op, kernels, torch.device(device))
    supported = kernels_available(kernels, device)
    if backend == "ext" and not supported:
        status = _ext.extension_status()
        raise RuntimeError(
            f"VQ3DLIB_BACKEND=ext but the extension cannot run {op!r} on {torch.device(device)} "
            f"(loaded={status['loaded']}, cuda_compiled={status['cuda_compiled']}, error={status['error']})"
        )
    return supported


def emulation_available(kernels: Sequence[str], device: torch.device | str) -> bool:
    """Whether the emulated CUDA kernels can run ``kernels`` on ``device`` (CPU only; builds them).

    Example:
        >>> emulation_available(["triplane_sample_fwd"], "meta")
        False
    """
    if torch.device(device).type != "cpu" or not _emu.load_emulation():
        return False
    return kernels_present(kernels, _emu.NAMESPACE)


def _emulation_runs(op: str, kernels: Sequence[str], device: torch.device) -> bool:
    if emulation_available(kernels, device):
        return True
    if device.type != "cpu":
        why = f"it runs CPU tensors only, got tensors on {device}"
    else:
        why = f"error={_emu.emulation_status()['error']}"
    raise RuntimeError(f"VQ3DLIB_BACKEND=cuda-emu but the emulated CUDA kernels cannot run {op!r} ({why})")


__all__ = [
    "BACKENDS",
    "EMULATED",
    "emulation_available",
    "library_name",
    "dispatch",
    "forced",
    "kernels_available",
    "kernels_present",
    "requested_backend",
]
