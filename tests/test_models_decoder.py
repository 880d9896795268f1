"""Tests for vq3dlib.models.decoder: code tokens -> triplane."""

from __future__ import annotations

import pytest
import torch

from vq3dlib.models import TriplaneDecoder, get_config
from vq3dlib.models.decoder import PlaneRefiner


def small(**kw) -> TriplaneDecoder:
    args = dict(grid_size=4, width=32, depth=2, heads=4, plane_channels=5, plane_resolution=12)
    args.update(kw)
    return TriplaneDecoder(**args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_config_shape_and_dtype(device, dtype):
    cfg = get_config("tiny")
    dec = TriplaneDecoder.from_config(cfg, in_dim=cfg.code_dim).to(device=device, dtype=dtype)
    planes = dec(torch.randn(2, cfg.num_tokens, cfg.code_dim, device=device, dtype=dtype))
    r = cfg.plane_resolution
    assert planes.shape == (2, 3, cfg.plane_channels, r, r)
    assert planes.dtype == dtype and torch.isfinite(planes).all()


def test_imagenet256_on_meta_device():
    cfg = get_config("imagenet256")
    with torch.device("meta"):
        dec = TriplaneDecoder.from_config(cfg, in_dim=cfg.code_dim)
        planes = dec(torch.empty(2, cfg.num_tokens, cfg.code_dim))
    assert planes.shape == (2, 3, 32, 256, 256) and planes.is_meta


def test_each_token_owns_its_patch_of_all_three_planes():
    # without blocks or refinement, token (i, j) only writes texels [i*p:(i+1)*p, j*p:(j+1)*p]
    dec = small(depth=0).eval()
    tokens = torch.randn(1, 16, 32)
    edited = tokens.clone()
    i, j, p = 2, 1, dec.upscale
    edited[0, i * 4 + j] += 1.0
    diff = (dec(tokens) - dec(edited)).abs()[0]  # [3, C, R, R]
    expected = torch.zeros(12, 12, dtype=torch.bool)
    expected[i * p : (i + 1) * p, j * p : (j + 1) * p] = True
    for plane in range(3):
        assert torch.equal(diff[plane].amax(0) > 0, expected)


def test_planes_are_distinct_outputs():
    planes = small()(torch.randn(1, 16, 32))
    assert (planes[0, 0] - planes[0, 1]).abs().max() > 1e-4
    assert (planes[0, 1] - planes[0, 2]).abs().max() > 1e-4


def test_input_projection_only_when_widths_differ():
    assert isinstance(small().input_proj, torch.nn.Identity)
    dec = small(in_dim=8)
    assert isinstance(dec.input_proj, torch.nn.Linear)
    assert dec(torch.randn(3, 16, 8)).shape == (3, 3, 5, 12, 12)


def test_refiner_starts_as_identity_and_learns():
    dec_plain = small(depth=0)
    dec_ref = small(depth=0, conv_refine=True)
    dec_ref.load_state_dict(dec_plain.state_dict(), strict=False)
    tokens = torch.randn(2, 16, 32)
    torch.testing.assert_close(dec_ref(tokens), dec_plain(tokens))
    dec_ref(tokens).square().mean().backward()
    assert dec_ref.refine.conv2.weight.grad.abs().sum() > 0


def test_refiner_shares_weights_across_planes():
    ref = PlaneRefiner(3)
    torch.nn.init.normal_(ref.conv2.weight)
    plane = torch.rand(1, 1, 3, 6, 6)
    out = ref(plane.expand(1, 3, 3, 6, 6).contiguous())
    torch.testing.assert_close(out[:, 0], out[:, 2])


def test_gradients_reach_every_parameter():
    dec = small(in_dim=8, conv_refine=True)
    torch.nn.init.normal_(dec.refine.conv2.weight)  # otherwise conv1 gets no gradient at init
    dec(torch.randn(2, 16, 8)).square().mean().backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_forward_is_features_then_head():
    dec = small().eval()
    tokens = torch.randn(2, 16, 32)
    torch.testing.assert_close(dec(tokens), dec.forward_head(dec.forward_features(tokens)))


def test_empty_batch():
    assert small()(torch.randn(0, 16, 32)).shape == (0, 3, 5, 12, 12)


def test_bad_inputs():
    dec = small()
    with pytest.raises(ValueError, match="tokens"):
        dec(torch.randn(2, 15, 32))
    with pytest.raises(ValueError, match="tokens"):
        dec(torch.randn(2, 16, 31))
    with pytest.raises(TypeError, match="tokens"):
        dec(torch.zeros(2, 16, 32, dtype=torch.long))
    bad = torch.randn(1, 16, 32)
    bad[0, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN"):
        dec(bad)
    with pytest.raises(ValueError, match="features"):
        dec.forward_head(torch.randn(1, 16, 8))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="plane_resolution"):
        small(plane_resolution=10)
    with pytest.raises(ValueError, match="plane_channels"):
        small(plane_channels=0)
    with pytest.raises(ValueError, match="heads"):
        small(heads=3)
