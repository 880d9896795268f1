"""Value checks of vq3dlib._validation: the NaN/Inf check finds every non-finite value, in every dtype."""

from __future__ import annotations

import pytest
import torch

from vq3dlib._validation import check_tensor, inner_checks_off


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 17, -1])
def test_finite_check_rejects_any_non_finite_value(dtype, bad, where):
    x = torch.randn(40, 3).to(dtype)
    x.view(-1)[where] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        check_tensor("x", x, finite=True)
    with inner_checks_off():  # skipped when value checks are off
        check_tensor("x", x, finite=True)


def test_finite_check_accepts_finite_extremes_and_grad_tensors():
    big = torch.tensor([torch.finfo(torch.float32).max, -torch.finfo(torch.float32).max, 0.0])
    check_tensor("big", big, finite=True)  # largest finite values pass
    check_tensor("g", torch.randn(5, requires_grad=True), finite=True)
    check_tensor("scalar", torch.tensor(1.5), finite=True)
    check_tensor("empty", torch.empty(0, 3), finite=True)


@pytest.mark.parametrize(
    "layout",
    [
        lambda t: t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),  # channels-last view
        lambda t: t.transpose(1, 3),
        lambda t: t[:, :, ::2],  # not dense: checked as it is
        lambda t: t[:, :1].expand(-1, 4, -1, -1),  # overlapping: checked as it is
        lambda t: t[:, :, :1],  # a size-1 dimension with any stride
    ],
)
def test_finite_check_finds_every_bad_value_in_permuted_and_strided_layouts(layout):
    base = torch.randn(2, 4, 6, 5)
    check_tensor("x", layout(base), finite=True)
    caught = 0
    for flat in range(0, base.numel(), 7):  # one bad value at a time, all over the base tensor
        bad = base.clone()
        bad.view(-1)[flat] = float("nan")
        view = layout(bad)
        if not bool(view.isnan().any()):  # outside the view
            check_tensor("x", view, finite=True)
            continue
        caught += 1
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            check_tensor("x", view, finite=True)
    assert caught > 0


def test_in_memory_order_is_a_view_of_a_permuted_dense_tensor():
    from vq3dlib._validation import _in_memory_order

    base = torch.randn(3, 4, 5)
    view = base.permute(2, 0, 1)
    flat = _in_memory_order(view)
    assert flat.data_ptr() == base.data_ptr() and torch.equal(flat, base.reshape(-1))
    strided = base[:, ::2]
    assert _in_memory_order(strided) is strided
