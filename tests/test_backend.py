"""Backend dispatch (vq3dlib.backend) and the extension loader: forcing, one-warning fallback, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vq3dlib import _ext, backend
from vq3dlib.ops import extension_supports, use_extension

ROOT = Path(__file__).resolve().parents[1]
requires_ext = pytest.mark.skipif(
    not extension_supports("triplane_sample", "cpu"), reason="extension could not be built"
)


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )


def test_forced_torch_backend_skips_the_extension():
    with backend.forced("torch"):
        assert backend.requested_backend() == "torch"
        assert not use_extension("triplane_sample", "cpu")
        assert not backend.dispatch("triplane_sample", ["triplane_sample_fwd"], "cpu")
    assert backend.requested_backend() in backend.BACKENDS


def test_bad_backend_names_raise():
    with pytest.raises(ValueError, match="backend must be one of"):
        with backend.forced("cuda"):
            pass


def test_required_extension_names_the_op_when_kernels_are_missing():
    with backend.forced("ext"), pytest.raises(RuntimeError, match="'some_op'"):
        backend.dispatch("some_op", ["no_such_kernel"], "cpu")
    assert not backend.kernels_available(["no_such_kernel"], "cpu")


@requires_ext
def test_cpu_kernels_run_on_every_thread():
    # ATen's OpenMP parallel_for is inline: an extension compiled without -fopenmp runs on one thread.
    if torch.get_num_threads() < 2:
        pytest.skip("needs at least two torch threads")
    assert torch.ops.vq3dlib.cpu_parallel_threads() == torch.get_num_threads()
    assert _ext.extension_status()["cpu_parallel"] is True


def test_single_threaded_build_is_reported_with_a_warning(monkeypatch):
    monkeypatch.setattr(_ext, "_parallel_chunks", lambda: 1)
    monkeypatch.setitem(_ext._state, "cpu_parallel", None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with pytest.warns(RuntimeWarning, match="runs its CPU kernels on one thread"):
        _ext._check_cpu_parallel()
    assert _ext.extension_status()["cpu_parallel"] is False


def test_failed_build_falls_back_with_one_warning(tmp_path):
    # A compiler that always fails, an empty build cache: every op must still run (reference path),
    # with exactly one warning for the whole process, and give the reference's values.
    code = """
        import warnings, torch
        from vq3dlib.ops import triplane_sample, triplane_sample_reference
        from vq3dlib.ops import use_extension
        planes, pts = torch.randn(1, 3, 4, 8, 8), torch.randn(20, 3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = triplane_sample(planes, pts, contraction="linf")
            b = triplane_sample(planes, pts, contraction="linf")
        ours = [w for w in caught if "vq3dlib" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in ours]
        assert "pure-torch reference" in str(ours[0].message)
        assert not use_extension("triplane_sample", "cpu")
        torch.testing.assert_close(a, triplane_sample_reference(planes, pts, contraction="linf"))
        torch.testing.assert_close(a, b)
        print("FALLBACK-OK")
    """
    res = _run_python(code, CXX="false", CC="false", VQ3DLIB_CACHE=str(tmp_path), VQ3DLIB_BACKEND="auto")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "FALLBACK-OK" in res.stdout


def test_required_extension_that_cannot_build_is_an_error(tmp_path):
    code = """
        import torch
        from vq3dlib.ops import triplane_sample
        try:
            triplane_sample(torch.randn(1, 3, 4, 8, 8), torch.randn(5, 3))
        except RuntimeError as exc:
            assert "VQ3DLIB_BACKEND=ext" in str(exc), exc
            print("ERROR-OK")
    """
    res = _run_python(code, CXX="false", CC="false", VQ3DLIB_CACHE=str(tmp_path), VQ3DLIB_BACKEND="ext")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ERROR-OK" in res.stdout


def test_build_folder_depends_on_the_sources_and_on_the_checkout(tmp_path):
    # the same sources in two checkouts build into two folders (a shared folder would be rebuilt by
    # each checkout in turn, since the build commands name the source paths); a change of a source
    # or of the flags is a new build too
    copies = []
    for name in ("a", "b"):
        csrc = tmp_path / name / "csrc"
        csrc.mkdir(parents=True)
        (csrc / "op.cpp").write_text("int f() { return 1; }\n")
        (csrc / "op.h").write_text("int f();\n")
        copies.append(csrc)
    tag = [_ext._sources_hash([str(c / "op.cpp")], (["-O3"],), c) for c in copies]
    assert tag[0] != tag[1]
    assert tag[0] == _ext._sources_hash([str(copies[0] / "op.cpp")], (["-O3"],), copies[0])
    assert tag[0] != _ext._sources_hash([str(copies[0] / "op.cpp")], (["-O2"],), copies[0])
    (copies[0] / "op.h").write_text("int f(); // changed\n")
    assert tag[0] != _ext._sources_hash([str(copies[0] / "op.cpp")], (["-O3"],), copies[0])
