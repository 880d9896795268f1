"""Shared test fixtures: devices to run on, float64 defaults for gradcheck."""

from __future__ import annotations

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


MICRO_VQ3D = dict(image_size=16, patch_size=4, plane_resolution=16, render_resolution=8, samples_per_ray=32)


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
