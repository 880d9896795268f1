"""Scene contraction functions: unbounded space → a bounded box, their inverses and Jacobians.

* :func:`contract_l2` — mip-NeRF 360: identity inside the unit ball, ``(2 - 1/|x|) x/|x|`` outside;
  maps R^3 into the open ball of radius 2.
* :func:`contract_linf` — MERF's piecewise-projective L∞ contraction: identity inside the unit cube;
  outside, the arg-max coordinate becomes ``(2 - 1/|x_k|) sign(x_k)`` and the others ``x_j/|x|_∞``;
  maps R^3 into the open cube ``(-2, 2)^3``. Its grid cells are axis-aligned boxes, which suits
  triplanes and occupancy grids.
* :func:`contract_axis` — per axis: each coordinate ``c`` with ``|c| > 1`` becomes
  ``(2 - 1/|c|) sign(c)``, the others stay; maps R^3 into ``(-2, 2)^3``. An axis-aligned plane
  ``x_j = c`` with ``|c| <= 1`` (a ground plane ``y = -0.5``) stays that plane out to infinity,
  where the radial contractions squeeze it onto ``x_j = 0``.

The same formulas exist once in C++ (``csrc/include/vq3dlib/contraction.h``) for the fused kernels;
tests keep the two identical.

Example:
    >>> import torch
    >>> x = torch.tensor([[0.5, 0.0, 0.0], [4.0, 0.0, 0.0]])
    >>> contract_l2(x)
    tensor([[0.5000, 0.0000, 0.0000],
            [1.7500, 0.0000, 0.0000]])
    >>> torch.allclose(uncontract_l2(contract_l2(x)), x)
    True
"""

from __future__ import annotations

import torch

from vq3dlib._numerics import safe_norm, scaled_norm
from vq3dlib._validation import check_choice, check_tensor

CONTRACTIONS = ("none", "l2", "linf", "axis")
_EPS = 1e-12


def _check_points(name: str, x: torch.Tensor) -> None:
    check_tensor(name, x, last_dim=3, floating=True, finite=True)


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """``|x|_2`` over the last dimension (kept), without overflow for huge coordinates.

    Points whose squared norm would overflow (``|x|_inf`` above ``sqrt(finfo.max) / 2``) are scaled
    by ``|x|_inf`` first; the others give exactly ``x.norm(dim=-1, keepdim=True)`` (and its gradient).

    Args:
        x: ``[..., D]`` floating-point.

    Returns:
        ``[..., 1]``.

    Example:
        >>> import torch
        >>> l2_norm(torch.tensor([[3e20, 4e20, 0.0], [3.0, 4.0, 0.0]])).squeeze(-1) / torch.tensor([1e20, 1])
        tensor([5., 5.])
    """
    return safe_norm(x)


def contract_l2(x: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360 contraction of points ``x [..., 3]`` into the ball of radius 2.

    Example:
        >>> import torch
        >>> contract_l2(torch.tensor([[0.0, 3.0, 4.0]])).norm(dim=-1)
        tensor([1.8000])
    """
    _check_points("x", x)
    n, big = scaled_norm(x)
    r = n * big  # |x|; inf near finfo.max, where x / big / n still is the unit direction
    factor = (2 - 1 / r.clamp_min(1)) / n.clamp_min(1)
    return torch.where(r > 1, (x / big) * factor, x)


def uncontract_l2(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`contract_l2` for ``y [..., 3]`` with ``|y| < 2``.

    Example:
        >>> import torch
        >>> uncontract_l2(torch.tensor([[1.5, 0.0, 0.0]]))
        tensor([[2., 0., 0.]])
    """
    _check_points("y", y)
    s = y.norm(dim=-1, keepdim=True)
    if bool((s >= 2).any()):
        raise ValueError("y must lie strictly inside the radius-2 ball (|y| < 2) to be uncontracted")
    r = 1 / (2 - s.clamp_min(1))  # |x| for |y| >= 1
    scale = torch.where(s > 1, r / s.clamp_min(1), torch.ones_like(s))
    return y * scale


def _linf_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Arg-max one-hot ``[..., 3]`` (first max wins, as in the C++ kernel), max-abs ``[..., 1]``."""
    absx = x.abs()
    # torch.argmax returns the first maximal index, the same tie-break as linf_argmax in C++
    k = torch.argmax(absx, dim=-1, keepdim=True)
    onehot = torch.zeros_like(x).scatter_(-1, k, 1.0)
    m = absx.gather(-1, k)
    return onehot, m, k


def contract_linf(x: torch.Tensor) -> torch.Tensor:
    """MERF L∞ contraction of points ``x [..., 3]`` into the cube ``(-2, 2)^3``.

    Example:
        >>> import torch
        >>> contract_linf(torch.tensor([[4.0, 2.0, -1.0]]))
        tensor([[ 1.7500,  0.5000, -0.2500]])
    """
    _check_points("x", x)
    onehot, m, _ = _linf_parts(x)
    mc = m.clamp_min(1)
    outside = x / mc
    major = (2 - 1 / mc) * torch.where(x < 0, -1.0, 1.0).to(x.dtype)
    outside = torch.where(onehot > 0, major, outside)
    return torch.where(m > 1, outside, x)


def uncontract_linf(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`contract_linf` for ``y [..., 3]`` inside ``(-2, 2)^3``.

    Example:
        >>> import torch
        >>> uncontract_linf(torch.tensor([[1.75, 0.5, -0.25]]))
        tensor([[ 4.,  2., -1.]])
    """
    _check_points("y", y)
    if bool((y.abs() >= 2).any()):
        raise ValueError("y must lie strictly inside the cube (-2, 2)^3 to be uncontracted")
    onehot, s, _ = _linf_parts(y)
    m = 1 / (2 - s.clamp_min(1))  # |x|_inf for s >= 1
    major = m * torch.where(y < 0, -1.0, 1.0).to(y.dtype)
    outside = torch.where(onehot > 0, major, y * m)
    return torch.where(s > 1, outside, y)


def contract_axis(x: torch.Tensor) -> torch.Tensor:
    """Per-axis contraction of points ``x [..., 3]`` into the cube ``(-2, 2)^3``: each coordinate
    ``c`` with ``|c| > 1`` becomes ``(2 - 1/|c|) sign(c)``.

    Example:
        >>> import torch
        >>> contract_axis(torch.tensor([[4.0, -0.5, -2.0]]))
        tensor([[ 1.7500, -0.5000, -1.5000]])
    """
    _check_points("x", x)
    a = x.abs()
    return torch.where(a > 1, (2 - 1 / a.clamp_min(1)) * torch.where(x < 0, -1.0, 1.0).to(x.dtype), x)


def uncontract_axis(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`contract_axis` for ``y [..., 3]`` inside ``(-2, 2)^3``.

    Example:
        >>> import torch
        >>> uncontract_axis(torch.tensor([[1.75, -0.5, -1.5]]))
        tensor([[ 4.0000, -0.5000, -2.0000]])
    """
    _check_points("y", y)
    if bool((y.abs() >= 2).any()):
        raise ValueError("y must lie strictly inside the cube (-2, 2)^3 to be uncontracted")
    a = y.abs()
    outside = torch.where(y < 0, -1.0, 1.0).to(y.dtype) / (2 - a.clamp_min(1))
    return torch.where(a > 1, outside, y)


def contract(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Dispatches to a contraction by name: ``"none"``, ``"l2"``, ``"linf"`` or ``"axis"``.

    Example:
        >>> import torch
        >>> contract(torch.ones(1, 3) * 0.5, "linf")
        tensor([[0.5000, 0.5000, 0.5000]])
    """
    check_choice("kind", kind, CONTRACTIONS)
    if kind == "l2":
        return contract_l2(x)
    if kind == "linf":
        return contract_linf(x)
    if kind == "axis":
        return contract_axis(x)
    _check_points("x", x)
    return x


def uncontract(y: torch.Tensor, kind: str) -> torch.Tensor:
    """Inverse of :func:`contract` by name.

    Example:
        >>> import torch
        >>> uncontract(torch.tensor([[1.5, 0.0, 0.0]]), "l2")
        tensor([[2., 0., 0.]])
    """
    check_choice("kind", kind, CONTRACTIONS)
    if kind == "l2":
        return uncontract_l2(y)
    if kind == "linf":
        return uncontract_linf(y)
    if kind == "axis":
        return uncontract_axis(y)
    _check_points("y", y)
    return y


def contraction_jacobian(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Jacobian ``d contract(x) / d x`` as ``[..., 3, 3]`` (closed form).

    Renderers use it to size steps: a step ``dt`` along direction ``d`` moves
    ``|J d| dt`` in contracted space.

    Example:
        >>> import torch
        >>> contraction_jacobian(torch.tensor([[2.0, 0.0, 0.0]]), "l2")[0].diagonal()
        tensor([0.2500, 0.7500, 0.7500])
    """
    check_choice("kind", kind, CONTRACTIONS)
    _check_points("x", x)
    eye = torch.eye(3, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], 3, 3)
    if kind == "none":
        return eye.clone()
    if kind == "l2":
        r = l2_norm(x).clamp_min(1)[..., None]  # [..., 1, 1]
        s = 2 / r - 1 / r**2
        c = 2 / r**4 - 2 / r**3
        jac = s * eye + c * x[..., :, None] * x[..., None, :]
        inside = (l2_norm(x) <= 1)[..., None]
        return torch.where(inside, eye, jac)
    if kind == "axis":  # diagonal: 1 inside, 1 / x_j^2 outside
        a = x.abs()
        return torch.diag_embed(torch.where(a > 1, 1 / a.clamp_min(1).square(), torch.ones_like(x)))
    onehot, m, _ = _linf_parts(x)
    mc = m.clamp_min(1)[..., None]  # [..., 1, 1]
    sgn = torch.where(x < 0, -1.0, 1.0).to(x.dtype)
    # rows j != k: e_j/m - x_j sign(x_k)/m^2 e_k ; row k: 1/x_k^2 e_k
    sgn_k = (sgn * onehot).sum(-1)[..., None, None]
    jac = eye / mc - (x[..., :, None] * onehot[..., None, :]) * sgn_k / mc**2
    row_k = onehot[..., None, :] / (mc**2)
    jac = torch.where(onehot[..., :, None] > 0, row_k.expand_as(jac), jac)
    inside = (m[..., 0] <= 1)[..., None, None]
    return torch.where(inside, eye, jac)
