"""Binary occupancy grids for empty-space skipping, for one fitted scene or a batch of generated scenes.

:class:`OccupancyGrid` covers either MERF's L∞-contracted space (the cube ``[-2, 2]^3``, which holds
all of ``R^3``; the default) or a plain world-space box, optionally with nested levels (each twice the
size of the previous one, like nerfacc's multi-level grids). It has two ways to be filled, one for
fitting a single scene and one for generators, whose scenes are new at every step (docs/rendering.md):

* :meth:`OccupancyGrid.update_every_n_steps` — nerfacc ``OccGridEstimator`` behaviour for fitting one
  scene: every ``n`` steps, evaluate occupancy at jittered points of all cells (warm-up) or of a
  random quarter of the cells plus occupied cells, EMA-decay the stored values (``max(decay * old,
  new)``) and binarise at ``min(mean, occ_thre)``.
* :meth:`OccupancyGrid.from_field` / :meth:`OccupancyGrid.fill_from_field` — a generator makes new
  scenes every step, so the grid of every scene of a batch is evaluated afresh at the cell centres
  (optionally jittered, several samples per cell, optionally dilated) → binaries ``[n_scenes, ...]``.

Example:
    >>> import torch
    >>> from vq3dlib.render.occupancy import OccupancyGrid
    >>> ball = lambda x, s: 10.0 * (x.norm(dim=-1) < 0.5).float()
    >>> grid = OccupancyGrid.from_field(ball, resolution=16, n_scenes=2)
    >>> grid.binaries.shape
    torch.Size([2, 1, 16, 16, 16])
    >>> bool(grid.query(torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])).tolist() == [True, False])
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from vq3dlib._validation import check_choice, check_positive, check_tensor, finite_checks_enabled
from vq3dlib.contraction import uncontract_linf
from vq3dlib.ops._codes import CONTRACTION_CODES
from vq3dlib.ops.march import MARCH_CONTRACTIONS, grid_lookup_reference

DensityFn = Callable[[Tensor, Tensor], Tensor]
_CONTRACTED_BOX = (-2.0, -2.0, -2.0, 2.0, 2.0, 2.0)


def _uncontract_linf(y: Tensor) -> Tensor:
    # Grid-space points → world. Only points whose minor coordinates lie in [-1, 1] are images of MERF's
    # contraction; others are clamped there first (cells made only of such points are unreachable, see
    # _reachable_cells), and the major coordinate is kept below 2 (the point at infinity).
    k = y.abs().argmax(dim=-1, keepdim=True)
    major = y.gather(-1, k).clamp(-2 + 1e-6, 2 - 1e-6)
    return uncontract_linf(y.clamp(-1, 1).scatter(-1, k, major))


def _reachable_cells(boxes: Tensor, res: tuple[int, int, int], contraction: str) -> Tensor:
    # [levels, rx, ry, rz]: False for contracted cells no world point maps to (two or more coordinates
    # beyond ±1: MERF's contraction keeps every coordinate but the largest in [-1, 1]).
    levels = boxes.shape[0]
    if contraction != "linf":
        return torch.ones(levels, *res, dtype=torch.bool)
    outside = []
    for axis, r in enumerate(res):
        lo, hi = boxes[:, axis], boxes[:, axis + 3]
        edges = lo[:, None] + (hi - lo)[:, None] * torch.arange(r + 1) / r  # [levels, r + 1]
        outside.append(((edges[:, :-1] >= 1) | (edges[:, 1:] <= -1)).long())
    count = outside[0][:, :, None, None] + outside[1][:, None, :, None] + outside[2][:, None, None, :]
    return count < 2


#: most cells per scene and level (2**27: 128 MiB of bools, 512 MiB of float32 occupancy values)
MAX_CELLS = 1 << 27


def _resolution3(resolution: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(resolution, (str, bytes)) or not isinstance(resolution, (int, Sequence)):
        raise TypeError(f"resolution must be a positive int or three positive ints, got {resolution!r}")
    values = (resolution,) * 3 if isinstance(resolution, int) else tuple(resolution)
    if len(values) != 3 or any(isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in values):
        raise ValueError(f"resolution must be a positive int or three positive ints, got {resolution!r}")
    res = tuple(int(r) for r in values)
    if res[0] * res[1] * res[2] > MAX_CELLS:
        raise ValueError(
            f"resolution {list(res)} gives {res[0] * res[1] * res[2]} cells, more than {MAX_CELLS} "
            "(2**27) fit a grid: use a smaller resolution or more levels"
        )
    return res  # type: ignore[return-value]


def _as_density(name: str, value: object, count: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(value).__name__}")
    if value.dim() == 2 and value.shape[-1] == 1:
        value = value[:, 0]
    if value.shape != (count,):
        raise ValueError(f"{name} must return shape [{count}] (or [{count}, 1]), got {list(value.shape)}")
    if finite_checks_enabled() and bool(torch.isnan(value).any()):  # a value check: a host sync
        raise ValueError(f"{name} returned NaN densities")
    return value


class OccupancyGrid(nn.Module):
    """Binary occupancy ``[n_scenes, levels, rx, ry, rz]`` over contracted space or a world box.

    Args:
        aabb: base box ``{xmin, ymin, zmin, xmax, ymax, zmax}`` in the grid's space. Default (and
            required value) for ``contraction="linf"``: the contracted cube ``[-2, 2]^3``. Required for
            ``contraction="none"``.
        resolution: cells per axis (int or three ints).
        levels: nested boxes, level ``l`` spans the base box scaled by ``2**l`` around its centre (world
            boxes only; contracted space is already bounded).
        contraction: ``"linf"`` (MERF, default) or ``"none"``.
        n_scenes: number of scenes (grids) held; rays pick theirs with a scene index.

    Buffers: ``binaries`` (bool), ``occs`` (EMA occupancy values ``[n_scenes, levels, rx*ry*rz]``),
    ``boxes`` (``[levels, 6]``, finest first), ``reachable`` (``[levels, rx, ry, rz]``; contracted cells
    with two or more coordinates beyond ±1 hold no world point and are always empty once filled).

    Example:
        >>> grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8, levels=2, contraction="none")
        >>> grid.boxes[1].tolist()
        [-2.0, -2.0, -2.0, 2.0, 2.0, 2.0]
        >>> grid.occupied_points().shape  # everything is occupied until filled
        torch.Size([1024, 3])
    """

    def __init__(
        self,
        aabb: Sequence[float] | Tensor | None = None,
        resolution: int | Sequence[int] = 128,
        levels: int = 1,
        contraction: str = "linf",
        n_scenes: int = 1,
    ) -> None:
        super().__init__()
        check_choice("contraction", contraction, MARCH_CONTRACTIONS)
        check_positive("levels", levels)
        check_positive("n_scenes", n_scenes)
        res = _resolution3(resolution)
        if contraction == "linf":
            if aabb is not None and [float(v) for v in torch.as_tensor(aabb).tolist()] != list(
                _CONTRACTED_BOX
            ):
                raise ValueError("aabb must be None (the contracted cube [-2, 2]^3) when contraction='linf'")
            if levels != 1:
                raise ValueError("levels must be 1 when contraction='linf' (contracted space is bounded)")
            aabb = _CONTRACTED_BOX
        elif aabb is None:
            raise ValueError("aabb is required when contraction='none'")
        base = torch.as_tensor(aabb, dtype=torch.float32).flatten()
        check_tensor("aabb", base, shape=(6,), finite=True)
        if bool((base[3:] <= base[:3]).any()):
            raise ValueError(f"aabb must have min < max on every axis, got {base.tolist()}")
        center, half = (base[:3] + base[3:]) / 2, (base[3:] - base[:3]) / 2
        boxes = torch.stack(
            [torch.cat([center - half * 2**lv, center + half * 2**lv]) for lv in range(levels)]
        )
        self.contraction = contraction
        self.resolution = res
        self.levels = levels
        self.n_scenes = n_scenes
        self.cells_per_level = res[0] * res[1] * res[2]
        self.register_buffer("boxes", boxes)
        reachable = _reachable_cells(boxes, res, contraction)
        self.register_buffer("binaries", reachable[None].repeat(n_scenes, 1, 1, 1, 1))
        self.register_buffer("occs", torch.zeros(n_scenes, levels, self.cells_per_level))
        self.register_buffer("reachable", reachable, persistent=False)

    # ----------------------------------------------------------------------------------------- geometry
    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, levels={self.levels}, contraction={self.contraction!r}, "
            f"n_scenes={self.n_scenes}"
        )

    def _cell_coords(self, device: torch.device | None = None) -> Tensor:
        rx, ry, rz = self.resolution
        dev = device or self.binaries.device
        ii, jj, kk = torch.meshgrid(
            torch.arange(rx, device=dev),
            torch.arange(ry, device=dev),
            torch.arange(rz, device=dev),
            indexing="ij",
        )
        return torch.stack([ii, jj, kk], dim=-1).reshape(-1, 3)

    def _to_world(self, grid_points: Tensor) -> Tensor:
        return _uncontract_linf(grid_points) if self.contraction == "linf" else grid_points

    def cell_points(
        self, cells: Tensor, level: int, offsets: Tensor | None = None, world: bool = True
    ) -> Tensor:
        """Points in cells ``[P, 3]`` (ints ``i, j, k``) of ``level``: centres, or at ``offsets`` in [0, 1).

        Args:
            cells: ``[P, 3]`` int cell coordinates.
            level: level index.
            offsets: ``[P, 3]`` position inside each cell in ``[0, 1)``; ``None`` → centres.
            world: return world positions (uncontracted) instead of grid-space ones.

        Returns:
            ``[P, 3]`` float32 points.

        Example:
            >>> g = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=2, contraction="none")
            >>> g.cell_points(torch.tensor([[0, 0, 1]]), 0).tolist()
            [[0.25, 0.25, 0.75]]
        """
        box = self.boxes[level]
        res = torch.tensor(self.resolution, dtype=box.dtype, device=box.device)
        frac = torch.full_like(cells, 0.5, dtype=box.dtype) if offsets is None else offsets.to(box.dtype)
        pts = box[:3] + (cells.to(box.dtype) + frac) / res * (box[3:] - box[:3])
        return self._to_world(pts) if world else pts

    def query(self, points: Tensor, scene_index: Tensor | None = None) -> Tensor:
        """Occupancy at world points ``[P, 3]`` (scene ``scene_index [P]``, default 0) → ``[P]`` bool.

        Uses the same lookup as the marching kernels (finest level containing the point).

        Example:
            >>> g = OccupancyGrid(resolution=4)
            >>> g.query(torch.zeros(1, 3)).tolist()
            [True]
        """
        check_tensor("points", points, shape=(None, 3), floating=True)
        if scene_index is not None:
            check_tensor("scene_index", scene_index, shape=(points.shape[0],), dtypes=(torch.long,))
        code = CONTRACTION_CODES[self.contraction]
        return grid_lookup_reference(points, self.binaries, self.boxes.to(points.dtype), code, scene_index)

    def occupied_cells(self, scene: int = 0) -> Tensor:
        """Occupied cells of one scene as ``[P, 4]`` int64 rows ``(level, i, j, k)``.

        Example:
            >>> g = OccupancyGrid(resolution=2); _ = g.binaries.zero_(); g.binaries[0, 0, 1, 0, 1] = True
            >>> g.occupied_cells().tolist()
            [[0, 1, 0, 1]]
        """
        if not 0 <= scene < self.n_scenes:
            raise ValueError(f"scene must lie in [0, {self.n_scenes}), got {scene}")
        return self.binaries[scene].nonzero()

    def occupied_points(self, scene: int = 0, world: bool = True) -> Tensor:
        """Centres of the occupied cells of one scene, ``[P, 3]`` (world space, or grid space).

        For inspection: e.g. save as a point cloud. Outermost contracted cells map to far-away points.

        Example:
            >>> g = OccupancyGrid(resolution=2); _ = g.binaries.zero_(); g.binaries[0, 0, 1, 1, 1] = True
            >>> g.occupied_points(world=False).tolist()
            [[1.0, 1.0, 1.0]]
        """
        cells = self.occupied_cells(scene)
        out = []
        for level in range(self.levels):
            sel = cells[cells[:, 0] == level, 1:]
            out.append(self.cell_points(sel, level, world=world))
        return torch.cat(out)

    def occupancy_fraction(self) -> Tensor:
        """Fraction of the reachable cells that are occupied, per scene, ``[n_scenes]``.

        A one-scene grid (fitting) returns one value: ``float(grid.occupancy_fraction()[0])``.

        Example:
            >>> OccupancyGrid(resolution=4, n_scenes=2).occupancy_fraction().tolist()
            [1.0, 1.0]
        """
        return self.binaries.flatten(1).float().sum(dim=1) / self.reachable.sum()

    # ---------------------------------------------------------------------------- generated scenes
    @classmethod
    @torch.no_grad()
    def from_field(
        cls,
        density_fn: DensityFn,
        resolution: int | Sequence[int] = 64,
        n_scenes: int = 1,
        *,
        aabb: Sequence[float] | Tensor | None = None,
        levels: int = 1,
        contraction: str = "linf",
        threshold: float = 0.01,
        jitter: bool = False,
        samples_per_cell: int = 1,
        dilation: int = 0,
        batch_size: int = 1 << 18,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> OccupancyGrid:
        """Builds one grid per scene of a batch by evaluating ``density_fn`` over the cells.

        Runs under ``torch.no_grad()``: pass the differentiable density as is (e.g. a
        :class:`~vq3dlib.render.RadianceField`'s ``field.density``), no detaching needed; the grid holds
        no autograd history.

        Args:
            density_fn: ``(positions [P, 3] world, scene_index [P] int64) -> density [P]`` (or ``[P, 1]``).
            resolution, n_scenes, aabb, levels, contraction: as in the constructor.
            threshold, jitter, samples_per_cell, dilation, batch_size, generator: see :meth:`fill_from_field`.
            device: where the grid lives (and where positions are passed to ``density_fn``).

        Returns:
            the filled grid.

        Example:
            >>> g = OccupancyGrid.from_field(lambda x, s: (x[:, 0] > 0).float() * (s == 0), 8, n_scenes=2)
            >>> g.occupancy_fraction().tolist()
            [0.5, 0.0]
        """
        grid = cls(aabb, resolution, levels, contraction, n_scenes)
        if device is not None:
            grid = grid.to(device)
        return grid.fill_from_field(
            density_fn,
            threshold=threshold,
            jitter=jitter,
            samples_per_cell=samples_per_cell,
            dilation=dilation,
            batch_size=batch_size,
            generator=generator,
        )

    @torch.no_grad()
    def fill_from_field(
        self,
        density_fn: DensityFn,
        *,
        threshold: float = 0.01,
        jitter: bool = False,
        samples_per_cell: int = 1,
        dilation: int = 0,
        batch_size: int = 1 << 18,
        generator: torch.Generator | None = None,
    ) -> OccupancyGrid:
        """Re-evaluates every cell of every scene (in place, under ``torch.no_grad()``); returns ``self``.

        A cell is occupied when the largest density among its samples exceeds ``threshold``.

        Args:
            density_fn: ``(positions [P, 3] world, scene_index [P] int64) -> density [P]``.
            threshold: density above which a cell is occupied (nerfacc thresholds ``density * step``
                at 0.01; pass ``threshold=0.01 / step`` to match).
            jitter: sample uniformly inside each cell instead of at its centre.
            samples_per_cell: samples per cell when jittering (max over them).
            dilation: grow occupied regions by this many cells (guards against thin structures the
                coarse evaluation misses).
            batch_size: most positions per ``density_fn`` call.
            generator: RNG for the jitter.

        Example:
            >>> g = OccupancyGrid(resolution=8).fill_from_field(lambda x, s: torch.zeros(len(x)))
            >>> int(g.binaries.sum())
            0
        """
        check_positive("samples_per_cell", samples_per_cell)
        check_positive("dilation", dilation, allow_zero=True)
        check_positive("batch_size", batch_size)
        if not jitter and samples_per_cell != 1:
            raise ValueError("samples_per_cell > 1 needs jitter=True (centres are a single point)")
        device = self.binaries.device
        coords = self._cell_coords(device)
        n_cells = coords.shape[0]
        for level in range(self.levels):
            best = torch.full((self.n_scenes * n_cells,), -torch.inf, device=device)
            for _ in range(samples_per_cell):
                for start in range(0, self.n_scenes * n_cells, batch_size):
                    flat = torch.arange(
                        start, min(start + batch_size, self.n_scenes * n_cells), device=device
                    )
                    scene, cell = flat // n_cells, flat % n_cells
                    offsets = None
                    if jitter:
                        offsets = torch.rand(flat.shape[0], 3, device=device, generator=generator)
                    pts = self.cell_points(coords[cell], level, offsets)
                    density = _as_density("density_fn", density_fn(pts, scene), flat.shape[0])
                    best[flat] = torch.maximum(best[flat], density.to(best.dtype))
            occupied = (best > threshold).view(self.n_scenes, *self.resolution)
            if dilation > 0:
                size = 2 * dilation + 1
                occupied = torch.nn.functional.max_pool3d(
                    occupied[:, None].float(), size, stride=1, padding=dilation
                )[:, 0].bool()
            self.binaries[:, level] = occupied & self.reachable[level]
            self.occs[:, level] = best.view(self.n_scenes, n_cells).clamp(min=0).to(self.occs.dtype)
        return self

    # ----------------------------------------------------------------------- one scene, EMA (nerfacc)
    @torch.no_grad()
    def update_every_n_steps(
        self,
        step: int,
        occ_eval_fn: Callable[[Tensor], Tensor],
        occ_thre: float = 1e-2,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n: int = 16,
    ) -> None:
        """EMA update for fitting one scene, as nerfacc's ``OccGridEstimator.update_every_n_steps``.

        Runs when ``step % n == 0`` (in training mode only, like nerfacc). Before ``warmup_steps`` all
        cells are evaluated; afterwards a random quarter of the cells plus (up to as many) occupied
        ones. Each evaluated cell gets ``occ = max(ema_decay * occ, occ_eval_fn(x))`` at a jittered
        point ``x``; then ``binaries = occs > min(mean(occs), occ_thre)``.

        Args:
            step: current training step.
            occ_eval_fn: ``x [P, 3] world -> occupancy [P]`` (or ``[P, 1]``), e.g. ``density * step_size``.
            occ_thre: binarisation threshold.
            ema_decay: decay of the stored occupancy values.
            warmup_steps: steps during which every cell is evaluated.
            n: update period.

        Example:
            >>> g = OccupancyGrid(resolution=8)
            >>> g.update_every_n_steps(0, lambda x: (x.norm(dim=-1) < 1).float())
            >>> 0 < g.occupancy_fraction().item() < 1
            True
        """
        if self.n_scenes != 1:
            raise ValueError(
                f"update_every_n_steps fits one scene; this grid holds n_scenes={self.n_scenes} "
                "(use fill_from_field for batches of scenes)"
            )
        if not self.training:
            raise RuntimeError("update_every_n_steps is for training; call .train() or use fill_from_field")
        check_positive("n", n)
        if step % n == 0:
            self._ema_update(step, occ_eval_fn, occ_thre, ema_decay, warmup_steps)

    def _ema_update(self, step, occ_eval_fn, occ_thre, ema_decay, warmup_steps) -> None:
        device = self.binaries.device
        coords = self._cell_coords(device)
        n_cells = self.cells_per_level
        # all levels' cells first, then their evaluations: the random stream of nerfacc's update
        level_cells = []
        for level in range(self.levels):
            if step < warmup_steps:
                idx = torch.arange(n_cells, device=device)
            else:
                quarter = n_cells // 4
                uniform = torch.randint(n_cells, (quarter,), device=device)
                occupied = self.binaries[0, level].flatten().nonzero()[:, 0]
                if occupied.numel() > quarter:
                    occupied = occupied[torch.randint(occupied.numel(), (quarter,), device=device)]
                idx = torch.cat([uniform, occupied])
            level_cells.append(idx)
        for level, idx in enumerate(level_cells):
            pts = self.cell_points(coords[idx], level, torch.rand(idx.shape[0], 3, device=device))
            occ = _as_density("occ_eval_fn", occ_eval_fn(pts), idx.shape[0]).to(self.occs.dtype)
            self.occs[0, level, idx] = torch.maximum(self.occs[0, level, idx] * ema_decay, occ)
        thre = torch.clamp(self.occs.mean(), max=occ_thre)
        self.binaries.copy_((self.occs > thre).view_as(self.binaries) & self.reachable)
