"""ResidualVQ: each layer quantizes the previous layers' residual; indices stack per layer."""

from __future__ import annotations

import io

import pytest
import torch

from vq3dlib.quantize import FSQ, LFQ, ResidualVQ, VectorQuantizer


def test_layers_quantize_successive_residuals():
    rvq = ResidualVQ(8, num_quantizers=3, codebook_size=16).eval()
    z = torch.randn(5, 4, 8)
    z_q, idx, aux = rvq(z)
    assert idx.shape == (5, 4, 3)
    residual, total = z.reshape(-1, 8), torch.zeros(20, 8)
    for i, layer in enumerate(rvq.layers):
        q, li, _ = layer(residual)
        assert torch.equal(li, idx.reshape(-1, 3)[:, i])
        residual = residual - q
        total = total + q
    assert torch.allclose(z_q.reshape(-1, 8), total, atol=1e-6)
    assert torch.allclose(rvq.indices_to_codes(idx), z_q, atol=1e-6)
    assert set(aux.losses) == {"0/commitment", "1/commitment", "2/commitment"}
    assert torch.allclose(aux.loss, sum(aux.losses.values()))
    assert {"0/perplexity", "2/used_fraction"} <= set(aux.stats)


def test_top_level_stats_are_means_over_layers():
    layers = [VectorQuantizer(8, 16, code_dim=4), FSQ([5, 5], dim=8), LFQ(8, codebook_size=32)]
    rvq = ResidualVQ(8, quantizers=layers).eval()
    z = torch.randn(4, 25, 8)
    _, idx, aux = rvq(z)
    sizes = [16, 25, 32]
    for key in ("perplexity", "used_fraction"):
        per_layer = torch.stack([aux.stats[f"{i}/{key}"].float() for i in range(3)])
        torch.testing.assert_close(aux.stats[key], per_layer.mean())
    # independent check of the per-layer values from the returned indices
    for i, k in enumerate(sizes):
        used = torch.unique(idx[..., i]).numel()
        assert float(aux.stats[f"{i}/used_fraction"]) == pytest.approx(used / k)
    assert float(aux.stats["used_fraction"]) == pytest.approx(
        sum(torch.unique(idx[..., i]).numel() / k for i, k in enumerate(sizes)) / 3
    )
    assert 1.0 <= float(aux.stats["perplexity"]) <= max(sizes)
    assert {"vq/perplexity", "vq/used_fraction", "vq/1/perplexity"} <= set(aux.log_dict("vq/"))


def test_gradient_is_straight_through():
    rvq = ResidualVQ(6, num_quantizers=2, codebook_size=8)
    z = torch.randn(10, 6, requires_grad=True)
    g = torch.randn(10, 6)
    rvq(z)[0].backward(g)
    # each layer passes its gradient straight through to its input; the detached residual chain
    # means the input receives the sum of the layers' output gradients
    assert torch.allclose(z.grad, 2 * g)


def test_mixed_layers_channels_first_and_state_dict():
    layers = [VectorQuantizer(12, 32, code_dim=4), FSQ([5, 5, 5], dim=12), LFQ(12, codebook_size=16)]
    rvq = ResidualVQ(12, quantizers=layers, channels_last=False)
    z = torch.randn(2, 12, 3, 3)
    z_q, idx, _ = rvq(z)
    assert z_q.shape == z.shape and idx.shape == (2, 3, 3, 3)
    buf = io.BytesIO()
    torch.save(rvq.state_dict(), buf)
    buf.seek(0)
    layers2 = [VectorQuantizer(12, 32, code_dim=4), FSQ([5, 5, 5], dim=12), LFQ(12, codebook_size=16)]
    other = ResidualVQ(12, quantizers=layers2, channels_last=False)
    other.load_state_dict(torch.load(buf))
    rvq.eval(), other.eval()
    assert torch.equal(rvq(z)[0], other(z)[0])
    assert torch.allclose(other.indices_to_codes(idx), other(z)[0], atol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="quantizers"):
        ResidualVQ(8, quantizers=[VectorQuantizer(4, 8)])
    with pytest.raises(ValueError, match="num_quantizers"):
        ResidualVQ(8, num_quantizers=0)
    rvq = ResidualVQ(8, num_quantizers=2, codebook_size=8)
    with pytest.raises(ValueError, match=r"z must have shape \[\.\.\., 8\]"):
        rvq(torch.randn(3, 4))
    with pytest.raises(ValueError, match="z contains NaN"):
        rvq(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match=r"indices must have shape \[\.\.\., 2\]"):
        rvq.indices_to_codes(torch.zeros(3, 3, dtype=torch.long))
