"""The fused straight-through node against its composition of torch ops, and what it keeps."""

from __future__ import annotations

import pytest
import torch

from vq3dlib._numerics import safe_normalize
from vq3dlib.quantize import VectorQuantizer
from vq3dlib.quantize.straight_through import straight_through, straight_through_reference, unit_rows


def _rows(dtype: torch.dtype, huge: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(9, 5, generator=g, dtype=dtype)
    h[2] = 0.0  # zero row: divided by eps
    h[3] *= 1e-20  # shorter than eps
    h[4] *= huge  # squares overflow: scaled first
    h[5, 0] = -huge  # largest magnitude negative
    return h


def _losses_and_grads(fn, h, codebook, indices, normalize, weights):
    h = h.clone().requires_grad_(True)
    cb = codebook.clone().requires_grad_(True)
    z_st, commitment, codebook_loss = fn(h, cb, indices, normalize=normalize)
    total = (z_st * weights).sum() + 3.0 * commitment + 5.0 * codebook_loss
    g_h, g_cb = torch.autograd.grad(total, (h, cb))
    return (z_st, commitment, codebook_loss), (g_h, g_cb)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(("dtype", "huge"), [(torch.float64, 1e300), (torch.float32, 1e30)])
def test_values_and_gradients_match_the_composition(normalize, dtype, huge):
    h = _rows(dtype, huge)
    codebook = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    indices = torch.tensor([0, 5, 5, 1, 2, 3, 0, 4, 4])
    weights = torch.randn(9, 5, generator=torch.Generator().manual_seed(2), dtype=dtype)
    fused, g_fused = _losses_and_grads(straight_through, h, codebook, indices, normalize, weights)
    ref, g_ref = _losses_and_grads(straight_through_reference, h, codebook, indices, normalize, weights)
    assert torch.equal(fused[0], ref[0])  # z_st: the same roundings
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    for a, b in zip(fused[1:], ref[1:], strict=True):
        assert torch.allclose(a, b, rtol=tol, atol=0)
    for a, b in zip(g_fused, g_ref, strict=True):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max().item())


@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_of_the_losses(normalize):
    # z_st has the value of q and the gradient of z: only the losses are true functions to check
    g = torch.Generator().manual_seed(3)
    h = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    codebook = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([4, 0, 0, 2, 1, 3])
    assert torch.autograd.gradcheck(
        lambda x: straight_through(x, codebook.detach(), indices, normalize=normalize)[1], (h,)
    )
    assert torch.autograd.gradcheck(
        lambda c: straight_through(h.detach(), c, indices, normalize=normalize)[2], (codebook,)
    )


def test_straight_through_gradient_passes_unchanged_without_normalisation():
    h = torch.randn(7, 3, requires_grad=True)
    g = torch.randn(7, 3)
    z_st, _, _ = straight_through(h, torch.randn(4, 3), torch.zeros(7, dtype=torch.long), normalize=False)
    z_st.backward(g)
    assert torch.equal(h.grad, g)


def test_backward_twice_with_a_retained_graph_gives_the_same_gradient():
    h = torch.randn(8, 4, requires_grad=True)
    codebook = torch.randn(3, 4)
    z_st, commitment, _ = straight_through(h, codebook, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    loss = z_st.square().sum() + commitment
    (first,) = torch.autograd.grad(loss, h, retain_graph=True)
    (second,) = torch.autograd.grad(loss, h)
    assert torch.equal(first, second)


def test_unit_rows_is_safe_normalize_bit_for_bit_and_can_write_in_place():
    for dtype, huge in ((torch.float64, 1e300), (torch.float32, 1e30)):
        h = _rows(dtype, huge)
        expect = safe_normalize(h, dim=1)
        assert torch.equal(unit_rows(h).z, expect)
        target = h.clone()
        rows = unit_rows(target, in_place=True)
        assert torch.equal(rows.z, expect) and rows.z.data_ptr() == target.data_ptr()
        assert rows.short[2:4].all() and not rows.short[[0, 1, 4]].any()
        assert rows.scale is not None and rows.scale[4].item() > 1.0 and rows.scale[0].item() == 1.0
    assert unit_rows(torch.randn(4, 3)).scale is None  # ordinary rows: no scaled copy


def test_empty_rows_and_bad_shapes():
    h = torch.zeros(0, 3, requires_grad=True)
    z_st, commitment, codebook_loss = straight_through(h, torch.randn(4, 3), torch.zeros(0, dtype=torch.long))
    assert z_st.shape == (0, 3) and commitment.item() == 0.0 and codebook_loss.item() == 0.0
    (z_st.sum() + commitment).backward()
    assert h.grad.shape == (0, 3)
    with pytest.raises(ValueError, match="codebook"):
        straight_through(torch.randn(2, 3), torch.randn(4, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="indices"):
        straight_through(torch.randn(2, 3), torch.randn(4, 3), torch.zeros(3, dtype=torch.long))


def _saved_row_tensors(vq: VectorQuantizer, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes of the ``[N, code_dim]`` tensors autograd keeps between the quantizer's passes."""
    shapes = []

    def pack(t):
        if t.shape == (x.shape[0], vq.code_dim):
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _, aux = vq(x)
    (out.sum() + aux.loss).backward()
    return shapes


def test_quantizer_keeps_two_code_width_tensors_between_passes():
    vq = VectorQuantizer(24, codebook_size=16, code_dim=4).train()
    x = torch.randn(50, 24, requires_grad=True)
    # the normalised rows (the fused node) and the straight-through rows (the output projection);
    # composed from torch ops autograd kept five
    assert len(_saved_row_tensors(vq, x)) == 2


@pytest.mark.parametrize("l2", [True, False])
def test_quantizer_without_projection_leaves_the_input_alone(l2):
    vq = VectorQuantizer(6, codebook_size=8, l2_normalize=l2).train()
    x = torch.randn(10, 6, requires_grad=True)
    before = x.detach().clone()
    out, _, aux = vq(x)
    (out.sum() + aux.loss).backward()
    assert torch.equal(x.detach(), before) and x.grad is not None


def test_ema_quantizer_without_normalisation_trains_with_a_copy_of_its_codes():
    # the EMA update rewrites the codes between forward and backward: the node keeps a copy
    vq = VectorQuantizer(12, codebook_size=8, code_dim=3, l2_normalize=False, ema=True).train()
    x = torch.randn(40, 12, requires_grad=True)
    codes_before = vq.embed.clone()
    out, idx, aux = vq(x)
    assert not torch.equal(vq.embed, codes_before)  # the update happened in forward
    (out.sum() + aux.loss).backward()
    h = vq.project_in(x.detach())
    expect = 0.25 * ((h - codes_before[idx]) ** 2).mean()
    assert torch.allclose(aux.losses["commitment"], expect, rtol=1e-5)
