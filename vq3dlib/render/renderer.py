"""A small renderer: cameras/rays → packed marching → field → weights → images (+ packed samples).

Every render of the library returns a :class:`RenderOutput`: the ray-shaped results (colour, depth,
disparity, opacity, optional extra features), the packed samples behind them (for depth and
distortion losses) and the occupancy grid used; :meth:`RenderOutput.images` gives the image-shaped
results channels first.

The field is any callable ``field(positions [S, 3], directions [S, 3], scene_index [S]) -> (density [S],
rgb [S, 3])`` (post-activation density ≥ 0, colour in any range); when it also has a
``density(positions, scene_index)`` method, the early-stop pre-pass uses that instead of the full call
while gradients are on.

Early stop on transmittance (like nerfacc's ``OccGridEstimator.sampling``): densities are evaluated
without grad at the marched samples, transmittance computed, and samples where it has fallen below
``early_stop_eps`` (or whose alpha is below ``alpha_thre``) are dropped before the differentiable
evaluation. Without autograd (``torch.no_grad()``) the pre-pass evaluates the whole field instead
and its values at the kept samples are the render's: one evaluation per sample. With
``spacing="contracted"`` the rays are marched in rounds (32 samples, then twice as many per round)
and only the rays that are not yet opaque march on, so nothing is marched or evaluated far behind a
surface; the samples kept are exactly those of one march to the end. ``early_stop_eps=0`` and
``alpha_thre=0`` turn the pre-pass off.

Example:
    >>> import torch
    >>> from vq3dlib.render.renderer import Renderer
    >>> def field(x, d, s):  # an opaque red ball of radius 0.5
    ...     return 50.0 * (x.norm(dim=-1) < 0.5).float(), torch.tensor([1.0, 0, 0]).expand(len(x), 3)
    >>> renderer = Renderer(step_size=0.01, spacing="t", far=6.0)
    >>> o, d = torch.tensor([[0.0, 0, -3], [0, 2, -3]]), torch.tensor([[0.0, 0, 1], [0, 0, 1]])
    >>> out = renderer(field, (o, d))
    >>> out.rgb.round(decimals=2).tolist(), out.depth[0].round(decimals=1).item()
    ([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 2.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from vq3dlib._validation import (
    check_choice,
    check_positive,
    check_range,
    check_tensor,
    finite_checks_enabled,
    has_values,
    inner_checks_off,
    value_bounds,
    values_checked_once,
)
from vq3dlib.cpu_threads import map_concurrently, ops_on_one_thread
from vq3dlib.packed import packed_info_from_counts
from vq3dlib.render.march import ray_march
from vq3dlib.render.occupancy import OccupancyGrid
from vq3dlib.render.stratified import stratified_intervals
from vq3dlib.render.volrend import (
    accumulate_along_rays,
    depth_to_disparity,
    pack_info,
    render_visibility_from_density,
    render_weight_from_density,
)

Field = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]

#: fewest rays per chunk of a concurrent render (``Renderer(threads=...)``): smaller renders run in turn
MIN_CONCURRENT_RAYS = 1024

#: how a :class:`Renderer` places samples: occupancy-grid marching, or fixed stratified intervals
SAMPLINGS = ("march", "stratified")


@dataclass
class RenderOutput:
    """A render: what :class:`Renderer` and :meth:`VQ3DModel.render <vq3dlib.models.VQ3DModel.render>`
    return. Image-like fields have the rays' leading shape ``[...]``.

    Attributes:
        rgb: ``[..., C]`` composited colour (background included); ``C = 3`` for a model's renders.
        depth: ``[...]`` expected depth ``Σ w t / opacity`` (``t`` at sample midpoints; z-depth when the rays
            carry ``z_scale``; ``0`` where opacity is 0). Unnormalised when ``normalize_depth=False``.
        disparity: ``[...]`` ``1 / depth`` (:func:`~vq3dlib.render.depth_to_disparity`: ``0`` where
            nothing was hit).
        opacity: ``[...]`` accumulated weight ``Σ w``.
        ray_indices, t_starts, t_ends, weights: ``[S]`` packed samples over the flattened rays (for depth
            and distortion losses); ``n_rays`` the number of flattened rays.
        alphas: ``[S]`` each sample's own opacity ``1 - exp(-σ δ)``, before transmittance (for
            regularisers of density the render does not see, e.g. behind the surface), or ``None``.
        features: ``[..., E]`` extra features composited like colour, or ``None`` (a model whose field
            has ``field_out_features = E > 0``).
        grid: the :class:`~vq3dlib.render.OccupancyGrid` the render marched through (``None``: dense
            or stratified sampling), reusable for another render of the same scenes.
        image: ``[N, 3, H', W']`` the final image of a model render (e.g. after a super-resolution
            head; ``None`` for plain renders).

    Rays from ``Cameras`` have the leading shape ``[N, H, W]``; :meth:`images` returns the image-like
    fields channels first (``[N, C, H, W]``, the layout of datasets, metrics and discriminators).
    """

    rgb: Tensor
    depth: Tensor
    disparity: Tensor
    opacity: Tensor
    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    weights: Tensor
    n_rays: int
    features: Tensor | None = None
    grid: OccupancyGrid | None = None
    image: Tensor | None = None
    alphas: Tensor | None = None

    def images(self) -> dict[str, Tensor]:
        """Channels-first images of a render of ``[N, H, W]`` rays (e.g. from ``Cameras``).

        Returns:
            ``{"rgb": [N, C, H, W], "depth": [N, 1, H, W], "disparity": [N, 1, H, W],
            "opacity": [N, 1, H, W]}``, plus ``"features": [N, E, H, W]`` when the render has
            features (views of the outputs: gradients flow through them).

        Raises:
            ValueError: when the rays were not shaped ``[N, H, W]``.

        Example:
            >>> r = Renderer(step_size=0.1)
            >>> field = lambda x, d, s: (torch.ones(len(x)), torch.full((len(x), 3), 0.5))
            >>> o = torch.zeros(2, 4, 5, 3); d = torch.nn.functional.normalize(torch.ones(2, 4, 5, 3), dim=-1)
            >>> images = r(field, (o, d)).images()
            >>> images["rgb"].shape, images["depth"].shape
            (torch.Size([2, 3, 4, 5]), torch.Size([2, 1, 4, 5]))
        """
        if self.rgb.dim() != 4:
            raise ValueError(
                "images() needs a render of rays shaped [N, H, W] (e.g. from Cameras); this one has rgb "
                f"of shape {list(self.rgb.shape)} (use .rgb, .depth, ... directly)"
            )
        images = {
            "rgb": self.rgb.permute(0, 3, 1, 2),
            "depth": self.depth[:, None],
            "disparity": self.disparity[:, None],
            "opacity": self.opacity[:, None],
        }
        if self.features is not None:
            images["features"] = self.features.permute(0, 3, 1, 2)
        if self.image is not None:
            images["image"] = self.image
        return images


class _ChunkRender(NamedTuple):
    """The per-ray sums and packed samples of one chunk of rays (``Renderer._render_chunk``)."""

    rgb: Tensor  # [n, C] Σ w c
    depth_sum: Tensor  # [n] Σ w t (t at sample midpoints)
    opacity: Tensor  # [n] Σ w
    ray_indices: Tensor  # [S] global ray index
    t_starts: Tensor
    t_ends: Tensor
    weights: Tensor
    alphas: Tensor


def _interleave(
    parts: Sequence[_ChunkRender], rays_of: Sequence[Tensor], n_rays: int, threads: int = 1
) -> _ChunkRender:
    """Merges the renders ``parts[k]`` of the rays ``rays_of[k]`` (increasing ray ids; together every
    one of ``n_rays`` once), each packed in its own ray order, into one render packed in ray order;
    the parts are written in on ``threads`` threads (:func:`~vq3dlib.cpu_threads.map_concurrently`).

    Example:
        >>> def part(rays, ray_indices):  # one sample per entry, its t_start the global ray id
        ...     ri = torch.tensor(ray_indices)
        ...     ts = torch.tensor(rays, dtype=torch.float)[ri]
        ...     per_ray = torch.zeros(len(rays))
        ...     return _ChunkRender(per_ray[:, None], per_ray, per_ray, ri, ts, ts, ts, ts)
        >>> a = part([0, 2], [0, 0, 1])  # rays 0 and 2: two samples, then one
        >>> b = part([1, 3], [0, 1, 1])  # rays 1 and 3: one sample, then two
        >>> merged = _interleave([a, b], [torch.tensor([0, 2]), torch.tensor([1, 3])], 4, threads=2)
        >>> merged.ray_indices.tolist(), merged.t_starts.tolist()
        ([0, 0, 1, 2, 3, 3], [0.0, 0.0, 1.0, 2.0, 3.0, 3.0])
    """
    lead = parts[0].rgb
    rgb = lead.new_empty(n_rays, lead.shape[1])
    depth_sum, opacity = lead.new_empty(n_rays), lead.new_empty(n_rays)
    counts = torch.zeros(n_rays, dtype=torch.long, device=lead.device)
    local_counts = [
        torch.bincount(p.ray_indices, minlength=r.shape[0]) for p, r in zip(parts, rays_of, strict=True)
    ]
    for rays, c in zip(rays_of, local_counts, strict=True):
        counts.index_copy_(0, rays, c)
    first = torch.cumsum(counts, 0) - counts  # each ray's first sample in the merged packing
    packed = [torch.empty(int(counts.sum()), dtype=v.dtype, device=v.device) for v in parts[0][3:]]

    def write(k: int) -> None:  # the parts write disjoint entries
        part, rays, c = parts[k], rays_of[k], local_counts[k]
        for out, value in zip((rgb, depth_sum, opacity), part[:3], strict=True):
            out.index_copy_(0, rays, value)
        ri = part.ray_indices
        global_ri = rays[ri]
        where = first[global_ri] + torch.arange(ri.shape[0], device=ri.device) - (torch.cumsum(c, 0) - c)[ri]
        for out, value in zip(packed, (global_ri, *part[4:]), strict=True):
            out.index_copy_(0, where, value)

    map_concurrently(write, range(len(parts)), threads)
    return _ChunkRender(rgb, depth_sum, opacity, *packed)


def _target_device(field: object, grid: OccupancyGrid | None) -> torch.device | None:
    """A field's device: its ``device`` attribute, else its first parameter/buffer's, else the grid's."""
    device = getattr(field, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(field, nn.Module):
        for tensor in (*field.parameters(), *field.buffers()):
            return tensor.device
    if grid is not None:
        return grid.binaries.device
    return None


def _to_device(rays: object, scene_index: Tensor | None, device: torch.device | None):
    """Moves ``Cameras``/``Rays`` objects (and a separate ``scene_index``) to ``device``; tuples stay."""
    if device is None or isinstance(rays, (tuple, list)) or not callable(getattr(rays, "to", None)):
        return rays, scene_index
    if isinstance(scene_index, Tensor):
        scene_index = scene_index.to(device)
    return rays.to(device), scene_index


def _flatten_rays(rays: object, scene_index: Tensor | None):
    """→ origins [N,3], directions [N,3], scene_index [N] | None, z_scale [N] | None, leading shape."""
    if hasattr(rays, "generate_rays"):
        rays = rays.generate_rays()
    z_scale = None
    if isinstance(rays, (tuple, list)):
        if len(rays) not in (2, 3):
            raise ValueError(
                f"rays as a tuple must be (origins, directions[, scene_index]), got {len(rays)} items"
            )
        origins, directions = rays[0], rays[1]
        if len(rays) == 3:
            if scene_index is not None:
                raise ValueError("scene_index given twice (in rays and as an argument)")
            scene_index = rays[2]
    elif hasattr(rays, "origins") and hasattr(rays, "directions"):
        origins, directions = rays.origins, rays.directions
        if scene_index is None:
            scene_index = getattr(rays, "scene_index", None)
        z_scale = getattr(rays, "z_scale", None)
    else:
        raise TypeError(
            "rays must be (origins, directions[, scene_index]), an object with .origins/.directions "
            f"(Rays) or with .generate_rays() (Cameras), got {type(rays).__name__}"
        )
    check_tensor("origins", origins, last_dim=3, floating=True, finite=True)
    check_tensor("directions", directions, shape=tuple(origins.shape), dtypes=(origins.dtype,), finite=True)
    lead = tuple(origins.shape[:-1])
    if scene_index is not None:
        check_tensor("scene_index", scene_index, shape=lead, dtypes=(torch.long,), device=origins.device)
        scene_index = scene_index.reshape(-1)
    if z_scale is not None:
        check_tensor("z_scale", z_scale, shape=lead, floating=True)
        z_scale = z_scale.reshape(-1)
    return origins.reshape(-1, 3), directions.reshape(-1, 3), scene_index, z_scale, lead


#: samples per ray of the first round of :meth:`Renderer._march_until_opaque` (each later round doubles)
FIRST_ROUND_SAMPLES = 32


def _prepass(
    field: Field, o: Tensor, d: Tensor, ri: Tensor, ts: Tensor, te: Tensor, scene: Tensor, full: bool
) -> tuple[Tensor, Tensor | None]:
    """``(density [S], rgb [S, C] or None)`` at the midpoints of packed samples, for the early stop.

    ``full``: the whole field (its colours are then reused at the kept samples); else only the
    density, through the field's ``density`` method when it has one.
    """
    d_s = d.index_select(0, ri)
    pos = o.index_select(0, ri) + ((ts + te) * 0.5)[:, None] * d_s
    if hasattr(field, "density") and not full:
        sig = field.density(pos, scene)
        sig = sig[:, 0] if sig.dim() == 2 else sig
        check_range("field.density", sig, low=0, what=" (a post-activation density)")
        return sig, None
    sig, rgb = _split_field_output(field(pos, d_s, scene), ri.shape[0])
    return sig, rgb if full else None


def _merge_rounds(
    rounds: list[tuple[Tensor, ...]], counts: list[Tensor], total: Tensor
) -> tuple[Tensor, ...]:
    """Interleaves the packed tensors of successive marching rounds into one packing, ray by ray.

    ``rounds[r]`` holds packed per-sample tensors (ray indices first, sorted) of round ``r`` and
    ``counts[r] [n_rays]`` its samples per ray, ``total [n_rays]`` their sum over the rounds; a ray's
    samples of round ``r`` follow its samples of the rounds before.
    """
    if len(rounds) == 1:
        return rounds[0]
    ray_start = torch.cumsum(total, 0) - total  # where each ray's samples begin in the merged packing
    before = torch.zeros_like(total)  # samples of each ray in the rounds already placed
    size = int(total.sum())
    merged = [torch.empty((size, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in rounds[0]]
    for part, count in zip(rounds, counts, strict=True):
        ri = part[0]
        # destination = the ray's start + its samples placed so far + the rank within this round
        shift = ray_start + before - (torch.cumsum(count, 0) - count)
        dest = shift.index_select(0, ri) + torch.arange(ri.numel(), device=ri.device)
        for out, values in zip(merged, part, strict=True):
            out.index_copy_(0, dest, values)
        before += count
    return tuple(merged)


def _select(keep: Tensor, ri: Tensor, *values: Tensor, n_rays: int) -> tuple[Tensor, ...]:
    """The packed samples where ``keep`` holds: ``(ray_indices, *values, packed_info)``."""
    index = keep.nonzero().squeeze(1)
    ri = ri.index_select(0, index)
    kept = tuple(v.index_select(0, index) for v in values)
    return (ri, *kept, packed_info_from_counts(torch.bincount(ri, minlength=n_rays)))


def _scenes(scene_index: Tensor | None, ri: Tensor) -> Tensor:
    """``[S]`` scene of each packed sample (0 when the rays carry no scene index)."""
    return scene_index.index_select(0, ri) if scene_index is not None else torch.zeros_like(ri)


def _split_field_output(out: object, count: int) -> tuple[Tensor, Tensor]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("field must return a pair (density [S], rgb [S, 3])")
    density, rgb = out
    check_tensor("field density", density, floating=True)
    if density.dim() == 2 and density.shape[-1] == 1:
        density = density[:, 0]
    if density.shape != (count,):
        raise ValueError(
            f"field density must have shape [{count}] (or [{count}, 1]), got {list(density.shape)}"
        )
    check_tensor("field rgb", rgb, shape=(count, None), floating=True)
    if finite_checks_enabled() and count and has_values(density) and has_values(rgb):
        bounds = {name: value_bounds(value) for name, value in (("density", density), ("rgb", rgb))}
        for name, (low, high) in bounds.items():
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError(
                    f"field returned NaN or Inf {name} values (check the field's inputs/parameters)"
                )
        if bounds["density"][0] < 0:
            check_range("field density", density, low=0, what=" (a post-activation density)")
    return density, rgb


def _background_values(bg: object, dtype: torch.dtype = torch.float32, device: object = None) -> Tensor:
    """``bg`` as a finite tensor; raises ``TypeError``/``ValueError`` naming ``background``."""
    if isinstance(bg, bool) or not isinstance(bg, (int, float, Sequence, Tensor)):
        raise TypeError(f"background must be a number, a [C] colour or a tensor, got {type(bg).__name__}")
    try:
        bg_t = torch.as_tensor(bg, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"background must be a number, a [C] colour or a tensor, got {bg!r}") from None
    check_tensor("background", bg_t, finite=True)
    return bg_t


def _background(bg: object, like: Tensor, lead: tuple[int, ...]) -> Tensor:
    """The background as ``[C]`` or ``[n_rays, C]`` for colours ``like [n_rays, C]``, validated."""
    bg_t = _background_values(bg, like.dtype, like.device)
    channels = like.shape[-1]
    if bg_t.dim() == 0 or tuple(bg_t.shape) in ((1,), (channels,)):
        return bg_t
    if tuple(bg_t.shape) == (*lead, channels):
        return bg_t.reshape(like.shape[0], channels)
    raise ValueError(
        f"background must be a number, [{channels}] or per-ray [..., {channels}] with the rays' shape "
        f"{list(lead)}, got shape {list(bg_t.shape)}"
    )


class Renderer(nn.Module):
    """Renders a field along rays with occupancy-grid marching and volume rendering.

    Args:
        grid: default :class:`OccupancyGrid` (override per call; ``None``: dense marching).
        step_size: marching step (see :func:`~vq3dlib.render.ray_march`).
        spacing: ``"t"`` or ``"contracted"`` (default; steps grow with distance).
        near, far: ray interval.
        max_samples: most samples per ray.
        aabb: world box for dense marching without a grid.
        background: colour behind the scene: float, ``[C]`` or per-ray ``[..., C]``; ``None`` → 0.
        early_stop_eps: drop samples whose transmittance is below this (pre-pass); 0 disables.
        alpha_thre: drop samples whose alpha is below this (pre-pass); 0 disables.
        normalize_depth: divide the expected depth by the opacity.
        chunk_size: rays per chunk (bounds the memory of marching and of inference).
        jitter: random start offset per ray while ``self.training`` (stratified sampling); a call's
            ``jitter=`` overrides it (no ``.eval()``/``.train()`` toggling needed to render a clean view).
        sampling: ``"march"`` (occupancy-grid marching, the default) or ``"stratified"``:
            ``max_samples`` fixed intervals per ray from
            :func:`~vq3dlib.render.stratified.stratified_intervals` (linear in the ``aabb`` box,
            default ``[-1, 1]^3``, disparity-linear to ``far``) and an opaque background interval
            behind ``far`` (its colour is the field's at ``far``, its depth counts as ``far``): no
            grid, no early stop, and every ray ends opaque — for feed-forward scenes. Its depth is
            the depth of the expected disparity, ``opacity / Σ w / t`` (a little weight on the far
            background barely moves it; the expected depth ``Σ w t`` would jump towards ``far``).
        inner_fraction: share of the stratified intervals inside the box.
        threads: on CPU without autograd or jitter, split the rays into ``threads`` interleaved
            chunks (rays ``k, k + threads, ...``; more when ``chunk_size`` asks for them, fewer
            below 1,024 rays per chunk) and render them concurrently, each chunk's ops on one thread
            of its own (:func:`~vq3dlib.cpu_threads.map_concurrently`; the field must be safe to
            call from several threads). ``None`` (default): torch's thread count. ``1`` renders the
            chunks one after the other, each op on all of torch's threads, as with autograd. The
            values and the packed samples' order are the same either way; the concurrent render is
            as fast on an idle machine and faster beside busy processes (docs/benchmarks.md).

    Example:
        >>> field = lambda x, d, s: (torch.ones(len(x)), torch.full((len(x), 3), 0.5))
        >>> grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8, contraction="none")
        >>> r = Renderer(grid, step_size=0.1)
        >>> out = r(field, (torch.tensor([[0.0, 0, -2]]), torch.tensor([[0.0, 0, 1]])), background=1.0)
        >>> round(out.opacity.item(), 3), out.rgb.shape
        (0.865, torch.Size([1, 3]))
    """

    def __init__(
        self,
        grid: OccupancyGrid | None = None,
        *,
        step_size: float = 1e-2,
        spacing: str = "contracted",
        near: float = 0.0,
        far: float = 1e10,
        max_samples: int = 1024,
        aabb: Sequence[float] | Tensor | None = None,
        background: float | Sequence[float] | Tensor | None = None,
        early_stop_eps: float = 1e-4,
        alpha_thre: float = 0.0,
        normalize_depth: bool = True,
        chunk_size: int = 1 << 16,
        jitter: bool = False,
        sampling: str = "march",
        inner_fraction: float = 0.75,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        if threads is not None:
            check_positive("threads", threads, integer=True)
        check_choice("sampling", sampling, SAMPLINGS)
        if not 0.0 <= inner_fraction <= 1.0:
            raise ValueError(f"inner_fraction must be in [0, 1], got {inner_fraction}")
        check_positive("near", near, allow_zero=True)  # rendering marches from it unchecked
        check_positive("step_size", step_size)
        check_choice("spacing", spacing, ("t", "contracted"))
        check_positive("max_samples", max_samples)
        check_positive("chunk_size", chunk_size)
        check_positive("early_stop_eps", early_stop_eps, allow_zero=True)
        check_positive("alpha_thre", alpha_thre, allow_zero=True)
        if grid is not None and not isinstance(grid, OccupancyGrid):
            raise TypeError(f"grid must be an OccupancyGrid or None, got {type(grid).__name__}")
        self.grid = grid
        self.step_size = step_size
        self.spacing = spacing
        self.near = near
        self.far = far
        self.max_samples = max_samples
        self.aabb = aabb
        if background is not None:  # the shape is checked against the field's colours when rendering
            _background_values(background)
        self.background = background
        self.early_stop_eps = early_stop_eps
        self.alpha_thre = alpha_thre
        self.normalize_depth = normalize_depth
        self.chunk_size = chunk_size
        self.jitter = jitter
        self.sampling = sampling
        self.inner_fraction = inner_fraction
        self.threads = None if threads is None else int(threads)

    def step_length(self, positions: Tensor) -> Tensor:
        """World-space length ``[P]`` of a marching step that starts at ``positions [P, 3]``.

        ``step_size`` for ``spacing="t"``; ``step_size * max(1, |x|_inf^2)`` for ``"contracted"`` (see
        :func:`~vq3dlib.render.ray_march`). ``field.density(x) * step_length(x)`` is the opacity-like
        occupancy that :meth:`OccupancyGrid.update_every_n_steps` expects (nerfacc's ``density * step``).

        Example:
            >>> r = Renderer(step_size=0.01)
            >>> r.step_length(torch.tensor([[0.5, 0.0, 0.0], [0.0, -3.0, 1.0]]))
            tensor([0.0100, 0.0900])
        """
        check_tensor("positions", positions, shape=(None, 3), floating=True)
        if self.spacing == "t":
            return torch.full_like(positions[:, 0], self.step_size)
        return self.step_size * positions.abs().amax(dim=-1).square().clamp(min=1.0)

    def forward(
        self,
        field: Field,
        rays: object,
        *,
        scene_index: Tensor | None = None,
        grid: OccupancyGrid | None = None,
        background: float | Sequence[float] | Tensor | None = None,
        jitter: bool | None = None,
    ) -> RenderOutput:
        """Renders ``rays`` (``(origins, directions[, scene_index])``, ``Rays`` or ``Cameras``).

        Args:
            field: ``(positions [S, 3], directions [S, 3], scene_index [S]) -> (density [S], rgb [S, C])``.
            rays: ``(origins [..., 3], directions [..., 3][, scene_index [...]])``, an object with
                ``origins``/``directions`` (and optional ``scene_index``, ``z_scale``) such as ``Rays``,
                or an object with ``generate_rays()`` such as ``Cameras``. ``Cameras`` and ``Rays`` are moved
                to the field's device (its ``device`` attribute or first parameter; else the grid's);
                tensors given as a tuple are used where they are.
            scene_index: ``[...]`` int64 scene of each ray (when ``rays`` does not carry one).
            grid: occupancy grid for this call (default: the renderer's).
            background: overrides the renderer's background.
            jitter: stratified start offsets for this call; ``None``: ``self.jitter and self.training``.

        Returns:
            :class:`RenderOutput` (:meth:`RenderOutput.images` for channels-first images).

        Example:
            >>> r = Renderer(step_size=0.25, spacing="t", far=1.0, jitter=True)  # jitters in training mode
            >>> field = lambda x, d, s: (torch.ones(len(x)), torch.ones(len(x), 3))
            >>> rays = (torch.tensor([[0.0, 0, -2]]), torch.tensor([[0.0, 0, 1]]))
            >>> r(field, rays, jitter=False).t_starts.tolist()  # a clean render, no r.eval() needed
            [0.0, 0.25, 0.5, 0.75]
        """
        if not callable(field):
            raise TypeError(f"field must be callable, got {type(field).__name__}")
        grid = self.grid if grid is None else grid
        if self.sampling == "stratified":
            grid = None
        rays, scene_index = _to_device(rays, scene_index, _target_device(field, grid))
        origins, directions, scene_index, z_scale, lead = _flatten_rays(rays, scene_index)
        jitter = self.jitter and self.training if jitter is None else bool(jitter)
        n_rays = origins.shape[0]
        on_cpu = origins.device.type == "cpu"
        threads = (
            self._concurrent_threads(n_rays) if on_cpu and not (torch.is_grad_enabled() or jitter) else 1
        )
        # the field is called once per round of samples of each chunk: its planes are checked once
        with values_checked_once():
            if threads > 1:  # the merge on one thread too: no op of the render waits for another thread
                with ops_on_one_thread():
                    out = self._render_interleaved(field, origins, directions, scene_index, grid, threads)
            else:
                parts = [
                    self._render_chunk(
                        field,
                        origins,
                        directions,
                        scene_index,
                        grid,
                        jitter,
                        s,
                        min(s + self.chunk_size, n_rays),
                    )
                    for s in range(0, n_rays, self.chunk_size)
                ]
                if not parts:
                    parts = [self._render_chunk(field, origins, directions, scene_index, grid, jitter, 0, 0)]
                out = _ChunkRender(*(torch.cat(column) for column in zip(*parts, strict=True)))
        rgb, wt, opacity = out.rgb, out.depth_sum, out.opacity
        if z_scale is not None:
            wt = wt * z_scale.to(wt.dtype)
        hit = opacity > 0
        depth = wt / opacity.clamp(min=1e-10) if self.normalize_depth else wt
        depth = torch.where(hit, depth, torch.zeros_like(depth))
        disparity = depth_to_disparity(depth)
        bg = self.background if background is None else background
        if bg is not None:
            rgb = rgb + (1 - opacity)[:, None] * _background(bg, rgb, tuple(lead))
        return RenderOutput(
            rgb=rgb.reshape(*lead, rgb.shape[-1]),
            depth=depth.reshape(lead),
            disparity=disparity.reshape(lead),
            opacity=opacity.reshape(lead),
            ray_indices=out.ray_indices,
            t_starts=out.t_starts,
            t_ends=out.t_ends,
            weights=out.weights,
            n_rays=n_rays,
            grid=grid,
            alphas=out.alphas,
        )

    def _render_interleaved(
        self,
        field: Field,
        origins: Tensor,
        directions: Tensor,
        scene_index: Tensor | None,
        grid: OccupancyGrid | None,
        threads: int,
    ) -> _ChunkRender:
        # chunk k holds the rays k, k + K, ...: neighbouring rays cost about the same, so the chunks
        # do (contiguous chunks of one frame differed by a fifth; blocks of rays and more chunks than
        # threads were slower, docs/benchmarks.md)
        n_rays = origins.shape[0]
        n_chunks = max(-(-n_rays // self.chunk_size), threads)
        rays_of = [torch.arange(k, n_rays, n_chunks, device=origins.device) for k in range(n_chunks)]

        def chunk(k: int) -> _ChunkRender:
            rays = rays_of[k]
            sidx = scene_index.index_select(0, rays) if scene_index is not None else None
            o, d = origins.index_select(0, rays), directions.index_select(0, rays)
            return self._render_chunk(field, o, d, sidx, grid, False, 0, o.shape[0])

        return _interleave(map_concurrently(chunk, range(n_chunks), threads), rays_of, n_rays, threads)

    def _concurrent_threads(self, n_rays: int) -> int:
        """Threads for a render of ``n_rays`` on CPU without autograd (1: the chunks in turn)."""
        threads = torch.get_num_threads() if self.threads is None else self.threads
        return max(1, min(threads, n_rays // MIN_CONCURRENT_RAYS))

    def _render_chunk(
        self,
        field: Field,
        origins: Tensor,
        directions: Tensor,
        scene_index: Tensor | None,
        grid: OccupancyGrid | None,
        jitter: bool,
        start: int,
        end: int,
    ) -> _ChunkRender:
        # contiguous: rays of one camera often share an expanded origin, slow to gather from
        o, d = origins[start:end].contiguous(), directions[start:end].contiguous()
        sidx = scene_index[start:end] if scene_index is not None else None
        if self.sampling == "stratified":
            return self._render_stratified(field, o, d, sidx, jitter, start)
        n = o.shape[0]
        # without autograd the pre-pass evaluates the whole field and its values at the kept samples
        # are the render's: no second evaluation
        reuse = not torch.is_grad_enabled()
        prepass = None
        with torch.no_grad():
            if self.early_stop_eps > 0 and self.spacing == "contracted":
                ri, ts, te, info, prepass = self._march_until_opaque(field, o, d, sidx, grid, jitter, reuse)
            else:
                ri, ts, te = self._march(o, d, sidx, grid, jitter, self.near, self.max_samples)
                info = pack_info(ri, n)
                if (self.early_stop_eps > 0 or self.alpha_thre > 0) and ri.numel() > 0:
                    sig, rgb = _prepass(field, o, d, ri, ts, te, _scenes(sidx, ri), reuse)
                    ri, ts, te, info, prepass = self._keep_visible(ri, ts, te, sig, rgb, info, n)
        t_mid = (ts + te) * 0.5
        if prepass is not None:
            density, rgb = prepass
        else:
            d_s = d.index_select(0, ri)
            pos = o.index_select(0, ri) + t_mid[:, None] * d_s
            density, rgb = _split_field_output(field(pos, d_s, _scenes(sidx, ri)), ri.shape[0])
        with inner_checks_off():  # marched intervals and the field's checked outputs
            weights, _, alphas = render_weight_from_density(ts, te, density, packed_info=info)
            color = accumulate_along_rays(weights, rgb, ray_indices=ri, n_rays=n)
            wt = accumulate_along_rays(weights, t_mid[:, None], ray_indices=ri, n_rays=n)[:, 0]
            opacity = accumulate_along_rays(weights, None, ray_indices=ri, n_rays=n)[:, 0]
        return _ChunkRender(color, wt, opacity, ri + start, ts, te, weights, alphas)

    def _march(
        self,
        o: Tensor,
        d: Tensor,
        sidx: Tensor | None,
        grid: OccupancyGrid | None,
        jitter: bool,
        near: float | Tensor,
        max_samples: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Packed samples ``(ray_indices, t_starts, t_ends)`` of the rays ``o, d`` (no grad)."""
        with inner_checks_off():  # rays checked by forward(), nears from earlier rounds' samples
            samples = ray_march(
                o.detach(),
                d.detach(),
                grid,
                scene_index=sidx if grid is not None and grid.n_scenes > 1 else None,
                near=near,
                far=self.far,
                step_size=self.step_size,
                max_samples=max_samples,
                spacing=self.spacing,
                aabb=self.aabb if grid is None else None,
                jitter=jitter,
            )
        return tuple(samples)

    def _march_until_opaque(
        self,
        field: Field,
        o: Tensor,
        d: Tensor,
        sidx: Tensor | None,
        grid: OccupancyGrid | None,
        jitter: bool,
        reuse: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """The samples the early-stop pre-pass keeps: ``(ray_indices, t_starts, t_ends, packed_info,
        values)``, ``values`` the field's ``(density, rgb)`` there when ``reuse`` (else ``None``).

        Marches every ray for :data:`FIRST_ROUND_SAMPLES` samples, evaluates their density and
        marches on (twice as many samples per round) only the rays that still let light through.
        With ``spacing="contracted"`` a march resumed at a sample's end takes the same steps as one
        that never stopped, so the samples, and the ones kept, are those of marching every ray to
        its end and pre-passing all of its samples; the work behind the opaque surfaces is skipped.
        """
        n = o.shape[0]
        rays = torch.arange(n, device=o.device)
        near: float | Tensor = self.near
        rounds: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        counts = []  # samples per ray of each round, [n] each
        tau = o.new_zeros(n)  # optical depth so far along each ray
        budget, done = FIRST_ROUND_SAMPLES, 0
        while True:
            k = min(budget, self.max_samples - done)
            scenes = sidx.index_select(0, rays) if sidx is not None else None
            ri, ts, te = self._march(
                o.index_select(0, rays), d.index_select(0, rays), scenes, grid, jitter and done == 0, near, k
            )
            ri = rays.index_select(0, ri)
            if ri.numel():
                sig, rgb = _prepass(field, o, d, ri, ts, te, _scenes(sidx, ri), reuse)
            else:  # no samples: empty values, colours shaped like the first round's (if any)
                sig, rgb = ts.new_zeros(0), rounds[0][4][:0] if reuse and rounds else None
            rounds.append((ri, ts, te, sig) if rgb is None else (ri, ts, te, sig, rgb))
            count = torch.bincount(ri, minlength=n)
            counts.append(count)
            done += k
            tau.index_add_(0, ri, sig.to(tau.dtype) * (te - ts).to(tau.dtype))
            # rays that marched their whole round and are not yet opaque (a margin of 2 on the
            # threshold against rounding: the keep mask below decides exactly)
            more = (count.index_select(0, rays) == k) & (
                torch.exp(-tau.index_select(0, rays)) >= 0.5 * self.early_stop_eps
            )
            if done >= self.max_samples or not bool(more.any()):
                break
            ends = torch.cumsum(count, 0) - 1  # each ray's last sample of this round
            rays = rays[more]
            near = te.index_select(0, ends.index_select(0, rays))
            budget *= 2
        total = torch.stack(counts).sum(0)
        ri, ts, te, sig, *rgb = _merge_rounds(rounds, counts, total)
        info = packed_info_from_counts(total)
        if ri.numel() == 0:
            return ri, ts, te, info, None
        return self._keep_visible(ri, ts, te, sig, rgb[0] if rgb else None, info, n)

    def _keep_visible(
        self, ri: Tensor, ts: Tensor, te: Tensor, sig: Tensor, rgb: Tensor | None, info: Tensor, n: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """The pre-passed samples that stay visible: ``(ray_indices, t_starts, t_ends, packed_info,
        values)``, ``values`` the ``(density, rgb)`` there when ``rgb`` was evaluated (else ``None``)."""
        with inner_checks_off():  # marched intervals, and densities checked when evaluated
            keep = render_visibility_from_density(
                ts,
                te,
                sig,
                packed_info=info,
                early_stop_eps=self.early_stop_eps,
                alpha_thre=self.alpha_thre,
            )
        values = (ts, te, sig) if rgb is None else (ts, te, sig, rgb)
        ri, *kept, info = _select(keep, ri, *values, n_rays=n)
        return ri, kept[0], kept[1], info, (kept[2], kept[3]) if rgb is not None else None

    def _render_stratified(
        self, field: Field, o: Tensor, d: Tensor, sidx: Tensor | None, jitter: bool, start: int
    ) -> _ChunkRender:
        """One chunk with ``sampling="stratified"``: ``max_samples + 1`` intervals on every ray."""
        n = o.shape[0]
        aabb = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0) if self.aabb is None else self.aabb
        with torch.no_grad():
            t0, t1 = stratified_intervals(
                o.detach(),
                d.detach(),
                self.max_samples,
                near=self.near,
                far=self.far,
                aabb=aabb,
                inner_fraction=self.inner_fraction,
                jitter=jitter,
            )
        k = t0.shape[1]
        t_mid = ((t0 + t1) * 0.5).clamp(max=self.far)  # the background interval sits at far
        pos = o[:, None] + t_mid[..., None] * d[:, None]
        ri = torch.arange(n, device=o.device).repeat_interleave(k)
        field_scene = sidx.repeat_interleave(k) if sidx is not None else torch.zeros_like(ri)
        density, rgb = _split_field_output(field(pos.reshape(-1, 3), d[ri], field_scene), n * k)
        weights, _, alphas = render_weight_from_density(t0, t1, density.reshape(n, k))
        color = (weights[..., None] * rgb.reshape(n, k, -1)).sum(1)
        opacity = weights.sum(1)
        # depth = opacity / sum(w / t): the depth of the expected disparity (a weight left on the far
        # background moves it by w / far, not by w * far as the expected depth would)
        disparity_sum = (weights / t_mid.clamp(min=1e-6)).sum(1)
        depth_sum = opacity.square() / disparity_sum.clamp(min=1e-12)
        return _ChunkRender(
            color,
            depth_sum,
            opacity,
            ri + start,
            t0.reshape(-1),
            t1.reshape(-1),
            weights.reshape(-1),
            alphas.reshape(-1),
        )
