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
