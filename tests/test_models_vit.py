"""Tests for vq3dlib.models.vit: the ViT encoder built from timm blocks."""

from __future__ import annotations

import pytest
import torch

from vq3dlib.models import ViTEncoder, get_config
from vq3dlib.models.vit import transformer_blocks


def small(**kw) -> ViTEncoder:
    args = dict(image_size=16, patch_size=4, width=32, depth=2, heads=4)
    args.update(kw)
    return ViTEncoder(**args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_config_shape_and_dtype(device, dtype):
    cfg = get_config("tiny")
    enc = ViTEncoder.from_config(cfg).to(device=device, dtype=dtype)
    out = enc(torch.rand(3, 3, cfg.image_size, cfg.image_size, device=device, dtype=dtype))
    assert out.shape == (3, cfg.num_tokens, cfg.encoder_width)
    assert out.dtype == dtype and out.device.type == device.type
    assert torch.isfinite(out).all()


def test_imagenet256_on_meta_device():
    cfg = get_config("imagenet256")
    with torch.device("meta"):
        enc = ViTEncoder.from_config(cfg)
        out = enc(torch.empty(2, 3, 256, 256))
    assert out.shape == (2, 1024, 768) and out.is_meta
    n = sum(p.numel() for p in enc.parameters())
    assert 80e6 < n < 90e6  # ViT-Base/8 with 1024 learned positions: ~86M


def test_patch_order_is_row_major_and_local():
    # without blocks, token i depends only on patch i: editing one patch changes one token
    enc = small(depth=0).eval()
    images = torch.rand(1, 3, 16, 16)
    edited = images.clone()
    row, col = 1, 2
    edited[:, :, row * 4 : (row + 1) * 4, col * 4 : (col + 1) * 4] += 1.0
    changed = (enc(images) - enc(edited)).abs().amax(-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [row * enc.grid_size + col]


def test_positions_break_permutation_symmetry():
    # identical patches must still give different tokens (learned positions are added)
    enc = small().eval()
    out = enc(torch.ones(1, 3, 16, 16))
    assert (out[0, 0] - out[0, 5]).abs().max() > 1e-4


def test_batch_elements_are_independent():
    enc = small().eval()
    images = torch.rand(4, 3, 16, 16)
    together = enc(images)
    alone = torch.cat([enc(images[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter():
    enc = small()
    enc(torch.rand(2, 3, 16, 16)).square().mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_empty_batch():
    assert small()(torch.rand(0, 3, 16, 16)).shape == (0, 16, 32)


def test_forward_features_is_forward():
    enc = small().eval()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(enc(x), enc.forward_features(x))


def test_bad_inputs():
    enc = small()
    with pytest.raises(ValueError, match="images"):
        enc(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="images"):
        enc(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="images"):
        enc(torch.rand(3, 16, 16))
    with pytest.raises(TypeError, match="images"):
        enc(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(TypeError, match="images"):
        enc([[0.0]])
    nan = torch.rand(1, 3, 16, 16)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        enc(nan)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="patch_size"):
        ViTEncoder(image_size=16, patch_size=5)
    with pytest.raises(ValueError, match="heads"):
        ViTEncoder(width=30, heads=4)
    with pytest.raises(ValueError, match="image_size"):
        ViTEncoder(image_size=0)


def test_transformer_blocks_drop_path_schedule():
    blocks = transformer_blocks(16, depth=3, heads=2, drop_path=0.2)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
    assert len(transformer_blocks(16, depth=0, heads=2)) == 0
