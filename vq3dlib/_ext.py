"""Loads the compiled extension: prebuilt → JIT build (cached) → ``None``.

The extension registers its kernels as ``torch.ops.vq3dlib.*`` through ``TORCH_LIBRARY`` (see
``csrc/bindings.cpp``), so they work under ``torch.compile`` once their fake implementations are
registered in :mod:`vq3dlib.ops`. Import of ``vq3dlib`` never builds anything; the first op that
wants a kernel calls :func:`load_extension`.

Example:
    >>> from vq3dlib._ext import extension_status
    >>> sorted(extension_status())
    ['cpu_parallel', 'cuda_compiled', 'error', 'loaded', 'path']
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent
CSRC_DIR = _PACKAGE_DIR.parent / "csrc"

_lock = threading.Lock()
_state: dict[str, Any] = {
    "attempted": set(),
    "loaded": False,
    "cuda_compiled": False,
    "cpu_parallel": None,  # whether the CPU kernels' at::parallel_for uses several threads
    "path": None,
    "error": None,
}


def source_files(with_cuda: bool) -> list[str]:
    """Lists the extension's sources (C++ always, ``.cu`` when ``with_cuda``).

    Example:
        >>> any(f.endswith("bindings.cpp") for f in source_files(False))
        True
    """
    files = sorted(glob.glob(str(CSRC_DIR / "*.cpp")) + glob.glob(str(CSRC_DIR / "cpu" / "*.cpp")))
    if with_cuda:
        files += sorted(glob.glob(str(CSRC_DIR / "cuda" / "*.cu")))
    return files


def cpu_parallel_flags() -> list[str]:
    """Compiler/linker flags that make the CPU kernels' ``at::parallel_for`` run in parallel.

    ATen's OpenMP backend implements ``at::parallel_for`` inline with ``#pragma omp parallel``: an
    extension compiled without ``-fopenmp`` runs every CPU kernel on one thread, silently.

    Example:
        >>> cpu_parallel_flags() in ([], ["-fopenmp"])
        True
    """
    openmp = "OpenMP" in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]
    return ["-fopenmp"] if openmp and sys.platform != "darwin" else []


def _compile_flags(with_cuda: bool) -> tuple[list[str], list[str], list[str]]:
    """``(cxx flags, nvcc flags, linker flags)`` of a JIT build."""
    parallel = cpu_parallel_flags()
    cflags = ["-O3", *parallel] + (["-DVQ3DLIB_WITH_CUDA"] if with_cuda else [])
    cuda_flags = ["-O3", "--use_fast_math", "-DVQ3DLIB_WITH_CUDA", "--expt-relaxed-constexpr"]
    return cflags, cuda_flags, parallel


def _cuda_targets() -> str:
    """The GPU architectures a CUDA build is for: ``$TORCH_CUDA_ARCH_LIST``, else the visible GPUs'.

    Part of the build-cache key, so a cache shared between machines never hands a build for one GPU
    generation to another ("no kernel image is available").
    """
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if arch:
        return arch
    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ";".join(f"{major}.{minor}" for major, minor in sorted(caps))
    return ""


def _sources_hash(files: list[str], flags: tuple[list[str], ...] = (), csrc: Path = CSRC_DIR) -> str:
    """Hash of the sources, every header under ``csrc``, the build flags and where ``csrc`` is.

    A new build per change; two checkouts of the same sources get separate builds too (the build
    commands name the source paths, so a shared build folder would be rebuilt by each in turn).
    """
    digest = hashlib.sha1(str(csrc.resolve()).encode())
    patterns = (str(csrc / "**" / "*.h"), str(csrc / "**" / "*.cuh"))
    headers = sorted(f for pattern in patterns for f in glob.glob(pattern, recursive=True))
    for f in files + headers:
        digest.update(Path(f).read_bytes())
    digest.update(repr(flags).encode())
    return digest.hexdigest()[:10]


def cache_dir() -> Path:
    """Where JIT builds go: ``$VQ3DLIB_CACHE`` or ``~/.cache/vq3dlib``.

    Example:
        >>> cache_dir().name in ("vq3dlib",) or True
        True
    """
    root = os.environ.get("VQ3DLIB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vq3dlib")
    return Path(root)


def _cuda_wanted() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and CUDA_HOME is not None and torch.version.cuda is not None


def _load_prebuilt() -> bool:
    for path in sorted(glob.glob(str(_PACKAGE_DIR / "_C*.so")) + glob.glob(str(_PACKAGE_DIR / "_C*.pyd"))):
        torch.ops.load_library(path)
        _state["path"] = path
        return True
    return False


def _jit_build(with_cuda: bool, verbose: bool) -> None:
    from torch.utils.cpp_extension import load

    files = source_files(with_cuda)
    cflags, cuda_flags, ldflags = _compile_flags(with_cuda)
    targets = [_cuda_targets()] if with_cuda else []
    tag = f"{'cuda' if with_cuda else 'cpu'}_{_sources_hash(files, (cflags, cuda_flags, ldflags, targets))}"
    name = f"vq3dlib_C_{tag}"
    build_dir = cache_dir() / f"torch{torch.__version__.replace('+', '_')}" / tag
    build_dir.mkdir(parents=True, exist_ok=True)
    already = any(build_dir.glob(f"{name}*.so"))
    if not already:
        print(
            f"vq3dlib: building the {'C++/CUDA' if with_cuda else 'C++'} extension into {build_dir} "
            "(first use only; takes a minute or two)...",
            file=sys.stderr,
            flush=True,
        )
    load(
        name=name,
        sources=files,
        extra_include_paths=[str(CSRC_DIR / "include")],
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_flags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=verbose,
    )
    _state["path"] = str(next(iter(build_dir.glob(f"{name}*.so")), build_dir))
    if not already:
        print("vq3dlib: extension built.", file=sys.stderr, flush=True)


def load_extension(with_cuda: bool | None = None, verbose: bool = False, raise_errors: bool = False) -> bool:
    """Makes ``torch.ops.vq3dlib`` available; returns whether it is.

    Tries a prebuilt ``vq3dlib/_C*.so`` first, then a cached JIT build (built on first use, with a
    message). If building fails, warns once and returns ``False`` so callers fall back to the
    pure-torch reference ops. ``VQ3DLIB_NO_EXT=1`` disables the extension entirely.

    Args:
        with_cuda: compile the CUDA kernels too; default: when a GPU and ``CUDA_HOME`` are present.
        verbose: show compiler output.
        raise_errors: re-raise build errors instead of warning (``python -m vq3dlib.backend --build``).

    Example:
        >>> isinstance(load_extension(), bool)
        True
    """
    if os.environ.get("VQ3DLIB_NO_EXT", "0") == "1" and not raise_errors:
        return False
    want_cuda = _cuda_wanted() if with_cuda is None else with_cuda
    with _lock:
        # One library per process: TORCH_LIBRARY refuses a second registration of the namespace.
        if _state["loaded"]:
            return True
        if _state["attempted"] and not raise_errors:
            return False
        _state["attempted"].add("cuda" if want_cuda else "cpu")
        try:
            if raise_errors or not _load_prebuilt():
                _jit_build(want_cuda, verbose)
            _state["loaded"] = True
            _state["cuda_compiled"] = bool(torch.ops.vq3dlib.cuda_compiled())
            _state["error"] = None
            _check_cpu_parallel()
        except Exception as exc:  # noqa: BLE001 - any build failure means: fall back
            message = str(exc)
            errors = [line for line in message.splitlines() if "error" in line.lower()]
            _state["error"] = f"{type(exc).__name__}: " + ("\n".join(errors[-5:]) if errors else message)
            if raise_errors:
                raise
            warnings.warn(
                "vq3dlib: could not build/load the C++/CUDA extension; using the pure-torch reference ops "
                f"(slower). Reason: {_state['error'][:600]}",
                RuntimeWarning,
                stacklevel=2,
            )
        return _state["loaded"]


def _parallel_chunks() -> int:
    """Chunks one ``at::parallel_for`` of the loaded extension runs in (1 = serial build)."""
    return int(torch.ops.vq3dlib.cpu_parallel_threads())


def _check_cpu_parallel() -> None:
    """Records whether the CPU kernels run multi-threaded; warns once if a build runs them on one."""
    if torch.get_num_threads() < 2:
        return
    _state["cpu_parallel"] = _parallel_chunks() > 1
    if not _state["cpu_parallel"]:
        flags = cpu_parallel_flags()
        why = (
            f"it was built without {' '.join(flags)}; delete it to rebuild"
            if flags
            else "vq3dlib knows no compiler flag for torch's parallel backend on this platform"
        )
        warnings.warn(
            f"vq3dlib: the extension at {_state['path']} runs its CPU kernels on one thread ({why}).",
            RuntimeWarning,
            stacklevel=3,
        )


def extension_status() -> dict[str, Any]:
    """Build/load status of the extension (no build is triggered).

    Example:
        >>> extension_status()["loaded"] in (True, False)
        True
    """
    return {k: _state[k] for k in ("loaded", "cuda_compiled", "cpu_parallel", "path", "error")}
