"""Fused contracted-triplane sampling: contraction → bilinear lookups in 3 planes → reduction.

``planes [B, 3, C, H, W]`` hold the xy, xz and yz planes of ``B`` scenes. A world point ``x`` is
scaled by ``1/bound``, optionally contracted (``"l2"`` or ``"linf"``, then halved so the contracted
box ``[-2, 2]^3`` maps to ``[-1, 1]^3``), and its features are looked up bilinearly on each plane:
the xy plane at ``(u, v) = (x, y)``, xz at ``(x, z)``, yz at ``(y, z)``, where ``u`` indexes the
plane's width and ``v`` its height. The semantics are exactly those of
``F.grid_sample(plane, grid=(u, v), mode="bilinear", align_corners=..., padding_mode=...)``
("zeros" or "border" padding); tests check this. The three features are summed, averaged or
concatenated.

The compiled kernels (CPU and CUDA) fuse all of it in one pass and give gradients to the planes
*and* the points (one fused pass on the CPU), and have a double backward of their own (gradients of
the point-gradient, for normals and eikonal losses: ``triplane_sample_bwd_bwd``). The pure-torch
:func:`triplane_sample_reference` (explicit bilinear gathers, twice differentiable) is the fallback
and the test oracle; :func:`double_backward_reference` is the oracle of the double backward, and
computes third-order gradients of the kernel path by recomputation.

Memory layout: the kernels read the planes channels-last, ``[B, 3, H, W, C]``, so the ``C`` features
of a texel are one contiguous run (one cache line for C = 32 floats) and each bilinear corner costs
one contiguous read. :func:`triplane_sample` converts ``[B, 3, C, H, W]`` with
``permute(0, 1, 3, 4, 2).contiguous()``: free when the tensor is already stored channels-last
(e.g. created as ``[B, 3, H, W, C]`` and permuted), else one copy of the planes per call
(``4·B·3·C·H·W`` bytes; 25 MB for one 3×32×256² scene) and one copy of their gradient.

Example:
    >>> import torch
    >>> planes = torch.randn(2, 3, 8, 16, 16)
    >>> points = torch.rand(2, 100, 3) * 2 - 1
    >>> triplane_sample(planes, points).shape
    torch.Size([2, 100, 8])
    >>> torch.allclose(triplane_sample(planes, points), triplane_sample_reference(planes, points), atol=1e-5)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vq3dlib._validation import (
    check_choice,
    check_positive,
    check_same_device,
    check_tensor,
    finite_checks_enabled,
)
from vq3dlib.contraction import CONTRACTIONS, contract
from vq3dlib.ops._codes import CONTRACTION_CODES, PADDING_CODES, REDUCE_CODES
from vq3dlib.ops._library import kernels, on_extension_loaded, register_op, use_extension

REDUCTIONS = tuple(REDUCE_CODES)
PADDINGS = tuple(PADDING_CODES)
PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # (width axis, height axis) of the xy, xz, yz planes

register_op(
    "triplane_sample",
    [
        "triplane_sample_fwd",
        "triplane_sample_bwd",
        "triplane_sample_bwd_bwd",
        "planes_channels_last",
        "planes_channels_first",
    ],
    "contract + bilinear lookups in 3 planes + reduce (fwd, bwd, double bwd)",
)


@dataclass(frozen=True)
class _Prepared:
    planes_cl: torch.Tensor  # [B, 3, H, W, C]
    points: torch.Tensor  # [S, 3]
    scene_index: torch.Tensor  # [S] int64, or empty when dense
    points_per_scene: int  # > 0 dense
    out_shape: tuple[int, ...]


def _channels_last(planes: torch.Tensor, use_kernels: bool) -> torch.Tensor:
    """``[B, 3, C, H, W]`` → contiguous ``[B, 3, H, W, C]`` (free if already stored that way)."""
    view = planes.permute(0, 1, 3, 4, 2)
    if view.is_contiguous():
        return view
    if use_kernels and planes.device.type == "cpu":
        return kernels().planes_channels_last(planes)  # huge-page-advised buffer: fewer TLB misses
    return view.contiguous()


def _prepare(
    planes: torch.Tensor,
    points: torch.Tensor,
    scene_index: torch.Tensor | None,
    reduce: str,
    use_kernels: bool = False,
) -> _Prepared:
    check_tensor("planes", planes, ndim=5, floating=True, finite=True)
    if planes.shape[1] != 3:
        raise ValueError(
            f"planes must have shape [B, 3, C, H, W] (xy, xz, yz planes), got {list(planes.shape)}"
        )
    if any(v == 0 for v in planes.shape[2:]):  # one behaviour for both backends
        raise ValueError(f"planes must have C, H, W > 0, got shape {list(planes.shape)}")
    check_tensor("points", points, ndim=(2, 3), last_dim=3, floating=True, finite=True)
    check_same_device(planes=planes, points=points, scene_index=scene_index)
    if points.dtype != planes.dtype:
        raise TypeError(f"points must have the dtype of planes ({planes.dtype}), got {points.dtype}")
    n_scenes, _, channels, _, _ = planes.shape
    out_channels = 3 * channels if reduce == "concat" else channels
    planes_cl = _channels_last(planes, use_kernels)
    if points.dim() == 3:
        if scene_index is not None:
            raise ValueError("scene_index must be None for dense points [B, N, 3]; pass packed points [S, 3]")
        if points.shape[0] != n_scenes:
            raise ValueError(
                f"points [B, N, 3] must have B = planes.shape[0] = {n_scenes}, got {list(points.shape)}"
            )
        per_scene = points.shape[1]
        flat = points.reshape(-1, 3).contiguous()
        empty = torch.empty(0, dtype=torch.long, device=points.device)
        return _Prepared(planes_cl, flat, empty, max(per_scene, 1), (n_scenes, per_scene, out_channels))
    n_points = points.shape[0]
    if scene_index is None:
        if n_scenes != 1:
            raise ValueError(
                f"scene_index [S] is required for packed points when planes hold {n_scenes} scenes"
            )
        return _Prepared(
            planes_cl,
            points.contiguous(),
            torch.empty(0, dtype=torch.long, device=points.device),
            max(n_points, 1),
            (n_points, out_channels),
        )
    check_tensor("scene_index", scene_index, shape=(n_points,), integer=True)
    scene_index = scene_index.long().contiguous()
    if finite_checks_enabled() and n_points > 0:
        lo, hi = int(scene_index.min()), int(scene_index.max())
        if lo < 0 or hi >= n_scenes:
            raise ValueError(f"scene_index values must be in [0, {n_scenes}), got range [{lo}, {hi}]")
    return _Prepared(planes_cl, points.contiguous(), scene_index, 0, (n_points, out_channels))


def _check_options(contraction: str, bound: float, reduce: str, padding_mode: str) -> None:
    check_choice("contraction", contraction, CONTRACTIONS)
    check_choice("reduce", reduce, REDUCTIONS)
    check_choice("padding_mode", padding_mode, PADDINGS)
    check_positive("bound", bound)


def _unnormalize(u: torch.Tensor, size: int, align_corners: bool, padding: str) -> torch.Tensor:
    pix = (u + 1) * (size - 1) / 2 if align_corners else ((u + 1) * size - 1) / 2
    if padding == "border":
        inside = (pix > 0) & (pix < size - 1)  # like grid_sample: zero gradient on and beyond the border
        pix = torch.where(inside, pix, pix.detach().clamp(0, size - 1))
    # far outside every corner is invalid; clamping keeps the integer conversion in range
    return pix.clamp(-2, size + 1)


def _sample_cl_reference(
    planes_cl: torch.Tensor,
    points: torch.Tensor,
    scene_index: torch.Tensor,
    points_per_scene: int,
    contraction: str,
    bound: float,
    align_corners: bool,
    padding_mode: str,
    reduce: str,
) -> torch.Tensor:
    """Reference on channels-last planes ``[B, 3, H, W, C]`` and flat points ``[S, 3]`` → ``[S, C']``."""
    n_scenes, _, height, width, channels = planes_cl.shape
    n_points = points.shape[0]
    if points_per_scene > 0:
        scene_index = torch.arange(n_points, device=points.device) // points_per_scene
    scene_ok = (scene_index >= 0) & (scene_index < n_scenes)
    scene = scene_index.clamp(0, max(n_scenes - 1, 0))
    q = points / bound
    if contraction != "none":
        q = contract(q, contraction) / 2
    flat = planes_cl.reshape(-1, channels)
    features = []
    for p, (ua, va) in enumerate(PLANE_AXES):
        px = _unnormalize(q[:, ua], width, align_corners, padding_mode)
        py = _unnormalize(q[:, va], height, align_corners, padding_mode)
        x0, y0 = px.detach().floor(), py.detach().floor()
        fx, fy = px - x0, py - y0
        x0, y0 = x0.long(), y0.long()
        acc = points.new_zeros(n_points, channels)
        for dx in (0, 1):
            for dy in (0, 1):
                xi, yi = x0 + dx, y0 + dy
                w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
                ok = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height) & scene_ok
                idx = ((scene * 3 + p) * height + yi.clamp(0, height - 1)) * width + xi.clamp(0, width - 1)
                acc = acc + flat[idx] * (w * ok)[:, None]
        features.append(acc)
    if reduce == "concat":
        return torch.cat(features, dim=-1)
    total = features[0] + features[1] + features[2]
    return total / 3 if reduce == "mean" else total


def triplane_sample_reference(
    planes: torch.Tensor,
    points: torch.Tensor,
    scene_index: torch.Tensor | None = None,
    *,
    contraction: str = "none",
    bound: float = 1.0,
    reduce: str = "sum",
    align_corners: bool = False,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Pure-torch reference of :func:`triplane_sample` (same arguments and result).

    Explicit bilinear gathers, so it is differentiable twice; equal to three ``F.grid_sample``
    calls (tested). Used as the fallback when the extension is unavailable and as the test oracle.

    Example:
        >>> import torch
        >>> planes = torch.zeros(1, 3, 4, 8, 8); planes[:, 0] = 1.0  # xy plane = 1
        >>> triplane_sample_reference(planes, torch.zeros(5, 3))[0]
        tensor([1., 1., 1., 1.])
    """
    _check_options(contraction, bound, reduce, padding_mode)
    prep = _prepare(planes, points, scene_index, reduce)
    out = _sample_cl_reference(
        prep.planes_cl,
        prep.points,
        prep.scene_index,
        prep.points_per_scene,
        contraction,
        bound,
        align_corners,
        padding_mode,
        reduce,
    )
    return out.reshape(prep.out_shape)


_CODES = {"contraction": CONTRACTION_CODES, "padding": PADDING_CODES, "reduce": REDUCE_CODES}
_NAMES = {kind: {v: k for k, v in table.items()} for kind, table in _CODES.items()}


def triplane_sample(
    planes: torch.Tensor,
    points: torch.Tensor,
    scene_index: torch.Tensor | None = None,
    *,
    contraction: str = "none",
    bound: float = 1.0,
    reduce: str = "sum",
    align_corners: bool = False,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Samples triplane features at 3D points (fused kernel when available).

    Args:
        planes: ``[B, 3, C, H, W]`` xy, xz, yz feature planes of ``B`` scenes (float32/64; half and
            bfloat16 are computed in float32).
        points: dense ``[B, N, 3]`` (N points per scene) or packed ``[S, 3]`` world points.
        scene_index: ``[S]`` integer scene of each packed point (may be omitted when ``B == 1``).
        contraction: ``"none"`` (points within ``[-bound, bound]^3`` cover the planes), ``"l2"``
            (mip-NeRF 360) or ``"linf"`` (MERF) applied to ``points / bound``.
        bound: half-size of the uncontracted region in world units.
        reduce: ``"sum"`` | ``"mean"`` → ``C`` features, ``"concat"`` → ``3C`` (xy, xz, yz order).
        align_corners: ``F.grid_sample`` convention for mapping ``[-1, 1]`` to texels.
        padding_mode: ``"zeros"`` (outside texels read 0) or ``"border"`` (clamped).

    Returns:
        ``[B, N, C']`` for dense points, ``[S, C']`` for packed points.

    Example:
        >>> import torch
        >>> planes = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
        >>> pts = torch.randn(10, 3, requires_grad=True)
        >>> feats = triplane_sample(planes, pts, torch.tensor([0, 1] * 5), contraction="l2", reduce="concat")
        >>> feats.shape
        torch.Size([10, 12])
        >>> feats.sum().backward(); pts.grad.shape
        torch.Size([10, 3])
    """
    _check_options(contraction, bound, reduce, padding_mode)
    check_tensor("planes", planes)
    check_tensor("points", points)
    out_dtype = planes.dtype
    if planes.dtype in (torch.float16, torch.bfloat16):
        planes = planes.float()
        points = points.float() if points.dtype == out_dtype else points
    use_kernels = use_extension("triplane_sample", planes.device)
    prep = _prepare(planes, points, scene_index, reduce, use_kernels)
    if use_kernels:
        out = kernels().triplane_sample_fwd(
            prep.planes_cl,
            prep.points,
            prep.scene_index,
            prep.points_per_scene,
            _CODES["contraction"][contraction],
            float(bound),
            bool(align_corners),
            _CODES["padding"][padding_mode],
            _CODES["reduce"][reduce],
        )
    else:
        out = _sample_cl_reference(
            prep.planes_cl,
            prep.points,
            prep.scene_index,
            prep.points_per_scene,
            contraction,
            bound,
            align_corners,
            padding_mode,
            reduce,
        )
    return out.reshape(prep.out_shape).to(out_dtype)


@on_extension_loaded
def _register_triplane_kernels(lib: str) -> None:
    ns = lib + "::"

    @torch.library.register_fake(ns + "triplane_sample_fwd")
    def _fwd_fake(planes, points, scene_index, pps, contraction, bound, align, padding, reduce):
        channels = planes.shape[4] * (3 if reduce == 2 else 1)
        return points.new_empty(points.shape[0], channels)

    @torch.library.register_fake(ns + "triplane_sample_bwd")
    def _bwd_fake(
        grad_out,
        planes,
        points,
        scene_index,
        pps,
        contraction,
        bound,
        align,
        padding,
        reduce,
        need_planes,
        need_points,
    ):
        return (
            planes.new_empty(planes.shape if need_planes else (0,)),
            points.new_empty(points.shape if need_points else (0,)),
        )

    @torch.library.register_fake(ns + "planes_channels_last")
    def _layout_fake(planes):
        b, three, c, h, w = planes.shape
        return planes.new_empty(b, three, h, w, c)

    @torch.library.register_fake(ns + "planes_channels_first")
    def _layout_first_fake(planes):
        b, three, h, w, c = planes.shape
        return planes.new_empty(b, three, c, h, w)

    # each layout change's gradient is the other one: a contiguous gradient in the planes' own
    # layout, which autograd accumulates into .grad without a strided copy or add
    layouts = getattr(torch.ops, lib)
    torch.library.register_autograd(
        ns + "planes_channels_last",
        lambda ctx, grad: layouts.planes_channels_first(grad.contiguous()),
        setup_context=lambda ctx, inputs, output: None,
    )
    torch.library.register_autograd(
        ns + "planes_channels_first",
        lambda ctx, grad: layouts.planes_channels_last(grad.contiguous()),
        setup_context=lambda ctx, inputs, output: None,
    )

    def _fwd_setup(ctx, inputs, output):
        planes, points, scene_index = inputs[:3]
        ctx.save_for_backward(planes, points, scene_index)
        ctx.options = tuple(inputs[3:])

    def _fwd_backward(ctx, grad_out):
        planes, points, scene_index = ctx.saved_tensors
        need_planes, need_points = _will_use_grad(ctx, 0), _will_use_grad(ctx, 1)
        grad_planes, grad_points = getattr(torch.ops, lib).triplane_sample_bwd(
            grad_out.contiguous(), planes, points, scene_index, *ctx.options, need_planes, need_points
        )
        return (grad_planes if need_planes else None, grad_points if need_points else None) + (None,) * 7

    torch.library.register_autograd(ns + "triplane_sample_fwd", _fwd_backward, setup_context=_fwd_setup)

    def _bwd_setup(ctx, inputs, output):
        grad_out, planes, points, scene_index = inputs[:4]
        ctx.save_for_backward(grad_out, planes, points, scene_index)
        ctx.options = tuple(inputs[4:10])

    def _bwd_backward(ctx, gg_planes, gg_points):
        grad_out, planes, points, scene_index = ctx.saved_tensors
        gg_planes, gg_points = _cotangent(gg_planes, planes), _cotangent(gg_points, points)
        if gg_planes is None and gg_points is None:
            return (None,) * 12
        need = tuple(_will_use_grad(ctx, k) for k in range(3))
        grads = getattr(torch.ops, lib).triplane_sample_bwd_bwd(
            grad_out, planes, points, scene_index, gg_planes, gg_points, *ctx.options, *need
        )
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,) * 9

    torch.library.register_autograd(ns + "triplane_sample_bwd", _bwd_backward, setup_context=_bwd_setup)

    @torch.library.register_fake(ns + "triplane_sample_bwd_bwd")
    def _bwd_bwd_fake(grad_out, planes, points, scene_index, gg_planes, gg_points, *options):
        need_grad_out, need_planes, need_points = options[-3:]
        return (
            grad_out.new_empty(grad_out.shape if need_grad_out else (0,)),
            planes.new_empty(planes.shape if need_planes else (0,)),
            points.new_empty(points.shape if need_points else (0,)),
        )

    def _bwd_bwd_setup(ctx, inputs, output):
        ctx.save_for_backward(*(t if t is not None else torch.empty(0) for t in inputs[:6]))
        ctx.options = tuple(inputs[6:12])

    def _bwd_bwd_backward(ctx, *cotangents):
        # Third order (rare) by recomputation through the differentiable torch reference.
        grad_out, planes, points, scene_index, gg_planes, gg_points = ctx.saved_tensors
        inputs = {0: grad_out, 1: planes, 2: points, 4: gg_planes, 5: gg_points}
        with torch.enable_grad():
            leaves = {
                k: v.detach().requires_grad_(ctx.needs_input_grad[k] and v.numel() > 0)
                for k, v in inputs.items()
            }
            outputs = double_backward_reference(
                leaves[0],
                leaves[1],
                leaves[2],
                scene_index,
                _cotangent(leaves[4], planes),
                _cotangent(leaves[5], points),
                *_named_options(ctx.options),
            )
            pairs = [
                (o, c)
                for o, c in zip(outputs, cotangents)
                if c is not None and c.shape == o.shape and o.requires_grad  # an empty output: no cotangent
            ]
            wrt = {k: v for k, v in leaves.items() if v.requires_grad}
            if not pairs or not wrt:
                return (None,) * 15
            grads = torch.autograd.grad(
                [o for o, _ in pairs], list(wrt.values()), [c for _, c in pairs], allow_unused=True
            )
        by_index = dict(zip(wrt, grads))
        return tuple(by_index.get(k) for k in range(6)) + (None,) * 9

    torch.library.register_autograd(
        ns + "triplane_sample_bwd_bwd", _bwd_bwd_backward, setup_context=_bwd_bwd_setup
    )


def _will_use_grad(ctx, index: int) -> bool:
    """Whether this backward pass uses the gradient of input ``index`` of the op.

    ``ctx.needs_input_grad`` says whether the input requires grad; the engine knows more: in
    ``torch.autograd.grad(features, points)`` (an eikonal loss' first step) the plane gradient is
    computed for nothing. Falls back to ``needs_input_grad`` where the engine cannot tell.
    """
    if not ctx.needs_input_grad[index]:
        return False
    try:
        node = ctx.next_functions[index][0]
        return node is None or torch._C._will_engine_execute_node(node)
    except (AttributeError, IndexError, RuntimeError):
        return True


def _cotangent(cot: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A cotangent of the backward's outputs, or ``None`` when absent (None, or the empty placeholder)."""
    if cot is None or cot.numel() == 0 or cot.shape != like.shape:
        return None
    return cot.contiguous()


def _named_options(options: tuple) -> tuple:
    """Kernel option codes ``(pps, contraction, bound, align, padding, reduce)`` → reference arguments."""
    pps, contraction, bound, align, padding, reduce = options
    return (
        pps,
        _NAMES["contraction"][contraction],
        bound,
        align,
        _NAMES["padding"][padding],
        _NAMES["reduce"][reduce],
    )


def double_backward_reference(
    grad_out: torch.Tensor,
    planes_cl: torch.Tensor,
    points: torch.Tensor,
    scene_index: torch.Tensor,
    gg_planes: torch.Tensor | None,
    gg_points: torch.Tensor | None,
    points_per_scene: int,
    contraction: str,
    bound: float,
    align_corners: bool,
    padding_mode: str,
    reduce: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch double backward of the kernels' layout, the oracle of ``triplane_sample_bwd_bwd``.

    The backward maps ``grad_out [S, C']`` to ``(grad_planes [B, 3, H, W, C], grad_points [S, 3])``
    (channels-last planes, flat points, as the kernels take them); given cotangents ``gg_planes``
    and ``gg_points`` of those two (``None`` = zero), returns the gradients of
    ``<gg_planes, grad_planes> + <gg_points, grad_points>`` to ``(grad_out, planes_cl, points)``,
    differentiable (a graph is built when the inputs require grad).

    Example:
        >>> import torch
        >>> planes_cl = torch.randn(1, 3, 8, 8, 4, dtype=torch.float64)
        >>> pts, g = torch.rand(10, 3, dtype=torch.float64) - 0.5, torch.randn(10, 4, dtype=torch.float64)
        >>> empty = torch.empty(0, dtype=torch.long)
        >>> gg_out, gg_pl, gg_pts = double_backward_reference(
        ...     g, planes_cl, pts, empty, None, torch.ones(10, 3, dtype=torch.float64),
        ...     10, "none", 1.0, False, "zeros", "sum")
        >>> gg_out.shape, gg_pl.shape, gg_pts.shape
        (torch.Size([10, 4]), torch.Size([1, 3, 8, 8, 4]), torch.Size([10, 3]))
    """
    with torch.enable_grad():
        g = grad_out if grad_out.requires_grad else grad_out.detach().requires_grad_()
        p = planes_cl if planes_cl.requires_grad else planes_cl.detach().requires_grad_()
        x = points if points.requires_grad else points.detach().requires_grad_()
        out = _sample_cl_reference(
            p, x, scene_index, points_per_scene, contraction, bound, align_corners, padding_mode, reduce
        )
        first = torch.autograd.grad(out, (p, x), g, create_graph=True)
        loss = sum(
            (value * cot).sum() for value, cot in zip(first, (gg_planes, gg_points)) if cot is not None
        )
        if not torch.is_tensor(loss) or not loss.requires_grad:
            return torch.zeros_like(g), torch.zeros_like(p), torch.zeros_like(x)
        grads = torch.autograd.grad(loss, (g, p, x), create_graph=True, allow_unused=True)
    return tuple(torch.zeros_like(t) if d is None else d for d, t in zip(grads, (g, p, x)))
