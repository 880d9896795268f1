"""Value checks of vq3dlib._validation: the NaN/Inf check finds every non-finite value, in every dtype."""

from __future__ import annotations

import pytest
import torch

from vq3dlib._validation import (
    CHECKED_ONCE_MIN_ELEMENTS,
    check_range,
    check_tensor,
    checked_values,
    inner_checks_off,
    value_bounds,
    values_checked_once,
)


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.int64, torch.uint8])
def test_range_check_rejects_each_value_outside_its_bounds(dtype):
    x = torch.tensor([[0, 3], [1, 2]], dtype=dtype).t()  # a permuted view: reduced in memory order
    check_range("x", x, low=0, high=3)
    for flat in range(4):  # one value past the upper bound, at each place of the base tensor
        y = x.t().clone()
        y.view(-1)[flat] = 9
        with pytest.raises(ValueError, match=r"x must lie in \[0, 3\], got values in \[.*, 9(\.0)?\]"):
            check_range("x", y.t(), low=0, high=3)
    with inner_checks_off():  # a value check: skipped when value checks are off
        check_range("x", torch.tensor([5], dtype=dtype), high=3)
    if dtype in (torch.int64, torch.float32):  # below the lower bound
        with pytest.raises(ValueError, match=r"x must lie in \[1, inf\]"):
            check_range("x", x, low=1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_range_check_rejects_nan_and_inf_past_a_bound(bad):
    x = torch.rand(50)
    x[17] = bad
    with pytest.raises(ValueError, match="x must lie in"):
        check_range("x", x, low=0, high=1)
    if bad != bad:  # NaN is outside every range, also a one-sided one
        with pytest.raises(ValueError, match="and NaN"):
            check_range("x", x, low=0)
    else:
        check_range("x", x, low=0)  # +inf lies in [0, inf]


def test_value_bounds_of_every_kind_of_tensor():
    assert value_bounds(torch.tensor([True, False])) == (0, 1)
    assert value_bounds(torch.tensor([[4, -2], [7, 1]]).t()) == (-2, 7)
    low, high = value_bounds(torch.tensor([1.0, float("nan"), 2.0]))
    assert low != low and high != high  # NaN in both
    assert value_bounds(torch.tensor([-float("inf"), 1.0])) == (-float("inf"), 1.0)


def _counting_value_bounds(monkeypatch) -> list[int]:
    """Records the data pointer of every tensor whose values a check reads."""
    import vq3dlib._validation as validation

    seen: list[int] = []
    original = validation.value_bounds

    def counting(x):
        seen.append(x.data_ptr())
        return original(x)

    monkeypatch.setattr(validation, "value_bounds", counting)
    return seen


def test_values_checked_once_reads_a_tensor_once_until_it_changes(monkeypatch):
    seen = _counting_value_bounds(monkeypatch)
    big = torch.rand(CHECKED_ONCE_MIN_ELEMENTS)
    small = torch.rand(CHECKED_ONCE_MIN_ELEMENTS - 1)
    with values_checked_once() as scope:
        for _ in range(3):
            check_tensor("big", big, finite=True)
            check_tensor("small", small, finite=True)  # cheap: checked every time
        assert seen == [big.data_ptr(), small.data_ptr()] + [small.data_ptr()] * 2
        assert scope.contains(big) and not scope.contains(small)
        check_tensor("view", big.view(2, -1), finite=True)  # another tensor object: checked
        assert len(seen) == 5
        big[7] = float("nan")  # modified in place: its version moves on, checked again
        with pytest.raises(ValueError, match="big contains NaN"):
            check_tensor("big", big, finite=True)
        with values_checked_once() as inner:  # nested: the outer scope
            assert inner is scope
    check_tensor("small", small, finite=True)  # outside: every check reads the values
    assert checked_values() is None and len(seen) == 7
    with values_checked_once():
        with torch.inference_mode():
            frozen = torch.rand(CHECKED_ONCE_MIN_ELEMENTS)
        check_tensor("frozen", frozen, finite=True)
        check_tensor("frozen", frozen, finite=True)  # no version counter: checked every time
    assert len(seen) == 9


def test_values_checked_once_scope_is_shared_by_concurrent_pieces(monkeypatch):
    from vq3dlib.cpu_threads import extension_available, map_concurrently

    seen = _counting_value_bounds(monkeypatch)
    planes = torch.rand(CHECKED_ONCE_MIN_ELEMENTS)

    def piece(k):
        check_tensor("planes", planes, finite=True)
        return checked_values()

    with values_checked_once() as scope:
        scopes = map_concurrently(piece, range(4), threads=2)
    assert all(s is scope for s in scopes)
    assert seen == [planes.data_ptr()]
    if extension_available():  # the pieces ran on the pool's threads, which keep no scope after
        assert map_concurrently(lambda k: checked_values(), range(2), threads=2) == [None, None]


def test_checked_values_lets_one_of_two_threads_read_a_tensor():
    import threading
    import time

    from vq3dlib._validation import CheckedValues

    scope, x, runs = CheckedValues(), torch.rand(CHECKED_ONCE_MIN_ELEMENTS), []

    def slow_check():
        runs.append(threading.current_thread().name)
        time.sleep(0.05)  # the other thread arrives while this one reads

    threads = [threading.Thread(target=scope.check_once, args=(x, slow_check)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 1 and scope.contains(x)

    def failing_check():
        raise ValueError("x contains NaN or Inf values")

    y = torch.rand(CHECKED_ONCE_MIN_ELEMENTS)
    with pytest.raises(ValueError, match="x contains NaN"):
        scope.check_once(y, failing_check)
    assert not scope.contains(y)  # a failed check is not remembered
