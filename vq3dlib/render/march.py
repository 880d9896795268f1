"""Packed ray marching through an :class:`~vq3dlib.render.OccupancyGrid` (multi-scene batches in one call).

Output is nerfacc's packed format: ``ray_indices [S]`` (int64, sorted), ``t_starts [S]``,
``t_ends [S]``; sample positions are ``origins[ray_indices] + t_mid * directions[ray_indices]``.
Runs the compiled CPU/CUDA kernel when available, else the torch reference (identical samples).

Step rules (``spacing``):

* ``"t"``: uniform steps ``step_size`` in ``t`` from ``near`` (clipped to the grid box for world-space
  grids). Needs a finite ``far`` with contracted grids (they cover all space).
* ``"contracted"``: ``dt = step_size * max(1, |x|_inf^2)`` at the step's start ``x``: inside the unit
  cube steps are ``step_size``; outside they grow quadratically with distance, so that a step never
  exceeds ``step_size`` in MERF's L∞-contracted space (whose Jacobian is bounded by ``1/|x|_inf^2``
  there) and a ray reaches infinity in about ``1 / step_size`` steps.

Empty cells are skipped: each step is tested against the grid at its midpoint (a cheap lookup) and
only occupied steps are emitted, so the field is never evaluated in empty space. Early termination on
transmittance needs densities, so :class:`~vq3dlib.render.Renderer` does it in a second pass
(evaluate density without grad → visibility → re-mask), as nerfacc's ``OccGridEstimator.sampling``.

Example:
    >>> import torch
    >>> from vq3dlib.render.march import ray_march
    >>> from vq3dlib.render.occupancy import OccupancyGrid
    >>> grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=4, contraction="none")
    >>> samples = ray_march(torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]]), grid,
    ...                     step_size=0.5)
    >>> samples.t_starts.tolist(), samples.ray_indices.tolist()
    ([2.0, 2.5, 3.0, 3.5], [0, 0, 0, 0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from vq3dlib._validation import check_tensor
from vq3dlib.ops.march import march_packed, ray_box_slabs
from vq3dlib.render.aabb import as_aabb
from vq3dlib.render.occupancy import OccupancyGrid


class PackedSamples(NamedTuple):
    """Packed ray samples (nerfacc's format), sorted by ray then ``t``.

    Fields: ``ray_indices [S]`` int64, ``t_starts [S]``, ``t_ends [S]``.
    """

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor


def _per_ray(name: str, value: float | Tensor, like: Tensor) -> Tensor:
    n = like.shape[0]
    if isinstance(value, Tensor):
        value = value.to(device=like.device, dtype=like.dtype)
        if value.dim() == 0:
            return value.expand(n).contiguous()
        check_tensor(name, value, shape=(n,))
        return value.contiguous()
    return torch.full((n,), float(value), dtype=like.dtype, device=like.device)


def ray_march(
    origins: Tensor,
    directions: Tensor,
    grid: OccupancyGrid | None = None,
    *,
    scene_index: Tensor | None = None,
    near: float | Tensor = 0.0,
    far: float | Tensor = 1e10,
    step_size: float = 1e-2,
    max_samples: int = 1024,
    spacing: str = "t",
    aabb: Sequence[float] | Tensor | None = None,
    jitter: bool = False,
    generator: torch.Generator | None = None,
) -> PackedSamples:
    """Marches rays through the occupancy grid of their scene; returns the occupied steps, packed.

    Not differentiable (like nerfacc): compute positions from the returned ``t`` to get gradients.

    Args:
        origins: ``[N, 3]`` ray origins (float32/float64; float16/bfloat16 rays are marched in float32
            and give float32 ``t``).
        directions: ``[N, 3]`` non-zero ray directions (usually unit length; ``t`` is in multiples of
            them).
        grid: the occupancy grid. A grid with ``n_scenes > 1`` is indexed by ``scene_index``; a grid
            with one scene is shared by all rays. ``None``: every step is occupied (dense marching)
            inside ``aabb`` if given, else everywhere (contracted space).
        scene_index: ``[N]`` int64 scene of each ray (required when ``grid.n_scenes > 1``).
        near: scalar or ``[N]`` start of the rays.
        far: scalar or ``[N]`` end of the rays. The march also ends where a ray leaves the grid's box
            or, for ``spacing="t"`` over a contracted grid, just past its last occupied cell, so a huge
            ``far`` costs nothing there; a ray that would still need more than
            :data:`vq3dlib.ops.march.MAX_STEPS_PER_RAY` steps is refused with a ``ValueError``.
        step_size: base step (see the module docstring for the two ``spacing`` rules).
        max_samples: most samples per ray (the first ones are kept).
        spacing: ``"t"`` or ``"contracted"``.
        aabb: world box for ``grid=None``.
        jitter: shift each ray's start (``near``, or its grid-box entry) by ``U[0, step_size)``
            (stratified sampling while training).
        generator: RNG for the jitter.

    Returns:
        :class:`PackedSamples` ``(ray_indices [S], t_starts [S], t_ends [S])``.

    Example:
        >>> grid = OccupancyGrid(resolution=8, n_scenes=2); grid.binaries[1] = False
        >>> o = torch.zeros(2, 3); d = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
        >>> s = ray_march(o, d, grid, scene_index=torch.tensor([0, 1]), spacing="contracted", step_size=0.1)
        >>> bool((s.ray_indices == 0).all()), s.t_starts.shape[0] > 10
        (True, True)
    """
    check_tensor("origins", origins, shape=(None, 3), floating=True)
    check_tensor("directions", directions, shape=(origins.shape[0], 3), floating=True)
    if origins.device.type == "meta":
        raise ValueError(
            "ray_march needs origins with values, got a meta tensor: the number of samples depends on "
            "the grid's contents (under torch.compile the registered fake op infers it)"
        )
    if origins.dtype in (torch.float16, torch.bfloat16):  # marched in float32: half t cannot step
        origins, directions = origins.float(), directions.float()
    near_t = _per_ray("near", near, origins)
    far_t = _per_ray("far", far, origins)
    if grid is None:
        if aabb is not None:
            boxes = as_aabb(aabb, origins).reshape(1, 6)
            contraction = "none"
        else:
            boxes = torch.tensor(
                [[-2.0, -2.0, -2.0, 2.0, 2.0, 2.0]], dtype=origins.dtype, device=origins.device
            )
            contraction = "linf"
        binaries = torch.ones(1, 1, 1, 1, 1, dtype=torch.bool, device=origins.device)
        scene_index = None
    else:
        if not isinstance(grid, OccupancyGrid):
            raise TypeError(f"grid must be an OccupancyGrid or None, got {type(grid).__name__}")
        if aabb is not None:
            raise ValueError("aabb is only used without a grid (the grid has its own boxes)")
        binaries, boxes, contraction = grid.binaries, grid.boxes.to(origins.dtype), grid.contraction
        if grid.n_scenes == 1:
            scene_index = None
        elif scene_index is None:
            raise ValueError(f"scene_index is required: the grid holds {grid.n_scenes} scenes")
    if jitter:
        if contraction == "none":  # jitter from the box entry, not from a near plane far outside the box
            near_t = torch.maximum(near_t, ray_box_slabs(origins, directions, boxes[-1])[0])
        u = torch.rand(near_t.shape, generator=generator, device=near_t.device).to(near_t.dtype)
        near_t = near_t + u * step_size
    ray_indices, t_starts, t_ends = march_packed(
        origins,
        directions,
        near_t,
        far_t,
        binaries,
        boxes,
        scene_index,
        step_size=step_size,
        max_samples=max_samples,
        contraction=contraction,
        spacing=spacing,
    )
    return PackedSamples(ray_indices, t_starts, t_ends)
