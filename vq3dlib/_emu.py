"""Loads the emulated CUDA kernels: the ``cuda-emu`` backend (JIT build, cached; never automatic).

The CUDA kernels (``csrc/cuda/*_kernels.cuh``) and their launch sites (``csrc/cuda/*_ops.h``) are
compiled a second time by the host compiler (``csrc/emu/*.cpp``), where every launch runs each
(block, thread) of its grid on the CPU (``csrc/include/vq3dlib/launch.h``). The result is a library
of its own, ``torch.ops.vq3dlib_emu``, with the schemas of ``torch.ops.vq3dlib`` and kernels for
CPU tensors; ``VQ3DLIB_BACKEND=cuda-emu`` (or ``vq3dlib.backend.forced("cuda-emu")``) makes the ops
run them, so the tests compare the CUDA code path with the torch references without a GPU.

``VQ3DLIB_SANITIZE=address,undefined`` builds it (in a build directory of its own) with
AddressSanitizer and UBSan; the process must then start with the ASan runtime preloaded
(:func:`sanitizer_env` gives the environment).

Example:
    >>> from vq3dlib._emu import emulation_status
    >>> sorted(emulation_status())
    ['error', 'loaded', 'path', 'sanitize']
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vq3dlib import _ext

NAMESPACE = "vq3dlib_emu"
SANITIZERS = ("address", "undefined")

_lock = threading.Lock()
_state: dict[str, Any] = {"attempted": False, "loaded": False, "path": None, "error": None, "sanitize": ()}


def requested_sanitizers() -> tuple[str, ...]:
    """The sanitizers ``$VQ3DLIB_SANITIZE`` asks for (comma-separated, from :data:`SANITIZERS`).

    Example:
        >>> import os
        >>> requested_sanitizers() == tuple(s for s in os.environ.get("VQ3DLIB_SANITIZE", "").split(",") if s)
        True
    """
    names = tuple(s.strip() for s in os.environ.get("VQ3DLIB_SANITIZE", "").split(",") if s.strip())
    unknown = [s for s in names if s not in SANITIZERS]
    if unknown:
        raise ValueError(f"VQ3DLIB_SANITIZE may name {SANITIZERS}, got {unknown}")
    return names


def source_files(csrc: Path = _ext.CSRC_DIR, ops: Sequence[str] | None = None) -> list[str]:
    """The emulation's translation units: ``csrc/emu/bindings.cpp`` and one per op (all, or ``ops``).

    Example:
        >>> [Path(f).name for f in source_files(ops=["volrend"])]
        ['bindings.cpp', 'volrend.cpp']
    """
    files = sorted(glob.glob(str(csrc / "emu" / "*.cpp")))
    if ops is not None:
        files = [f for f in files if Path(f).stem in ("bindings", *ops)]
    return files


def build_flags(sanitize: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """``(compiler flags, linker flags)`` of the emulation; with sanitizers when ``sanitize`` names some.

    Example:
        >>> "-fsanitize=address,undefined" in build_flags(["address", "undefined"])[0]
        True
    """
    parallel = _ext.cpu_parallel_flags()
    cflags = ["-O2", *parallel]
    ldflags = list(parallel)
    if sanitize:
        san = [f"-fsanitize={','.join(sanitize)}", "-fno-omit-frame-pointer"]
        if "undefined" in sanitize:
            san.append("-fno-sanitize-recover=undefined")  # the first UB report aborts the process
        cflags = ["-O1", "-g", *parallel, *san]
        ldflags = [*parallel, *san]
    return cflags, ldflags


def _compiler_library(name: str) -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    path = out.stdout.strip()
    return path if os.path.isabs(path) else ""


def asan_runtime() -> str:
    """Path of the compiler's ASan runtime (``gcc -print-file-name=libasan.so``) for ``LD_PRELOAD``.

    Example:
        >>> asan_runtime().endswith(".so") or asan_runtime() == ""
        True
    """
    return _compiler_library("libasan.so")


def cxx_runtime() -> str:
    """Path of the compiler's C++ runtime (``libstdc++.so``), preloaded after ASan's.

    Python is not a C++ program, so without it ASan cannot find the real ``__cxa_throw`` when it
    starts, and the first C++ exception thrown in the process (e.g. a failed ``TORCH_CHECK`` that
    Python catches) aborts it.

    Example:
        >>> cxx_runtime().endswith(".so") or cxx_runtime() == ""
        True
    """
    return _compiler_library("libstdc++.so")


def sanitizer_env(sanitize: Sequence[str] = SANITIZERS) -> dict[str, str]:
    """Environment variables that run a child Python with the sanitized emulation.

    ``LD_PRELOAD`` puts the ASan runtime first (Python itself is not instrumented) and the C++
    runtime after it (:func:`cxx_runtime`); leak detection is off (the interpreter leaks by design);
    UBSan reports halt the process with a stack trace.

    Example:
        >>> sanitizer_env(["undefined"])["VQ3DLIB_SANITIZE"]
        'undefined'
    """
    env = {
        "VQ3DLIB_SANITIZE": ",".join(sanitize),
        "VQ3DLIB_BACKEND": "cuda-emu",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }
    if "address" in sanitize:
        env["LD_PRELOAD"] = " ".join(p for p in (asan_runtime(), cxx_runtime()) if p)
        env["ASAN_OPTIONS"] = "detect_leaks=0:alloc_dealloc_mismatch=0"
    return env


def _asan_preloaded() -> bool:
    try:
        return "libasan" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _build(csrc: Path, ops: Sequence[str] | None, sanitize: Sequence[str], verbose: bool) -> str:
    from torch.utils.cpp_extension import load

    if "address" in sanitize and not _asan_preloaded():
        raise RuntimeError(
            "VQ3DLIB_SANITIZE=address needs the ASan runtime loaded first: start Python with "
            f"LD_PRELOAD={asan_runtime() or '$(gcc -print-file-name=libasan.so)'} "
            "ASAN_OPTIONS=detect_leaks=0 (see vq3dlib._emu.sanitizer_env)"
        )
    files = source_files(csrc, ops)
    cflags, ldflags = build_flags(sanitize)
    kind = "emu_" + "_".join(sanitize) if sanitize else "emu"
    tag = f"{kind}_{_ext._sources_hash(files, (cflags, ldflags), csrc)}"
    name = f"vq3dlib_emu_{tag}"
    build_dir = _ext.cache_dir() / f"torch{torch.__version__.replace('+', '_')}" / tag
    build_dir.mkdir(parents=True, exist_ok=True)
    if not any(build_dir.glob(f"{name}*.so")):
        print(f"vq3dlib: building the emulated CUDA kernels into {build_dir}...", file=sys.stderr, flush=True)
    load(
        name=name,
        sources=files,
        extra_include_paths=[str(csrc / "include"), str(csrc / "cuda")],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        with_cuda=False,
        is_python_module=False,
        verbose=verbose,
    )
    return str(next(iter(build_dir.glob(f"{name}*.so")), build_dir))


def load_emulation(
    verbose: bool = False,
    raise_errors: bool = False,
    csrc: str | os.PathLike[str] | None = None,
    ops: Sequence[str] | None = None,
) -> bool:
    """Makes ``torch.ops.vq3dlib_emu`` available (building it on first use); returns whether it is.

    Args:
        verbose: show compiler output.
        raise_errors: re-raise a build error instead of recording it.
        csrc: build from another copy of ``csrc/`` (the tests build deliberately broken kernels).
        ops: build only these ops' translation units (``"triplane"``, ``"march"``, ``"volrend"``).

    One emulation per process (its ``TORCH_LIBRARY`` block registers the namespace once); the first
    call decides. ``VQ3DLIB_SANITIZE`` selects a sanitized build; ``VQ3DLIB_EMU_CSRC`` and
    ``VQ3DLIB_EMU_OPS`` (comma-separated) give ``csrc`` and ``ops`` to a child process.

    Example:
        >>> isinstance(load_emulation(), bool)
        True
    """
    with _lock:
        if _state["loaded"] or (_state["attempted"] and not raise_errors):
            return _state["loaded"]
        _state["attempted"] = True
        try:
            sanitize = requested_sanitizers()
            csrc = csrc if csrc is not None else os.environ.get("VQ3DLIB_EMU_CSRC") or _ext.CSRC_DIR
            if ops is None and os.environ.get("VQ3DLIB_EMU_OPS"):
                ops = os.environ["VQ3DLIB_EMU_OPS"].split(",")
            _state["path"] = _build(Path(csrc), ops, sanitize, verbose)
            _state["sanitize"] = sanitize
            _state["loaded"] = True
            _state["error"] = None
        except Exception as exc:  # noqa: BLE001 - a failed build means: the backend is unavailable
            _state["error"] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
            if raise_errors:
                raise
        return _state["loaded"]


def emulation_status() -> dict[str, Any]:
    """Build/load status of the emulation (no build is triggered).

    Example:
        >>> emulation_status()["loaded"] in (True, False)
        True
    """
    return {k: _state[k] for k in ("loaded", "path", "error", "sanitize")}
