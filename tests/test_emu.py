"""The emulated CUDA kernels (``cuda-emu``): backend selection, and proof that the checks catch bugs.

The kernel-vs-reference tests of ``test_ops_triplane.py``, ``test_render_march.py`` and
``test_render_volrend.py`` run on the ``cuda-emu`` target (see ``conftest.kernel_target``). The
``sanitizer`` tests here build copies of ``csrc/`` with one deliberate bug each and show that the
AddressSanitizer build and the value tests catch it (CI runs them: ``pytest -m sanitizer``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vq3dlib import _emu, _ext, backend
from vq3dlib.ops import use_extension

ROOT = Path(__file__).resolve().parents[1]


def test_emulated_backend_is_explicit_and_cpu_only():
    assert backend.library_name("cuda-emu") == "vq3dlib_emu" and backend.library_name("ext") == "vq3dlib"
    with backend.forced("auto"):
        assert backend.library_name() == "vq3dlib"  # never chosen automatically
    with backend.forced("cuda-emu"), pytest.raises(RuntimeError, match="CPU tensors only"):
        use_extension("triplane_sample", "meta")


def test_emulated_kernels_are_registered_for_cpu_tensors():
    if not _emu.load_emulation():
        pytest.skip(f"emulation did not build: {_emu.emulation_status()['error']}")
    with backend.forced("cuda-emu"):
        assert use_extension("render_weight_from_alpha", "cpu")
    alphas = torch.tensor([0.5, 0.5, 0.25, 1.0])
    info = torch.tensor([[0, 2], [2, 2]])
    weights, trans = torch.ops.vq3dlib_emu.volrend_alpha_fwd(alphas, info, 0)
    assert weights.tolist() == [0.5, 0.25, 0.25, 0.75] and trans.tolist() == [1.0, 0.5, 1.0, 0.75]
    assert torch.ops.vq3dlib_emu.sanitized() == ("address" in _emu.emulation_status()["sanitize"])


def test_sanitizer_environment_preloads_the_asan_runtime():
    env = _emu.sanitizer_env()
    assert env["VQ3DLIB_BACKEND"] == "cuda-emu" and "detect_leaks=0" in env["ASAN_OPTIONS"]
    assert env["LD_PRELOAD"].split() == [_emu.asan_runtime(), _emu.cxx_runtime()]  # ASan first
    assert "halt_on_error=1" in env["UBSAN_OPTIONS"]


def _broken_copy(tmp_path: Path, header: str, old: str, new: str) -> Path:
    """A copy of csrc/ where ``old`` (which must occur exactly once in ``header``) becomes ``new``."""
    csrc = tmp_path / "csrc"
    shutil.copytree(_ext.CSRC_DIR, csrc)
    path = csrc / "cuda" / header
    text = path.read_text()
    assert text.count(old) == 1, f"the mutation target {old!r} no longer occurs once in {header}"
    path.write_text(text.replace(old, new))
    return csrc


def _run(cmd: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full.pop("VQ3DLIB_NO_EXT", None)
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)


@pytest.mark.sanitizer
def test_asan_reports_an_off_by_one_read_past_a_buffer(tmp_path):
    """density_fwd_kernel with ``r > n_rays``: the thread r == n_rays reads packed_info past its end."""
    if not _emu.asan_runtime():
        pytest.skip("the compiler has no ASan runtime")
    old = (
        "  if (r >= n_rays) return;\n  const RaySpan s = ray_span(r, packed_info, per_ray);\n"
        "  const int64_t b = s.begin;\n  density_weights_forward"
    )
    csrc = _broken_copy(tmp_path, "volrend_kernels.cuh", old, old.replace("r >= n_rays", "r > n_rays"))
    code = (
        "import torch\n"
        "from vq3dlib.render import render_weight_from_density\n"
        "ri = torch.arange(100).repeat_interleave(3)\n"
        "t = torch.rand(300)\n"
        "w = render_weight_from_density(t, t + 0.1, torch.rand(300), ray_indices=ri, n_rays=100)[0]\n"
        "print('no report; weights', float(w.sum()))\n"
    )
    env = {**_emu.sanitizer_env(), "VQ3DLIB_EMU_CSRC": str(csrc), "VQ3DLIB_EMU_OPS": "volrend"}
    out = _run([sys.executable, "-c", code], env)
    report = out.stdout + out.stderr
    print(report[-4000:])
    assert out.returncode != 0 and "no report" not in report
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in report and "READ of size 8" in report


@pytest.mark.sanitizer
def test_a_wrong_channel_group_bound_fails_the_value_tests(tmp_path):
    """channel_groups() flooring the group size drops the last channels: the kernel tests must fail."""
    old = "return {n_groups, (channels + n_groups - 1) / n_groups};"
    csrc = _broken_copy(tmp_path, "triplane_kernels.cuh", old, "return {n_groups, channels / n_groups};")
    env = {"VQ3DLIB_EMU_CSRC": str(csrc), "VQ3DLIB_EMU_OPS": "triplane"}
    test = "tests/test_ops_triplane.py"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test, "-k", "channel and cuda-emu"]
    out = _run(cmd, env)
    report = out.stdout + out.stderr
    print(report[-4000:])
    assert out.returncode == 1, "the value tests did not notice the broken channel groups"
    assert "Tensor-likes are not close!" in report
    # the multiples of the group still pass: exactly the uneven channel counts are caught
    assert "[cuda-emu-8]" not in report.split("short test summary")[-1]
    assert "test_kernel_channel_counts_around_the_channel_group[cuda-emu-13]" in report
