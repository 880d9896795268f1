"""Contraction functions: formulas, properties, inverses, Jacobians."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vq3dlib.contraction import (
    contract,
    contract_axis,
    contract_l2,
    contract_linf,
    contraction_jacobian,
    uncontract,
    uncontract_l2,
    uncontract_linf,
)

KINDS = ["l2", "linf", "axis"]


def _points(n: int = 2000, scale: float = 5.0) -> torch.Tensor:
    return torch.randn(n, 3, dtype=torch.float64) * scale


def test_l2_matches_formula():
    x = _points()
    r = x.norm(dim=-1, keepdim=True)
    expected = torch.where(r <= 1, x, (2 - 1 / r) * x / r)
    torch.testing.assert_close(contract_l2(x), expected)


def test_axis_matches_formula_and_keeps_axis_planes():
    x = _points()
    a = x.abs()
    expected = torch.where(a <= 1, x, (2 - 1 / a) * torch.sign(x))
    torch.testing.assert_close(contract_axis(x), expected)
    # a ground plane y = -0.5 stays y = -0.5 however far away; L-inf squeezes it towards y = 0
    far = torch.tensor([[1e3, -0.5, 40.0]], dtype=torch.float64)
    assert float(contract_axis(far)[0, 1]) == -0.5
    assert abs(float(contract_linf(far)[0, 1])) < 1e-3


def test_linf_matches_formula_pointwise():
    x = _points(200)
    y = contract_linf(x)
    for xi, yi in zip(x, y):
        m = xi.abs().max()
        if m <= 1:
            torch.testing.assert_close(yi, xi)
            continue
        k = int(xi.abs().argmax())
        for j in range(3):
            want = (2 - 1 / m) * torch.sign(xi[k]) if j == k else xi[j] / m
            torch.testing.assert_close(yi[j], want)


@pytest.mark.parametrize("kind", KINDS)
def test_identity_inside_and_bounded(kind):
    inner = torch.rand(500, 3, dtype=torch.float64) * 1.1 - 0.55  # inside both unit ball and cube
    torch.testing.assert_close(contract(inner, kind), inner)
    far = _points(scale=1e4)
    y = contract(far, kind)
    norm = y.norm(dim=-1) if kind == "l2" else y.abs().amax(dim=-1)
    assert bool((norm < 2).all())


@pytest.mark.parametrize("kind", KINDS)
def test_inverse_round_trip(kind):
    x = _points()
    torch.testing.assert_close(uncontract(contract(x, kind), kind), x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_continuous_at_boundary(kind):
    direction = torch.nn.functional.normalize(torch.randn(100, 3, dtype=torch.float64), dim=-1)
    if kind == "linf":
        direction = direction / direction.abs().amax(dim=-1, keepdim=True)  # on the unit cube surface
    eps = 1e-7
    inside = contract(direction * (1 - eps), kind)
    outside = contract(direction * (1 + eps), kind)
    assert float((inside - outside).abs().max()) < 1e-5


@pytest.mark.parametrize("kind", ["none", *KINDS])
def test_jacobian_matches_autograd(kind):
    x = _points(300)
    jac = contraction_jacobian(x, kind)
    auto = torch.autograd.functional.jacobian(lambda t: contract(t, kind).sum(0), x).permute(1, 0, 2)
    torch.testing.assert_close(jac, auto)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=3, max_size=3))
def test_property_bounded_and_invertible(coords):
    x = torch.tensor([coords], dtype=torch.float64)
    norms = (("l2", lambda y: y.norm()), ("linf", lambda y: y.abs().max()), ("axis", lambda y: y.abs().max()))
    for kind, bound in norms:
        y = contract(x, kind)
        assert float(bound(y)) < 2
        torch.testing.assert_close(uncontract(y, kind), x, rtol=1e-6, atol=1e-6)


def test_bad_input_names_argument():
    with pytest.raises(ValueError, match="x must have shape"):
        contract_l2(torch.zeros(4, 2))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        contract_linf(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="kind must be one of"):
        contract(torch.zeros(1, 3), "l3")
    with pytest.raises(ValueError, match="y must lie strictly inside"):
        uncontract_l2(torch.tensor([[2.5, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="y must lie strictly inside"):
        uncontract_linf(torch.tensor([[0.0, -2.0, 0.0]]))


def test_empty_input():
    assert contract_l2(torch.zeros(0, 3)).shape == (0, 3)
    assert contract_linf(torch.zeros(0, 3)).shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_huge_points_keep_their_direction(dtype):
    big = torch.finfo(dtype).max
    x = torch.tensor([[1.9e19, 0, 0], [1.8e19, 0, 0], [0, big / 2, big / 2], [3e18, -4e18, 0]], dtype=dtype)
    y = contract_l2(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.norm(dim=-1), torch.full((4,), 2.0, dtype=dtype))
    unit = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0.5**0.5, 0.5**0.5], [0.6, -0.8, 0]], dtype=dtype)
    torch.testing.assert_close(y / 2, unit)
    jac = contraction_jacobian(x, "l2")
    assert torch.isfinite(jac).all() and (jac.abs() < 1e-18).all()


def test_l2_norm_is_bitwise_the_plain_norm_for_ordinary_points():
    from vq3dlib.contraction import l2_norm

    x = _points(500, 1e3).float().requires_grad_()
    r = l2_norm(x)
    assert torch.equal(r, x.norm(dim=-1, keepdim=True))
    (g,) = torch.autograd.grad(r.sum(), x)
    torch.testing.assert_close(g, x / x.norm(dim=-1, keepdim=True), rtol=0, atol=0)
