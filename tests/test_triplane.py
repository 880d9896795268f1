"""ContractedTriplane module."""

from __future__ import annotations

import pytest
import torch

from vq3dlib import ContractedTriplane
from vq3dlib.ops import triplane_sample_reference


def test_learnable_field_matches_functional_and_trains():
    field = ContractedTriplane(resolution=16, channels=4, contraction="l2", bound=2.0)
    points = torch.randn(64, 3)
    out = field(points)
    expected = triplane_sample_reference(field.planes, points[None], contraction="l2", bound=2.0)[0]
    torch.testing.assert_close(out, expected)
    target = torch.randn(64, 4)
    opt = torch.optim.Adam(field.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        loss = (field(points) - target).square().mean()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_generated_planes_dense_and_packed():
    field = ContractedTriplane(channels=3, learnable=False, reduce="mean")
    planes = torch.randn(2, 3, 3, 8, 8)
    dense = field(torch.randn(2, 10, 3), planes=planes)
    assert dense.shape == (2, 10, 3)
    packed = field(torch.randn(7, 3), planes=planes, scene_index=torch.tensor([0, 1, 1, 0, 0, 1, 1]))
    assert packed.shape == (7, 3)


def test_errors():
    field = ContractedTriplane(channels=3, learnable=False)
    with pytest.raises(ValueError, match="planes must be passed"):
        field(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="planes must have 3 channels"):
        field(torch.zeros(1, 4, 3), planes=torch.zeros(1, 3, 5, 8, 8))
    with pytest.raises(ValueError, match="resolution must be > 0"):
        ContractedTriplane(resolution=0)
    with pytest.raises(ValueError, match="reduce must be one of"):
        ContractedTriplane(reduce="max")
