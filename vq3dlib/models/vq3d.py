"""VQ3D stage 1: one forward pass turns an image into a renderable 3D scene.

image → :class:`ViTEncoder` → quantizer (l2-normalised factorised codes) → :class:`TriplaneDecoder`
→ contracted triplane ``[B, 3, C, R, R]`` → :class:`ContractedTriplane` + :class:`TriplaneField`
(density, colour) → :class:`Renderer` with an :class:`OccupancyGrid` built per scene
(``OccupancyGrid.from_field``) → canonical and novel-view renders. The losses (L2, perceptual,
adversarial with separate canonical- and novel-view discriminators, VQ3D's pointwise depth loss,
distortion, the quantizer's own terms) are :class:`~vq3dlib.models.losses.VQ3DLoss` (``model.loss``);
reconstructed scenes are :class:`~vq3dlib.models.scene.Scene` batches. This module also holds the
model's weights file format (:meth:`VQ3DModel.save` / :meth:`VQ3DModel.load`, which keep the field's
MLP backend). Every piece is a public vq3dlib block.

Example:
    >>> import torch
    >>> from vq3dlib.models import VQ3DModel
    >>> model = VQ3DModel.from_config("tiny", render_resolution=8, image_size=16, plane_resolution=16)
    >>> out = model(torch.rand(2, 3, 16, 16))
    >>> out["reconstruction"].shape, out["indices"].shape, bool(out["loss"] > 0)
    (torch.Size([2, 3, 16, 16]), torch.Size([2, 4, 4]), True)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq3dlib._validation import check_positive, check_tensor, has_values, inner_checks_off
from vq3dlib.cameras import Cameras, NovelViewSampler, canonical_cameras
from vq3dlib.models.configs import VQ3DConfig, get_config, print_param_table
from vq3dlib.models.decoder import TriplaneDecoder
from vq3dlib.models.field import TriplaneField, resolve_mlp_backend
from vq3dlib.models.losses import VQ3DLoss
from vq3dlib.models.pretrained import DEFAULT_PRETRAINED, pretrained_path
from vq3dlib.models.scene import Scene
from vq3dlib.models.vit import ViTEncoder
from vq3dlib.quantize import FSQ, LFQ, ResidualVQ, VectorQuantizer
from vq3dlib.render import OccupancyGrid, Renderer, RenderOutput
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

    ``forward(..., size=S)`` upsamples to another side ``S`` than ``out_size`` (the same convs at
    that size; e.g. a render at twice the model's render resolution super-resolved to twice its image
    size, the ratio the head is trained for).

    Args:
        out_size: output side ``H = W``.
        hidden: width of the conv stack.
        features: channels ``E`` of the extra rendered features (0: rgb only).

    Shapes:
        ``forward(rgb [B, 3, h, w], features [B, E, h, w] | None, size: int | None) -> [B, 3, S, S]``
        (``S = size``, default ``out_size``).

    Example:
        >>> import torch
        >>> SuperResolution(32, hidden=16)(torch.rand(1, 3, 8, 8)).shape
        torch.Size([1, 3, 32, 32])
        >>> SuperResolution(32, hidden=16)(torch.rand(1, 3, 32, 32), size=64).shape
        torch.Size([1, 3, 64, 64])
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

    def forward(self, rgb: Tensor, features: Tensor | None = None, size: int | None = None) -> Tensor:
        check_tensor("rgb", rgb, shape=(None, 3, None, None), floating=True)
        if size is not None and int(size) < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if self.features:
            shape = (rgb.shape[0], self.features, *rgb.shape[2:])
            check_tensor("features", features, shape=shape, floating=True)
        elif features is not None:
            raise ValueError("features given, but this SuperResolution was built with features=0")
        size = (self.out_size,) * 2 if size is None else (int(size),) * 2
        up = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        x = up
        if features is not None:
            x = torch.cat([up, F.interpolate(features, size=size, mode="bilinear", align_corners=False)], 1)
        # channels-last activations: oneDNN's convolutions run their fwd + bwd ~25% faster on CPU
        return up + self.net(x.contiguous(memory_format=torch.channels_last))


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


#: weights that moved into ``model.loss``: state dicts that name them at the top level still load
_LOSS_MODULES = ("disc_canonical.", "disc_novel.", "perceptual.")


def _move_loss_weights(state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: ``disc_canonical.*`` (etc.) of older files → ``loss.disc_canonical.*``."""
    for key in [k for k in state_dict if k[len(prefix) :].startswith(_LOSS_MODULES)]:
        state_dict[f"{prefix}loss.{key[len(prefix) :]}"] = state_dict.pop(key)


class VQ3DModel(nn.Module):
    """VQ3D stage 1 (see the module docstring); build it with :meth:`from_config`.

    ``forward(images, depth=None, step=0)`` returns a dict with ``reconstruction [B, 3, H, W]``,
    ``render`` (low-res canonical render), ``depth``/``disparity``/``opacity [B, 1, r, r]``,
    ``indices`` (code grid), ``novel_rgb [B·k, 3, r, r]`` (``k = novel_views``; ``None`` in training
    steps before ``adversarial_start_step``, where no loss uses them), ``losses`` (each
    weighted term), ``loss`` (their sum) and ``quantizer_stats``. The loss terms, the discriminators
    and LPIPS are ``model.loss`` (:class:`~vq3dlib.models.losses.VQ3DLoss`); the discriminators train
    through :meth:`discriminator_loss` with their own optimiser (:meth:`discriminator_parameters`).

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
            sampling=cfg.sampling,
            inner_fraction=cfg.stratified_inner_fraction,
        )
        self.super_resolution = (
            SuperResolution(cfg.image_size, cfg.super_resolution_hidden, cfg.field_out_features)
            if cfg.super_resolution
            else None
        )
        self.loss = VQ3DLoss(cfg)  # the discriminators and LPIPS
        self.novel_sampler = NovelViewSampler(
            cfg.camera_distance,
            cfg.fov_degrees,
            (cfg.render_resolution, cfg.render_resolution),
            yaw=cfg.novel_yaw_degrees,
            pitch=cfg.novel_pitch_degrees,
            translation=cfg.novel_translation,
        )
        self._register_load_state_dict_pre_hook(_move_loss_weights)

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
        """Parameters of the autoencoder: all but ``loss`` (the discriminators and the frozen LPIPS)."""
        skip = {id(p) for p in self.loss.parameters()}
        return (p for p in self.parameters() if id(p) not in skip and p.requires_grad)

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the canonical-view and novel-view discriminators (``loss.disc_*``)."""
        return self.loss.discriminator_parameters()

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
            "discriminators": nn.ModuleList([self.loss.disc_canonical, self.loss.disc_novel]),
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
        output_image: bool = True,
        image_size: int | None = None,
    ) -> RenderOutput:
        """Renders ``planes [B, 3, C, R, R]`` from ``cameras`` (``k·B`` cameras: camera ``i`` sees scene
        ``i mod B``).

        Returns a :class:`~vq3dlib.render.RenderOutput` of the ``[N, H, W]`` rays: ``rgb [N, H, W, 3]``,
        ``depth``/``disparity``/``opacity [N, H, W]`` (``.images()``: channels first), ``features
        [N, H, W, E]`` when ``config.field_out_features = E > 0`` (the ``background`` colour applies to
        rgb only), the packed samples (for depth losses) and ``grid``, the occupancy grid
        (``sampling="march"``), which a second render of the same ``planes`` can take instead of
        evaluating a new one. Cameras at ``config.render_resolution`` also get ``image [N, 3,
        image_size, image_size]``, the model's output image (super-resolved when the model has the
        head, else upsampled), unless ``output_image=False`` (renders whose rgb alone is used, such as
        the novel views of a training step). With ``image_size = S``, cameras of any resolution get
        ``image [N, 3, S, S]`` the same way (:class:`SuperResolution` at that size; e.g. cameras at
        twice the render resolution and ``S`` twice the image size: a sharper output image).

        Example:
            >>> import torch
            >>> model = VQ3DModel.from_config("tiny", render_resolution=8)
            >>> out = model.render(torch.zeros(1, 3, 16, 32, 32), model.canonical_cameras(2))
            >>> out.rgb.shape, out.images()["depth"].shape, out.image.shape
            (torch.Size([2, 8, 8, 3]), torch.Size([2, 1, 8, 8]), torch.Size([2, 3, 32, 32]))
            >>> planes, cams = torch.zeros(1, 3, 16, 32, 32), model.canonical_cameras(1, resolution=16)
            >>> model.render(planes, cams, image_size=64).image.shape  # any cameras, any output size
            torch.Size([1, 3, 64, 64])
            >>> march = VQ3DModel.from_config(
            ...     "tiny", sampling="march", contraction="linf", render_resolution=8
            ... )
            >>> march.render(torch.zeros(1, 3, 16, 32, 32), march.canonical_cameras(1)).grid.n_scenes
            1
        """
        if not isinstance(cameras, Cameras):
            raise TypeError(f"cameras must be a vq3dlib.cameras.Cameras, got {type(cameras).__name__}")
        check_tensor("planes", planes, ndim=5, floating=True, finite=True)
        if image_size is not None:
            check_positive("image_size", image_size)
        with inner_checks_off():  # inputs are checked; skip the per-block value checks inside
            return self._render(planes, cameras, background, grid, output_image, image_size)

    def _render(
        self,
        planes: Tensor,
        cameras: Cameras,
        background: float | None,
        grid: OccupancyGrid | None,
        output_image: bool,
        image_size: int | None,
    ) -> RenderOutput:
        n_scenes = planes.shape[0]
        if len(cameras) % max(n_scenes, 1):
            raise ValueError(
                f"the number of cameras ({len(cameras)}) must be a multiple of the scenes ({n_scenes})"
            )
        with torch.autocast(planes.device.type, enabled=False):  # geometry and compositing in float32
            planes = planes.float()
            rays = cameras.to(planes.device).generate_rays()
            scene_index = rays.scene_index % max(n_scenes, 1)
            if grid is None and self.config.sampling == "march":
                grid = self.occupancy(planes)
            extra = self.config.field_out_features
            if extra and background is not None:  # the background colours rgb; features fade to 0
                bg = torch.as_tensor(background, dtype=planes.dtype, device=planes.device)
                bg = bg.reshape(-1).expand(3) if bg.numel() == 1 else bg
                background = torch.cat([bg, bg.new_zeros(*bg.shape[:-1], extra)], dim=-1)
            out = self.renderer(
                self._field_fn(planes), rays, scene_index=scene_index, grid=grid, background=background
            )
        if extra:  # the renderer composited [rgb, features] together
            out = dataclasses.replace(out, rgb=out.rgb[..., :3], features=out.rgb[..., 3:])
        native = tuple(cameras.image_size) == (self.config.render_resolution,) * 2
        if output_image and (native or image_size is not None):
            views = out.images()
            out.image = self._upsample(views["rgb"], views.get("features"), image_size)
        return out

    def _upsample(self, rgb: Tensor, features: Tensor | None = None, size: int | None = None) -> Tensor:
        size = self.config.image_size if size is None else int(size)
        if self.super_resolution is not None:
            return self.super_resolution(rgb, features, size)
        if rgb.shape[-1] == size:
            return rgb
        return F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)

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
        lift_logits = None
        if self.training and depth is not None and cfg.lifting_depth_weight > 0:
            planes, lift_logits = self.decoder(z_q, with_depth_logits=True)
        else:
            planes = self.decode_planes(z_q)
        cams = cameras if cameras is not None else self.canonical_cameras(b)
        canonical = self.render(planes, cams)
        views = canonical.images()
        recon = views["image"] if "image" in views else self._upsample(views["rgb"], views.get("features"))

        novel_rgb = None
        # novel views feed only the novel-view discriminator: training steps before it starts skip them
        if cfg.novel_views > 0 and (self.loss.adversarial_on(step) or not self.training):
            base = (
                cams.resize((cfg.render_resolution, cfg.render_resolution)) if cameras is not None else None
            )
            base = None if base is None else Cameras.cat([base] * cfg.novel_views)
            novel_cams = self.novel_sampler.sample(b * cfg.novel_views, base=base, device=images.device)
            novel = self.render(planes, novel_cams, grid=canonical.grid, output_image=False)  # rgb only
            novel_rgb = novel.images()["rgb"]
        losses = self.loss.generator_losses(
            images,
            recon,
            canonical,
            aux.loss,
            step=step,
            depth=depth,
            novel_rgb=novel_rgb,
            last_layer=self.decoder.last_layer_weight if self.training else None,
            lift_depth_logits=lift_logits,
        )
        extra = {"features": views["features"]} if "features" in views else {}
        return {
            **extra,
            "reconstruction": recon,
            "render": views["rgb"],
            "depth": views["depth"],
            "disparity": views["disparity"],
            "opacity": views["opacity"],
            "indices": indices,
            "planes": planes,
            "novel_rgb": novel_rgb,
            "losses": losses,
            "loss": sum(losses.values()),
            "quantizer_stats": {k: v.detach() for k, v in aux.stats.items()},
        }

    def discriminator_loss(self, images: Tensor, outputs: dict[str, Any]) -> dict[str, Tensor]:
        """Discriminator losses for one step, from real ``images`` and the generator's ``outputs``
        (:meth:`VQ3DLoss.discriminator_losses <vq3dlib.models.losses.VQ3DLoss.discriminator_losses>`
        of the reconstruction and the novel-view renders). Returns ``{"canonical", "novel", "r1",
        "loss"}`` (the terms in use)."""
        return self.loss.discriminator_losses(images, outputs["reconstruction"], outputs.get("novel_rgb"))

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
    def save(self, path: str | Path, inference: bool = False) -> None:
        """Writes weights and config to a safetensors file (config and the resolved MLP backend,
        ``vq3d_mlp_backend``, in the header metadata, with a sha256 of the weights that :meth:`load`
        verifies). The write is atomic (a temporary file moved over ``path``), and a model with
        NaN/Inf weights is refused with a ``ValueError``.

        ``inference=True`` writes what reconstructing and rendering need, at a fraction of the size:
        no ``loss.*`` weights (discriminators, LPIPS; :meth:`load` builds them afresh), parameters in
        float16 (loaded back as float32; buffers such as codebook statistics, and any value float16
        cannot hold, stay float32). That is the format of the bundled weights (:meth:`pretrained`).

        Example:
            >>> import tempfile, os
            >>> m = VQ3DModel.from_config("tiny")
            >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors"); m.save(path)
            >>> VQ3DModel.load(path).config == m.config
            True
            >>> small = path.replace("m.", "small."); m.save(small, inference=True)
            >>> os.path.getsize(small) < os.path.getsize(path) / 5
            True
        """
        from vq3dlib.train.checkpoint import SHA256_KEY, _atomic_write, check_finite_state, tensors_sha256

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        check_finite_state(state, "the model")
        if inference:
            params = {k for k, _ in self.named_parameters()}
            state = {k: _half_if_representable(v) if k in params else v for k, v in state.items()}
            state = {k: v for k, v in state.items() if not k.startswith("loss.")}
        metadata = {
            "vq3d_config": json.dumps(self.config.to_dict()),
            "vq3d_mlp_backend": self.field.mlp_backend,
            "vq3d_contents": "inference" if inference else "full",
            SHA256_KEY: tensors_sha256(state),
        }
        _atomic_write(state, Path(path), metadata)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> VQ3DModel:
        """Inverse of :meth:`save`.

        The field is rebuilt with the MLP backend the file was saved with (``vq3d_mlp_backend``;
        inferred from the weight names for older files), whatever ``mlp_backend`` the stored
        config asks for: torch weights load everywhere, tiny-cuda-nn weights only where
        ``tinycudann`` and CUDA are available, else a ``RuntimeError`` naming ``mlp_backend``.
        A file written with ``inference=True`` loads its float16 parameters as float32 and keeps the
        freshly built ``loss.*`` modules (discriminators, LPIPS) it does not hold.
        """
        from vq3dlib.train.checkpoint import read_safetensors

        if not Path(path).is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        state, meta = read_safetensors(path, device=str(map_location))  # checksum verified
        keys = list(state)
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
        # the stored config as it was written (the field holds the resolved backend)
        model.config = model.loss.config = cfg
        expected = {k for k in model.state_dict() if k.startswith("field.")}
        found = {k for k in state if k.startswith("field.")}
        if expected != found:
            raise RuntimeError(
                f"the field weights in {path} ({sorted(found)[:3]}...) do not match this model's field, "
                f"built with mlp_backend={model.field.mlp_backend!r} ({sorted(expected)[:3]}...); a model "
                "saved with mlp_backend='tcnn' needs tinycudann on CUDA to load, one saved with 'torch' "
                "loads with mlp_backend='torch'"
            )
        inference = meta.get("vq3d_contents") == "inference"
        missing, unexpected = model.load_state_dict(state, strict=not inference)
        missing = [k for k in missing if not k.startswith("loss.")]  # inference files have no loss.*
        if missing or unexpected:
            raise RuntimeError(
                f"{path} does not match the model of its config: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        return model.to(map_location)

    @classmethod
    def pretrained(
        cls,
        name: str = DEFAULT_PRETRAINED,
        map_location: str | torch.device = "cpu",
        weights_dir: str | Path | None = None,
    ) -> VQ3DModel:
        """A bundled pretrained model by name, in eval mode (:mod:`vq3dlib.models.pretrained`).

        ``"tiny-procedural"`` (:data:`~vq3dlib.models.pretrained.DEFAULT_PRETRAINED`) is the ``tiny``
        model trained on the procedural scenes. ``weights_dir`` looks in another folder of weights
        files (default: the package's ``vq3dlib/weights/``). An unknown name raises ``ValueError``
        listing the bundled ones.

        Example:
            >>> import tempfile
            >>> folder = tempfile.mkdtemp()
            >>> VQ3DModel.from_config("tiny").save(f"{folder}/mine.safetensors", inference=True)
            >>> model = VQ3DModel.pretrained("mine", weights_dir=folder)
            >>> model.config.name, model.training
            ('tiny', False)
        """
        return cls.load(pretrained_path(name, weights_dir), map_location=map_location).eval()


def _half_if_representable(t: Tensor) -> Tensor:
    """``t`` in float16 when it is floating point and float16 holds its range, else ``t``."""
    if not t.is_floating_point() or t.dtype == torch.float16:
        return t
    half = t.half()
    return half if bool(torch.isfinite(half).all() == torch.isfinite(t).all()) else t
