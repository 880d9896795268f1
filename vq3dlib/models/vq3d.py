"""VQ3D stage 1: one forward pass turns an image into a renderable 3D scene.

image → :class:`ViTEncoder` → quantizer (l2-normalised factorised codes) → :class:`TriplaneDecoder`
→ contracted triplane ``[B, 3, C, R, R]`` → :class:`ContractedTriplane` + :class:`TriplaneField`
(density, colour) → :class:`Renderer` with an :class:`OccupancyGrid` built per scene
(``OccupancyGrid.from_field``) → canonical and novel-view renders. Losses: L2, perceptual,
adversarial (separate canonical- and novel-view discriminators, delayed start, adaptive weight),
VQ3D's pointwise depth loss on the rendering weights against scale/shift-aligned pseudo disparity,
distortion, and the quantizer's own terms. Every piece is a public vq3dlib block.

Example:
    >>> import torch
    >>> from vq3dlib.models import VQ3DModel
    >>> model = VQ3DModel.from_config("tiny", render_resolution=8, image_size=16, plane_resolution=16)
    >>> out = model(torch.rand(2, 3, 16, 16))
    >>> out["reconstruction"].shape, out["indices"].shape, bool(out["loss"] > 0)
    (torch.Size([2, 3, 16, 16]), torch.Size([2, 4, 4]), True)
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq3dlib._validation import check_tensor, has_values, inner_checks_off
from vq3dlib.cameras import Cameras, NovelViewSampler, canonical_cameras
from vq3dlib.losses import (
    LPIPS,
    StyleGANDiscriminator,
    adaptive_generator_weight,
    discriminator_loss,
    distortion_loss,
    generator_loss,
    map_disparity_range,
    pointwise_depth_loss,
    r1_penalty,
)
from vq3dlib.models.configs import VQ3DConfig, get_config, print_param_table
from vq3dlib.models.decoder import TriplaneDecoder
from vq3dlib.models.field import TriplaneField, resolve_mlp_backend
from vq3dlib.models.vit import ViTEncoder
from vq3dlib.quantize import FSQ, LFQ, ResidualVQ, VectorQuantizer
from vq3dlib.render import OccupancyGrid, Renderer
from vq3dlib.triplane import ContractedTriplane


def build_quantizer(cfg: VQ3DConfig, dim: int) -> nn.Module:
    """The quantizer a config asks for, over ``dim``-wide tokens (channels last).

    Example:
        >>> from vq3dlib.models import get_config
        >>> type(build_quantizer(get_config("tiny"), 128)).__name__
        'VectorQuantizer'
    """
    if cfg.quantizer == "vq":
        return VectorQuantizer(
            dim,
            cfg.codebook_size,
            cfg.code_dim,
            l2_normalize=cfg.l2_normalize_codes,
            beta=cfg.commitment_weight,
            ema=cfg.codebook_update == "ema",
            decay=cfg.ema_decay,
            dead_code_steps=cfg.dead_code_steps,
        )
    if cfg.quantizer == "fsq":
        return FSQ(cfg.fsq_levels, dim)
    if cfg.quantizer == "lfq":
        return LFQ(dim, 2**cfg.code_dim)
    return ResidualVQ(
        dim,
        cfg.residual_depth,
        cfg.codebook_size,
        code_dim=cfg.code_dim,
        beta=cfg.commitment_weight,
        ema=cfg.codebook_update == "ema",
        decay=cfg.ema_decay,
    )


class SuperResolution(nn.Module):
    """Optional 2D refiner: bilinear upsampling of the low-resolution render + a residual conv stack.

    The conv stack sees the upsampled rgb and, when ``features > 0``, the upsampled rendered field
    features (``[rgb, features]``, the field's extra outputs composited like colour); it predicts a
    residual on the upsampled rgb (zero at initialisation).

    Args:
        out_size: output side ``H = W``.
        hidden: width of the conv stack.
        features: channels ``E`` of the extra rendered features (0: rgb only).

    Shapes:
        ``forward(rgb [B, 3, h, w], features [B, E, h, w] | None) -> [B, 3, out_size, out_size]``.

    Example:
        >>> import torch
        >>> SuperResolution(32, hidden=16)(torch.rand(1, 3, 8, 8)).shape
        torch.Size([1, 3, 32, 32])
        >>> SuperResolution(32, hidden=16, features=4)(torch.rand(1, 3, 8, 8), torch.rand(1, 4, 8, 8)).shape
        torch.Size([1, 3, 32, 32])
    """

    def __init__(self, out_size: int, hidden: int = 64, features: int = 0) -> None:
        super().__init__()
        self.out_size = out_size
        self.features = features
        self.net = nn.Sequential(
            nn.Conv2d(3 + features, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, 3, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, rgb: Tensor, features: Tensor | None = None) -> Tensor:
        check_tensor("rgb", rgb, shape=(None, 3, None, None), floating=True)
        if self.features:
            shape = (rgb.shape[0], self.features, *rgb.shape[2:])
            check_tensor("features", features, shape=shape, floating=True)
        elif features is not None:
            raise ValueError("features given, but this SuperResolution was built with features=0")
        size = (self.out_size, self.out_size)
        up = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        x = up
        if features is not None:
            x = torch.cat([up, F.interpolate(features, size=size, mode="bilinear", align_corners=False)], 1)
        return up + self.net(x)


def mesh_threshold(volume: Tensor, cell_size: float) -> float:
    """Automatic density level for marching cubes of a sampled density ``volume [R, R, R]``.

    The level is the density at which one grid cell of side ``cell_size`` is 50% opaque,
    ``ln 2 / cell_size`` (volume rendering's alpha ``1 - exp(-sigma * delta)``): a surface that a ray
    crossing one cell would see. When that level lies outside the sampled density range (an
    untrained or very soft field), it falls back to the middle of the range with a warning; a
    constant volume has no level set and raises ``ValueError``.

    Example:
        >>> import torch
        >>> volume = torch.zeros(8, 8, 8); volume[2:6, 2:6, 2:6] = 100.0
        >>> round(mesh_threshold(volume, cell_size=0.1), 3)  # ln 2 / 0.1
        6.931
    """
    check_tensor("volume", volume, ndim=3, floating=True, finite=True)
    if cell_size <= 0:
        raise ValueError(f"cell_size must be > 0, got {cell_size}")
    lo, hi = float(volume.min()), float(volume.max())
    if not lo < hi:
        raise ValueError(f"the density is constant ({lo:.3g}) in the sampled volume: there is no surface")
    level = math.log(2.0) / cell_size
    if lo < level < hi:
        return level
    fallback = 0.5 * (lo + hi)
    warnings.warn(
        f"the automatic mesh threshold {level:.3g} (50% opacity per grid cell) is outside the sampled "
        f"density range [{lo:.3g}, {hi:.3g}]; using the middle of the range, {fallback:.3g} (pass "
        "threshold= to choose the level)",
        stacklevel=3,
    )
    return fallback


@contextlib.contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` record no gradient for graphs built inside (restored after)."""
    params = [p for m in modules for p in m.parameters()]
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, state in zip(params, states):
            p.requires_grad_(state)


@dataclass
class Scene:
    """A batch of 3D scenes produced by :meth:`VQ3DModel.reconstruct`: triplanes plus the model's field.

    Attributes:
        planes: ``[B, 3, C, R, R]`` contracted triplanes.
        indices: code indices the scenes were decoded from, on the token grid: ``[B, g, g]``
            (``[B, g, g, depth]`` for the residual quantizer), ``g = config.grid_size``.

    Example:
        >>> import torch
        >>> from vq3dlib.models import VQ3DModel
        >>> model = VQ3DModel.from_config("tiny", render_resolution=8)
        >>> scene = model.reconstruct(torch.rand(1, 3, 32, 32))
        >>> scene.render(model.canonical_cameras(1))["rgb"].shape
        torch.Size([1, 3, 8, 8])
    """

    planes: Tensor
    indices: Tensor
    model: VQ3DModel

    def __len__(self) -> int:
        return self.planes.shape[0]

    @torch.no_grad()
    def render(self, cameras: Cameras, background: float | None = None) -> dict[str, Tensor]:
        """Renders the scenes from ``cameras`` (one camera per scene, or ``k·B`` cameras = ``k`` each).

        Returns ``rgb [N, 3, H, W]``, ``depth [N, 1, H, W]`` (z-depth), ``disparity``, ``opacity``
        (and ``features [N, E, H, W]`` when the field has ``field_out_features = E > 0``).
        """
        return self.model.render(self.planes, cameras, background=background).images

    @torch.no_grad()
    def density(self, points: Tensor, scene: int = 0) -> Tensor:
        """Density at world ``points [P, 3]`` of scene ``scene``."""
        check_tensor("points", points, shape=(None, 3), floating=True)
        index = torch.full((points.shape[0],), scene, dtype=torch.long, device=points.device)
        return self.model.density(self.planes, points, index)

    @torch.no_grad()
    def density_volume(self, resolution: int = 128, scene: int = 0, extent: float | None = None) -> Tensor:
        """Density ``[R, R, R]`` (indexed x, y, z) on a regular grid over ``[-extent, extent]^3``.

        ``extent`` defaults to ``config.scene_bound``; grid points are ``linspace(-extent, extent, R)``.

        Example:
            >>> import torch
            >>> model = VQ3DModel.from_config("tiny")
            >>> model.reconstruct(torch.rand(1, 3, 32, 32)).density_volume(4).shape
            torch.Size([4, 4, 4])
        """
        if resolution < 2:
            raise ValueError(f"resolution must be >= 2, got {resolution}")
        if not 0 <= scene < len(self):
            raise ValueError(f"scene must be in [0, {len(self)}), got {scene}")
        extent = self.model.config.scene_bound if extent is None else extent
        if extent <= 0:
            raise ValueError(f"extent must be > 0, got {extent}")
        axis = torch.linspace(-extent, extent, resolution, device=self.planes.device)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        sigma = torch.cat([self.density(chunk, scene) for chunk in grid.split(1 << 18)])
        return sigma.reshape(resolution, resolution, resolution).float()

    def export_mesh(
        self,
        resolution: int = 128,
        threshold: float | None = None,
        scene: int = 0,
        extent: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Marching-cubes mesh of the density level set ``threshold`` inside ``[-extent, extent]^3``.

        Args:
            resolution: grid points per axis.
            threshold: density level; ``None`` picks it automatically (:func:`mesh_threshold`: the
                density at which one grid cell is 50% opaque, or the middle of the sampled density
                range with a warning when that level is outside it).
            scene: which scene of the batch.
            extent: half-size of the meshed cube (default ``config.scene_bound``).

        Needs scikit-image (``pip install vq3dlib[mesh]``). Returns ``(vertices [V, 3], faces [F, 3])``
        in world units; write them with trimesh (``trimesh.Trimesh(v, f).export("scene.ply")``).
        """
        try:
            from skimage.measure import marching_cubes
        except ImportError as exc:  # optional dependency
            raise ImportError(
                "Scene.export_mesh needs scikit-image: pip install scikit-image (or vq3dlib[mesh])"
            ) from exc
        extent = self.model.config.scene_bound if extent is None else extent
        sigma = self.density_volume(resolution, scene, extent)
        cell = 2 * extent / (resolution - 1)
        if threshold is None:
            threshold = mesh_threshold(sigma, cell)
        volume = sigma.cpu().numpy()
        if not (volume.min() <= threshold <= volume.max()):
            raise ValueError(
                f"threshold {threshold} is outside the density range [{volume.min():.3g}, {volume.max():.3g}]"
            )
        verts, faces, _, _ = marching_cubes(volume, level=threshold)
        verts = torch.from_numpy(verts.copy()).float() * cell - extent
        return verts, torch.from_numpy(faces.copy()).long()


def _field_backend_of(keys: list[str]) -> str | None:
    """The MLP backend a state dict's field weights were written by (``None``: no field weights)."""
    field = [k for k in keys if k.startswith("field.")]
    if not field:
        return None
    return "tcnn" if any(k.endswith(".params") for k in field) else "torch"


def _tcnn_usable() -> bool:
    try:
        resolve_mlp_backend("tcnn")
    except RuntimeError:
        return False
    return True


@dataclass
class RenderedViews:
    """Images of one render call (``images``) and the packed samples behind them (``samples``)."""

    images: dict[str, Tensor]
    samples: Any  # vq3dlib.render.RenderOutput
    grid: OccupancyGrid | None = None  # the occupancy grid the render used (reusable for the same planes)


class VQ3DModel(nn.Module):
    """VQ3D stage 1 (see the module docstring); build it with :meth:`from_config`.

    ``forward(images, depth=None, step=0)`` returns a dict with ``reconstruction [B, 3, H, W]``,
    ``render`` (low-res canonical render), ``depth``/``disparity``/``opacity [B, 1, r, r]``,
    ``indices`` (code grid), ``novel_rgb [B·k, 3, r, r]`` (``k = novel_views``; ``None`` in training
    steps before ``adversarial_start_step``, where no loss uses them), ``losses`` (each
    weighted term), ``loss`` (their sum) and ``quantizer_stats``. The discriminators train through
    :meth:`discriminator_loss` with their own optimiser (:meth:`discriminator_parameters`).

    With ``field_out_features = E > 0`` the field's extra features are composited along the rays
    like colour (``features [B, E, r, r]`` in the output) and, with the colour, feed the
    super-resolution head (which ``E > 0`` requires).

    MLP backend: ``config.mlp_backend`` (``"auto"``, ``"torch"``, ``"tcnn"``) is resolved once at
    construction (``model.field.mlp_backend``). tiny-cuda-nn and torch field weights are not
    interchangeable: :meth:`save` records the resolved backend and :meth:`load` rebuilds that
    backend, raising a ``RuntimeError`` naming ``mlp_backend`` when a tcnn model is loaded where
    tinycudann/CUDA is unavailable (or the field weights do not match the backend).

    Args:
        config: a :class:`VQ3DConfig`.

    Example:
        >>> model = VQ3DModel.from_config("tiny")
        >>> sorted(model.param_counts())[:3]
        ['decoder', 'discriminators', 'encoder']
    """

    def __init__(self, config: VQ3DConfig) -> None:
        super().__init__()
        if not isinstance(config, VQ3DConfig):
            raise TypeError(f"config must be a VQ3DConfig, got {type(config).__name__}")
        cfg = self.config = config
        self.encoder = ViTEncoder.from_config(cfg)
        self.quantizer = build_quantizer(cfg, cfg.encoder_width)
        self.decoder = TriplaneDecoder.from_config(cfg, in_dim=cfg.encoder_width)
        self.triplane = ContractedTriplane(
            channels=cfg.plane_channels,
            learnable=False,
            contraction=cfg.contraction,
            bound=cfg.scene_bound,
            reduce=cfg.triplane_reduce,
        )
        self.field = TriplaneField.from_config(cfg)
        self.renderer = Renderer(
            step_size=cfg.march_step_size,
            spacing="contracted" if cfg.contraction != "none" else "t",
            near=cfg.near,
            far=cfg.far,
            max_samples=cfg.samples_per_ray,
            aabb=[-cfg.scene_bound] * 3 + [cfg.scene_bound] * 3,
            jitter=True,
        )
        self.super_resolution = (
            SuperResolution(cfg.image_size, cfg.super_resolution_hidden, cfg.field_out_features)
            if cfg.super_resolution
            else None
        )
        disc = {"channels": cfg.disc_channels, "max_channels": cfg.disc_max_channels}
        self.disc_canonical = StyleGANDiscriminator(cfg.image_size, **disc)
        self.disc_novel = StyleGANDiscriminator(cfg.render_resolution, **disc)
        self.perceptual = (  # images and reconstructions are in [0, 1]: normalize=True maps them to [-1, 1]
            LPIPS(weights=cfg.perceptual_weights, pretrained=cfg.perceptual_pretrained, normalize=True)
            if cfg.perceptual_weight > 0
            else None
        )
        self.novel_sampler = NovelViewSampler(
            cfg.camera_distance,
            cfg.fov_degrees,
            (cfg.render_resolution, cfg.render_resolution),
            yaw=cfg.novel_yaw_degrees,
            pitch=cfg.novel_pitch_degrees,
            translation=cfg.novel_translation,
        )

    @classmethod
    def from_config(cls, config: str | VQ3DConfig = "tiny", **overrides: Any) -> VQ3DModel:
        """Builds the model from a registered config name (``"tiny"``, ``"imagenet256"``) or a config.

        Example:
            >>> VQ3DModel.from_config("tiny", codebook_size=64).config.codebook_size
            64
        """
        if isinstance(config, VQ3DConfig):
            cfg = VQ3DConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config
        else:
            cfg = get_config(config, **overrides)
        return cls(cfg)

    # ----------------------------------------------------------------------------- parameters
    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the autoencoder (everything but the discriminators and the frozen LPIPS)."""
        skip = {id(p) for m in (self.disc_canonical, self.disc_novel) for p in m.parameters()}
        if self.perceptual is not None:
            skip |= {id(p) for p in self.perceptual.parameters()}
        return (p for p in self.parameters() if id(p) not in skip and p.requires_grad)

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the canonical-view and novel-view discriminators."""
        yield from self.disc_canonical.parameters()
        yield from self.disc_novel.parameters()

    def param_counts(self, print_fn: Callable[[str], None] | None = None) -> dict[str, int]:
        """Parameter count per component (works on the meta device); ``print_fn`` prints a table.

        Example:
            >>> model = VQ3DModel.from_config("tiny")
            >>> model.param_counts()["quantizer"] > 0
            True
            >>> _ = model.param_counts(print_fn=print)
            encoder          ...
            ...
            total            ...
        """
        parts = {
            "encoder": self.encoder,
            "quantizer": self.quantizer,
            "decoder": self.decoder,
            "field": self.field,
            "super_resolution": self.super_resolution,
            "discriminators": nn.ModuleList([self.disc_canonical, self.disc_novel]),
        }
        counts = {k: sum(p.numel() for p in m.parameters()) if m is not None else 0 for k, m in parts.items()}
        if print_fn is not None:
            print_param_table({**counts, "total": sum(counts.values())}, print_fn)
        return counts

    # ----------------------------------------------------------------------------- pieces
    def canonical_cameras(self, batch: int, resolution: int | None = None) -> Cameras:
        """The fixed canonical cameras VQ3D renders reconstructions from (config distance and FOV)."""
        size = resolution or self.config.render_resolution
        return canonical_cameras(
            batch,
            self.config.camera_distance,
            self.config.fov_degrees,
            (size, size),
            device=self._device(),
        )

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor, Any]:
        """``images [B, 3, H, W]`` in [0, 1] → quantised tokens ``[B, N, D]``, indices, quantizer aux."""
        self._check_images(images)
        with inner_checks_off():
            return self._encode(images)

    def _check_images(self, images: Tensor) -> None:
        cfg = self.config
        size = (None, cfg.in_channels, cfg.image_size, cfg.image_size)
        check_tensor("images", images, shape=size, floating=True, finite=True)

    def _encode(self, images: Tensor) -> tuple[Tensor, Tensor, Any]:
        cfg = self.config
        tokens = self.encoder(images * 2 - 1)
        z_q, indices, aux = self.quantizer(tokens)
        grid = cfg.grid_size
        return z_q, indices.reshape(images.shape[0], grid, grid, *indices.shape[2:]), aux

    def decode_planes(self, z_q: Tensor) -> Tensor:
        """Quantised tokens ``[B, N, D]`` → triplanes ``[B, 3, C, R, R]``."""
        return self.decoder(z_q)

    def grid_indices(self, indices: Tensor) -> Tensor:
        """Code indices in any accepted layout → the token-grid layout ``encode`` returns.

        Accepted: ``[B, N]`` or ``[B, g, g]`` (``N = g² = config.num_tokens``); for the residual
        quantizer ``[B, N·depth]`` (the stage-2 prior's flattened, row-major sequence,
        ``config.prior_seq_len``), ``[B, N, depth]`` or ``[B, g, g, depth]``. Returns ``[B, g, g]``
        (``[B, g, g, depth]``); values must lie in ``[0, config.vocab_size)``.

        Example:
            >>> import torch
            >>> m = VQ3DModel.from_config("tiny", quantizer="residual", residual_depth=2)
            >>> m.grid_indices(torch.zeros(3, m.config.prior_seq_len, dtype=torch.long)).shape
            torch.Size([3, 8, 8, 2])
        """
        cfg = self.config
        g, n = cfg.grid_size, cfg.num_tokens
        check_tensor("indices", indices, ndim=(2, 3, 4), integer=True)
        b = indices.shape[0]
        if cfg.quantizer == "residual":
            d = cfg.residual_depth
            accepted, grid = [(b, n * d), (b, n, d), (b, g, g, d)], (b, g, g, d)
        else:
            accepted, grid = [(b, n), (b, g, g)], (b, g, g)
        if tuple(indices.shape) not in accepted:
            names = " or ".join(str(["B", *a[1:]]).replace("'", "") for a in accepted)
            raise ValueError(
                f"indices must have shape {names} for quantizer={cfg.quantizer!r}, got {list(indices.shape)}"
            )
        if has_values(indices) and indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= cfg.vocab_size:
                raise ValueError(f"indices must be in [0, {cfg.vocab_size}), got values in [{lo}, {hi}]")
        return indices.reshape(grid)

    def indices_to_planes(self, indices: Tensor) -> Tensor:
        """Code indices (e.g. sampled by the stage-2 prior; layouts as in :meth:`grid_indices`) →
        triplanes ``[B, 3, C, R, R]``.

        Example:
            >>> import torch
            >>> m = VQ3DModel.from_config("tiny")
            >>> m.indices_to_planes(torch.zeros(1, 64, dtype=torch.long)).shape
            torch.Size([1, 3, 16, 32, 32])
        """
        return self._grid_to_planes(self.grid_indices(indices))

    def _grid_to_planes(self, grid: Tensor) -> Tensor:
        """Checked grid-layout indices (:meth:`grid_indices`) → triplanes."""
        b, n = grid.shape[0], self.config.num_tokens
        codes = self.quantizer.indices_to_codes(grid.reshape(b, n, *grid.shape[3:]))
        return self.decode_planes(codes)

    def density(self, planes: Tensor, points: Tensor, scene_index: Tensor) -> Tensor:
        """Density ``[P]`` at world points ``[P, 3]`` of the scenes ``scene_index [P]``."""
        return self.field.density(self.triplane(points, planes=planes, scene_index=scene_index))

    def _field_fn(self, planes: Tensor):
        use_dirs = self.config.use_view_dirs

        def field(positions: Tensor, directions: Tensor, scene_index: Tensor) -> tuple[Tensor, Tensor]:
            out = self.field(
                self.triplane(positions, planes=planes, scene_index=scene_index),
                directions if use_dirs else None,
            )
            if out.features is None:
                return out.density, out.rgb
            return out.density, torch.cat([out.rgb, out.features], dim=-1)  # composited like colour

        field.density = lambda positions, scene_index: self.density(planes, positions, scene_index)
        return field

    def occupancy(self, planes: Tensor) -> OccupancyGrid:
        """One occupancy grid per scene, evaluated on the current triplanes (no gradient)."""
        cfg = self.config
        return OccupancyGrid.from_field(
            lambda x, s: self.density(planes, x, s),  # from_field runs under no_grad
            cfg.occupancy_resolution,
            n_scenes=planes.shape[0],
            aabb=None if cfg.contraction != "none" else [-cfg.scene_bound] * 3 + [cfg.scene_bound] * 3,
            contraction=cfg.contraction,
            threshold=cfg.occupancy_threshold,
            device=planes.device,
        )

    def render(
        self,
        planes: Tensor,
        cameras: Cameras,
        background: float | None = None,
        grid: OccupancyGrid | None = None,
    ) -> RenderedViews:
        """Renders ``planes [B, 3, C, R, R]`` from ``cameras`` (``k·B`` cameras: camera ``i`` sees scene
        ``i mod B``). Returns images ``rgb [N, 3, H, W]``, ``depth``, ``disparity``, ``opacity``
        ``[N, 1, H, W]`` (plus ``features [N, E, H, W]`` when ``config.field_out_features = E > 0``;
        the ``background`` colour applies to rgb only), the packed samples (for depth losses) and the
        occupancy grid, which a second render of the same ``planes`` can take as ``grid`` instead of
        evaluating a new one."""
        if not isinstance(cameras, Cameras):
            raise TypeError(f"cameras must be a vq3dlib.cameras.Cameras, got {type(cameras).__name__}")
        n_scenes = planes.shape[0]
        if len(cameras) % max(n_scenes, 1):
            raise ValueError(
                f"the number of cameras ({len(cameras)}) must be a multiple of the scenes ({n_scenes})"
            )
        with torch.autocast(planes.device.type, enabled=False):  # geometry and compositing in float32
            planes = planes.float()
            rays = cameras.to(planes.device).generate_rays()
            scene_index = rays.scene_index % max(n_scenes, 1)
            if grid is None:
                grid = self.occupancy(planes)
            extra = self.config.field_out_features
            if extra and background is not None:  # the background colours rgb; features fade to 0
                bg = torch.as_tensor(background, dtype=planes.dtype, device=planes.device)
                bg = bg.reshape(-1).expand(3) if bg.numel() == 1 else bg
                background = torch.cat([bg, bg.new_zeros(*bg.shape[:-1], extra)], dim=-1)
            out = self.renderer(
                self._field_fn(planes), rays, scene_index=scene_index, grid=grid, background=background
            )
        images = out.images()  # channels first; rgb holds [rgb, features]
        if extra:
            images["features"] = images["rgb"][:, 3:]
            images["rgb"] = images["rgb"][:, :3]
        return RenderedViews(images, out, grid)

    def _upsample(self, rgb: Tensor, features: Tensor | None = None) -> Tensor:
        if self.super_resolution is not None:
            return self.super_resolution(rgb, features)
        if rgb.shape[-1] == self.config.image_size:
            return rgb
        size = (self.config.image_size, self.config.image_size)
        return F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)

    # ----------------------------------------------------------------------------- training
    def forward(
        self,
        images: Tensor,
        depth: Tensor | None = None,
        step: int = 0,
        cameras: Cameras | None = None,
    ) -> dict[str, Any]:
        """Reconstructs ``images [B, 3, H, W]`` (in [0, 1]) and computes every generator loss term.

        Args:
            images: input images, also the reconstruction target.
            depth: optional pseudo ground truth ``[B, 1, h, w]`` for the pointwise depth loss (any
                resolution, resized to the render resolution). Its meaning is ``config.depth_target``:
                ``"disparity"`` (default; any scale and shift, e.g. a monocular estimate) or
                ``"depth"`` (converted to disparity ``1 / depth`` first, pixels with ``depth <= 0``
                become disparity 0). It is then aligned as ``config.depth_align`` says.
            step: training step (the adversarial terms start at ``config.adversarial_start_step``, the
                depth loss at ``config.depth_start_step``).
            cameras: canonical cameras (default: :meth:`canonical_cameras`).
        """
        self._check_images(images)
        if depth is not None:
            check_tensor("depth", depth, shape=(images.shape[0], 1, None, None), floating=True, finite=True)
        with inner_checks_off():  # inputs are checked; skip the per-block value checks inside
            return self._forward(images, depth, step, cameras)

    def _forward(
        self, images: Tensor, depth: Tensor | None, step: int, cameras: Cameras | None
    ) -> dict[str, Any]:
        cfg = self.config
        b = images.shape[0]
        z_q, indices, aux = self._encode(images)
        planes = self.decode_planes(z_q)
        cams = cameras if cameras is not None else self.canonical_cameras(b)
        canonical = self.render(planes, cams)
        render_rgb = canonical.images["rgb"]
        recon = self._upsample(render_rgb, canonical.images.get("features"))

        losses: dict[str, Tensor] = {}
        rec_loss = F.mse_loss(recon, images)
        losses["l2"] = cfg.l2_weight * rec_loss
        if self.perceptual is not None:
            losses["perceptual"] = cfg.perceptual_weight * self.perceptual(recon, images).mean()
        losses["quantizer"] = cfg.quantizer_weight * aux.loss
        samples = canonical.samples
        if depth is not None and cfg.depth_weight > 0 and step >= cfg.depth_start_step:
            r = cfg.render_resolution
            if cfg.depth_target == "depth":
                depth = torch.where(depth > 0, 1 / depth.clamp_min(1e-12), torch.zeros_like(depth))
            target = F.interpolate(depth, size=(r, r), mode="bilinear", align_corners=False)[:, 0]
            if cfg.depth_align == "range":
                target = map_disparity_range(target, cfg.depth_range)
            losses["depth"] = cfg.depth_weight * pointwise_depth_loss(
                samples.weights,
                samples.t_starts,
                samples.t_ends,
                target,
                samples.ray_indices,
                target_space="disparity",
                align=cfg.depth_align == "lsq",
            )
        if cfg.distortion_weight > 0:
            losses["distortion"] = cfg.distortion_weight * distortion_loss(
                samples.weights, samples.t_starts, samples.t_ends, samples.ray_indices, n_rays=samples.n_rays
            )

        adversarial_on = step >= cfg.adversarial_start_step and cfg.adversarial_weight > 0
        novel_rgb = None
        # novel views feed only the novel-view discriminator: training steps before it starts skip them
        if cfg.novel_views > 0 and (adversarial_on or not self.training):
            base = (
                cams.resize((cfg.render_resolution, cfg.render_resolution)) if cameras is not None else None
            )
            base = None if base is None else Cameras.cat([base] * cfg.novel_views)
            novel_cams = self.novel_sampler.sample(b * cfg.novel_views, base=base, device=images.device)
            novel_rgb = self.render(planes, novel_cams, grid=canonical.grid).images["rgb"]
        if adversarial_on:
            with _frozen(self.disc_canonical, self.disc_novel):  # the generator step leaves D's grads alone
                losses.update(self._generator_adversarial(recon, rec_loss, novel_rgb))

        extra = {"features": canonical.images["features"]} if "features" in canonical.images else {}
        return {
            **extra,
            "reconstruction": recon,
            "render": render_rgb,
            "depth": canonical.images["depth"],
            "disparity": canonical.images["disparity"],
            "opacity": canonical.images["opacity"],
            "indices": indices,
            "planes": planes,
            "novel_rgb": novel_rgb,
            "losses": losses,
            "loss": sum(losses.values()),
            "quantizer_stats": {k: v.detach() for k, v in aux.stats.items()},
        }

    def _generator_adversarial(
        self, recon: Tensor, rec_loss: Tensor, novel_rgb: Tensor | None
    ) -> dict[str, Tensor]:
        cfg = self.config
        losses = {}
        g_loss = generator_loss(self.disc_canonical(recon * 2 - 1), cfg.adversarial_loss)
        if self.training and torch.is_grad_enabled():
            weight = adaptive_generator_weight(rec_loss, g_loss, self.decoder.last_layer_weight)
        else:
            weight = torch.ones((), device=recon.device)
        losses["adversarial"] = cfg.adversarial_weight * weight * g_loss
        if novel_rgb is not None and cfg.novel_adversarial_weight > 0:
            g_novel = generator_loss(self.disc_novel(novel_rgb * 2 - 1), cfg.adversarial_loss)
            losses["adversarial_novel"] = cfg.novel_adversarial_weight * weight * g_novel
        return losses

    def discriminator_loss(self, images: Tensor, outputs: dict[str, Any]) -> dict[str, Tensor]:
        """Discriminator losses for one step, from real ``images`` and the generator's ``outputs``.

        The canonical-view discriminator compares real images with reconstructions; the novel-view
        one compares real images (at render resolution) with novel-view renders, the only signal that
        unseen views look like real images. Returns ``{"canonical", "novel", "r1", "loss"}``.
        """
        cfg = self.config
        real = images * 2 - 1
        fake = outputs["reconstruction"].detach() * 2 - 1
        if cfg.r1_weight > 0:
            real = real.detach().requires_grad_(True)
        logits_real = self.disc_canonical(real)
        losses = {
            "canonical": discriminator_loss(logits_real, self.disc_canonical(fake), cfg.adversarial_loss)
        }
        if cfg.r1_weight > 0:
            losses["r1"] = cfg.r1_weight / 2 * r1_penalty(logits_real, real)
        if outputs.get("novel_rgb") is not None:
            r = cfg.render_resolution
            small = F.interpolate(images, size=(r, r), mode="bilinear", align_corners=False) * 2 - 1
            novel = outputs["novel_rgb"].detach() * 2 - 1
            losses["novel"] = discriminator_loss(
                self.disc_novel(small), self.disc_novel(novel), cfg.adversarial_loss
            )
        losses["loss"] = sum(losses.values())
        return losses

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Scene:
        """One forward pass: ``images [B, 3, H, W]`` → a renderable :class:`Scene` batch."""
        z_q, indices, _ = self.encode(images)
        return Scene(self.decode_planes(z_q), indices, self)

    @torch.no_grad()
    def decode_indices(self, indices: Tensor) -> Scene:
        """Code indices (e.g. from :meth:`vq3dlib.models.CodePrior.sample`) → :class:`Scene` batch.

        Accepts the layouts of :meth:`grid_indices` (the prior's flattened ``[B, prior_seq_len]``
        sequence included); the scene keeps them in the grid layout ``encode`` returns.

        Example:
            >>> import torch
            >>> m = VQ3DModel.from_config("tiny", quantizer="residual", residual_depth=2)
            >>> scene = m.decode_indices(torch.zeros(1, m.config.prior_seq_len, dtype=torch.long))
            >>> scene.indices.shape, scene.planes.shape
            (torch.Size([1, 8, 8, 2]), torch.Size([1, 3, 16, 32, 32]))
        """
        grid = self.grid_indices(indices)
        return Scene(self._grid_to_planes(grid), grid, self)

    # ----------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Writes weights and config to a safetensors file (config and the resolved MLP backend,
        ``vq3d_mlp_backend``, in the header metadata).

        Example:
            >>> import tempfile, os
            >>> m = VQ3DModel.from_config("tiny")
            >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors"); m.save(path)
            >>> VQ3DModel.load(path).config == m.config
            True
        """
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        metadata = {
            "vq3d_config": json.dumps(self.config.to_dict()),
            "vq3d_mlp_backend": self.field.mlp_backend,
        }
        save_file(state, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> VQ3DModel:
        """Inverse of :meth:`save`.

        The field is rebuilt with the MLP backend the file was saved with (``vq3d_mlp_backend``;
        inferred from the weight names for older files), whatever ``mlp_backend`` the stored
        config asks for: torch weights load everywhere, tiny-cuda-nn weights only where
        ``tinycudann`` and CUDA are available, else a ``RuntimeError`` naming ``mlp_backend``.
        """
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
        if "vq3d_config" not in meta:
            raise ValueError(f"{path} has no vq3d_config metadata; was it written by VQ3DModel.save?")
        cfg = VQ3DConfig.from_dict(json.loads(meta["vq3d_config"]))
        saved = meta.get("vq3d_mlp_backend") or _field_backend_of(keys)
        if saved not in (None, "torch", "tcnn"):
            raise ValueError(f"{path} has an unknown vq3d_mlp_backend {saved!r} (expected 'torch' or 'tcnn')")
        if saved == "tcnn" and not (_tcnn_usable() and torch.device(map_location).type == "cuda"):
            raise RuntimeError(
                f"{path} was saved with mlp_backend='tcnn' (tiny-cuda-nn field weights, not interchangeable "
                f"with the torch MLP's); it loads only with tinycudann importable and map_location on CUDA "
                f"(tinycudann importable: {_tcnn_usable()}, map_location: {map_location!r})"
            )
        model = cls(cfg.replace(mlp_backend=saved) if saved is not None else cfg)
        model.config = cfg  # the stored config as it was written (the field holds the resolved backend)
        state = load_file(str(path), device=str(map_location))
        expected = {k for k in model.state_dict() if k.startswith("field.")}
        found = {k for k in state if k.startswith("field.")}
        if expected != found:
            raise RuntimeError(
                f"the field weights in {path} ({sorted(found)[:3]}...) do not match this model's field, "
                f"built with mlp_backend={model.field.mlp_backend!r} ({sorted(expected)[:3]}...); a model "
                "saved with mlp_backend='tcnn' needs tinycudann on CUDA to load, one saved with 'torch' "
                "loads with mlp_backend='torch'"
            )
        model.load_state_dict(state)
        return model.to(map_location)
