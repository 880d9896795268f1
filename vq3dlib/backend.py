"""One dispatch point: which implementation (compiled extension or pure torch) runs each op.

Every op in :mod:`vq3dlib.ops` registers itself here with the extension kernels it needs. At call
time :func:`use_extension` answers, for the op and the tensors' device, whether the compiled kernel
runs; otherwise the op's pure-torch reference runs. ``VQ3DLIB_BACKEND=torch`` forces the reference,
``VQ3DLIB_BACKEND=ext`` requires the extension (error if it cannot be built), ``auto`` (default)
picks the extension when it is available.

Run ``python -m vq3dlib.backend`` for a report, ``--build [--cuda]`` to prebuild.

Example:
    >>> import torch
    >>> from vq3dlib import backend
    >>> with backend.forced("torch"):
    ...     backend.use_extension("triplane_sample", torch.device("cpu"))
    False
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from vq3dlib import _ext

BACKENDS = ("auto", "torch", "ext")
_forced: list[str] = []


@dataclass(frozen=True)
class OpInfo:
    """An op known to the dispatcher: its name, the extension kernels it calls, and a summary."""

    name: str
    kernels: tuple[str, ...]
    summary: str


_REGISTRY: dict[str, OpInfo] = {}


def register_op(name: str, kernels: Sequence[str], summary: str = "") -> None:
    """Declares op ``name`` and the ``torch.ops.vq3dlib`` kernels it needs.

    Example:
        >>> register_op("doc_example_op", ["doc_example_kernel"], "an example")
        >>> "doc_example_op" in registered_ops()
        True
    """
    _REGISTRY[name] = OpInfo(name, tuple(kernels), summary)


def registered_ops() -> dict[str, OpInfo]:
    """All ops declared so far (import :mod:`vq3dlib.ops` to declare the built-in ones).

    Example:
        >>> isinstance(registered_ops(), dict)
        True
    """
    return dict(_REGISTRY)


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


def _kernels_present(info: OpInfo) -> bool:
    namespace = torch.ops.vq3dlib
    for kernel in info.kernels:
        try:
            getattr(namespace, kernel)
        except (AttributeError, RuntimeError):
            return False
    return True


def extension_supports(op: str, device: torch.device | str) -> bool:
    """Whether the compiled extension can run ``op`` on ``device`` (builds it on first call).

    Example:
        >>> extension_supports("triplane_sample", "cpu") in (True, False)
        True
    """
    if op not in _REGISTRY:
        importlib.import_module("vq3dlib.ops")  # the built-in ops register themselves on import
    info = _REGISTRY.get(op)
    if info is None:
        raise KeyError(f"unknown op {op!r}; known: {sorted(_REGISTRY)}")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return False
    if not _ext.load_extension(with_cuda=None):
        return False
    if device.type == "cuda" and not _ext.extension_status()["cuda_compiled"]:
        return False
    return _kernels_present(info)


def use_extension(op: str, device: torch.device | str) -> bool:
    """True when ``op`` should run its compiled kernel on ``device``.

    Example:
        >>> with forced("torch"):
        ...     use_extension("triplane_sample", "cpu")
        False
    """
    backend = requested_backend()
    if backend == "torch":
        return False
    supported = extension_supports(op, device)
    if backend == "ext" and not supported:
        status = _ext.extension_status()
        raise RuntimeError(
            f"VQ3DLIB_BACKEND=ext but the extension cannot run {op!r} on {torch.device(device)} "
            f"(loaded={status['loaded']}, cuda_compiled={status['cuda_compiled']}, error={status['error']})"
        )
    return supported


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def report(build: bool = True) -> str:
    """A human-readable table: per op, the backend used on CPU and on CUDA, plus build status.

    Example:
        >>> "triplane_sample" in report(build=False)
        True
    """
    import vq3dlib.ops  # noqa: F401 - registers the built-in ops

    if build:
        _ext.load_extension()
    status = _ext.extension_status()
    cuda_ok = torch.cuda.is_available()
    lines = [
        f"vq3dlib backend report (torch {torch.__version__}, CUDA runtime {torch.version.cuda}, "
        f"GPU available: {cuda_ok}, requested backend: {requested_backend()})",
        f"extension: loaded={status['loaded']} cuda_compiled={status['cuda_compiled']} "
        f"cpu_parallel={status['cpu_parallel']} path={status['path']}",
    ]
    if status["error"]:
        lines.append(f"extension error: {status['error'].splitlines()[0][:300]}")
    lines.append(f"{'op':28s} {'cpu':8s} {'cuda':8s} summary")
    for name, info in sorted(_REGISTRY.items()):
        on_cpu = "ext" if status["loaded"] and use_extension(name, "cpu") else "torch"
        if not cuda_ok:
            on_cuda = "ext*" if status["cuda_compiled"] and _kernels_present(info) else "n/a"
        else:
            on_cuda = "ext" if use_extension(name, "cuda") else "torch"
        lines.append(f"{name:28s} {on_cpu:8s} {on_cuda:8s} {info.summary}")
    if not cuda_ok:
        lines.append("(no GPU: 'ext*' = CUDA kernels compiled in but not runnable here)")
    lines.append(f"nerfacc importable: {_importable('nerfacc')}")
    lines.append(f"tinycudann importable: {_importable('tinycudann')}")
    for provider in _REPORT_LINES:
        module, _, func = provider.partition(":")
        lines.append(getattr(importlib.import_module(module), func)())
    return "\n".join(lines)


# Blocks with a backend choice of their own that the report describes ("module:function" -> one line).
_REPORT_LINES = ("vq3dlib.models.field:mlp_backend_report",)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vq3dlib.backend [--build] [--cuda] [--verbose]``."""
    parser = argparse.ArgumentParser(prog="python -m vq3dlib.backend", description=main.__doc__)
    parser.add_argument("--build", action="store_true", help="build the extension now (errors are shown)")
    parser.add_argument("--cuda", action="store_true", help="compile the CUDA kernels too (needs nvcc)")
    parser.add_argument("--verbose", action="store_true", help="show compiler output")
    args = parser.parse_args(argv)
    if args.build:
        try:
            _ext.load_extension(
                with_cuda=True if args.cuda else None, verbose=args.verbose, raise_errors=True
            )
        except Exception as exc:  # noqa: BLE001
            print(f"build failed: {exc}", file=sys.stderr)
            return 1
    print(report(build=not args.build))
    return 0


if __name__ == "__main__":
    # Run the imported module's main so ops register into the same registry as the library's.
    from vq3dlib.backend import main as _main

    raise SystemExit(_main())
