"""The C allocator tuning keeps a training step's buffers in the process (no page faults per step)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from vq3dlib.cpu_allocator import ENV_SWITCH, MMAP_THRESHOLD_BYTES, tune_cpu_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# one MLP forward + backward over 51200 samples (the demo's field head) per cycle; prints the page
# faults per cycle once the heap has warmed up
_FAULTS_PER_STEP = """
import resource, torch
from vq3dlib.cpu_allocator import tune_cpu_allocator
print("tuned", tune_cpu_allocator())
torch.set_num_threads(1)
torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 12))
x = torch.rand(51200, 16, requires_grad=True)
def step():
    mlp(x).square().mean().backward()
for _ in range(30):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print("faults", (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_step(switch: str) -> tuple[bool, float]:
    env = {**os.environ, ENV_SWITCH: switch}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_STEP], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[1] == "True", float(out[3])


@pytest.mark.skipif(not GLIBC, reason="mallopt tuning is glibc-only")
def test_tuned_allocator_reuses_a_steps_buffers_instead_of_faulting_them_in_again():
    tuned, faults_tuned = _faults_per_step("1")
    untuned, faults_default = _faults_per_step("0")
    assert tuned and not untuned
    pages_of_hidden = 51200 * 32 * 4 / 4096  # one hidden activation's pages
    # glibc's defaults fault in about one hidden activation per step; tuned, nearly nothing
    assert faults_default > 0.5 * pages_of_hidden
    assert faults_tuned < 0.05 * pages_of_hidden
    assert faults_tuned < faults_default / 10


@pytest.mark.skipif(not GLIBC, reason="mallopt tuning is glibc-only")
def test_tuning_reports_success_and_is_idempotent():
    assert tune_cpu_allocator() is True
    assert tune_cpu_allocator() is True


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert tune_cpu_allocator() is False


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"mmap_threshold_bytes": MMAP_THRESHOLD_BYTES + 1}, "mmap_threshold_bytes"),
        ({"mmap_threshold_bytes": -1}, "mmap_threshold_bytes"),
        ({"trim_threshold_bytes": 2**31}, "trim_threshold_bytes"),
        ({"trim_threshold_bytes": 1.5}, "trim_threshold_bytes"),
        ({"mmap_threshold_bytes": True}, "mmap_threshold_bytes"),
    ],
)
def test_bad_thresholds_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tune_cpu_allocator(**kwargs)
