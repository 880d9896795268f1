"""VectorQuantizer and the chunked nearest-code search."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from vq3dlib.quantize import VectorQuantizer, nearest_code, nearest_code_reference, usage_stats
from vq3dlib.quantize import vq as vq_module


# -- nearest code -----------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["euclidean", "dot"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
def test_nearest_code_matches_brute_force(metric, chunk_size):
    z = torch.randn(301, 8, dtype=torch.float64)
    cb = torch.randn(53, 8, dtype=torch.float64)
    if metric == "dot":
        z, cb = F.normalize(z, dim=1), F.normalize(cb, dim=1)
    got = nearest_code(z, cb, metric=metric, chunk_size=chunk_size)
    assert torch.equal(got, nearest_code_reference(z, cb, metric=metric))


@pytest.fixture
def three_threads():
    """nearest_code splits rows over ``torch.get_num_threads()`` workers and runs serially with 1
    thread; force 3 so that the threaded path (with an uneven split) runs on any machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        yield 3
    finally:
        torch.set_num_threads(before)


def test_nearest_code_threaded_path_keeps_thread_setting(three_threads, monkeypatch):
    pools = []
    real_pool = vq_module._cpu_pool
    monkeypatch.setattr(vq_module, "_cpu_pool", lambda n: pools.append(n) or real_pool(n))
    z, cb = torch.randn(4001, 8, dtype=torch.float64), torch.randn(70, 8, dtype=torch.float64)
    got = nearest_code(z, cb, chunk_size=16)  # large N: rows split over the worker threads
    assert pools and set(pools) == {three_threads}  # the threaded path ran, with 3 workers
    assert torch.equal(got, nearest_code_reference(z, cb))
    assert torch.get_num_threads() == three_threads
    for metric in ("euclidean", "dot"):  # ragged shares, both metrics, default chunk
        zn, cbn = torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(cb, dim=1)
        assert torch.equal(nearest_code(zn, cbn, metric=metric, chunk_size=7),
                           nearest_code_reference(zn, cbn, metric=metric))
    assert torch.get_num_threads() == three_threads


def test_nearest_code_one_thread_takes_the_serial_path(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(vq_module, "_cpu_pool", lambda n: pytest.fail("pool used with one thread"))
    torch.set_num_threads(1)
    try:
        z, cb = torch.randn(4000, 8, dtype=torch.float64), torch.randn(70, 8, dtype=torch.float64)
        assert torch.equal(nearest_code(z, cb, chunk_size=16), nearest_code_reference(z, cb))
    finally:
        torch.set_num_threads(before)


def test_nearest_code_float32_picks_a_minimal_distance():
    z, cb = torch.randn(2000, 16), torch.randn(500, 16)
    got = nearest_code(z, cb, chunk_size=33)
    d = torch.cdist(z.double(), cb.double())
    assert torch.allclose(d.gather(1, got[:, None]).squeeze(1), d.min(dim=1).values, atol=1e-5)


def test_nearest_code_empty_and_bad_input():
    assert nearest_code(torch.zeros(0, 4), torch.randn(3, 4)).shape == (0,)
    with pytest.raises(ValueError, match="codebook"):
        nearest_code(torch.randn(2, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="metric"):
        nearest_code(torch.randn(2, 4), torch.randn(3, 4), metric="cos")


# -- forward semantics --------------------------------------------------------------------------------
@pytest.mark.parametrize("l2", [True, False])
def test_indices_are_nearest_codes_and_outputs_decode(l2):
    vq = VectorQuantizer(24, 40, code_dim=6, l2_normalize=l2).eval()
    z = torch.randn(3, 7, 24)
    z_q, idx, _ = vq(z)
    h = vq.project_in(z.reshape(-1, 24))
    h = F.normalize(h, dim=1) if l2 else h
    expect = nearest_code_reference(h.double(), vq.codebook.double(), metric="euclidean").reshape(3, 7)
    assert torch.equal(idx, expect)
    assert torch.allclose(vq.indices_to_codes(idx), z_q, atol=1e-6)
    assert torch.allclose(z_q, vq.project_out(vq.codebook[idx]), atol=1e-6)


def test_chunked_equals_unchunked():
    torch.manual_seed(1)
    a = VectorQuantizer(16, 64, code_dim=4, chunk_size=5)
    b = VectorQuantizer(16, 64, code_dim=4)
    b.load_state_dict(a.state_dict())
    z = torch.randn(101, 16)
    za, ia, auxa = a(z)
    zb, ib, auxb = b(z)
    assert torch.equal(ia, ib) and torch.equal(za, zb) and torch.equal(a.embed, b.embed)
    assert torch.equal(auxa.loss, auxb.loss)


def test_straight_through_gradient_is_identity_without_projection_or_norm():
    vq = VectorQuantizer(8, 32, l2_normalize=False)
    z = torch.randn(50, 8, requires_grad=True)
    g = torch.randn(50, 8)
    z_q, _, _ = vq(z)
    z_q.backward(g)
    assert torch.equal(z.grad, g)
    assert not torch.equal(z_q.detach(), z.detach())  # it did quantize


def test_straight_through_gradient_through_normalisation():
    vq = VectorQuantizer(8, 32, l2_normalize=True)
    z = torch.randn(50, 8, requires_grad=True)
    g = torch.randn(50, 8)
    vq(z)[0].backward(g)
    z2 = z.detach().clone().requires_grad_(True)
    F.normalize(z2, dim=-1).backward(g)
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)


def test_commitment_loss_value_and_gradient():
    vq = VectorQuantizer(8, 16, l2_normalize=False, beta=0.3).eval()  # eval: codebook stays fixed
    z = torch.randn(20, 8, requires_grad=True)
    z_q, idx, aux = vq(z)
    expect = 0.3 * ((z.detach() - vq.codebook[idx]) ** 2).mean()
    assert torch.allclose(aux.losses["commitment"], expect)
    assert torch.allclose(aux.loss, expect)
    aux.loss.backward()
    assert torch.allclose(z.grad, 0.3 * 2 * (z.detach() - vq.codebook[idx]) / z.numel(), atol=1e-7)


def test_codebook_loss_trains_only_used_codes():
    vq = VectorQuantizer(4, 32, l2_normalize=False, ema=False, beta=0.0)
    z = torch.randn(5, 4)
    _, idx, aux = vq(z)
    assert set(aux.losses) == {"commitment", "codebook"}
    aux.loss.backward()
    used = torch.zeros(32, dtype=torch.bool)
    used[idx] = True
    assert (vq.embed.grad[used].abs().sum(1) > 0).all()
    assert (vq.embed.grad[~used] == 0).all()


def test_ema_update_matches_hand_computed_formula():
    vq = VectorQuantizer(2, 2, l2_normalize=False, decay=0.5, eps=1e-3)
    vq.embed.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    vq.ema_embed_sum.copy_(vq.embed)
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])  # codes 0, 1, 0
    _, idx, _ = vq(z)
    assert idx.tolist() == [0, 1, 0]
    # cluster size: 0.5 * [1, 1] + 0.5 * [2, 1] = [1.5, 1.0]; n = 2.5
    # sums: 0.5 * I + 0.5 * [[3, 0], [0, 3]] = [[2, 0], [0, 2]]
    # smoothed = (size + 1e-3) / (2.5 + 2e-3) * 2.5 = [1.5005996.., 1.0005995..]
    assert torch.allclose(vq.ema_cluster_size, torch.tensor([1.5, 1.0]))
    assert torch.allclose(vq.ema_embed_sum, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    s0 = (1.5 + 1e-3) / (2.5 + 2e-3) * 2.5
    s1 = (1.0 + 1e-3) / (2.5 + 2e-3) * 2.5
    assert torch.allclose(vq.embed, torch.tensor([[2.0 / s0, 0.0], [0.0, 2.0 / s1]]), atol=1e-6)


def test_ema_update_with_l2_normalize_matches_hand_computed_formula():
    # the EMA runs on the normalised inputs; the search uses the normalised EMA codes
    vq = VectorQuantizer(2, 2, l2_normalize=True, decay=0.5, eps=1e-3)
    vq.embed.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    vq.ema_embed_sum.copy_(vq.embed)
    z = torch.tensor([[3.0, 1.0], [1.0, 3.0], [4.0, -3.0]])
    # unit vectors: [3, 1]/sqrt(10) -> code 0, [1, 3]/sqrt(10) -> code 1, [0.8, -0.6] -> code 0
    _, idx, _ = vq(z)
    assert idx.tolist() == [0, 1, 0]
    a = 1.0 / 10**0.5
    # cluster sizes as before: 0.5 * [1, 1] + 0.5 * [2, 1] = [1.5, 1.0]; n = 2.5
    # sums: 0.5 * I + 0.5 * [[3a + 0.8, a - 0.6], [a, 3a]]
    sums = torch.tensor([[0.5 + 0.5 * (3 * a + 0.8), 0.5 * (a - 0.6)], [0.5 * a, 0.5 + 1.5 * a]])
    assert torch.allclose(vq.ema_cluster_size, torch.tensor([1.5, 1.0]))
    assert torch.allclose(vq.ema_embed_sum, sums, atol=1e-6)
    s0 = (1.5 + 1e-3) / (2.5 + 2e-3) * 2.5
    s1 = (1.0 + 1e-3) / (2.5 + 2e-3) * 2.5
    embed = sums / torch.tensor([[s0], [s1]])
    assert torch.allclose(vq.embed, embed, atol=1e-6)
    unit = embed / embed.norm(dim=1, keepdim=True)
    assert torch.allclose(vq.codebook, unit, atol=1e-6)
    assert torch.allclose(vq.codebook.norm(dim=1), torch.ones(2))


def test_eval_mode_does_not_touch_buffers():
    vq = VectorQuantizer(8, 16, code_dim=4, dead_code_steps=1).eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(30, 8))
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())


@pytest.mark.parametrize("ema", [True, False])
def test_dead_code_restart_only_for_dead_codes(ema):
    k = 16
    vq = VectorQuantizer(4, k, l2_normalize=False, ema=ema, dead_code_steps=2, decay=0.9)
    with torch.no_grad():
        vq.embed.copy_(torch.randn(k, 4) * 0.01 + 100.0)  # far away codes ...
        vq.embed[:3] = torch.eye(4)[:3] * 5.0  # ... except three that take every input
        if ema:
            vq.ema_embed_sum.copy_(vq.embed)
    z = torch.eye(4)[:3].repeat(10, 1) * 5.0 + 0.1 * torch.randn(30, 4)
    _, _, aux = vq(z)
    assert float(aux.stats["restarted"]) == 0
    assert vq.unused_steps[3:].eq(1).all() and vq.unused_steps[:3].eq(0).all()
    live_before = vq.embed[:3].clone()
    expect_live = live_before.clone()
    if ema:  # what the EMA update alone gives the live codes
        probe = VectorQuantizer(4, k, l2_normalize=False, ema=True, decay=0.9)
        probe.load_state_dict(vq.state_dict())
        probe.dead_code_steps = None
        probe(z)
        expect_live = probe.embed[:3].clone()
    _, _, aux = vq(z)
    assert float(aux.stats["restarted"]) == k - 3
    assert torch.allclose(vq.embed[:3], expect_live)
    # every restarted code is one of this batch's vectors
    d = (vq.embed[3:].detach()[:, None] - z[None]).norm(dim=-1)
    assert (d.min(dim=1).values < 1e-6).all()
    assert vq.unused_steps.eq(0).all()
    if ema:
        assert torch.equal(vq.ema_cluster_size[3:], torch.ones(k - 3))


def test_restart_with_empty_batch_is_a_no_op():
    vq = VectorQuantizer(4, 8, dead_code_steps=1)
    _, _, aux = vq(torch.zeros(0, 4))
    assert float(aux.stats["restarted"]) == 0
    assert vq.unused_steps.eq(1).all() and torch.isfinite(vq.embed).all()


# -- layout, stats, state -------------------------------------------------------------------------------
def test_channels_first_matches_channels_last():
    torch.manual_seed(3)
    last = VectorQuantizer(12, 32, code_dim=4).eval()
    first = VectorQuantizer(12, 32, code_dim=4, channels_last=False).eval()
    first.load_state_dict(last.state_dict())
    z = torch.randn(2, 12, 5, 6)
    zq1, i1, _ = first(z)
    zq2, i2, _ = last(z.permute(0, 2, 3, 1))
    assert zq1.shape == z.shape and i1.shape == (2, 5, 6)
    assert torch.equal(i1, i2) and torch.allclose(zq1, zq2.permute(0, 3, 1, 2))
    assert torch.allclose(first.indices_to_codes(i1), zq1, atol=1e-6)


def test_usage_stats():
    vq = VectorQuantizer(4, 8, l2_normalize=False).eval()
    z = vq.embed[2].expand(10, 4).clone()
    _, idx, aux = vq(z)
    assert idx.eq(2).all()
    assert float(aux.stats["perplexity"]) == pytest.approx(1.0)
    assert float(aux.stats["used_fraction"]) == pytest.approx(1 / 8)
    z = vq.embed.repeat(3, 1)
    aux = vq(z)[2]
    assert float(aux.stats["perplexity"]) == pytest.approx(8.0)
    assert float(aux.stats["used_fraction"]) == 1.0
    assert float(usage_stats(torch.zeros(4))["perplexity"]) == 0.0
    assert set(aux.log_dict("vq/")) >= {"vq/loss", "vq/commitment", "vq/perplexity", "vq/used_fraction"}


def test_empty_batch():
    vq = VectorQuantizer(8, 16, code_dim=4)
    z = torch.zeros(0, 8, requires_grad=True)
    z_q, idx, aux = vq(z)
    assert z_q.shape == (0, 8) and idx.shape == (0,)
    assert float(aux.loss.detach()) == 0.0
    (z_q.sum() + aux.loss).backward()
    assert z.grad.shape == (0, 8)


@pytest.mark.parametrize("ema", [True, False])
def test_state_dict_round_trip(ema):
    a = VectorQuantizer(8, 16, code_dim=4, ema=ema, dead_code_steps=3)
    for _ in range(2):
        a(torch.randn(40, 8))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = VectorQuantizer(8, 16, code_dim=4, ema=ema, dead_code_steps=3)
    b.load_state_dict(torch.load(buf))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    z = torch.randn(10, 8)
    a.eval(), b.eval()
    assert torch.equal(a(z)[0], b(z)[0])


def test_bad_input():
    vq = VectorQuantizer(8, 16, code_dim=4)
    with pytest.raises(ValueError, match=r"z must have shape \[\.\.\., 8\]"):
        vq(torch.randn(3, 7))
    z = torch.randn(3, 8)
    z[1, 2] = float("nan")
    with pytest.raises(ValueError, match="z contains NaN"):
        vq(z)
    with pytest.raises(TypeError, match="z must be a floating-point"):
        vq(torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"z must have shape \[B, 8, \.\.\.\]"):
        VectorQuantizer(8, 16, channels_last=False)(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="indices"):
        vq.indices_to_codes(torch.tensor([16]))
    with pytest.raises(TypeError, match="indices"):
        vq.indices_to_codes(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(8, 16, decay=1.0)
    with pytest.raises(ValueError, match="codebook_size"):
        VectorQuantizer(8, 0)
    with pytest.raises(ValueError, match="dead_code_steps"):
        VectorQuantizer(8, 4, dead_code_steps=0)


def _search_in_child(queue, z, cb) -> None:
    queue.put(nearest_code(z, cb, chunk_size=16).tolist())


def test_nearest_code_works_in_a_forked_child():
    # the child must build its own worker pool (the parent's threads do not survive a fork); the
    # child only runs nearest_code (large multi-threaded torch ops can hang in forked children)
    import multiprocessing as mp

    z, cb = torch.randn(4000, 8, dtype=torch.float64), torch.randn(70, 8, dtype=torch.float64)
    nearest_code(z, cb, chunk_size=16)  # the parent creates its pool
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_search_in_child, args=(queue, z, cb))
    proc.start()
    proc.join(timeout=120)
    alive = proc.is_alive()
    if alive:
        proc.kill()
    assert not alive, "nearest_code hung in a forked child"
    assert queue.get(timeout=5) == nearest_code_reference(z, cb).tolist()


@pytest.mark.parametrize("scale", [1e19, 1e30, 1e-30])
def test_scaled_inputs_pick_the_same_codes(scale):
    from vq3dlib.quantize import VectorQuantizer

    vq = VectorQuantizer(dim=4, codebook_size=64, code_dim=4).eval()
    x = torch.randn(500, 4)
    _, ref, _ = vq(x)
    z_q, idx, _ = vq(x * scale)
    assert torch.equal(idx, ref)
    torch.testing.assert_close(z_q, vq.codebook[ref])


def test_dtype_and_device_mismatch_errors_name_the_input():
    from vq3dlib.quantize import VectorQuantizer

    vq = VectorQuantizer(dim=16, codebook_size=8, code_dim=4)
    with pytest.raises(TypeError, match="z has dtype torch.bfloat16 but the quantizer.s projection"):
        vq(torch.randn(3, 16, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="z is on meta but the quantizer is on cpu"):
        vq(torch.randn(3, 16, device="meta"))
    z_q, idx, _ = vq.to(torch.bfloat16)(torch.randn(3, 16, dtype=torch.bfloat16))
    assert z_q.dtype == torch.bfloat16 and idx.shape == (3,) and int(idx.max()) < 8
