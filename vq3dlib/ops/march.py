"""Packed ray marching through occupancy grids: dispatch over the compiled kernel + torch reference.

:func:`march_packed` marches every ray through the binary occupancy grid of its scene and returns the
occupied steps in nerfacc's packed format (``ray_indices``, ``t_starts``, ``t_ends``, sorted by ray).
The compiled kernels (``csrc/cpu/march.cpp``, ``csrc/cuda/march.cu``, math in
``csrc/include/vq3dlib/march.h``) and :func:`march_packed_reference` make identical samples: the
reference performs the same floating-point operations in the same order. Marching is not
differentiable (like nerfacc's); gradients reach origins/directions through the sample positions
``origins[ray_indices] + t * directions[ray_indices]`` that the caller computes.

Most users call :func:`vq3dlib.render.ray_march`, which takes an :class:`~vq3dlib.render.OccupancyGrid`.

Example:
    >>> import torch
    >>> from vq3dlib.ops.march import march_packed
    >>> binaries = torch.ones(1, 1, 4, 4, 4, dtype=torch.bool)
    >>> boxes = torch.tensor([[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]])
    >>> o, d = torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    >>> ri, t0, t1 = march_packed(o, d, torch.zeros(1), torch.full((1,), 10.0), binaries, boxes,
    ...                           step_size=0.5)
    >>> t0.tolist()
    [2.0, 2.5, 3.0, 3.5]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vq3dlib._validation import (
    check_choice,
    check_positive,
    check_same_device,
    check_tensor,
    finite_checks_enabled,
    has_values,
)
from vq3dlib.ops._codes import CONTRACTION_CODES, SPACING_CODES
from vq3dlib.ops._library import kernels, on_extension_loaded, register_op, use_extension

#: the contractions the marcher and the occupancy grid support (the triplane also knows "l2")
MARCH_CONTRACTIONS = ("none", "linf")
SPACINGS = tuple(SPACING_CODES)

register_op("ray_march", ["march_packed"], "packed ray marching through occupancy grids")

_MAX_CANDIDATES = 1 << 22  # candidate steps (rays x steps) one chunk of the reference holds at most
#: most candidate steps one ray may need (about half a second of marching on one core); more is refused
MAX_STEPS_PER_RAY = 1 << 24


@on_extension_loaded
def _register_kernels(lib: str) -> None:
    """Fake (meta) kernel: data-dependent sample count. No autograd: marching is not differentiable."""

    @torch.library.register_fake(lib + "::march_packed")
    def _fake(origins, directions, near, far, binaries, boxes, scene_index, *args):
        n = torch.library.get_ctx().new_dynamic_size()
        return (origins.new_empty(n, dtype=torch.long), origins.new_empty(n), origins.new_empty(n))


def contract_linf_exact(x: Tensor) -> Tensor:
    """MERF's L∞ contraction with exactly the float operations of ``contract_point`` in C++.

    Maps ``R^3`` into ``[-2, 2]^3``: identity inside the unit cube, else the arg-max coordinate goes
    to ``(2 - 1/m) sign(x_k)`` and the others to ``x_j / m`` (``m = |x|_inf``). Kept op-for-op equal to
    ``csrc/include/vq3dlib/contraction.h`` so the marching reference matches the kernels bit for bit;
    use :mod:`vq3dlib.contraction` elsewhere.

    Args:
        x: points ``[..., 3]``.

    Returns:
        contracted points ``[..., 3]``.

    Example:
        >>> contract_linf_exact(torch.tensor([[0.5, 0.0, 0.0], [4.0, 2.0, -1.0]])).tolist()
        [[0.5, 0.0, 0.0], [1.75, 0.5, -0.25]]
    """
    k = x.abs().argmax(dim=-1, keepdim=True)
    xk = x.gather(-1, k)
    m = xk.abs()
    y = x / m
    yk = (torch.full_like(m, 2.0) - torch.ones_like(m) / m) * torch.sign(xk)
    y = y.scatter(-1, k, yk)
    return torch.where(m > 1, y, x)


def ray_box_slabs(origins: Tensor, directions: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit parameters of the lines ``o + t d`` through an axis-aligned box (slab test).

    Zero direction components are handled exactly: the slab then spans ``(-inf, inf)`` when the
    origin lies inside it and is empty otherwise. No near/far clipping; the line hits the box iff
    ``t_max >= t_min``. Differentiable (no NaN gradients for zero components).

    Args:
        origins: ``[..., 3]``.
        directions: ``[..., 3]``.
        box: ``[..., 6]`` as ``{xmin, ymin, zmin, xmax, ymax, zmax}`` (broadcast against the rays).

    Returns:
        ``(t_min [...], t_max [...])``.

    Example:
        >>> box = torch.tensor([-1.0, -1, -1, 1, 1, 1])
        >>> ray_box_slabs(torch.tensor([0.0, 0, -2]), torch.tensor([0.0, 0, 1]), box)
        (tensor(1.), tensor(3.))
    """
    lo, hi = box[..., :3], box[..., 3:]
    zero = directions == 0
    safe_d = torch.where(zero, torch.ones_like(directions), directions)
    t1 = (lo - origins) / safe_d
    t2 = (hi - origins) / safe_d
    first = t1 < t2
    near = torch.where(first, t1, t2)
    far = torch.where(first, t2, t1)
    inside = (origins >= lo) & (origins <= hi)
    inf = torch.full_like(near, math.inf)
    near = torch.where(zero, torch.where(inside, -inf, inf), near)
    far = torch.where(zero, torch.where(inside, inf, -inf), far)
    return near.amax(dim=-1), far.amin(dim=-1)


def grid_lookup_reference(
    points: Tensor,
    binaries: Tensor,
    boxes: Tensor,
    contraction: int = 0,
    scene_index: Tensor | None = None,
) -> Tensor:
    """Occupancy of world points in (multi-level, multi-scene) binary grids, as the kernels see it.

    Each point is contracted (when ``contraction`` is the code of ``"linf"``), then looked up in the
    first level whose box contains it; the upper face belongs to the last cell; points outside every
    box are empty.

    Args:
        points: ``[P, 3]`` world positions.
        binaries: ``[n_scenes, levels, rx, ry, rz]`` bool.
        boxes: ``[levels, 6]`` boxes of the levels in the grid's space.
        contraction: ``0`` (none) or ``2`` (L∞).
        scene_index: ``[P]`` int64 scene of each point; ``None`` means scene 0.

    Returns:
        ``[P]`` bool.

    Example:
        >>> b = torch.zeros(1, 1, 2, 2, 2, dtype=torch.bool); b[0, 0, 1, 1, 1] = True
        >>> grid_lookup_reference(torch.tensor([[0.5, 0.5, 0.5], [-0.5, 0.5, 0.5]]), b,
        ...                       torch.tensor([[-1.0, -1, -1, 1, 1, 1]])).tolist()
        [True, False]
    """
    n_scenes, levels = binaries.shape[:2]
    res_list = list(binaries.shape[2:])
    y = contract_linf_exact(points) if contraction == CONTRACTION_CODES["linf"] else points
    res = torch.tensor(res_list, dtype=points.dtype, device=points.device)
    res_max = torch.tensor(res_list, dtype=torch.long, device=points.device) - 1
    flat = binaries.reshape(n_scenes, -1)
    scene = scene_index if scene_index is not None else torch.zeros_like(points[:, 0], dtype=torch.long)
    occ = torch.zeros_like(points[:, 0], dtype=torch.bool)
    found = torch.zeros_like(occ)
    for level in range(levels):
        lo, hi = boxes[level, :3], boxes[level, 3:]
        u = (y - lo) / (hi - lo) * res
        inside = ((u >= 0) & (u <= res)).all(dim=-1) & ~found
        idx = torch.minimum(u.nan_to_num(0.0).clamp(min=0, max=max(res_list)).floor().long(), res_max)
        cell = ((level * res_list[0] + idx[:, 0]) * res_list[1] + idx[:, 1]) * res_list[2] + idx[:, 2]
        occ = torch.where(inside, flat[scene, cell], occ)
        found = found | inside
    return occ


def _clip(origins, directions, near, far, boxes, contraction):
    if contraction == CONTRACTION_CODES["none"]:
        t_min, t_max = ray_box_slabs(origins, directions, boxes[-1])
        return torch.where(t_min > near, t_min, near), torch.where(t_max < far, t_max, far)
    return near, far


def _candidates_t(t0: Tensor, t1: Tensor, step_size: float) -> tuple[Tensor, Tensor, Tensor]:
    n_steps = torch.ceil((t1.double() - t0.double()) / step_size) + 1.0
    n_steps = torch.where(t1 > t0, n_steps, torch.zeros_like(n_steps))
    k_max = int(n_steps.max().item()) if n_steps.numel() else 0
    k = torch.arange(k_max, dtype=t0.dtype, device=t0.device)
    ts = t0[:, None] + k * step_size
    te = torch.minimum(t0[:, None] + (k + 1) * step_size, t1[:, None])
    valid = (k.double() < n_steps[:, None]) & (ts < t1[:, None])
    return ts, te, valid


def _candidates_contracted(o, d, t0, t1, step_size):
    t = t0.clone()
    alive = t1 > t0
    cols_ts, cols_te, cols_valid = [], [], []
    while bool(alive.any()):
        m = (o + t[:, None] * d).abs().amax(dim=-1)
        tn = t + step_size * torch.clamp(m * m, min=1)
        valid = alive & (tn > t)
        cols_ts.append(t)
        cols_te.append(torch.minimum(tn, t1))
        cols_valid.append(valid)
        t = torch.where(valid, tn, t)
        alive = valid & (tn < t1)
    if not cols_ts:
        empty = t0.new_empty(t0.shape[0], 0)
        return empty, empty, empty.bool()
    return torch.stack(cols_ts, 1), torch.stack(cols_te, 1), torch.stack(cols_valid, 1)


def _chunk_rays(t0: Tensor, t1: Tensor, step_size: float, spacing: int) -> int:
    """Rays per chunk of the reference, so that a chunk holds at most ``_MAX_CANDIDATES`` candidates.

    ``spacing='t'``: the most steps of any ray (exact); ``'contracted'``: ``4 / step_size`` steps, about
    what a ray needs to reach infinity from inside the unit cube (the steps grow with ``|x|^2``).
    """
    if spacing == SPACING_CODES["t"]:
        span = torch.where(t1 > t0, t1.double() - t0.double(), torch.zeros_like(t0, dtype=torch.float64))
        steps = int(math.ceil(float(span.max()) / step_size)) + 1 if span.numel() else 1
    else:
        steps = math.ceil(4.0 / step_size) + 1
    return max(1, min(t0.shape[0], _MAX_CANDIDATES // steps))


def occupied_radius(binaries: Tensor, boxes: Tensor) -> Tensor:
    """Largest ``|y|_inf`` of any occupied cell (its outer corner) over all scenes and levels; ``-1`` if none.

    Args:
        binaries: ``[n_scenes, levels, rx, ry, rz]`` bool occupancy.
        boxes: ``[levels, 6]`` level boxes.

    Returns:
        0-dim tensor of ``boxes``' dtype (no host sync).

    Example:
        >>> b = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool); b[0, 0, 2, 1, 1] = True
        >>> occupied_radius(b, torch.tensor([[-2.0, -2, -2, 2, 2, 2]]))
        tensor(1.)
    """
    radius = boxes.new_full((), -1.0)
    occ = binaries.any(dim=0)  # [levels, rx, ry, rz]
    for level in range(occ.shape[0]):
        for axis in range(3):
            others = tuple(d for d in range(3) if d != axis)
            along = occ[level].any(dim=others)  # [r_axis]
            res = along.shape[0]
            lo, hi = boxes[level, axis], boxes[level, axis + 3]
            edges = lo + (hi - lo) * torch.arange(res + 1, dtype=boxes.dtype, device=boxes.device) / res
            reach = torch.maximum(edges[:-1].abs(), edges[1:].abs())
            radius = torch.maximum(radius, torch.where(along, reach, torch.full_like(reach, -1.0)).amax())
    return radius


def _occupied_far(origins, directions, near, far, binaries, boxes, step_size):
    """``far`` tightened to just past where each ray leaves the occupied part of an L∞-contracted grid.

    Only steps wholly beyond the last occupied cell are dropped, so the samples do not change; a grid
    without occupied cells gives no steps at all (``far = near``).
    """
    r = occupied_radius(binaries, boxes)
    # world half-size of the cube holding every point whose contraction has |y|_inf <= r, with a margin
    world = torch.where(r <= 1, r, 1 / (2 - r).clamp_min(1e-30)) * 1.001 + 1e-6
    world = torch.where(r >= 2, torch.full_like(world, math.inf), world)
    cube = torch.cat([-world.expand(3), world.expand(3)])
    t_in, t_out = ray_box_slabs(origins, directions, cube)
    exit_t = torch.where(t_out >= t_in, t_out + step_size, near)
    exit_t = torch.where(r < 0, near, exit_t)
    return torch.minimum(far, exit_t)


def _check_work(t0: Tensor, t1: Tensor, directions: Tensor, step_size: float, spacing: int) -> None:
    """Refuses rays that would need more than :data:`MAX_STEPS_PER_RAY` candidate steps (a hang)."""
    if t0.numel() == 0:
        return
    span = (t1.double() - t0.double()).clamp_min(0)
    if spacing == SPACING_CODES["contracted"]:
        # a step moves at most step_size and about step_size * |d|_inf in contracted space, whose
        # extent is 4: beyond that many steps a ray is at infinity
        d_inf = directions.detach().abs().amax(dim=-1).double()
        span = torch.minimum(span, 8.0 / d_inf.clamp_min(1e-300))
    worst = float(span.max()) / step_size
    if worst > MAX_STEPS_PER_RAY:
        raise ValueError(
            f"a ray would take {worst:.3g} steps (more than {MAX_STEPS_PER_RAY}) with "
            f"step_size={step_size:g}: pass a smaller far or a larger step_size (a contracted grid "
            "occupied up to its border bounds nothing; spacing='contracted' does), or use unit-length "
            "directions"
        )


def march_packed_reference(
    origins: Tensor,
    directions: Tensor,
    near: Tensor,
    far: Tensor,
    binaries: Tensor,
    boxes: Tensor,
    scene_index: Tensor | None = None,
    step_size: float = 1e-2,
    max_samples: int = 1024,
    contraction: int = 0,
    spacing: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-torch packed marching (the fallback and test oracle); same arguments as :func:`march_packed`.

    Vectorised: generates each ray's candidate steps (``spacing='t'``: all at once; ``'contracted'``:
    one step of all rays per iteration), looks the step midpoints up in the grid, masks, keeps the first
    ``max_samples`` per ray and compacts. Rays are processed in chunks of at most ``2**22`` candidate
    steps (rays x steps) to bound memory.

    Example:
        >>> b = torch.ones(1, 1, 2, 2, 2, dtype=torch.bool); box = torch.tensor([[-1.0, -1, -1, 1, 1, 1]])
        >>> o, d = torch.tensor([[0.0, 0, -2]]), torch.tensor([[0.0, 0, 1]])
        >>> march_packed_reference(o, d, torch.zeros(1), torch.full((1,), 9.0), b, box, step_size=1.0)[1]
        tensor([1., 2.])
    """
    n_rays = origins.shape[0]
    t0_all, t1_all = _clip(origins, directions, near, far, boxes, contraction)
    rays_out, ts_out, te_out = [], [], []
    chunk = _chunk_rays(t0_all, t1_all, step_size, spacing)
    for start in range(0, n_rays, chunk):
        sl = slice(start, min(start + chunk, n_rays))
        o, d, t0, t1 = origins[sl], directions[sl], t0_all[sl], t1_all[sl]
        if spacing == SPACING_CODES["t"]:
            ts, te, valid = _candidates_t(t0, t1, step_size)
        else:
            ts, te, valid = _candidates_contracted(o, d, t0, t1, step_size)
        if ts.shape[1] == 0:
            continue
        n_chunk, k_max = ts.shape
        pts = o[:, None, :] + ((ts + te) * 0.5)[..., None] * d[:, None, :]
        scene = None
        if scene_index is not None:
            scene = scene_index[sl][:, None].expand(n_chunk, k_max).reshape(-1)
        occ = grid_lookup_reference(pts.reshape(-1, 3), binaries, boxes, contraction, scene).view(
            n_chunk, k_max
        )
        keep = valid & occ
        keep = keep & (torch.cumsum(keep, dim=1) <= max_samples)
        ray_local, k_idx = keep.nonzero(as_tuple=True)
        rays_out.append(ray_local + start)
        ts_out.append(ts[ray_local, k_idx])
        te_out.append(te[ray_local, k_idx])
    if not rays_out:
        return (
            torch.zeros(0, dtype=torch.long, device=origins.device),
            origins.new_zeros(0),
            origins.new_zeros(0),
        )
    return torch.cat(rays_out), torch.cat(ts_out), torch.cat(te_out)


def march_packed(
    origins: Tensor,
    directions: Tensor,
    near: Tensor,
    far: Tensor,
    binaries: Tensor,
    boxes: Tensor,
    scene_index: Tensor | None = None,
    step_size: float = 1e-2,
    max_samples: int = 1024,
    contraction: str = "none",
    spacing: str = "t",
) -> tuple[Tensor, Tensor, Tensor]:
    """Marches rays through binary occupancy grids; returns the occupied steps, packed and sorted by ray.

    Step rule (``spacing``): ``"t"``: ``t_k = t_0 + k * step_size``; ``"contracted"``:
    ``t_{k+1} = t_k + step_size * max(1, |x(t_k)|_inf^2)``, which bounds the step measured in MERF's
    L∞-contracted space by ``step_size`` (the contraction's Jacobian is at most ``1/|x|_inf^2`` outside the
    unit cube) so steps grow with distance and a ray reaches infinity in finitely many steps. ``t_0`` is
    ``near`` clipped to the outermost grid box when ``contraction == "none"`` (contracted grids cover all
    space). A step ``[t_k, min(t_{k+1}, t_1)]`` is kept when the grid of the ray's scene is occupied at its
    midpoint; at most ``max_samples`` steps per ray are kept (the first ones).

    Args:
        origins: ``[N, 3]`` ray origins.
        directions: ``[N, 3]`` ray directions (``t`` is measured in multiples of them; unit length is usual).
        near: ``[N]`` start of each ray's interval.
        far: ``[N]`` end of each ray's interval (must be finite after clipping for ``spacing="t"``).
        binaries: ``[n_scenes, levels, rx, ry, rz]`` bool occupancy.
        boxes: ``[levels, 6]`` level boxes (finest first) in the grid's space, same dtype as ``origins``.
        scene_index: ``[N]`` int64 scene of each ray in ``[0, n_scenes)``; ``None``: scene 0.
        step_size: base step (> 0).
        max_samples: most samples kept per ray (> 0).
        contraction: ``"none"`` (grid boxes in world space) or ``"linf"`` (boxes in contracted space).
        spacing: ``"t"`` or ``"contracted"``.

    Returns:
        ``(ray_indices [S] int64, t_starts [S], t_ends [S])`` sorted by ray, then by ``t``.

    Example:
        >>> b = torch.ones(2, 1, 2, 2, 2, dtype=torch.bool); b[1] = False
        >>> box = torch.tensor([[-1.0, -1, -1, 1, 1, 1]])
        >>> o, d = torch.tensor([[0.0, 0, -2], [0.0, 0, -2]]), torch.tensor([[0.0, 0, 1], [0.0, 0, 1]])
        >>> ri, t0, t1 = march_packed(o, d, torch.zeros(2), torch.full((2,), 9.0), b, box,
        ...                           scene_index=torch.tensor([0, 1]), step_size=1.0)
        >>> ri.tolist(), t0.tolist()
        ([0, 0], [1.0, 2.0])
    """
    check_tensor("origins", origins, shape=(None, 3), floating=True, finite=True)
    n = origins.shape[0]
    check_tensor("directions", directions, shape=(n, 3), dtypes=(origins.dtype,), finite=True)
    check_tensor("near", near, shape=(n,), dtypes=(origins.dtype,), finite=True)
    check_tensor("far", far, shape=(n,), dtypes=(origins.dtype,))
    check_tensor("binaries", binaries, ndim=5, dtypes=(torch.bool,))
    check_tensor("boxes", boxes, shape=(binaries.shape[1], 6), dtypes=(origins.dtype,), finite=True)
    check_same_device(
        origins=origins, directions=directions, near=near, far=far, binaries=binaries, boxes=boxes
    )
    if any(s == 0 for s in binaries.shape):
        raise ValueError(f"binaries must have no empty dimension, got shape {list(binaries.shape)}")
    if scene_index is not None:
        check_tensor("scene_index", scene_index, shape=(n,), dtypes=(torch.long,), device=origins.device)
        values = n and finite_checks_enabled()
        if values and (int(scene_index.min()) < 0 or int(scene_index.max()) >= binaries.shape[0]):
            raise ValueError(
                f"scene_index values must lie in [0, {binaries.shape[0]}) (n_scenes of the grid)"
            )
    check_positive("step_size", step_size)
    check_positive("max_samples", max_samples, integer=True)
    check_choice("contraction", contraction, MARCH_CONTRACTIONS)
    check_choice("spacing", spacing, SPACINGS)
    checks = finite_checks_enabled() and has_values(origins)  # the value checks below sync
    if checks and (bool(torch.isnan(near).any()) or bool(torch.isnan(far).any())):
        raise ValueError("near and far must not contain NaN")
    if checks and n and bool((directions == 0).all(dim=-1).any()):
        raise ValueError("directions must be non-zero vectors (a zero direction never leaves its point)")
    c, s = CONTRACTION_CODES[contraction], SPACING_CODES[spacing]
    if s == SPACING_CODES["t"] and c == CONTRACTION_CODES["linf"] and has_values(binaries):
        far = _occupied_far(origins, directions, near, far, binaries, boxes, float(step_size))
    t0, t1 = _clip(origins, directions, near, far, boxes, c)
    if checks and s == SPACING_CODES["t"] and bool((torch.isinf(t1) & (t1 > t0)).any()):
        raise ValueError(
            "far must be finite for spacing='t' when the grid does not bound the rays "
            "(contracted grids cover all space): pass a finite far or use spacing='contracted'"
        )
    if checks:
        _check_work(t0, t1, directions, float(step_size), s)
    if use_extension("ray_march", origins.device):
        return kernels().march_packed(
            origins,
            directions,
            near,
            far,
            binaries,
            boxes,
            scene_index,
            float(step_size),
            int(max_samples),
            c,
            s,
        )
    return march_packed_reference(
        origins, directions, near, far, binaries, boxes, scene_index, float(step_size), int(max_samples), c, s
    )


__all__ = [
    "MARCH_CONTRACTIONS",
    "SPACINGS",
    "contract_linf_exact",
    "grid_lookup_reference",
    "march_packed",
    "march_packed_reference",
    "occupied_radius",
    "ray_box_slabs",
]
