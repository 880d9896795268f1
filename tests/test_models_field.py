"""Tests for vq3dlib.models.field: density/colour head and MLP backend selection."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from vq3dlib.models import TriplaneField, get_config, mlp_backend_report
from vq3dlib.models import field as field_mod
from vq3dlib.models.field import frequency_encoding, make_mlp, resolve_mlp_backend, trunc_exp


def dirs(n: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_view_dirs", [False, True])
def test_shapes_ranges_dtypes(device, dtype, use_view_dirs):
    field = TriplaneField(12, use_view_dirs=use_view_dirs, out_features=3, mlp_backend="torch")
    field = field.to(device=device, dtype=dtype)
    feats = torch.randn(50, 12, device=device, dtype=dtype) * 3
    out = field(feats, dirs(50).to(device=device, dtype=dtype))
    assert out.density.shape == (50,) and out.rgb.shape == (50, 3) and out.features.shape == (50, 3)
    assert out.density.dtype == dtype and out.rgb.dtype == dtype
    assert (out.density >= 0).all() and (out.rgb >= 0).all() and (out.rgb <= 1).all()
    torch.testing.assert_close(field.density(feats), out.density)


def test_no_extra_features_gives_none_and_tuple_unpacking():
    density, rgb, extra = TriplaneField(4, mlp_backend="torch")(torch.randn(3, 4))
    assert extra is None and density.shape == (3,) and rgb.shape == (3, 3)


def test_density_does_not_depend_on_view_but_colour_does():
    field = TriplaneField(8, use_view_dirs=True, mlp_backend="torch")
    feats = torch.randn(20, 8)
    a, b = field(feats, dirs(20)), field(feats, dirs(20))
    torch.testing.assert_close(a.density, b.density)
    assert (a.rgb - b.rgb).abs().max() > 1e-4


@pytest.mark.parametrize("activation", ["trunc_exp", "softplus"])
def test_density_bias_and_activation(activation):
    field = TriplaneField(6, density_activation=activation, density_bias=-2.0, mlp_backend="torch")
    last = field.density_net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    density = field.density(torch.randn(5, 6))
    bias = torch.tensor(-2.0)
    expected = torch.exp(bias) if activation == "trunc_exp" else torch.nn.functional.softplus(bias)
    torch.testing.assert_close(density, expected.expand(5))
    out = field(torch.randn(5, 6))
    torch.testing.assert_close(out.rgb, torch.full((5, 3), 0.5))


def test_trunc_exp_forward_and_clamped_gradient():
    x = torch.tensor([-20.0, 0.5, 20.0], dtype=torch.float64, requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    y.sum().backward()
    expected = torch.exp(torch.tensor([-15.0, 0.5, 15.0], dtype=torch.float64))
    torch.testing.assert_close(x.grad, expected)


def test_frequency_encoding_values():
    d = torch.tensor([[0.1, -0.2, 0.3]])
    enc = frequency_encoding(d, 2)
    assert enc.shape == (1, 15)
    torch.testing.assert_close(enc[0, :3], d[0])
    # layout: sin of (freq 0: xyz, freq 1: xyz), then cos of the same
    torch.testing.assert_close(enc[0, 3:6], torch.sin(torch.pi * d[0]))
    torch.testing.assert_close(enc[0, 6:9], torch.sin(2 * torch.pi * d[0]))
    torch.testing.assert_close(enc[0, 9:12], torch.cos(torch.pi * d[0]))
    assert frequency_encoding(d, 0) is d


def test_gradients_reach_features_and_parameters():
    field = TriplaneField(8, use_view_dirs=True, out_features=2, mlp_backend="torch")
    feats = torch.randn(30, 8, requires_grad=True)
    out = field(feats, dirs(30))
    (out.density.sum() + out.rgb.sum() + out.features.sum()).backward()
    assert feats.grad.abs().sum() > 0
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_empty_input():
    field = TriplaneField(8, use_view_dirs=True, mlp_backend="torch")
    out = field(torch.randn(0, 8), torch.randn(0, 3))
    assert out.density.shape == (0,) and out.rgb.shape == (0, 3)


def test_from_config_input_width_follows_reduction():
    assert TriplaneField.from_config(get_config("tiny", mlp_backend="torch")).in_features == 16
    cat = TriplaneField.from_config(get_config("tiny", triplane_reduce="concat", mlp_backend="torch"))
    assert cat.in_features == 48


def test_bad_inputs():
    field = TriplaneField(8, use_view_dirs=True, mlp_backend="torch")
    with pytest.raises(ValueError, match="features"):
        field(torch.randn(4, 7), dirs(4))
    with pytest.raises(ValueError, match="features"):
        field(torch.randn(2, 4, 8), dirs(4))
    with pytest.raises(TypeError, match="features"):
        field(torch.zeros(4, 8, dtype=torch.long), dirs(4))
    with pytest.raises(ValueError, match="view_dirs"):
        field(torch.randn(4, 8))
    with pytest.raises(ValueError, match="view_dirs"):
        field(torch.randn(4, 8), dirs(5))
    with pytest.raises(ValueError, match="density_activation"):
        TriplaneField(8, density_activation="relu")
    with pytest.raises(ValueError, match="mlp_backend"):
        TriplaneField(8, mlp_backend="cuda")


# -- MLP backend selection ---------------------------------------------------------------------


@pytest.fixture
def no_tcnn(monkeypatch):
    monkeypatch.setattr(field_mod, "_tcnn_module", lambda: None)


@pytest.fixture
def fake_tcnn(monkeypatch):
    """A stand-in tinycudann module recording the network config it was asked for."""
    module = types.ModuleType("tinycudann")
    created = []

    class Network(torch.nn.Module):
        def __init__(self, n_input_dims, n_output_dims, network_config):
            super().__init__()
            created.append((n_input_dims, n_output_dims, network_config))
            self.params = torch.nn.Parameter(torch.zeros(1))

    module.Network = Network
    module.created = created
    monkeypatch.setitem(sys.modules, "tinycudann", module)
    return module


def test_tcnn_without_tinycudann_raises_clear_error(no_tcnn):
    with pytest.raises(RuntimeError, match="tiny-cuda-nn"):
        TriplaneField(8, mlp_backend="tcnn")


def test_auto_falls_back_to_torch(no_tcnn, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    field = TriplaneField(8, mlp_backend="auto")
    assert field.mlp_backend == "torch"
    assert "torch" in mlp_backend_report() and "\n" not in mlp_backend_report()


def test_auto_needs_cuda_for_tcnn(fake_tcnn, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mlp_backend("auto") == "torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_mlp_backend("auto") == "tcnn"
    assert "tcnn" in mlp_backend_report()


def test_tcnn_backend_builds_fully_fused_mlps(fake_tcnn):
    field = TriplaneField(8, hidden_dim=32, hidden_layers=2, use_view_dirs=True, mlp_backend="tcnn")
    assert field.mlp_backend == "tcnn"
    (d_in, d_out, cfg_d), (c_in, c_out, cfg_c) = fake_tcnn.created
    assert (d_in, d_out) == (8, 1 + field.geo_features)
    assert (c_in, c_out) == (field.geo_features + 3 + 6 * field.dir_frequencies, 3)
    assert cfg_d["otype"] == "FullyFusedMLP" and cfg_d["n_neurons"] == 32 and cfg_d["n_hidden_layers"] == 2
    with pytest.raises(ValueError, match="CUDA"):
        field(torch.randn(4, 8), dirs(4))
    with pytest.raises(ValueError, match="hidden_dim"):
        make_mlp(8, 4, hidden_dim=48, hidden_layers=1, backend="tcnn")


def test_real_tcnn_matches_shapes_on_cuda():
    if not (field_mod.tcnn_available() and torch.cuda.is_available()):
        pytest.skip("needs tinycudann and a CUDA device")
    field = TriplaneField(16, hidden_dim=64, use_view_dirs=True, mlp_backend="tcnn").cuda()
    out = field(torch.randn(1000, 16, device="cuda"), dirs(1000).cuda())
    assert out.density.shape == (1000,) and out.rgb.dtype == torch.float32
    assert torch.isfinite(out.rgb).all()
