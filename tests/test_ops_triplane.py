"""Fused triplane sampling: kernel vs reference vs F.grid_sample, gradients, double backward, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from vq3dlib import backend, ops
from vq3dlib.contraction import contract
from vq3dlib.ops import triplane_sample, triplane_sample_reference
from vq3dlib.ops.triplane import double_backward_reference

requires_ext = pytest.mark.skipif(
    not ops.extension_supports("triplane_sample", "cpu"), reason="extension could not be built"
)

OPTIONS = [
    dict(contraction=c, reduce=r, align_corners=a, padding_mode=p)
    for c, r, a, p in itertools.product(
        ["none", "l2", "linf", "axis"], ["sum", "mean", "concat"], [False, True], ["zeros", "border"]
    )
]


def _inputs(device, dtype=torch.float64, n_scenes=2, n=64, channels=5, h=7, w=9, scale=1.5):
    planes = torch.randn(n_scenes, 3, channels, h, w, dtype=dtype, device=device, requires_grad=True)
    points = (torch.randn(n_scenes, n, 3, dtype=dtype, device=device) * scale).requires_grad_()
    return planes, points


def _grid_sample_triplane(planes, points, contraction, bound, reduce, align_corners, padding_mode):
    q = points / bound
    if contraction != "none":
        q = contract(q, contraction) / 2
    feats = []
    for p, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
        grid = torch.stack([q[..., a], q[..., b]], dim=-1)[:, :, None, :]  # [B, N, 1, 2]
        out = F.grid_sample(
            planes[:, p], grid, mode="bilinear", align_corners=align_corners, padding_mode=padding_mode
        )
        feats.append(out[..., 0].transpose(1, 2))  # [B, N, C]
    if reduce == "concat":
        return torch.cat(feats, -1)
    total = sum(feats)
    return total / 3 if reduce == "mean" else total


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_reference_equals_grid_sample(opts):
    planes, points = _inputs("cpu")
    ours = triplane_sample_reference(planes, points, bound=1.3, **opts)
    theirs = _grid_sample_triplane(planes, points, bound=1.3, **opts)
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    for a, b in zip(
        torch.autograd.grad(ours, (planes, points), g), torch.autograd.grad(theirs, (planes, points), g)
    ):
        torch.testing.assert_close(a, b)


@requires_ext
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_kernel_equals_reference_dense(kernel_target, opts):
    planes, points = _inputs(kernel_target.device)
    with kernel_target.forced():
        ours = triplane_sample(planes, points, bound=1.3, **opts)
    ref = triplane_sample_reference(planes, points, bound=1.3, **opts)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ours)
    with kernel_target.forced():
        ours_grads = torch.autograd.grad(ours, (planes, points), g)
    for a, b in zip(ours_grads, torch.autograd.grad(ref, (planes, points), g)):
        torch.testing.assert_close(a, b)


@requires_ext
@pytest.mark.parametrize("contraction", ["none", "l2", "linf", "axis"])
def test_kernel_equals_reference_packed(kernel_target, contraction):
    planes = torch.randn(3, 3, 6, 8, 8, dtype=torch.float64, device=kernel_target.device, requires_grad=True)
    points = (torch.randn(200, 3, dtype=torch.float64, device=kernel_target.device) * 2).requires_grad_()
    scene = torch.randint(0, 3, (200,), device=kernel_target.device)
    with kernel_target.forced():
        ours = triplane_sample(planes, points, scene, contraction=contraction)
        grads = torch.autograd.grad(ours.square().sum(), (planes, points))
    ref = triplane_sample_reference(planes, points, scene, contraction=contraction)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads, torch.autograd.grad(ref.square().sum(), (planes, points))):
        torch.testing.assert_close(a, b)
    # packed == dense for the same points
    dense_pts = points.detach()[None].expand(3, -1, -1)
    dense = triplane_sample(planes.detach(), dense_pts.contiguous(), contraction=contraction)
    rows = dense[scene, torch.arange(200, device=kernel_target.device)]
    torch.testing.assert_close(rows, ours.detach())


@requires_ext
@pytest.mark.parametrize("contraction", ["none", "l2", "linf", "axis"])
def test_gradcheck_kernel(kernel_target, contraction):
    device = kernel_target.device
    planes = torch.randn(2, 3, 3, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    # keep points away from texel boundaries where bilinear interpolation has kinks
    points = (torch.rand(2, 12, 3, dtype=torch.float64, device=device) * 3 - 1.5).requires_grad_()

    def fn(pl, pt):
        with kernel_target.forced():
            return triplane_sample(pl, pt, contraction=contraction, reduce="concat")

    assert torch.autograd.gradcheck(fn, (planes, points), eps=1e-6, atol=1e-5)


@requires_ext
def test_double_backward_kernel_matches_reference(kernel_target):
    device = kernel_target.device
    planes = torch.randn(1, 3, 4, 8, 8, dtype=torch.float64, device=device, requires_grad=True)
    points = (torch.rand(1, 30, 3, dtype=torch.float64, device=device) * 1.6 - 0.8).requires_grad_()

    def eikonal(impl):
        out = impl(planes, points, contraction="l2")[..., 0]
        (grad_pts,) = torch.autograd.grad(out.sum(), points, create_graph=True)
        loss = (grad_pts.norm(dim=-1) - 1).square().mean()
        return torch.autograd.grad(loss, (planes, points))

    with kernel_target.forced():
        ours = eikonal(triplane_sample)
    ref = eikonal(triplane_sample_reference)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


@requires_ext
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_double_backward_kernel_equals_reference(kernel_target, opts):
    """The raw double-backward op vs the pure-torch oracle, every cotangent and output present or not."""
    from vq3dlib.ops._codes import CONTRACTION_CODES, PADDING_CODES, REDUCE_CODES
    from vq3dlib.ops._library import kernels

    device = kernel_target.device
    gen = torch.Generator().manual_seed(5)
    planes_cl = torch.randn(2, 3, 7, 9, 5, dtype=torch.float64, generator=gen).to(device)
    points = (torch.randn(80, 3, dtype=torch.float64, generator=gen) * 1.5).to(device)
    scene = torch.randint(0, 2, (80,), generator=gen).to(device)
    out_channels = 15 if opts["reduce"] == "concat" else 5
    grad_out = torch.randn(80, out_channels, dtype=torch.float64, generator=gen).to(device)
    gg_planes = torch.randn(planes_cl.shape, dtype=torch.float64, generator=gen).to(device)
    gg_points = torch.randn(80, 3, dtype=torch.float64, generator=gen).to(device)
    named = (0, opts["contraction"], 1.3, opts["align_corners"], opts["padding_mode"], opts["reduce"])
    codes = (
        0,
        CONTRACTION_CODES[opts["contraction"]],
        1.3,
        opts["align_corners"],
        PADDING_CODES[opts["padding_mode"]],
        REDUCE_CODES[opts["reduce"]],
    )
    with kernel_target.forced():
        op = kernels().triplane_sample_bwd_bwd
    for cot_planes, cot_points in ((gg_planes, gg_points), (None, gg_points), (gg_planes, None)):
        ref = double_backward_reference(grad_out, planes_cl, points, scene, cot_planes, cot_points, *named)
        ours = op(grad_out, planes_cl, points, scene, cot_planes, cot_points, *codes, True, True, True)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b.detach())
        assert float(ref[2].detach().abs().sum()) > 0  # the point gradient is exercised by each cotangent
    # outputs that are not wanted come back empty, the others unchanged
    only_points = op(grad_out, planes_cl, points, scene, None, gg_points, *codes, False, False, True)
    assert only_points[0].numel() == 0 and only_points[1].numel() == 0
    ref_points = double_backward_reference(grad_out, planes_cl, points, scene, None, gg_points, *named)[2]
    torch.testing.assert_close(only_points[2], ref_points.detach())


@requires_ext
@pytest.mark.parametrize("contraction", ["none", "l2", "linf", "axis"])
def test_gradgradcheck_kernel(kernel_target, contraction):
    device = kernel_target.device
    planes = torch.randn(1, 3, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    points = (torch.rand(1, 6, 3, dtype=torch.float64, device=device) * 3.2 - 1.6).requires_grad_()

    def fn(pl, pt):
        with kernel_target.forced():
            return triplane_sample(pl, pt, contraction=contraction, reduce="concat")

    assert torch.autograd.gradgradcheck(fn, (planes, points), eps=1e-6, atol=1e-4)


@requires_ext
def test_third_order_gradients_match_reference():
    """The double backward's own backward (by recomputation) gives the reference's third derivatives."""
    planes = torch.randn(1, 3, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    points = (torch.rand(1, 10, 3, dtype=torch.float64) * 3 - 1.5).requires_grad_()

    def third(impl):
        out = impl(planes, points, contraction="l2").sum()
        (g,) = torch.autograd.grad(out, points, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), points, create_graph=True)
        return torch.autograd.grad(gg.sin().sum(), (planes, points))

    with backend.forced("ext"):
        ours = third(triplane_sample)
    for a, b in zip(ours, third(triplane_sample_reference)):
        torch.testing.assert_close(a, b)


@requires_ext
def test_raw_double_backward_op_checks_cotangents():
    planes = torch.randn(1, 3, 8, 8, 4)
    points, grad_out = torch.randn(5, 3), torch.randn(5, 4)
    none = torch.empty(0, dtype=torch.long)
    opts = (5, 0, 1.0, False, 0, 0)
    op = torch.ops.vq3dlib.triplane_sample_bwd_bwd
    with pytest.raises(RuntimeError, match=r"gg_points must have shape \[5, 3\]"):
        op(grad_out, planes, points, none, None, torch.ones(4, 3), *opts, True, True, True)
    with pytest.raises(RuntimeError, match="gg_planes must have the dtype and device of planes"):
        op(grad_out, planes, points, none, planes.double(), None, *opts, True, True, True)
    zero = op(grad_out, planes, points, none, None, None, *opts, True, True, True)  # no cotangent: zeros
    assert [t.shape for t in zero] == [grad_out.shape, planes.shape, points.shape]
    assert all(float(t.abs().sum()) == 0.0 for t in zero)


def test_point_gradient_is_differentiable_to_the_planes():
    planes = torch.randn(1, 3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    points = (torch.rand(1, 5, 3, dtype=torch.float64) - 0.5).requires_grad_()
    out = triplane_sample(planes, points).sum()
    (g,) = torch.autograd.grad(out, points, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), planes)
    assert gg.abs().sum() > 0
    with backend.forced("torch"):
        (g_ref,) = torch.autograd.grad(triplane_sample(planes, points).sum(), points, create_graph=True)
    torch.testing.assert_close(gg, torch.autograd.grad(g_ref.square().sum(), planes)[0])


def test_points_outside_bound_read_zero_or_border():
    planes = torch.ones(1, 3, 2, 4, 4)
    far = torch.tensor([[[5.0, 5.0, 5.0]]])
    assert float(triplane_sample(planes, far).abs().max()) == 0.0
    assert torch.allclose(triplane_sample(planes, far, padding_mode="border"), torch.full((1, 1, 2), 3.0))
    # with contraction, far points land inside the contracted box
    assert float(triplane_sample(planes, far * 100, contraction="linf").min()) > 0


def test_empty_inputs(kernel_target):
    device = kernel_target.device
    planes = torch.randn(2, 3, 4, 8, 8, device=device, requires_grad=True)
    with kernel_target.forced():
        out = triplane_sample(planes, torch.zeros(2, 0, 3, device=device))
        packed = triplane_sample(
            planes, torch.zeros(0, 3, device=device), torch.zeros(0, dtype=torch.long, device=device)
        )
        packed.sum().backward()
    assert out.shape == (2, 0, 4)
    assert packed.shape == (0, 4)
    assert planes.grad is not None and float(planes.grad.abs().sum()) == 0.0


@requires_ext
@pytest.mark.parametrize("channels", [1, 7, 8, 9, 13, 17, 24])
def test_kernel_channel_counts_around_the_channel_group(kernel_target, channels):
    """Channel counts that are not a multiple of the CUDA kernels' channel group (8) split unevenly."""
    device = kernel_target.device
    planes, points = _inputs(device, n=37, channels=channels)
    for reduce in ("sum", "concat"):
        with kernel_target.forced():
            ours = triplane_sample(planes, points, contraction="linf", reduce=reduce)
            g = torch.randn_like(ours)
            grads = torch.autograd.grad(ours, (planes, points), g)
        ref = triplane_sample_reference(planes, points, contraction="linf", reduce=reduce)
        torch.testing.assert_close(ours, ref)
        for a, b in zip(grads, torch.autograd.grad(ref, (planes, points), g)):
            torch.testing.assert_close(a, b)


@requires_ext
def test_kernel_one_point_and_scenes_out_of_range(kernel_target):
    """One packed point; with value checks off, points of a scene outside [0, B) read and get zero."""
    from vq3dlib._validation import inner_checks_off

    device = kernel_target.device
    planes = torch.randn(2, 3, 5, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    one = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64, device=device, requires_grad=True)
    scene = torch.tensor([1], device=device)
    with kernel_target.forced():
        ours = triplane_sample(planes, one, scene)
        grads = torch.autograd.grad(ours.sum(), (planes, one))
    ref = triplane_sample_reference(planes, one, scene)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads, torch.autograd.grad(ref.sum(), (planes, one))):
        torch.testing.assert_close(a, b)

    points = torch.rand(6, 3, dtype=torch.float64, device=device) - 0.5
    bad = torch.tensor([0, 2, -1, 1, 7, 0], device=device)
    with kernel_target.forced(), inner_checks_off():
        out = triplane_sample(planes, points.requires_grad_(), bad)
        g_planes, g_points = torch.autograd.grad(out.sum(), (planes, points))
    ok = (bad >= 0) & (bad < 2)
    assert float(out.detach()[~ok].abs().max()) == 0.0 and float(g_points[~ok].abs().max()) == 0.0
    torch.testing.assert_close(out[ok], triplane_sample_reference(planes, points[ok], bad[ok]))
    ref_planes = torch.autograd.grad(triplane_sample_reference(planes, points[ok], bad[ok]).sum(), planes)[0]
    torch.testing.assert_close(g_planes, ref_planes)


def _outputs_and_two_orders_of_gradients(impl, planes, points, scene, **opts):
    """``impl``'s features of the points, their plane and point gradients (of ``out.square().sum()``,
    with a graph) and the gradients of an eikonal term plus a plane-gradient term through those."""
    out = impl(planes, points, scene, **opts)
    g_planes, g_points = torch.autograd.grad(out.square().sum(), (planes, points), create_graph=True)
    loss = (g_points.norm(dim=-1) - 1).square().sum() + (g_planes * g_planes.detach().cos()).sum()
    return (out, g_planes, g_points, *torch.autograd.grad(loss, (planes, points)))


@requires_ext
@pytest.mark.parametrize("contraction", ["none", "l2", "linf", "axis"])
def test_kernel_many_points_equal_reference(kernel_target, contraction):
    """Random points (>= 2048) on planes of >= 16 MiB: the CPU kernels visit them in Morton order."""
    device = kernel_target.device
    gen = torch.Generator().manual_seed(11)
    planes = torch.randn(2, 3, 4, 320, 300, dtype=torch.float64, generator=gen).to(device).requires_grad_()
    points = (torch.randn(5000, 3, dtype=torch.float64, generator=gen) * 1.5).to(device).requires_grad_()
    scene = torch.randint(0, 2, (5000,), generator=gen).to(device)

    opts = dict(contraction=contraction, reduce="concat")
    with kernel_target.forced():
        ours = _outputs_and_two_orders_of_gradients(triplane_sample, planes, points, scene, **opts)
    for a, b in zip(
        ours, _outputs_and_two_orders_of_gradients(triplane_sample_reference, planes, points, scene, **opts)
    ):
        torch.testing.assert_close(a, b)


@requires_ext
@pytest.mark.parametrize("order", ["identity", "morton"])
def test_cpu_row_band_gradients_equal_reference_and_any_thread_count(order):
    """Points in random scenes (each thread owns a band of texel rows): backward and double backward
    equal the reference, bit for bit at any thread count; planes of >= 16 MiB make the kernels visit
    the points in Morton order."""
    gen = torch.Generator().manual_seed(12)
    n_points = 20011
    shape = (2, 3, 4, 12, 10) if order == "identity" else (2, 3, 4, 300, 300)  # 17 MiB
    planes = torch.randn(shape, dtype=torch.float64, generator=gen)
    points = torch.randn(n_points, 3, dtype=torch.float64, generator=gen) * 1.5
    scene = torch.randint(0, 2, (n_points,), generator=gen)

    def run(impl):
        p, x = planes.clone().requires_grad_(), points.clone().requires_grad_()
        return _outputs_and_two_orders_of_gradients(impl, p, x, scene, contraction="linf")

    one, more = _at_one_and_more_threads(lambda: run(triplane_sample))
    for a, b in zip(one, more):
        assert torch.equal(a, b)
    for a, b in zip(one, run(triplane_sample_reference)):
        torch.testing.assert_close(a, b)


@requires_ext
def test_cpu_visit_order_is_reused_only_for_equal_points_and_options():
    """The CPU kernels keep the last Morton visit order (a forward's backward reuses it): points changed
    in place, other scene indices, another plane shape or other options must not reuse it wrongly."""
    gen = torch.Generator().manual_seed(5)
    planes = torch.randn(2, 3, 4, 320, 300, dtype=torch.float64, generator=gen)
    points = torch.randn(5000, 3, dtype=torch.float64, generator=gen) * 1.5
    scene = torch.randint(0, 2, (5000,), generator=gen)
    other_scene = 1 - scene
    tall = planes.reshape(2, 3, 4, 300, 320)  # the same number of texels in another shape
    calls = [
        (planes, scene, dict(contraction="linf")),
        (planes, scene, dict(contraction="linf", reduce="concat", align_corners=True)),
        (tall, scene, dict(contraction="linf")),
        (planes, other_scene, dict(contraction="linf")),
        (planes, scene, dict(contraction="linf", bound=1.5)),
        (planes, scene, dict(contraction="axis")),
    ]
    with backend.forced("ext"):
        for step in range(2):
            if step == 1:
                points[1234, 0] += 0.5  # in place: same storage, other contents
            for pl, sc, opts in calls:
                p, x = pl.clone().requires_grad_(), points.clone().requires_grad_()
                out = triplane_sample(p, x, sc, **opts)
                g = torch.autograd.grad(out.square().sum(), (p, x))
                p2, x2 = pl.clone().requires_grad_(), points.clone().requires_grad_()
                ref = triplane_sample_reference(p2, x2, sc, **opts)
                g_ref = torch.autograd.grad(ref.square().sum(), (p2, x2))
                torch.testing.assert_close(out, ref)
                torch.testing.assert_close(g[0], g_ref[0])
                torch.testing.assert_close(g[1], g_ref[1])


@requires_ext
@pytest.mark.parametrize("channels,reduce", [(32, "sum"), (12, "concat"), (16, "mean")])
def test_cpu_float32_rows_in_visit_order_equal_reference(channels, reduce):
    """float32 planes of >= 16 MiB and random points: the forward writes its rows in Morton order with
    streaming stores; every row must hold what the reference computes."""
    gen = torch.Generator().manual_seed(7)
    res = {32: 256, 16: 384, 12: 416}[channels]  # planes of >= 16 MiB: the kernels sort the points
    planes = torch.randn(1, 3, channels, res, res, generator=gen)
    points = torch.randn(1, 4099, 3, generator=gen) * 1.5
    with backend.forced("ext"):
        ours = triplane_sample(planes, points, contraction="linf", reduce=reduce)
    ref = triplane_sample_reference(planes, points, contraction="linf", reduce=reduce)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


# float32 with 8, 12, 16 or 32 channels and no or L-inf contraction: AVX2 lanes locate the texels
LANE_OPTIONS = [
    dict(contraction=c, reduce=r, align_corners=a, padding_mode=p)
    for c, r, a, p in itertools.product(
        ["none", "linf"], ["sum", "mean", "concat"], [False, True], ["zeros", "border"]
    )
]


@requires_ext
@pytest.mark.parametrize("channels", [8, 12, 16, 32])
@pytest.mark.parametrize("opts", LANE_OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_cpu_float32_forward_in_lanes_equals_reference(channels, opts):
    """Packed points of two scenes (scenes out of range among them), dense points, texel corners and faces,
    and counts that leave partial blocks of 16 points and partial groups of 8 lanes."""
    from vq3dlib._validation import inner_checks_off

    gen = torch.Generator().manual_seed(channels)
    planes = torch.randn(2, 3, channels, 9, 12, generator=gen)
    points = torch.randn(203, 3, generator=gen) * (2.5 if opts["contraction"] == "linf" else 0.9)
    points[:40] = torch.randint(-12, 13, (40, 3), generator=gen) / 12  # on texel corners and faces
    scene = torch.randint(0, 2, (203,), generator=gen)
    scene[[5, 77, 150]] = torch.tensor([-1, 2, 9])
    with backend.forced("ext"), inner_checks_off():
        packed = triplane_sample(planes, points, scene, bound=0.8, **opts)
        dense = triplane_sample(planes, points[:202].reshape(2, 101, 3), bound=0.8, **opts)
    dense_points = points[:202].reshape(2, 101, 3).double()
    ok = (scene >= 0) & (scene < 2)
    assert float(packed[~ok].abs().max()) == 0.0
    ref = triplane_sample_reference(planes.double(), points[ok].double(), scene[ok], bound=0.8, **opts)
    torch.testing.assert_close(packed[ok].double(), ref, rtol=1e-5, atol=1e-5)
    ref = triplane_sample_reference(planes.double(), dense_points, bound=0.8, **opts)
    torch.testing.assert_close(dense.double(), ref, rtol=1e-5, atol=1e-5)


@requires_ext
@pytest.mark.parametrize(
    "shape",
    [(1, 3, 32, 256, 256), (2, 3, 5, 37, 130), (1, 3, 129, 3, 70), (2, 3, 12, 20, 37), (1, 3, 8, 4, 2)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_layout_changes_equal_permuted_copies(shape, dtype):
    """The tiled transposes (8 x 8 register blocks in float), with sizes that leave partial tiles and
    partial blocks in both directions."""
    from vq3dlib.ops._library import kernels

    x = torch.randn(shape, dtype=dtype)
    last = kernels().planes_channels_last(x)
    assert torch.equal(last, x.permute(0, 1, 3, 4, 2).contiguous())
    assert torch.equal(kernels().planes_channels_first(last), x)


def test_half_precision_computed_in_float32():
    planes = torch.randn(1, 3, 4, 8, 8)
    points = torch.rand(1, 10, 3) - 0.5
    out = triplane_sample(planes.half(), points.half())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), triplane_sample(planes, points), atol=1e-2, rtol=1e-2)


def test_bad_inputs_raise_clear_errors():
    planes = torch.randn(2, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="planes must have shape"):
        triplane_sample(torch.randn(2, 2, 4, 8, 8), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="planes must have 5 dimensions"):
        triplane_sample(torch.randn(3, 4, 8, 8), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match=r"points must have shape \[..., 3\]"):
        triplane_sample(planes, torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match="B = planes.shape"):
        triplane_sample(planes, torch.zeros(3, 5, 3))
    with pytest.raises(TypeError, match="points must have the dtype of planes"):
        triplane_sample(planes, torch.zeros(2, 5, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="points must be a floating-point"):
        triplane_sample(planes, torch.zeros(2, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="points contains NaN"):
        triplane_sample(planes, torch.full((2, 5, 3), float("nan")))
    with pytest.raises(ValueError, match="planes contains NaN"):
        triplane_sample(planes * float("nan"), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match=r"scene_index \[S\] is required"):
        triplane_sample(planes, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="scene_index values must be in"):
        triplane_sample(planes, torch.zeros(5, 3), torch.tensor([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError, match="scene_index must have shape"):
        triplane_sample(planes, torch.zeros(5, 3), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="scene_index must be an integer"):
        triplane_sample(planes, torch.zeros(5, 3), torch.zeros(5))
    with pytest.raises(ValueError, match="reduce must be one of"):
        triplane_sample(planes, torch.zeros(2, 5, 3), reduce="max")
    with pytest.raises(ValueError, match="contraction must be one of"):
        triplane_sample(planes, torch.zeros(2, 5, 3), contraction="sphere")
    with pytest.raises(ValueError, match="bound must be > 0"):
        triplane_sample(planes, torch.zeros(2, 5, 3), bound=0.0)
    with pytest.raises(TypeError, match="planes must be a torch.Tensor"):
        triplane_sample(None, torch.zeros(2, 5, 3))


def _at_one_and_more_threads(fn):
    """``[fn(), fn()]`` on the compiled kernels, once with one thread and once with ``max(2, threads)``."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            with backend.forced("ext"):
                results.append(fn())
    finally:
        torch.set_num_threads(threads)
    return results


def _kernel_grads_at_one_and_more_threads(planes, points, scene, contraction):
    """(plane grad, point grad) of ``triplane_sample(...).square().sum()`` on the compiled kernels,
    once with one thread and once with ``max(2, threads)``."""

    def grads():
        p, x = planes.clone().requires_grad_(), points.clone().requires_grad_()
        triplane_sample(p, x, scene, contraction=contraction).square().sum().backward()
        return p.grad, x.grad

    return _at_one_and_more_threads(grads)


@requires_ext
def test_cpu_gradients_are_bitwise_identical_for_any_thread_count():
    gen = torch.Generator().manual_seed(3)
    planes = torch.randn(2, 3, 8, 32, 32, generator=gen)
    points = torch.randn(4000, 3, generator=gen) * 1.5
    scene = torch.randint(0, 2, (4000,), generator=gen)
    grads = _kernel_grads_at_one_and_more_threads(planes, points, scene, "linf")
    assert torch.equal(grads[0][0], grads[-1][0]) and torch.equal(grads[0][1], grads[-1][1])


@requires_ext
@pytest.mark.parametrize("layout", ["dense", "packed sorted"])
def test_cpu_scene_by_scene_gradients_equal_reference_and_any_thread_count(layout):
    """Points that come scene by scene (dense, or packed with sorted scene indices, one scene
    empty): the CPU backward gives each thread whole scenes."""
    gen = torch.Generator().manual_seed(4)
    planes = torch.randn(5, 3, 16, 24, 20, dtype=torch.float64, generator=gen)
    points = torch.randn(5, 3001, 3, dtype=torch.float64, generator=gen) * 1.2
    scene = None
    if layout == "packed sorted":
        points = points.reshape(-1, 3)
        scene = torch.randint(0, 5, (points.shape[0],), generator=gen).sort().values
        scene[scene == 2] = 3  # scene 2 has no points
    grads = _kernel_grads_at_one_and_more_threads(planes, points, scene, "axis")
    assert torch.equal(grads[0][0], grads[-1][0]) and torch.equal(grads[0][1], grads[-1][1])
    p, x = planes.clone().requires_grad_(), points.clone().requires_grad_()
    triplane_sample_reference(p, x, scene, contraction="axis").square().sum().backward()
    torch.testing.assert_close(grads[0][0], p.grad)
    torch.testing.assert_close(grads[0][1], x.grad)


@requires_ext
def test_raw_backward_op_checks_grad_out():
    # the compiled op is public (torch.ops.vq3dlib); a wrong incoming gradient must not read out of bounds
    planes = torch.randn(1, 3, 8, 8, 4)  # channels-last [B, 3, H, W, C]
    points = torch.randn(5, 3)
    none = torch.empty(0, dtype=torch.long)
    opts = (5, 0, 1.0, False, 0, 2)  # dense, no contraction, concat -> 3C = 12 channels
    backward = torch.ops.vq3dlib.triplane_sample_bwd
    backward(torch.ones(5, 12), planes, points, none, *opts, True, True)
    with pytest.raises(RuntimeError, match=r"grad_out must be \[S, 12\]"):
        backward(torch.ones(5, 4), planes, points, none, *opts, True, True)
    with pytest.raises(RuntimeError, match="grad_out must have the dtype"):
        backward(torch.ones(5, 12).double(), planes, points, none, *opts, True, True)


@pytest.mark.cuda
def test_device_mismatch_is_reported():
    with pytest.raises(ValueError, match="points is on"):
        triplane_sample(torch.randn(1, 3, 2, 4, 4, device="cuda"), torch.zeros(1, 5, 3))


@requires_ext
def test_torch_compile_traces_the_custom_op():
    planes = torch.randn(1, 3, 4, 8, 8)
    points = torch.rand(1, 20, 3) - 0.5

    def fn(pl, pt):
        return triplane_sample(pl, pt, contraction="l2").sum(-1)

    with backend.forced("ext"):
        expected = fn(planes, points)
        compiled = torch.compile(fn, backend="eager", fullgraph=False)
        torch.testing.assert_close(compiled(planes, points), expected)
    from vq3dlib.ops._library import kernels

    ops = kernels()
    planes_cl = planes.double().permute(0, 1, 3, 4, 2).contiguous().requires_grad_()
    pts = points[0].double().contiguous().requires_grad_()
    empty = torch.empty(0, dtype=torch.long)
    # schema, fake (meta) implementation and autograd registration, as torch.compile needs them
    torch.library.opcheck(ops.triplane_sample_fwd.default, (planes_cl, pts, empty, 20, 1, 1.0, False, 0, 2))
    grad = torch.randn(20, 12, dtype=torch.float64)
    torch.library.opcheck(
        ops.triplane_sample_bwd.default, (grad, planes_cl, pts, empty, 20, 1, 1.0, False, 0, 2, True, True)
    )
    cotangents = (torch.randn_like(planes_cl), torch.randn_like(pts))
    torch.library.opcheck(
        ops.triplane_sample_bwd_bwd.default,
        (
            grad,
            planes_cl.detach(),
            pts.detach(),
            empty,
            *cotangents,
            20,
            1,
            1.0,
            False,
            0,
            2,
            True,
            True,
            True,
        ),
    )


@pytest.mark.parametrize("backend_name", ["torch", "ext"])
def test_l2_contraction_far_points_sample_the_border_not_the_origin(backend_name):
    if backend_name == "ext" and not ops.extension_supports("triplane_sample", "cpu"):
        pytest.skip("extension could not be built")
    planes = torch.arange(3 * 1 * 4 * 4, dtype=torch.float32).reshape(1, 3, 1, 4, 4) / 10
    far = torch.tensor([[[1.9e19, 0.0, 0.0]]])
    near_border = torch.tensor([[[1.8e19, 0.0, 0.0]]])
    with backend.forced(backend_name):
        a = triplane_sample(planes, far, contraction="l2", align_corners=True)
        b = triplane_sample(planes, near_border, contraction="l2", align_corners=True)
        origin = triplane_sample(planes, torch.zeros(1, 1, 3), contraction="l2", align_corners=True)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, origin)


@pytest.mark.parametrize("backend_name", ["torch", "ext"])
@pytest.mark.parametrize("shape", [(1, 3, 2, 0, 0), (1, 3, 0, 4, 4)])
def test_degenerate_planes_give_one_error_on_both_backends(backend_name, shape):
    with backend.forced(backend_name), pytest.raises(ValueError, match=r"planes must have C, H, W > 0"):
        triplane_sample(torch.randn(shape), torch.zeros(1, 2, 3))
