"""Shared test fixtures: devices to run on, kernel targets (the CUDA kernels emulated on the CPU too)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch

from vq3dlib import backend

CUDA = torch.cuda.is_available()

DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every available device: cpu always, cuda when present."""
    return torch.device(request.param)


@dataclass(frozen=True)
class KernelTarget:
    """Where a kernel test runs: a device and the backend whose kernels run there.

    ``cpu``: the CPU kernels; ``cuda-emu``: the CUDA kernels' code emulated on the CPU (CPU tensors);
    ``cuda``: the CUDA kernels on a GPU.
    """

    name: str
    device: torch.device
    backend: str  # "ext" or "cuda-emu"

    def forced(self, mode: str = "kernel") -> contextlib.AbstractContextManager:
        """``backend.forced`` of this target's kernels (``mode="kernel"``) or of ``mode`` itself."""
        return backend.forced(self.backend if mode == "kernel" else mode)

    def __str__(self) -> str:
        return self.name


KERNEL_TARGETS = ["cpu", "cuda-emu"] + (["cuda"] if CUDA else [])


@pytest.fixture(params=KERNEL_TARGETS)
def kernel_target(request) -> KernelTarget:
    """Every kernel implementation: CPU kernels, emulated CUDA kernels, and real ones on a GPU."""
    name = request.param
    if name == "cuda-emu":
        from vq3dlib import _emu

        if not _emu.load_emulation():
            pytest.skip(f"the emulated CUDA kernels did not build: {_emu.emulation_status()['error']}")
        return KernelTarget(name, torch.device("cpu"), "cuda-emu")
    return KernelTarget(name, torch.device(name), "ext")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


MICRO_VQ3D = dict(
    image_size=16, patch_size=4, plane_resolution=16, render_resolution=8, samples_per_ray=32,
    adversarial_weight=0.1, novel_adversarial_weight=0.1,  # the GAN terms are off in tiny; tests keep them
)


def micro_vq3d(**overrides):
    """A VQ3D model small enough for unit tests (16 px images, 8 px renders)."""
    from vq3dlib import VQ3DModel

    return VQ3DModel.from_config("tiny", **{**MICRO_VQ3D, **overrides})


def fast_vq3d(**overrides):
    """:func:`micro_vq3d` with a coarser occupancy grid (most of a micro forward is building it)."""
    return micro_vq3d(**{"occupancy_resolution": 16, **overrides})


@pytest.fixture
def one_thread():
    """Runs a test with one torch thread (restored afterwards): small models are faster that way."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
