"""FSQ and LFQ: code <-> index round trips, gradients, losses, and agreement with
vector-quantize-pytorch where both define the same thing (skipped when it is not installed)."""

from __future__ import annotations

import io
import itertools

import pytest
import torch

from vq3dlib.quantize import FSQ, LFQ

try:
    import vector_quantize_pytorch as vqp
except Exception:  # pragma: no cover - optional test extra
    vqp = None

needs_vqp = pytest.mark.skipif(vqp is None, reason="vector-quantize-pytorch not installed")


# -- FSQ ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [[3], [8, 5, 5, 5], [4, 4, 3], [7, 6]])
def test_fsq_index_code_round_trip(levels):
    fsq = FSQ(levels)
    k = fsq.codebook_size
    assert k == int(torch.tensor(levels).prod())
    grid = fsq.indices_to_grid(torch.arange(k))
    assert grid.shape == (k, len(levels))
    assert torch.equal(fsq.codes_to_indices(grid), torch.arange(k))
    assert grid.min() >= -1 and grid.max() <= 1
    assert torch.unique(grid, dim=0).shape[0] == k  # all codes distinct
    # every channel takes exactly L_i values
    for i, lv in enumerate(levels):
        assert torch.unique(grid[:, i]).numel() == lv


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [4, 3]])
def test_fsq_forward_lands_on_grid_and_decodes(levels):
    fsq = FSQ(levels)
    z = torch.randn(4, 9, len(levels)) * 3
    z_q, idx, aux = fsq(z)
    assert idx.shape == (4, 9) and idx.dtype == torch.long
    assert torch.allclose(fsq.indices_to_codes(idx), z_q)
    assert torch.equal(fsq.codes_to_indices(z_q), idx)  # outputs lie exactly on the grid
    assert torch.equal(fsq.indices_to_grid(idx), z_q)
    assert float(aux.loss.detach()) == 0.0
    assert 0 < float(aux.stats["used_fraction"]) <= 1


def test_fsq_straight_through_gradient_is_the_bound_derivative():
    fsq = FSQ([5, 4])
    z = torch.randn(30, 2, requires_grad=True)
    fsq(z)[0].sum().backward()
    levels = torch.tensor([5.0, 4.0])
    half_l = (levels - 1) * (1 + 1e-3) / 2
    shift = torch.atanh(torch.tensor([0.0, 0.5]) / half_l)
    expect = (1 - torch.tanh(z.detach() + shift) ** 2) * half_l / torch.tensor([2.0, 2.0])
    assert torch.allclose(z.grad, expect, atol=1e-6)


def test_fsq_projection_channels_first_and_state_dict():
    fsq = FSQ([5, 5, 5], dim=16, channels_last=False)
    z = torch.randn(2, 16, 3, 4)
    z_q, idx, _ = fsq(z)
    assert z_q.shape == z.shape and idx.shape == (2, 3, 4)
    assert torch.allclose(fsq.indices_to_codes(idx), z_q, atol=1e-6)
    buf = io.BytesIO()
    torch.save(fsq.state_dict(), buf)
    buf.seek(0)
    other = FSQ([5, 5, 5], dim=16, channels_last=False)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other(z)[0], z_q)


def test_fsq_bad_input():
    with pytest.raises(ValueError, match="levels"):
        FSQ([5, 1])
    with pytest.raises(ValueError, match="levels"):
        FSQ([])
    fsq = FSQ([5, 5])
    with pytest.raises(ValueError, match=r"z must have shape \[\.\.\., 2\]"):
        fsq(torch.randn(4, 3))
    with pytest.raises(ValueError, match="z contains NaN"):
        fsq(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="indices"):
        fsq.indices_to_codes(torch.tensor([25]))


def test_fsq_codes_to_indices_validates_codes():
    fsq = FSQ([4, 3])
    with pytest.raises(ValueError, match=r"codes must have shape \[\.\.\., 2\]"):
        fsq.codes_to_indices(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"codes must have shape \[\.\.\., 2\]"):
        fsq.codes_to_indices(torch.tensor(0.0))
    with pytest.raises(TypeError, match="codes must be a floating-point"):
        fsq.codes_to_indices(torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="codes contains NaN"):
        fsq.codes_to_indices(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="codes contains NaN"):
        fsq.codes_to_indices(torch.tensor([[float("inf"), 0.0]]))
    # off the grid's range: L=4 takes -1, -0.5, 0, 0.5 (1.0 would be index k=4); L=3 takes -1, 0, 1
    with pytest.raises(ValueError, match="codes must lie on the grid"):
        fsq.codes_to_indices(torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="codes must lie on the grid"):
        fsq.codes_to_indices(torch.tensor([[0.0, -2.0]]))
    assert fsq.codes_to_indices(torch.zeros(0, 2)).shape == (0,)
    # near-grid values round to the nearest grid point
    assert fsq.codes_to_indices(torch.tensor([[0.49, -0.98]])).tolist() == [3]


@needs_vqp
@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [3, 4, 6], [7]])
def test_fsq_agrees_with_vector_quantize_pytorch(levels):
    ours = FSQ(levels)
    theirs = vqp.FSQ(levels=levels)
    z = torch.randn(2, 50, len(levels)) * 2
    zq_t, idx_t = theirs(z)
    zq_o, idx_o, _ = ours(z)
    assert torch.equal(idx_o, idx_t.long())
    assert torch.allclose(zq_o, zq_t, atol=1e-6)
    all_idx = torch.arange(ours.codebook_size)
    assert torch.allclose(ours.indices_to_codes(all_idx), theirs.indices_to_codes(all_idx), atol=1e-6)


# -- LFQ ----------------------------------------------------------------------------------------------
def test_lfq_round_trip_and_bit_order():
    lfq = LFQ(5)
    idx = torch.arange(32)
    codes = lfq.indices_to_bits(idx)
    assert torch.equal(lfq.codes_to_indices(codes), idx)
    # first channel is the most significant bit
    for i, bits in enumerate(itertools.product([0, 1], repeat=5)):
        assert codes[i].gt(0).long().tolist() == list(bits)


def test_lfq_codes_to_indices_validates_codes():
    lfq = LFQ(8, codebook_size=2**3)  # projections: codes have width log2(K) = 3, not dim = 8
    assert lfq.codes_to_indices(torch.tensor([[1.0, -1.0, 1.0]])).tolist() == [5]
    with pytest.raises(ValueError, match=r"codes must have shape \[\.\.\., 3\]"):
        lfq.codes_to_indices(torch.zeros(4, 8))
    with pytest.raises(TypeError, match="codes must be a floating-point"):
        lfq.codes_to_indices(torch.ones(4, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="codes contains NaN"):
        lfq.codes_to_indices(torch.tensor([[1.0, float("nan"), -1.0]]))
    assert lfq.codes_to_indices(torch.zeros(0, 3)).shape == (0,)


def test_lfq_forward_signs_and_straight_through():
    lfq = LFQ(6, codebook_scale=0.5).eval()
    z = torch.randn(7, 6, requires_grad=True)
    z_q, idx, aux = lfq(z)
    assert torch.equal(z_q, torch.where(z > 0, 0.5, -0.5))
    assert torch.equal(lfq.indices_to_codes(idx), z_q)
    g = torch.randn(7, 6)
    z_q.backward(g)
    assert torch.equal(z.grad, g)
    assert float(aux.loss.detach()) == 0.0  # no entropy loss in eval, no commitment by default


def test_lfq_entropy_chunked_equals_unchunked():
    a = LFQ(6, entropy_chunk_size=7)
    b = LFQ(6)
    z = (torch.randn(53, 6) * 0.05).requires_grad_(True)
    z2 = z.detach().clone().requires_grad_(True)
    la = a(z)[2].losses["entropy"]
    lb = b(z2)[2].losses["entropy"]
    assert torch.allclose(la, lb, atol=1e-6)
    la.backward()
    lb.backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)
    assert z.grad.abs().sum() > 0


def test_lfq_entropy_loss_matches_definition():
    lfq = LFQ(4, inv_temperature=10.0, diversity_gamma=0.7, entropy_loss_weight=1.0)
    z = torch.randn(20, 4) * 0.1
    aux = lfq(z)[2]
    codes = lfq.indices_to_bits(torch.arange(16))
    p = torch.softmax(2 * 10.0 * z @ codes.t(), dim=-1)
    h = lambda q: -(q * q.clamp_min(1e-5).log()).sum(-1)  # noqa: E731
    expect = h(p).mean() - 0.7 * h(p.mean(0))
    assert torch.allclose(aux.losses["entropy"], expect, atol=1e-6)


def test_lfq_commitment_projection_channels_first_and_errors():
    lfq = LFQ(12, codebook_size=2**5, commitment_loss_weight=0.25, channels_last=False)
    z = torch.randn(2, 12, 4, 4)
    z_q, idx, aux = lfq(z)
    assert z_q.shape == z.shape and idx.shape == (2, 4, 4)
    assert set(aux.losses) == {"entropy", "commitment"}
    lfq.eval()
    assert torch.allclose(lfq.indices_to_codes(idx), lfq(z)[0], atol=1e-6)
    with pytest.raises(ValueError, match="codebook_size"):
        LFQ(4, codebook_size=12)
    with pytest.raises(ValueError, match=r"z must have shape \[B, 12"):
        lfq(torch.randn(2, 11, 4))
    with pytest.raises(ValueError, match="z contains NaN"):
        lfq(torch.full((1, 12, 1), float("nan")))
    empty = lfq.train()(torch.zeros(0, 12, 3))
    assert empty[0].shape == (0, 12, 3) and float(empty[2].loss.detach()) == 0.0


@needs_vqp
def test_lfq_agrees_with_vector_quantize_pytorch():
    torch.manual_seed(0)
    theirs = vqp.LFQ(dim=6, codebook_size=2**6, entropy_loss_weight=1.0, diversity_gamma=1.0)
    ours = LFQ(6, entropy_loss_weight=1.0, diversity_gamma=1.0, inv_temperature=100.0)
    z = torch.randn(2, 40, 6) * 0.01  # keep soft assignments away from the 1e-5 log clamp
    (zq_t, idx_t, _), (per_sample_t, codebook_t, _) = theirs(z, return_loss_breakdown=True)
    zq_o, idx_o, aux = ours(z)
    assert torch.equal(idx_o, idx_t.long())
    assert torch.equal(zq_o, zq_t)
    all_idx = torch.arange(64)
    assert torch.equal(ours.indices_to_codes(all_idx), theirs.indices_to_codes(all_idx))
    assert torch.allclose(aux.stats["per_sample_entropy"], per_sample_t, atol=1e-5)
    assert torch.allclose(aux.stats["codebook_entropy"], codebook_t, atol=1e-5)


@needs_vqp
def test_lfq_losses_agree_with_vector_quantize_pytorch():
    # both define the entropy aux loss as weight * (mean per-sample entropy - gamma * entropy of the
    # batch-mean assignment), p = softmax(2 * inv_temperature * <x, c>) over all codes, and the
    # commitment loss as weight * mean((x - sg(q))^2); their aux_loss is the weighted sum, our
    # aux.loss likewise (our aux.losses holds the two weighted terms)
    torch.manual_seed(0)
    kw = dict(entropy_loss_weight=0.3, diversity_gamma=0.7, commitment_loss_weight=0.25)
    theirs = vqp.LFQ(dim=5, codebook_size=2**5, **kw)
    ours = LFQ(5, inv_temperature=100.0, **kw)
    z = torch.randn(3, 30, 5) * 0.01
    z_t = z.clone().requires_grad_()
    z_o = z.clone().requires_grad_()
    (zq_t, _, aux_t), (per_sample_t, codebook_t, commit_t) = theirs(z_t, return_loss_breakdown=True)
    zq_o, _, aux = ours(z_o)
    torch.testing.assert_close(aux.losses["entropy"], 0.3 * (per_sample_t - 0.7 * codebook_t))
    torch.testing.assert_close(aux.losses["commitment"], 0.25 * commit_t)
    torch.testing.assert_close(aux.loss, aux_t)
    # and so do the gradients of output + aux loss (straight-through in both)
    g = torch.randn_like(z)
    torch.autograd.backward([zq_t, aux_t], [g, torch.ones_like(aux_t)])
    torch.autograd.backward([zq_o, aux.loss], [g, torch.ones_like(aux.loss)])
    torch.testing.assert_close(z_o.grad, z_t.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("levels", [[1024, 5], [1001], [4096, 3]])
def test_fsq_large_levels_stay_on_the_grid(levels):
    fsq = FSQ(levels)
    z = torch.cat([torch.randn(2000, len(levels)) * 3, torch.full((1, len(levels)), 20.0)])
    z_q, idx, _ = fsq(z)
    assert int(idx.min()) >= 0 and int(idx.max()) < fsq.codebook_size
    torch.testing.assert_close(fsq.indices_to_codes(idx), z_q)
    top = torch.tensor([(v - 1 - v // 2) / (v // 2) for v in levels])
    assert (z_q <= top).all() and (z_q >= -1).all()
    # [20, 0] saturates channel 0 at its top value (511 / 512 for 1024 levels)
    assert float(z_q[-1, 0]) == pytest.approx(float(top[0]))


@pytest.mark.parametrize(
    "levels, message",
    [([2, 3], "a level of 2 is degenerate"), ([1 << 25], "float32 precision"), ([1 << 21] * 3, "int64")],
)
def test_fsq_refuses_degenerate_or_oversized_levels(levels, message):
    with pytest.raises(ValueError, match=message):
        FSQ(levels)


def test_lfq_bit_limits():
    with pytest.raises(ValueError, match="at most 62 bits"):
        LFQ(64)
    lfq = LFQ(62).eval()
    z = torch.randn(16, 62)
    _, idx, _ = lfq(z)
    assert int(idx.min()) >= 0
    torch.testing.assert_close(lfq.indices_to_bits(idx), torch.where(z > 0, 1.0, -1.0))
    with pytest.raises(ValueError, match="all 1099511627776 codes .* at most 2\\*\\*24"):
        LFQ(40).train()(torch.randn(3, 40))
    _, idx40, aux = LFQ(40, entropy_loss_weight=0.0).train()(torch.randn(3, 40))
    assert float(aux.loss) == 0.0 and idx40.shape == (3,)
