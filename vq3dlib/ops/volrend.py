"""Volume-rendering weights along rays: fused kernels (CPU, CUDA) and their pure-torch references.

Per sample ``i`` of a ray, from densities ``sigma`` and intervals ``[t_start, t_end)``:

    tau_i = sigma_i (t_end_i - t_start_i),   T_i = exp(-sum_{j<i} tau_j),
    a_i = 1 - exp(-tau_i),                   w_i = T_i a_i

or, from opacities ``a`` directly, ``T_i = prod_{j<i} (1 - a_j)``. Transmittance is computed in log
space (an exclusive running sum of ``tau``) as recommended for stability.

Samples come dense, ``[..., n_samples]`` (each row one ray), or packed: 1-D ``[S]`` with
``packed_info [n_rays, 2]`` holding each ray's ``(start, count)`` (see
:func:`vq3dlib.packed.pack_info`, which builds it from nerfacc-style sorted ``ray_indices``). The
compiled kernels process one ray per task in one O(n) pass forward and one reverse O(n) pass backward
(gradients to ``sigmas`` and to the interval ends, or to ``alphas``; the backward reuses the
forward's transmittance and opacities and evaluates no exponential). The kernels need packed rays
stored as consecutive runs covering all samples (what ``pack_info`` produces); other ``packed_info``
layouts run the reference. The ``*_reference`` functions (the per-ray scans of
:mod:`vq3dlib.packed`: a float64 exclusive sum of ``tau`` for packed densities, an exclusive product
of ``1 - a`` for packed alphas) are the fallback and the test oracle. The kernel path is
differentiable once; for double backward use the reference (``VQ3DLIB_BACKEND=torch``).

These are the low-level ops; :mod:`vq3dlib.render.volrend` holds the nerfacc-compatible API.

Example:
    >>> import torch
    >>> from vq3dlib.packed import pack_info
    >>> t = torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0])
    >>> sigmas = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0])
    >>> info = pack_info(torch.tensor([0, 0, 0, 1, 1]), n_rays=2)
    >>> info.tolist()
    [[0, 3], [3, 2]]
    >>> w, trans, alphas = weights_from_density(t, t + 1, sigmas, info)
    >>> ref = weights_from_density_reference(t, t + 1, sigmas, info)
    >>> all(torch.allclose(a, b) for a, b in zip((w, trans, alphas), ref))
    True
"""

from __future__ import annotations

import torch

from vq3dlib._validation import has_values
from vq3dlib.ops._library import kernels, on_extension_loaded, register_op, use_extension
from vq3dlib.packed import exclusive_prod, exclusive_sum, segment_positions

register_op(
    "render_weight_from_density",
    ["volrend_density_fwd", "volrend_density_bwd"],
    "volume-rendering weights from density, packed or dense (fwd, bwd)",
)
register_op(
    "render_weight_from_alpha",
    ["volrend_alpha_fwd", "volrend_alpha_bwd"],
    "volume-rendering weights from opacity, packed or dense (fwd, bwd)",
)

_KERNEL_DTYPES = (torch.float32, torch.float64)


def weights_from_density_reference(
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    sigmas: torch.Tensor,
    packed_info: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch reference of :func:`weights_from_density` (same arguments and results).

    Dense: ``torch.cumsum`` over the last dimension. Packed: :func:`vq3dlib.packed.exclusive_sum` (per
    ray, in float64, so each ray's precision is independent of the other rays' optical depths, however
    large). Differentiable with autograd.

    Example:
        >>> import torch
        >>> w, trans, alphas = weights_from_density_reference(
        ...     torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[1.0, 1.0]]))
        >>> trans
        tensor([[1.0000, 0.3679]])
    """
    tau = sigmas * (t_ends - t_starts)
    alphas = -torch.expm1(-tau)
    if packed_info is None or packed_info.device.type == "meta":  # meta: the shapes are the dense ones
        depth = torch.cumsum(torch.cat([torch.zeros_like(tau[..., :1]), tau[..., :-1]], dim=-1), dim=-1)
        trans = torch.exp(-depth)
        return trans * alphas, trans, alphas
    positions, _, _ = segment_positions(packed_info, tau.shape[0])
    covered = tau.new_zeros(tau.shape).index_put((positions,), tau.new_ones(positions.shape))
    depth = exclusive_sum(tau, packed_info, dtype=torch.float64)  # optical depth before each sample
    trans = torch.exp(-depth).to(tau.dtype) * covered
    alphas = alphas * covered
    return trans * alphas, trans, alphas


def weights_from_alpha_reference(
    alphas: torch.Tensor, packed_info: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch reference of :func:`weights_from_alpha` (same arguments and results).

    Exclusive ``torch.cumprod`` of ``1 - alphas`` (its gradient is exact when an opacity is 1); per
    ray for packed samples (:func:`vq3dlib.packed.exclusive_prod`).

    Example:
        >>> import torch
        >>> weights_from_alpha_reference(torch.tensor([[0.5, 0.5, 1.0]]))[0]
        tensor([[0.5000, 0.2500, 0.2500]])
    """
    keep = 1 - alphas
    if packed_info is None or packed_info.device.type == "meta":  # meta: the shapes are the dense ones
        trans = torch.cumprod(torch.cat([torch.ones_like(keep[..., :1]), keep[..., :-1]], dim=-1), dim=-1)
        return trans * alphas, trans
    trans = exclusive_prod(keep, packed_info)
    return trans * alphas, trans


def _layout(values: torch.Tensor, packed_info: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """(packed_info for the kernel, samples_per_ray): dense rows become uniform rays."""
    if packed_info is None:
        empty = torch.empty(0, 2, dtype=torch.long, device=values.device)
        per_ray = values.shape[-1] if values.dim() > 0 else 1
        return empty, max(per_ray, 1)
    return packed_info.long().contiguous(), 0


def _kernel_layout_ok(packed_info: torch.Tensor | None, n_samples: int) -> bool:
    """The kernels need packed rays to be consecutive runs covering all samples (what
    :func:`pack_info` makes); anything else (gaps, overlaps, reordering) goes to the reference."""
    if packed_info is None or not has_values(packed_info):
        return True
    starts, counts = packed_info[:, 0], packed_info[:, 1]
    if packed_info.shape[0] == 0:
        return n_samples == 0
    expected = torch.cumsum(counts, 0) - counts
    return bool((counts >= 0).all() & (starts == expected).all() & (counts.sum() == n_samples))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in _KERNEL_DTYPES else torch.float32


def weights_from_density(
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    sigmas: torch.Tensor,
    packed_info: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, transmittance and opacity from densities (fused kernel when available).

    No input validation here (see :func:`vq3dlib.render.render_weight_from_density`).

    Args:
        t_starts: ``[..., n_samples]`` dense or ``[S]`` packed interval starts.
        t_ends: interval ends, shaped like ``t_starts``.
        sigmas: densities, shaped like ``t_starts``.
        packed_info: ``[n_rays, 2]`` (start, count) per ray for packed samples; ``None`` for dense.

    Returns:
        ``(weights, transmittance, alphas)``, each shaped like ``sigmas``; differentiable w.r.t.
        ``sigmas``, ``t_starts`` and ``t_ends``.

    Example:
        >>> import torch
        >>> sigmas = torch.rand(4, 8, requires_grad=True)
        >>> t = torch.linspace(0, 1, 9).expand(4, 9)
        >>> w, trans, alphas = weights_from_density(t[:, :-1], t[:, 1:], sigmas)
        >>> w.sum().backward(); sigmas.grad.shape
        torch.Size([4, 8])
    """
    use_kernel = use_extension("render_weight_from_density", sigmas.device)
    if not (use_kernel and _kernel_layout_ok(packed_info, sigmas.numel())):
        return weights_from_density_reference(t_starts, t_ends, sigmas, packed_info)
    out_dtype = torch.promote_types(torch.promote_types(t_starts.dtype, t_ends.dtype), sigmas.dtype)
    dtype = _compute_dtype(out_dtype)
    shape = sigmas.shape
    info, per_ray = _layout(sigmas, packed_info)
    flat = [x.to(dtype).reshape(-1).contiguous() for x in (t_starts, t_ends, sigmas)]
    outs = kernels().volrend_density_fwd(*flat, info, per_ray)
    return tuple(o.reshape(shape).to(out_dtype) for o in outs)  # type: ignore[return-value]


def weights_from_alpha(
    alphas: torch.Tensor, packed_info: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and transmittance from opacities (fused kernel when available).

    No input validation here (see :func:`vq3dlib.render.render_weight_from_alpha`).

    Args:
        alphas: ``[..., n_samples]`` dense or ``[S]`` packed opacities in ``[0, 1]``.
        packed_info: ``[n_rays, 2]`` (start, count) per ray for packed samples; ``None`` for dense.

    Returns:
        ``(weights, transmittance)``, each shaped like ``alphas``; differentiable w.r.t. ``alphas``
        (exact also where an opacity equals 1).

    Example:
        >>> import torch
        >>> alphas = torch.tensor([0.5, 0.5, 0.2])
        >>> w, trans = weights_from_alpha(alphas, torch.tensor([[0, 2], [2, 1]]))
        >>> w
        tensor([0.5000, 0.2500, 0.2000])
    """
    use_kernel = use_extension("render_weight_from_alpha", alphas.device)
    if not (use_kernel and _kernel_layout_ok(packed_info, alphas.numel())):
        return weights_from_alpha_reference(alphas, packed_info)
    out_dtype = alphas.dtype
    shape = alphas.shape
    info, per_ray = _layout(alphas, packed_info)
    flat = alphas.to(_compute_dtype(alphas.dtype)).reshape(-1).contiguous()
    outs = kernels().volrend_alpha_fwd(flat, info, per_ray)
    return tuple(o.reshape(shape).to(out_dtype) for o in outs)  # type: ignore[return-value]


def _contiguous_or_none(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


@on_extension_loaded
def _register_volrend_kernels(lib: str) -> None:
    ns = lib + "::"

    @torch.library.register_fake(ns + "volrend_density_fwd")
    def _density_fwd_fake(t_starts, t_ends, sigmas, packed_info, per_ray):
        return torch.empty_like(sigmas), torch.empty_like(sigmas), torch.empty_like(sigmas)

    @torch.library.register_fake(ns + "volrend_density_bwd")
    def _density_bwd_fake(gw, gt, ga, t_starts, t_ends, sigmas, trans, alphas, info, per_ray, need_delta):
        return torch.empty_like(sigmas), (torch.empty_like(sigmas) if need_delta else sigmas.new_empty(0))

    @torch.library.register_fake(ns + "volrend_alpha_fwd")
    def _alpha_fwd_fake(alphas, packed_info, per_ray):
        return torch.empty_like(alphas), torch.empty_like(alphas)

    @torch.library.register_fake(ns + "volrend_alpha_bwd")
    def _alpha_bwd_fake(gw, gt, alphas, trans, packed_info, per_ray):
        return torch.empty_like(alphas)

    def _density_setup(ctx, inputs, output):
        t_starts, t_ends, sigmas, packed_info, per_ray = inputs
        ctx.save_for_backward(t_starts, t_ends, sigmas, output[1], output[2], packed_info)
        ctx.per_ray = per_ray
        ctx.set_materialize_grads(False)  # unused outputs pass None: the kernel skips them

    def _density_backward(ctx, grad_w, grad_trans, grad_alphas):
        if grad_w is None and grad_trans is None and grad_alphas is None:
            return None, None, None, None, None
        t_starts, t_ends, sigmas, trans, alphas, packed_info = ctx.saved_tensors
        need_delta = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_sigmas, grad_deltas = getattr(torch.ops, lib).volrend_density_bwd(
            _contiguous_or_none(grad_w), _contiguous_or_none(grad_trans), _contiguous_or_none(grad_alphas),
            t_starts, t_ends, sigmas, trans, alphas, packed_info, ctx.per_ray, need_delta,
        )
        grad_ts = -grad_deltas if ctx.needs_input_grad[0] else None
        grad_te = grad_deltas if ctx.needs_input_grad[1] else None
        return grad_ts, grad_te, grad_sigmas, None, None

    torch.library.register_autograd(
        ns + "volrend_density_fwd", _density_backward, setup_context=_density_setup
    )

    def _alpha_setup(ctx, inputs, output):
        alphas, packed_info, per_ray = inputs
        ctx.save_for_backward(alphas, output[1], packed_info)
        ctx.per_ray = per_ray
        ctx.set_materialize_grads(False)

    def _alpha_backward(ctx, grad_w, grad_trans):
        if grad_w is None and grad_trans is None:
            return None, None, None
        alphas, trans, packed_info = ctx.saved_tensors
        grad_alphas = getattr(torch.ops, lib).volrend_alpha_bwd(
            _contiguous_or_none(grad_w), _contiguous_or_none(grad_trans), alphas, trans, packed_info,
            ctx.per_ray,
        )
        return grad_alphas, None, None

    torch.library.register_autograd(ns + "volrend_alpha_fwd", _alpha_backward, setup_context=_alpha_setup)
