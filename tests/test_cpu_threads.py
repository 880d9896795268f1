"""vq3dlib.cpu_threads: concurrent pieces whose ops run on one thread each."""

from __future__ import annotations

import threading

import pytest
import torch

from vq3dlib._validation import checks_suppressed, inner_checks_off
from vq3dlib.cpu_threads import extension_available, map_concurrently, set_thread_cpu_threads

needs_ext = pytest.mark.skipif(not extension_available(), reason="needs the C++ extension")


def _where() -> tuple[str, int]:
    return threading.current_thread().name, torch.get_num_threads()


@needs_ext
def test_pieces_run_in_order_on_pool_threads_of_one_thread_each():
    before = torch.get_num_threads()
    out = map_concurrently(lambda k: (k, *_where()), range(6), threads=2)
    assert [k for k, _, _ in out] == list(range(6))  # the order of the items
    assert all(name.startswith("vq3dlib-cpu") and n == 1 for _, name, n in out)
    assert torch.get_num_threads() == before  # the caller's thread count is its own


@needs_ext
def test_kernels_in_a_piece_use_the_pools_threads_and_torch_ops_one():
    # the extension's own per-thread initialisation must not reset the ops' count to the process's;
    # the probe kernel, like the marching kernel, runs on the pool's threads and restores the count
    def counts(_):
        return int(torch.ops.vq3dlib.cpu_parallel_threads()), torch.get_num_threads()

    assert map_concurrently(counts, range(4), threads=2) == [(2, 1)] * 4
    assert map_concurrently(counts, range(3), threads=3) == [(3, 1)] * 3


@needs_ext
def test_pieces_keep_the_callers_autograd_mode_and_check_setting():
    def state(_):
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled(), checks_suppressed()

    with torch.no_grad(), inner_checks_off():
        assert set(map_concurrently(state, range(3), threads=2)) == {(False, False, True)}
    with torch.inference_mode():
        assert set(map_concurrently(state, range(3), threads=2)) == {(False, True, False)}
    assert set(map_concurrently(state, range(3), threads=2)) == {(True, False, False)}


@needs_ext
def test_an_error_in_a_piece_is_raised_and_nested_calls_run_inline():
    def fail(k):
        if k == 2:
            raise KeyError("piece 2")
        return k

    with pytest.raises(KeyError, match="piece 2"):
        map_concurrently(fail, range(4), threads=2)
    nested = map_concurrently(lambda k: map_concurrently(lambda j: _where()[0], range(2), 2), range(2), 2)
    assert all(len(set(names)) == 1 for names in nested)  # each inner call ran in its own piece's thread


def test_single_items_and_one_thread_run_in_the_caller():
    assert map_concurrently(lambda _: _where()[0], [0], threads=2) == [threading.current_thread().name]
    assert (
        map_concurrently(lambda _: _where()[0], range(3), threads=1) == [threading.current_thread().name] * 3
    )
    with pytest.raises(ValueError, match="threads"):
        map_concurrently(lambda x: x, range(2), threads=0)
    with pytest.raises(TypeError, match="threads"):
        map_concurrently(lambda x: x, range(2), threads=2.0)
    with pytest.raises(ValueError, match="n must be"):
        set_thread_cpu_threads(0)


def _double_in_a_pool(queue) -> None:
    queue.put(map_concurrently(lambda x: 2 * x, range(4), threads=2))


@needs_ext
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_gets_pools_of_its_own():
    import multiprocessing

    map_concurrently(lambda x: x, range(4), threads=2)  # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_double_in_a_pool, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():  # the inherited pool has no threads: the child waits forever
        child.kill()
        pytest.fail("map_concurrently hung in a forked child")
    assert child.exitcode == 0 and queue.get(timeout=5) == [0, 2, 4, 6]
