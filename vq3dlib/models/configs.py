"""Model configurations: one dataclass holding every size, and a registry of named presets.

``get_config("tiny")`` trains on a laptop CPU in minutes at 32 px; ``get_config("imagenet256")``
follows the VQ3D paper's scale (ViT-VQGAN-base-like: 256 px, patch 8, width 768, depth 12,
codebook 8192 x 32). Any field can be overridden: ``get_config("tiny", encoder_depth=4)``.

Example:
    >>> from vq3dlib.models.configs import get_config
    >>> cfg = get_config("tiny")
    >>> cfg.grid_size, cfg.num_tokens
    (8, 64)
    >>> get_config("tiny", encoder_depth=3).encoder_depth
    3
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from vq3dlib._validation import check_choice, check_positive
from vq3dlib.models.field import DENSITY_ACTIVATIONS, MLP_BACKENDS
from vq3dlib.models.lifting import LIFTING_CONTRACTIONS
from vq3dlib.ops.march import MARCH_CONTRACTIONS
from vq3dlib.ops.triplane import REDUCTIONS
from vq3dlib.quantize.fsq import check_levels
from vq3dlib.render.renderer import SAMPLINGS

QUANTIZERS = ("vq", "fsq", "lfq", "residual")
CODEBOOK_UPDATES = ("ema", "loss")
DEPTH_TARGETS = ("disparity", "depth")


@dataclass
class VQ3DConfig:
    """Every size and weight of the VQ3D model (stage 1 autoencoder + stage 2 prior).

    Groups: image/encoder, quantizer, decoder/triplane, field MLP, rendering/cameras, novel views,
    loss weights, stage-2 prior. Derived sizes (``grid_size``, ``num_tokens``,
    ``plane_upscale``, ``field_in_features``) are properties. Construction validates the
    combination (e.g. the patch size divides the image size) and raises ``ValueError`` naming the
    field.

    Example:
        >>> cfg = VQ3DConfig(image_size=64, patch_size=8, plane_resolution=64)
        >>> cfg.num_tokens, cfg.plane_upscale
        (64, 8)
        >>> VQ3DConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    name: str = "custom"

    # image and ViT encoder
    image_size: int = 32
    in_channels: int = 3
    patch_size: int = 4
    encoder_width: int = 128
    encoder_depth: int = 2
    encoder_heads: int = 4
    encoder_mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0

    # quantizer (vq3dlib.quantize)
    quantizer: str = "vq"
    codebook_size: int = 512
    code_dim: int = 16
    l2_normalize_codes: bool = True
    commitment_weight: float = 0.25
    codebook_update: str = "ema"
    ema_decay: float = 0.99
    dead_code_steps: int = 100
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    residual_depth: int = 2

    # ViT decoder -> triplane
    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 4.0
    plane_resolution: int = 32
    plane_channels: int = 16
    decoder_conv_refine: bool = False
    # lift an image-aligned head onto the planes through the input camera (vq3dlib.models.lifting)
    decoder_lifting: bool = False
    # > 0: the lifting also predicts this many depth bins per pixel and lifts the xz/yz planes at
    # the predicted depth (PlaneLifting's depth_bins); 0: column and row means along the rays
    lifting_depth_bins: int = 0
    # how many of the side planes' channels are lifted at the predicted depth (0: all of them)
    lifting_depth_channels: int = 0
    # weight of the cross-entropy of those bins against the pseudo-depth (lifting_depth_loss)
    lifting_depth_weight: float = 0.0

    # triplane sampling + density/colour MLP head
    # "linf" (MERF, unbounded scenes), "axis" (per-axis: a ground plane stays a plane; needs
    # sampling="stratified") or "none" (a box of half-size scene_bound)
    contraction: str = "linf"
    triplane_reduce: str = "mean"
    field_hidden_dim: int = 64
    field_hidden_layers: int = 1
    field_geo_features: int = 15
    field_out_features: int = 0  # extra rendered features for the super-resolution head (needs it on)
    use_view_dirs: bool = False
    field_dir_frequencies: int = 4  # frequencies of the view-direction encoding (use_view_dirs)
    density_activation: str = "trunc_exp"
    density_bias: float = -1.0
    mlp_backend: str = "auto"

    # rendering and cameras
    # "march": occupancy grid per scene + marching (march_step_size, samples_per_ray as the cap);
    # "stratified": samples_per_ray fixed intervals per ray (stratified_inner_fraction of them in the
    # scene box, the rest disparity-linear to far) + an opaque background interval (no holes, no grid)
    sampling: str = "march"
    stratified_inner_fraction: float = 0.75
    render_resolution: int = 32
    samples_per_ray: int = 48
    march_step_size: float = 0.04
    near: float = 0.05
    far: float = 1e3
    occupancy_resolution: int = 32
    occupancy_threshold: float = 0.01
    fov_degrees: float = 40.0
    camera_distance: float = 1.0
    super_resolution: bool = False  # 2D refiner: render -> image_size (sees [rgb, rendered features])
    super_resolution_hidden: int = 64  # width of the refiner's conv stack

    # novel views (perturbations of the canonical camera, for the novel-view discriminator)
    novel_views: int = 1
    novel_yaw_degrees: float = 20.0
    novel_pitch_degrees: float = 10.0
    novel_translation: float = 0.1

    # scene extent: points within [-scene_bound, scene_bound]^3 are uncontracted
    scene_bound: float = 1.0

    # loss weights (perceptual needs LPIPS weights from a local file: perceptual_weights or
    # $VQ3DLIB_LPIPS_WEIGHTS; adversarial terms start at adversarial_start_step)
    perceptual_weights: str | None = None
    perceptual_pretrained: bool = True  # False: random LPIPS weights (tests and smoke runs only)
    adversarial_loss: str = "hinge"
    disc_channels: int = 64
    disc_max_channels: int = 512
    adversarial_start_step: int = 0
    r1_weight: float = 0.0
    l2_weight: float = 1.0
    render_l2_weight: float = 0.0  # L2 of the low-resolution render against the resized input
    perceptual_weight: float = 0.1
    adversarial_weight: float = 0.1
    novel_adversarial_weight: float = 0.1
    depth_weight: float = 0.5
    depth_start_step: int = 0  # the pointwise depth loss is applied from this training step on
    # how the pseudo-GT disparity is put into the renderer's frame before the pointwise loss:
    #   "lsq"   per-image least-squares scale/shift onto the rendered disparity (VQ3D); can collapse
    #           to a flat target while the rendering is still flat, so start from a trained model
    #   "range" per-image robust range (2nd-98th percentile) mapped onto 1/depth_range (no collapse)
    #   "none"  the disparity is already metric in the renderer's frame
    depth_align: str = "lsq"
    depth_range: tuple[float, float] = (1.0, 20.0)
    # what forward(images, depth=...) receives: "disparity" (e.g. a monocular estimate, any scale and
    # shift) or "depth" (converted to disparity 1/depth first; depth <= 0 means no measurement -> 0)
    depth_target: str = "disparity"
    distortion_weight: float = 0.0
    # opacity of the samples behind the rendered surface of the input view (nothing supervises them;
    # losses.behind_surface_opacity)
    behind_surface_weight: float = 0.0
    quantizer_weight: float = 1.0

    # stage-2 autoregressive prior over code indices
    num_classes: int = 10
    prior_width: int = 128
    prior_depth: int = 2
    prior_heads: int = 4
    prior_mlp_ratio: float = 4.0
    prior_dropout: float = 0.0
    prior_class_dropout: float = 0.1

    def __post_init__(self) -> None:
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        for name in (
            "image_size", "in_channels", "patch_size", "encoder_width", "encoder_depth", "encoder_heads",
            "codebook_size", "code_dim", "decoder_width", "decoder_depth", "decoder_heads",
            "plane_resolution", "plane_channels", "field_hidden_dim", "render_resolution",
            "samples_per_ray", "march_step_size", "near", "far", "occupancy_resolution", "fov_degrees",
            "camera_distance", "prior_width", "prior_depth", "prior_heads", "residual_depth",
            "encoder_mlp_ratio", "decoder_mlp_ratio", "prior_mlp_ratio", "dead_code_steps",
        ):
            check_positive(name, getattr(self, name))
        for name in (
            "field_hidden_layers", "field_geo_features", "field_out_features", "novel_views", "num_classes",
            "lifting_depth_bins", "lifting_depth_channels",
            "novel_yaw_degrees", "novel_pitch_degrees", "novel_translation", "l2_weight", "render_l2_weight",
            "perceptual_weight", "adversarial_weight", "novel_adversarial_weight", "depth_weight",
            "distortion_weight", "behind_surface_weight", "lifting_depth_weight", "quantizer_weight",
            "commitment_weight",
            "drop_path", "prior_dropout", "adversarial_start_step", "depth_start_step", "r1_weight",
            "prior_class_dropout", "field_dir_frequencies",
        ):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_positive("scene_bound", self.scene_bound)
        check_positive("disc_channels", self.disc_channels)
        check_positive("disc_max_channels", self.disc_max_channels)
        check_positive("super_resolution_hidden", self.super_resolution_hidden)
        check_choice("adversarial_loss", self.adversarial_loss, ("hinge", "nonsaturating"))
        check_choice("sampling", self.sampling, SAMPLINGS)
        if self.lifting_depth_weight > 0 and not (self.decoder_lifting and self.lifting_depth_bins):
            raise ValueError("lifting_depth_weight > 0 needs decoder_lifting and lifting_depth_bins > 0")
        if self.lifting_depth_channels > self.plane_channels:
            raise ValueError(
                f"lifting_depth_channels ({self.lifting_depth_channels}) must be <= plane_channels "
                f"({self.plane_channels})"
            )
        if self.lifting_depth_weight > 0 and self.depth_align == "lsq":
            raise ValueError(
                'lifting_depth_weight > 0 needs a depth with a scale (depth_align "range" or "none"), '
                'not "lsq" (scale and shift fitted per image)'
            )
        if not 0.0 <= self.stratified_inner_fraction <= 1.0:
            raise ValueError(
                f"stratified_inner_fraction must be in [0, 1], got {self.stratified_inner_fraction}"
            )

        check_choice("depth_align", self.depth_align, ("lsq", "range", "none"))
        check_choice("depth_target", self.depth_target, DEPTH_TARGETS)
        self.depth_range = tuple(float(v) for v in self.depth_range)
        if len(self.depth_range) != 2 or not 0 < self.depth_range[0] < self.depth_range[1]:
            raise ValueError(f"depth_range must be (near, far) with 0 < near < far, got {self.depth_range}")
        check_choice("quantizer", self.quantizer, QUANTIZERS)
        check_choice("codebook_update", self.codebook_update, CODEBOOK_UPDATES)
        check_choice("density_activation", self.density_activation, DENSITY_ACTIVATIONS)
        check_choice("mlp_backend", self.mlp_backend, MLP_BACKENDS)
        check_choice("triplane_reduce", self.triplane_reduce, REDUCTIONS)
        if self.contraction == "l2":
            raise ValueError(
                "contraction='l2' is not supported by the model: its occupancy grid and ray marcher "
                "(vq3dlib.render) march 'linf' (MERF) or 'none' contracted space only; use contraction='linf'"
            )
        # the occupancy grid and the ray marcher (vq3dlib.render) march these; the triplane also knows
        # "l2" and "axis", and stratified sampling needs no grid
        if self.contraction == "axis" and self.sampling != "stratified":
            raise ValueError(
                "contraction='axis' needs sampling='stratified': the occupancy grid and the ray marcher "
                f"march {MARCH_CONTRACTIONS} contracted space only (with sampling='march', set "
                "contraction='linf' too)"
            )
        check_choice("contraction", self.contraction, (*MARCH_CONTRACTIONS, "axis"))
        if self.decoder_lifting and self.contraction not in LIFTING_CONTRACTIONS:
            raise ValueError(
                f"decoder_lifting needs contraction in {LIFTING_CONTRACTIONS}, got {self.contraction!r}"
            )
        if self.field_out_features and not self.super_resolution:
            raise ValueError(
                f"field_out_features={self.field_out_features} needs super_resolution=True: the rendered "
                "features only feed the super-resolution head"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        if self.plane_resolution % self.grid_size:
            raise ValueError(
                f"plane_resolution ({self.plane_resolution}) must be a multiple of the token grid size "
                f"image_size / patch_size = {self.grid_size}"
            )
        for prefix in ("encoder", "decoder", "prior"):
            width, heads = getattr(self, f"{prefix}_width"), getattr(self, f"{prefix}_heads")
            if width % heads:
                raise ValueError(f"{prefix}_heads ({heads}) must divide {prefix}_width ({width})")
        if self.near >= self.far:
            raise ValueError(f"near ({self.near}) must be < far ({self.far})")
        if not 0.0 <= self.prior_class_dropout < 1.0:
            raise ValueError(f"prior_class_dropout must be in [0, 1), got {self.prior_class_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        try:
            check_levels(self.fsq_levels)
        except (TypeError, ValueError) as e:
            raise ValueError(f"fsq_levels: {e}") from None

    # derived sizes
    @property
    def grid_size(self) -> int:
        """Tokens per image side: ``image_size // patch_size``."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Code tokens per image (the stage-2 sequence length): ``grid_size ** 2``."""
        return self.grid_size**2

    @property
    def plane_upscale(self) -> int:
        """Triplane texels per token side: ``plane_resolution // grid_size``."""
        return self.plane_resolution // self.grid_size

    @property
    def field_in_features(self) -> int:
        """Width of the sampled triplane feature: ``3 * plane_channels`` for concat, else channels."""
        return self.plane_channels * (3 if self.triplane_reduce == "concat" else 1)

    @property
    def vocab_size(self) -> int:
        """Distinct code indices the stage-2 prior models.

        ``codebook_size`` for ``vq``/``residual``, the product of ``fsq_levels`` for ``fsq``,
        ``2 ** code_dim`` for ``lfq``.
        """
        if self.quantizer == "fsq":
            return math.prod(self.fsq_levels)
        if self.quantizer == "lfq":
            return 2**self.code_dim
        return self.codebook_size

    @property
    def prior_seq_len(self) -> int:
        """Stage-2 sequence length: ``num_tokens`` (times ``residual_depth`` for ``residual``,
        whose ``[B, N, depth]`` indices the prior sees flattened row-major)."""
        return self.num_tokens * (self.residual_depth if self.quantizer == "residual" else 1)

    def replace(self, **changes: Any) -> VQ3DConfig:
        """A validated copy with some fields changed.

        Example:
            >>> VQ3DConfig().replace(plane_channels=8).plane_channels
            8
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) of all fields, e.g. for checkpoint metadata.

        Example:
            >>> VQ3DConfig().to_dict()["image_size"]
            32
        """
        out = dataclasses.asdict(self)
        out["fsq_levels"] = list(self.fsq_levels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQ3DConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them.

        Example:
            >>> VQ3DConfig.from_dict({"image_size": 64, "patch_size": 8}).num_tokens
            64
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VQ3DConfig field(s): {unknown}")
        return cls(**data)


def _tiny() -> VQ3DConfig:
    # 32 px, 8x8 tokens; trains on a 2-core CPU in minutes. Cameras and class count match the
    # procedural dataset (distance 2.7, 40 degrees, its CLASSES); no perceptual loss (its weights are
    # a local file, not shipped). The choices below are measured in docs/training.md ("Ablations"):
    # narrow ViTs (width 96, one decoder block), planes lifted through the input camera (half of the
    # side planes' channels at 32 depth bins per pixel), a 16 px render with 24 stratified samples
    # + an opaque background (no grid per scene, no holes) refined to 32 px by the super-resolution
    # head from 8 rendered features, an L2 on the render itself at twice the weight of the output
    # image's (the field's own render carries the novel views), a strong pointwise depth loss
    # against the depth's robust range (no metric scale used) and the lifting's depth bins trained
    # against that range too; the
    # adversarial terms are off (no gain at equal steps, 1.6-2x slower steps, so fewer steps in the
    # demo's time budget; the imagenet256 preset keeps them).
    from vq3dlib.data.procedural import CLASSES

    return VQ3DConfig(
        name="tiny",
        num_classes=len(CLASSES),
        camera_distance=2.7,
        encoder_width=96,
        decoder_width=96,
        decoder_depth=1,
        decoder_lifting=True,
        lifting_depth_bins=32,
        lifting_depth_channels=8,
        lifting_depth_weight=0.004,
        triplane_reduce="sum",
        field_hidden_dim=32,
        field_out_features=8,
        super_resolution=True,
        super_resolution_hidden=32,
        render_resolution=16,
        sampling="stratified",
        contraction="axis",  # the ground plane stays a plane out to the horizon (docs/training.md)
        samples_per_ray=24,
        near=1.0,
        far=1e3,
        perceptual_weight=0.0,
        adversarial_weight=0.0,
        novel_adversarial_weight=0.0,
        adversarial_start_step=400,
        disc_channels=32,
        disc_max_channels=128,
        render_l2_weight=2.0,
        depth_weight=3.0,
        depth_align="range",
        depth_range=(1.5, 20.0),
        dead_code_steps=20,
        prior_dropout=0.1,  # the prior sees 512 code grids: without dropout it overfits them
    )


def _imagenet256() -> VQ3DConfig:
    # ViT-VQGAN-base scale as used by VQ3D: 256 px, patch 8 (32 x 32 = 1024 tokens), width 768,
    # depth 12, 12 heads, codebook 8192 x 32 with l2-normalised factorised codes. The fixes measured
    # on tiny (lifted planes, stratified sampling with an opaque background, the render L2) apply.
    # Triplane, renderer and prior sizes are not given in our summary of the paper; these are our
    # choices at that scale.
    return VQ3DConfig(
        name="imagenet256",
        image_size=256,
        patch_size=8,
        encoder_width=768,
        encoder_depth=12,
        encoder_heads=12,
        codebook_size=8192,
        code_dim=32,
        dead_code_steps=1000,
        decoder_width=768,
        decoder_depth=12,
        decoder_heads=12,
        plane_resolution=256,
        plane_channels=32,
        decoder_conv_refine=True,
        decoder_lifting=True,
        field_hidden_dim=64,
        field_hidden_layers=1,
        field_geo_features=15,
        render_resolution=128,
        sampling="stratified",
        samples_per_ray=96,
        march_step_size=0.01,
        occupancy_resolution=64,
        super_resolution=True,
        render_l2_weight=2.0,
        novel_views=1,
        num_classes=1000,
        prior_width=1024,
        prior_depth=24,
        prior_heads=16,
        prior_dropout=0.1,
    )


_REGISTRY: dict[str, Callable[[], VQ3DConfig]] = {"tiny": _tiny, "imagenet256": _imagenet256}


def register_config(name: str, factory: Callable[[], VQ3DConfig]) -> None:
    """Adds a named preset; ``factory`` returns a fresh :class:`VQ3DConfig` on each call.

    Example:
        >>> register_config("tiny64", lambda: get_config("tiny", image_size=64, plane_resolution=64))
        >>> get_config("tiny64").num_tokens
        256
    """
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    _REGISTRY[name] = factory


def list_configs() -> list[str]:
    """Names of the registered presets.

    Example:
        >>> {"tiny", "imagenet256"} <= set(list_configs())
        True
    """
    return sorted(_REGISTRY)


def get_config(name: str | VQ3DConfig, **overrides: Any) -> VQ3DConfig:
    """The preset ``name`` (a fresh copy) with ``overrides`` applied; a config passes through.

    Example:
        >>> get_config("imagenet256").codebook_size
        8192
    """
    if isinstance(name, VQ3DConfig):
        return name.replace(**overrides) if overrides else name
    if name not in _REGISTRY:
        raise ValueError(f"unknown config {name!r}; known: {list_configs()}")
    cfg = _REGISTRY[name]()
    return cfg.replace(**overrides) if overrides else cfg


def param_count(
    module: nn.Module, *, print_fn: Callable[[str], None] | None = print, trainable_only: bool = False
) -> dict[str, int]:
    """Parameter counts per direct child of ``module`` plus ``"total"``; prints a table.

    Works on the meta device, so a paper-scale model can be counted without allocating it.

    Args:
        module: the model.
        print_fn: where to print the table (``None`` to stay silent).
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        ``{child_name: count, ..., "total": count}``; parameters held directly by ``module``
        itself are listed under ``"(own)"``.

    Example:
        >>> import torch
        >>> counts = param_count(torch.nn.Sequential(torch.nn.Linear(2, 3)), print_fn=None)
        >>> counts
        {'0': 9, 'total': 9}
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")

    def count(params) -> int:
        return sum(p.numel() for p in params if p.requires_grad or not trainable_only)

    counts: dict[str, int] = {}
    own = count(module.parameters(recurse=False))
    if own:
        counts["(own)"] = own
    for name, child in module.named_children():
        counts[name] = count(child.parameters())
    counts["total"] = count(module.parameters())
    if print_fn is not None:
        print_param_table(counts, print_fn)
    return counts


def print_param_table(counts: dict[str, int], print_fn: Callable[[str], None] = print) -> None:
    """Prints ``{name: count}`` as a table, one line per entry (count and millions).

    Example:
        >>> print_param_table({"encoder": 1_500_000, "total": 1_500_000})
        encoder      1,500,000  (1.50M)
        total        1,500,000  (1.50M)
    """
    width = max(len(k) for k in counts)
    for key, value in counts.items():
        print_fn(f"{key:<{width}s} {value:>14,d}  ({value / 1e6:.2f}M)")


__all__ = ["VQ3DConfig", "get_config", "list_configs", "param_count", "print_param_table", "register_config"]
