"""The backend report: which implementation each op uses on CPU and on CUDA, and the build state.

``python -m vq3dlib.backend`` runs :func:`main`: it prints :func:`backend_report`
(``--build [--cuda] [--verbose]`` builds the extension first and shows the compiler's errors). The
report reads the op registry of :mod:`vq3dlib.ops` and the MLP backend choice of
:mod:`vq3dlib.models.field`; the dispatcher, :mod:`vq3dlib.backend`, imports neither.

Example:
    >>> text = backend_report(build=False)
    >>> "triplane_sample" in text and "field MLP" in text
    True
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

import torch

from vq3dlib import _ext, backend
from vq3dlib.models.field import mlp_backend_report
from vq3dlib.ops import registered_ops, use_extension


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def backend_report(build: bool = True) -> str:
    """A human-readable table: per op, the backend used on CPU and on CUDA, plus the build status.

    Args:
        build: load (building if needed) the extension first; ``False`` reports the current state.

    Example:
        >>> "nerfacc importable" in backend_report(build=False)
        True
    """
    if build:
        _ext.load_extension()
    status = _ext.extension_status()
    cuda_ok = torch.cuda.is_available()
    lines = [
        f"vq3dlib backend report (torch {torch.__version__}, CUDA runtime {torch.version.cuda}, "
        f"GPU available: {cuda_ok}, requested backend: {backend.requested_backend()})",
        f"extension: loaded={status['loaded']} cuda_compiled={status['cuda_compiled']} "
        f"cpu_parallel={status['cpu_parallel']} path={status['path']}",
    ]
    if status["error"]:
        lines.append(f"extension error: {status['error'].splitlines()[0][:300]}")
    lines.append(f"{'op':28s} {'cpu':8s} {'cuda':8s} summary")
    for name, info in sorted(registered_ops().items()):
        on_cpu = "ext" if status["loaded"] and use_extension(name, "cpu") else "torch"
        if not cuda_ok:
            on_cuda = "ext*" if status["cuda_compiled"] and backend.kernels_present(info.kernels) else "n/a"
        else:
            on_cuda = "ext" if use_extension(name, "cuda") else "torch"
        lines.append(f"{name:28s} {on_cpu:8s} {on_cuda:8s} {info.summary}")
    if not cuda_ok:
        lines.append("(no GPU: 'ext*' = CUDA kernels compiled in but not runnable here)")
    lines.append(f"nerfacc importable: {_importable('nerfacc')}")
    lines.append(f"tinycudann importable: {_importable('tinycudann')}")
    lines.append(mlp_backend_report())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vq3dlib.backend [--build] [--cuda] [--verbose]``; returns the exit status.

    Example:
        >>> main([]) == 0  # doctest: +ELLIPSIS
        vq3dlib backend report ...
        True
    """
    parser = argparse.ArgumentParser(
        prog="python -m vq3dlib.backend",
        description="``python -m vq3dlib.backend [--build] [--cuda] [--verbose]``.",
    )
    parser.add_argument("--build", action="store_true", help="build the extension now (errors are shown)")
    parser.add_argument("--cuda", action="store_true", help="compile the CUDA kernels too (needs nvcc)")
    parser.add_argument("--verbose", action="store_true", help="show compiler output")
    args = parser.parse_args(argv)
    if args.build:
        try:
            with_cuda = True if args.cuda else None
            _ext.load_extension(with_cuda=with_cuda, verbose=args.verbose, raise_errors=True)
        except Exception as exc:  # noqa: BLE001 - any build failure is reported, exit status 1
            print(f"build failed: {exc}", file=sys.stderr)
            return 1
    print(backend_report(build=not args.build))
    return 0


__all__ = ["backend_report", "main"]
