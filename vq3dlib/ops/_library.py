"""The op registry and the glue between the compiled kernels and PyTorch.

Each op module declares its op with :func:`register_op` (name, the ``torch.ops.vq3dlib`` kernels it
calls, a summary); :func:`use_extension` then asks the dispatcher (:func:`vq3dlib.backend.dispatch`)
whether those kernels run for a device. :func:`registered_ops` lists the declared ops (the backend
report prints them).

Op modules also decorate a function ``fn(lib)`` with :func:`on_extension_loaded`; it runs once per
kernel library, right after it has been loaded (``lib`` = ``"vq3dlib"`` for the extension,
``"vq3dlib_emu"`` for the emulated CUDA kernels of the ``cuda-emu`` backend), and registers
``torch.library.register_fake`` / ``register_autograd`` for that op's kernels in ``lib``.
:func:`kernels` returns the library of the requested backend with all registrations done.

Example:
    >>> info = register_op("doc_example_op", ["doc_example_kernel"], "an example")
    >>> info.kernels, "doc_example_op" in registered_ops()
    (('doc_example_kernel',), True)
    >>> _ = _REGISTRY.pop("doc_example_op")  # an example only: leave the registry as it was
    >>> @on_extension_loaded
    ... def _register(lib: str) -> None:
    ...     pass  # the op's torch.library.register_fake / register_autograd calls in library `lib`
    >>> _register.__name__
    '_register'
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vq3dlib import _emu, _ext, backend


@dataclass(frozen=True)
class OpInfo:
    """An op known to the dispatcher: its name, the extension kernels it calls, and a summary.

    Example:
        >>> import vq3dlib.ops
        >>> registered_ops()["ray_march"].kernels
        ('march_packed',)
    """

    name: str
    kernels: tuple[str, ...]
    summary: str


_REGISTRY: dict[str, OpInfo] = {}


def register_op(name: str, kernels: Sequence[str], summary: str = "") -> OpInfo:
    """Declares op ``name`` and the ``torch.ops.vq3dlib`` kernels it needs; returns its :class:`OpInfo`.

    Example:
        >>> register_op("doc_example_op", ["doc_example_kernel"]).name
        'doc_example_op'
        >>> _ = _REGISTRY.pop("doc_example_op")
    """
    info = OpInfo(name, tuple(kernels), summary)
    _REGISTRY[name] = info
    return info


def registered_ops() -> dict[str, OpInfo]:
    """All ops declared so far (importing :mod:`vq3dlib.ops` declares the built-in ones).

    Example:
        >>> import vq3dlib.ops
        >>> "triplane_sample" in registered_ops()
        True
    """
    return dict(_REGISTRY)


def _info(op: str) -> OpInfo:
    info = _REGISTRY.get(op)
    if info is None:
        raise KeyError(f"unknown op {op!r}; known: {sorted(_REGISTRY)}")
    return info


def extension_supports(op: str, device: torch.device | str) -> bool:
    """Whether the compiled extension can run ``op`` on ``device`` (builds it on first call).

    Example:
        >>> import vq3dlib.ops
        >>> extension_supports("triplane_sample", "cpu") in (True, False)
        True
    """
    return backend.kernels_available(_info(op).kernels, device)


def use_extension(op: str, device: torch.device | str) -> bool:
    """True when ``op`` should run its compiled kernels on ``device`` (see :func:`vq3dlib.backend.dispatch`).

    Example:
        >>> import vq3dlib.ops
        >>> with backend.forced("torch"):
        ...     use_extension("triplane_sample", "cpu")
        False
    """
    return backend.dispatch(op, _info(op).kernels, device)


_pending: list[Callable[[str], None]] = []
_done: dict[str, int] = {}  # library -> how many of _pending have run for it
_lock = threading.Lock()


def _loaded_libraries() -> list[str]:
    loaded = [("vq3dlib", _ext.extension_status()), (_emu.NAMESPACE, _emu.emulation_status())]
    return [lib for lib, status in loaded if status["loaded"]]


def on_extension_loaded(fn: Callable[[str], None]) -> Callable[[str], None]:
    """Queues ``fn(lib)`` to run once per kernel library after it is loaded (now for loaded ones).

    Example:
        >>> on_extension_loaded(lambda lib: None) is not None
        True
    """
    with _lock:
        _pending.append(fn)
    for lib in _loaded_libraries():
        _run_pending(lib)
    return fn


def _run_pending(lib: str) -> None:
    with _lock:
        start = _done.get(lib, 0)
        todo = _pending[start:]
        _done[lib] = len(_pending)
    for fn in todo:
        fn(lib)


def kernels():
    """``torch.ops.vq3dlib`` (``torch.ops.vq3dlib_emu`` for ``cuda-emu``), loaded and registered.

    Raises ``RuntimeError`` if that library is unavailable; callers check :func:`use_extension` first.

    Example:
        >>> import vq3dlib.ops
        >>> if use_extension("triplane_sample", "cpu"):
        ...     _ = kernels().triplane_sample_fwd
    """
    lib = backend.library_name()
    loaded = _emu.load_emulation() if lib == _emu.NAMESPACE else _ext.load_extension()
    if not loaded:
        raise RuntimeError(f"the {lib} kernel library is not available; use the reference ops")
    _run_pending(lib)
    return getattr(torch.ops, lib)
