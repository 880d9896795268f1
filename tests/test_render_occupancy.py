"""Tests for vq3dlib.render.occupancy (OccupancyGrid: from_field, EMA updates, export)."""

from __future__ import annotations

import math

import pytest
import torch

from vq3dlib.ops.march import contract_linf_exact
from vq3dlib.render.occupancy import OccupancyGrid


def ball(radius: float, value: float = 10.0):
    return lambda x, s: value * (x.norm(dim=-1) < radius).to(x.dtype)


def test_from_field_cell_centres_contracted(device):
    grid = OccupancyGrid.from_field(ball(0.6), resolution=16, device=device)
    centres = grid.cell_points(grid._cell_coords(), 0)  # world positions of all centres
    expected = (centres.norm(dim=-1) < 0.6).view(1, 1, 16, 16, 16) & grid.reachable
    assert torch.equal(grid.binaries, expected)
    assert grid.binaries.device.type == device.type
    # query at the centres agrees with the binaries
    assert torch.equal(grid.query(centres), expected.flatten())


def test_from_field_multi_scene_and_scene_index_passed():
    seen = []

    def density(x, s):
        seen.append(s.unique())
        return torch.where(s == 1, (x[:, 0] > 0).float(), (x[:, 0] < 0).float())

    grid = OccupancyGrid.from_field(density, resolution=8, n_scenes=3, batch_size=100)
    assert torch.cat(seen).unique().tolist() == [0, 1, 2]
    b = grid.binaries
    assert torch.equal(b[1], ~b[0] & grid.reachable)  # x > 0 vs x < 0 (no centre lies on x = 0)
    assert torch.equal(b[2], b[0])
    pts = torch.tensor([[-3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    assert grid.query(pts, torch.tensor([0, 0])).tolist() == [True, False]
    assert grid.query(pts, torch.tensor([1, 1])).tolist() == [False, True]


def test_from_field_runs_without_autograd():
    weight = torch.tensor(10.0, requires_grad=True)  # e.g. a generator's output
    grad_modes = []

    def density(x, s):  # a differentiable density, passed without detaching
        grad_modes.append(torch.is_grad_enabled())
        return weight * (x.norm(dim=-1) < 0.5).to(x.dtype)

    with torch.enable_grad():
        grid = OccupancyGrid.from_field(density, resolution=8, n_scenes=2)
        grid.fill_from_field(density)
    assert grad_modes and not any(grad_modes)
    assert not grid.occs.requires_grad and grid.occs.grad_fn is None and weight.grad is None
    assert torch.equal(grid.binaries, OccupancyGrid.from_field(ball(0.5), resolution=8, n_scenes=2).binaries)


def test_from_field_world_box_levels():
    grid = OccupancyGrid.from_field(
        ball(1.6), resolution=8, aabb=[-1, -1, -1, 1, 1, 1], levels=2, contraction="none"
    )
    assert grid.binaries.shape == (1, 2, 8, 8, 8)
    assert grid.binaries[0, 0].all()  # every centre of the inner level lies inside the ball
    pts = torch.tensor([[1.2, 0.0, 0.0], [1.9, 0.0, 0.0], [0.0, 0.0, 0.0], [2.5, 0.0, 0.0]])
    assert grid.query(pts).tolist() == [True, False, True, False]


def test_jitter_and_dilation_grow_occupancy():
    shell = lambda x, s: ((x.norm(dim=-1) - 0.5).abs() < 0.01).float()  # noqa: E731 - thin shell
    plain = OccupancyGrid.from_field(shell, resolution=16)
    g = torch.Generator().manual_seed(0)
    jit = OccupancyGrid.from_field(shell, resolution=16, jitter=True, samples_per_cell=8, generator=g)
    assert jit.binaries.sum() > plain.binaries.sum()
    dil = OccupancyGrid.from_field(shell, resolution=16, jitter=True, samples_per_cell=8, dilation=1,
                                   generator=torch.Generator().manual_seed(0))
    assert (dil.binaries | ~jit.binaries).all()  # superset
    grown = torch.nn.functional.max_pool3d(jit.binaries[:, 0].float(), 3, 1, 1).bool()
    assert torch.equal(dil.binaries[:, 0], grown)


def test_unreachable_contracted_cells_stay_empty():
    grid = OccupancyGrid.from_field(lambda x, s: torch.ones(len(x)), resolution=8)
    # cells with two coordinates beyond +-1 (contracted) hold no world point
    assert not grid.binaries[0, 0, 7, 7, 3] and not grid.binaries[0, 0, 0, 7, 7]
    assert grid.binaries[0, 0, 7, 3, 3] and grid.binaries[0, 0, 3, 3, 3]
    world = torch.randn(20000, 3) * 10
    idx = ((contract_linf_exact(world) + 2) / 4 * 8).floor().long().clamp(0, 7)
    assert grid.reachable[0][idx[:, 0], idx[:, 1], idx[:, 2]].all()


def test_occupied_points_and_cells():
    grid = OccupancyGrid.from_field(ball(3.0), resolution=8)
    cells = grid.occupied_cells()
    assert cells.shape == (int(grid.binaries.sum()), 4)
    world = grid.occupied_points()
    assert (world.norm(dim=-1) < 3.0).all()
    local = grid.occupied_points(world=False)
    assert torch.allclose(contract_linf_exact(world), local, atol=1e-5)
    assert grid.query(world).all()
    with pytest.raises(ValueError, match="scene"):
        grid.occupied_points(scene=1)


def test_fill_from_field_reuses_buffers_and_fraction():
    grid = OccupancyGrid(resolution=8, n_scenes=2)
    ptr = grid.binaries.data_ptr()
    grid.fill_from_field(lambda x, s: (s == 0).float())
    assert grid.binaries.data_ptr() == ptr
    assert grid.occupancy_fraction().tolist() == [1.0, 0.0]


def test_ema_update_matches_nerfacc():
    from nerfacc import OccGridEstimator

    theirs = OccGridEstimator(torch.tensor([-1.0, -1, -1, 1, 1, 1]), resolution=8, levels=2)
    ours = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8, levels=2, contraction="none")
    assert torch.equal(ours.boxes, theirs.aabbs)
    for step in range(0, 12 * 4, 4):
        radius = 0.5 + 0.05 * step
        fn = lambda x: (x.norm(dim=-1, keepdim=True) < radius).float() * 0.5  # noqa: E731, B023
        torch.manual_seed(step)
        theirs.update_every_n_steps(step, fn, warmup_steps=20, n=4)
        torch.manual_seed(step)
        ours.update_every_n_steps(step, fn, warmup_steps=20, n=4)
        assert torch.equal(ours.occs.flatten(), theirs.occs)
        assert torch.equal(ours.binaries[0], theirs.binaries)


def test_ema_update_only_every_n_and_in_training():
    grid = OccupancyGrid(resolution=4)
    grid.update_every_n_steps(3, lambda x: torch.zeros(len(x)), n=16)  # not a multiple of n: no-op
    assert torch.equal(grid.binaries[0], grid.reachable)
    grid.update_every_n_steps(0, lambda x: torch.zeros(len(x)), n=16)
    assert not grid.binaries.any()
    grid.eval()
    with pytest.raises(RuntimeError, match="training"):
        grid.update_every_n_steps(0, lambda x: torch.zeros(len(x)))
    with pytest.raises(ValueError, match="n_scenes"):
        OccupancyGrid(resolution=4, n_scenes=2).update_every_n_steps(0, lambda x: torch.zeros(len(x)))


def test_state_dict_round_trip():
    grid = OccupancyGrid.from_field(ball(0.5), resolution=8)
    other = OccupancyGrid(resolution=8)
    other.load_state_dict(grid.state_dict())
    assert torch.equal(other.binaries, grid.binaries)


def test_bad_inputs():
    with pytest.raises(ValueError, match="aabb"):
        OccupancyGrid(contraction="none")
    with pytest.raises(ValueError, match="levels"):
        OccupancyGrid(levels=2)
    with pytest.raises(ValueError, match="aabb"):
        OccupancyGrid([-1, -1, -1, 1, 1, 1], contraction="linf")
    with pytest.raises(ValueError, match="aabb"):
        OccupancyGrid([1, -1, -1, 0, 1, 1], contraction="none")
    with pytest.raises(ValueError, match="resolution"):
        OccupancyGrid(resolution=(4, 4))
    with pytest.raises(ValueError, match="contraction"):
        OccupancyGrid(contraction="l2")
    with pytest.raises(ValueError, match="NaN"):
        OccupancyGrid.from_field(lambda x, s: torch.full((len(x),), math.nan), resolution=4)
    with pytest.raises(ValueError, match="density_fn"):
        OccupancyGrid.from_field(lambda x, s: torch.zeros(len(x), 2), resolution=4)
    with pytest.raises(TypeError, match="density_fn"):
        OccupancyGrid.from_field(lambda x, s: 0.0, resolution=4)
    with pytest.raises(ValueError, match="jitter"):
        OccupancyGrid.from_field(ball(1.0), resolution=4, samples_per_cell=2)


def test_nan_density_check_follows_the_value_check_switch():
    from vq3dlib import _validation

    nan = lambda x, s: torch.full((len(x),), math.nan)  # noqa: E731
    with pytest.raises(ValueError, match="NaN"):
        OccupancyGrid.from_field(nan, 4)
    _validation.set_finite_checks(False)
    try:  # the check would read the densities (a device sync): skipped
        OccupancyGrid.from_field(nan, 4)
    finally:
        _validation.set_finite_checks(True)


@pytest.mark.parametrize(
    "resolution, error, message",
    [
        (2.5, TypeError, "positive int"),
        (5000, ValueError, "more than 134217728"),
        ("8", TypeError, "positive"),
    ],
)
def test_bad_resolutions_are_refused_by_name(resolution, error, message):
    with pytest.raises(error, match=f"resolution.*{message}"):
        OccupancyGrid(resolution=resolution)
    assert OccupancyGrid(resolution=(4, 5, 6)).binaries.shape == (1, 1, 4, 5, 6)
