"""Packed-segment primitives (vq3dlib.packed): pack_info, checks, per-ray sums, per-ray exclusive scans."""

from __future__ import annotations

import pytest
import torch

from vq3dlib import _validation
from vq3dlib.packed import (
    check_n_rays,
    check_ray_indices,
    exclusive_prod,
    exclusive_sum,
    pack_info,
    pad_segments,
    segment_positions,
    segment_sum,
)


def _dense_exclusive_sum(values, counts):
    out, start = [], 0
    for c in counts:
        run = values[start : start + c].double()
        out.append(torch.cumsum(run, 0) - run)
        start += c
    return torch.cat(out).to(values.dtype)


def test_pack_info_and_segment_positions_are_inverse(device):
    ri = torch.tensor([0, 0, 2, 2, 2, 3], device=device)
    info = pack_info(ri, n_rays=5)
    assert info.tolist() == [[0, 2], [2, 0], [2, 3], [5, 1], [6, 0]]
    positions, rays, ranks = segment_positions(info, 6)
    assert positions.tolist() == list(range(6)) and torch.equal(rays, ri)
    assert ranks.tolist() == [0, 1, 0, 1, 2, 0]
    assert pack_info(ri).shape == (4, 2) and pack_info(ri[:0]).shape == (0, 2)


def test_segment_positions_with_gaps_and_reordered_rays():
    positions, rays, ranks = segment_positions(torch.tensor([[5, 2], [0, 1]]), 8)
    assert (positions.tolist(), rays.tolist(), ranks.tolist()) == ([5, 6, 0], [0, 0, 1], [0, 1, 0])
    with pytest.raises(ValueError, match="outside"):
        segment_positions(torch.tensor([[7, 2]]), 8)


def test_exclusive_sum_matches_per_ray_cumsum_with_trailing_dims(device):
    counts = [3, 0, 5, 1]
    values = torch.rand(9, 2, device=device)
    ri = torch.repeat_interleave(torch.arange(4), torch.tensor(counts)).to(device)
    info = pack_info(ri, 4)
    out = exclusive_sum(values, info)
    for k in range(2):
        torch.testing.assert_close(out[:, k], _dense_exclusive_sum(values[:, k], counts))
    assert exclusive_sum(values, info, dtype=torch.float64).dtype == torch.float64


def test_exclusive_sum_is_per_ray_next_to_huge_values():
    # A global float64 cumsum minus each ray's start gives 1e20 + 1 - 1e20 = 0 for the second ray.
    values = torch.tensor([1e20, 1e20, 1.0, 2.0, 3.0], dtype=torch.float64)
    info = torch.tensor([[0, 2], [2, 3]])
    assert exclusive_sum(values, info).tolist() == [0.0, 1e20, 0.0, 1.0, 3.0]


def test_exclusive_scans_leave_uncovered_samples_at_zero_and_are_differentiable():
    values = torch.rand(6, dtype=torch.float64, requires_grad=True)
    info = torch.tensor([[3, 2], [0, 1]])  # samples 1, 2, 5 belong to no ray
    out = exclusive_sum(values, info)
    assert out[[1, 2, 5]].tolist() == [0.0, 0.0, 0.0] and out[3] == 0 and out[4] == values[3]
    prod = exclusive_prod(values, info)
    assert prod[[1, 2, 5]].tolist() == [0.0, 0.0, 0.0] and prod[0] == 1 and prod[4] == values[3]
    assert torch.autograd.gradcheck(lambda v: exclusive_sum(v, info), (values,))
    assert torch.autograd.gradcheck(lambda v: exclusive_prod(v, info), (values,))


def test_segment_sum_and_pad_segments():
    values = torch.tensor([1.0, 2.0, 3.0])
    assert segment_sum(values, torch.tensor([2, 0, 2]), 3).tolist() == [2.0, 0.0, 4.0]
    assert segment_sum(torch.ones(2, 3), torch.tensor([1, 1]), 2).shape == (2, 3)
    padded = pad_segments(values, torch.tensor([[0, 1], [1, 0], [1, 2]]))
    assert padded.tolist() == [[1.0, 1.0], [0.0, 0.0], [2.0, 3.0]]
    assert pad_segments(values[:0], torch.zeros(2, 2, dtype=torch.long)).shape == (2, 1)


def test_checks_name_the_argument():
    check_n_rays(None)
    with pytest.raises(TypeError, match="n_rays must be an int"):
        check_n_rays(True)
    with pytest.raises(ValueError, match="n_rays must be >= 0"):
        check_n_rays(-1)
    with pytest.raises(ValueError, match=r"\[0, n_rays=2\)"):
        check_ray_indices(torch.tensor([0, 2]), 2, n_rays=2)
    with pytest.raises(ValueError, match="sorted"):
        check_ray_indices(torch.tensor([1, 0]), 2)
    check_ray_indices(torch.tensor([1, 0]), 2, require_sorted=False)
    with pytest.raises(TypeError, match="ray_indices"):
        check_ray_indices(torch.tensor([0.0, 1.0]), 2)
    _validation.set_finite_checks(False)
    try:
        check_ray_indices(torch.tensor([5, 0]), 2, n_rays=1)  # value checks off: no sync, no error
    finally:
        _validation.set_finite_checks(True)


def test_packed_info_from_counts_is_pack_info_of_that_packing():
    counts = torch.tensor([3, 0, 0, 2, 5, 0, 1])
    ray_indices = torch.arange(len(counts)).repeat_interleave(counts)
    from vq3dlib.packed import packed_info_from_counts

    assert torch.equal(packed_info_from_counts(counts), pack_info(ray_indices, n_rays=len(counts)))
    with pytest.raises(TypeError, match="counts must have dtype"):
        packed_info_from_counts(counts.float())
