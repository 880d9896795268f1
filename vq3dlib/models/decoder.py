"""ViT decoder from code tokens to a triplane ``[B, 3, C, R, R]`` (planes xy, xz, yz).

Each of the ``g x g`` tokens predicts a ``p x p`` patch of all three planes (``R = g * p``): a
linear head to ``3 * C * p * p`` values followed by a pixel-shuffle style "unpatchify", so token
``(i, j)`` owns texels ``[i*p:(i+1)*p, j*p:(j+1)*p]`` of every plane. With a
:class:`~vq3dlib.models.lifting.PlaneLifting` a second head predicts an image-aligned feature map
(token ``(i, j)`` owns the image patch it came from) that is lifted onto the planes through the input
camera and added to them. An optional residual 3x3 conv refinement, shared by the three planes and
initialised to the identity, smooths patch seams.

Example:
    >>> import torch
    >>> from vq3dlib.models.decoder import TriplaneDecoder
    >>> dec = TriplaneDecoder(grid_size=4, width=32, depth=1, heads=2, plane_channels=8, plane_resolution=16)
    >>> dec(torch.rand(2, 16, 32)).shape
    torch.Size([2, 3, 8, 16, 16])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import rearrange
from timm.layers import trunc_normal_
from torch import nn

from vq3dlib._validation import check_positive, check_tensor
from vq3dlib.models.lifting import PlaneLifting
from vq3dlib.models.vit import init_vit_weights, transformer_blocks

if TYPE_CHECKING:
    from vq3dlib.models.configs import VQ3DConfig


class PlaneRefiner(nn.Module):
    """Residual 3x3 conv block applied to each plane (weights shared by the three planes).

    The last conv starts at zero, so a fresh refiner is the identity.

    Example:
        >>> ref = PlaneRefiner(4)
        >>> planes = torch.rand(2, 3, 4, 8, 8)
        >>> torch.equal(ref(planes), planes)
        True
    """

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        """``[B, 3, C, R, R]`` -> ``[B, 3, C, R, R]``."""
        b, k, c, h, w = planes.shape
        x = planes.reshape(b * k, c, h, w)
        x = x + self.conv2(self.act(self.conv1(x)))
        return x.reshape(b, k, c, h, w)


class TriplaneDecoder(nn.Module):
    """Transformer over code tokens -> triplane features.

    Args:
        grid_size: tokens per side ``g``; the input has ``N = g * g`` tokens in row-major order.
        width: transformer width.
        depth: number of timm blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width relative to ``width``.
        in_dim: width of the incoming tokens (e.g. the quantizer's output); a linear projection to
            ``width`` is added when it differs. Defaults to ``width``.
        plane_channels: ``C``, feature channels per plane.
        plane_resolution: ``R``; must be a multiple of ``grid_size``.
        conv_refine: add a :class:`PlaneRefiner` after the unpatchify.
        lifting: a :class:`~vq3dlib.models.lifting.PlaneLifting` (same ``plane_resolution`` and
            ``plane_channels``): adds the lifted image-aligned head (``None``: the plain head only).
        qkv_bias: bias in the qkv projection.
        drop_path: stochastic depth rate.

    Example:
        >>> dec = TriplaneDecoder(grid_size=2, width=16, depth=1, heads=2, in_dim=4,
        ...                       plane_channels=3, plane_resolution=8, conv_refine=True)
        >>> dec(torch.rand(1, 4, 4)).shape
        torch.Size([1, 3, 3, 8, 8])
    """

    def __init__(
        self,
        grid_size: int = 8,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        *,
        in_dim: int | None = None,
        plane_channels: int = 16,
        plane_resolution: int = 32,
        conv_refine: bool = False,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        lifting: PlaneLifting | None = None,
    ) -> None:
        super().__init__()
        check_positive("grid_size", grid_size)
        check_positive("plane_channels", plane_channels)
        check_positive("plane_resolution", plane_resolution)
        if plane_resolution % grid_size:
            raise ValueError(
                f"plane_resolution ({plane_resolution}) must be a multiple of grid_size ({grid_size})"
            )
        in_dim = width if in_dim is None else in_dim
        check_positive("in_dim", in_dim)
        self.grid_size = grid_size
        self.num_tokens = grid_size**2
        self.in_dim = in_dim
        self.width = width
        self.plane_channels = plane_channels
        self.plane_resolution = plane_resolution
        self.upscale = plane_resolution // grid_size
        self.input_proj = nn.Linear(in_dim, width) if in_dim != width else nn.Identity()
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, width))
        self.blocks = transformer_blocks(
            width, depth, heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3 * plane_channels * self.upscale**2)
        self.refine = PlaneRefiner(plane_channels) if conv_refine else nn.Identity()
        if lifting is not None:
            if not isinstance(lifting, PlaneLifting):
                raise TypeError(f"lifting must be a PlaneLifting or None, got {type(lifting).__name__}")
            if (lifting.resolution, lifting.channels) != (plane_resolution, plane_channels):
                raise ValueError(
                    f"lifting has resolution {lifting.resolution} and channels {lifting.channels}; the "
                    f"decoder's planes are {plane_resolution} and {plane_channels}"
                )
        self.lifting = lifting
        self.lift_head = nn.Linear(width, lifting.in_channels * self.upscale**2) if lifting else None
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_vit_weights)

    @classmethod
    def from_config(cls, cfg: VQ3DConfig, in_dim: int | None = None) -> TriplaneDecoder:
        """The decoder described by a config; ``in_dim`` is the incoming token width.

        Example:
            >>> from vq3dlib.models.configs import get_config
            >>> TriplaneDecoder.from_config(get_config("tiny")).plane_resolution
            32
        """
        return cls(
            cfg.grid_size,
            cfg.decoder_width,
            cfg.decoder_depth,
            cfg.decoder_heads,
            cfg.decoder_mlp_ratio,
            in_dim=in_dim,
            plane_channels=cfg.plane_channels,
            plane_resolution=cfg.plane_resolution,
            conv_refine=cfg.decoder_conv_refine,
            qkv_bias=cfg.qkv_bias,
            drop_path=cfg.drop_path,
            lifting=PlaneLifting(
                cfg.plane_resolution,
                cfg.camera_distance,
                cfg.fov_degrees,
                cfg.plane_channels,
                bound=cfg.scene_bound,
                contraction=cfg.contraction,
                depth_bins=cfg.lifting_depth_bins,
                depth_channels=cfg.lifting_depth_channels or None,
            )
            if cfg.decoder_lifting
            else None,
        )

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """Weight of the layer nearest the output (VQGAN's adaptive GAN weight is measured there).

        Example:
            >>> dec = TriplaneDecoder(grid_size=2, width=8, depth=1, heads=2, plane_resolution=4)
            >>> dec.last_layer_weight.dim()
            2
        """
        if isinstance(self.refine, PlaneRefiner):
            return self.refine.conv2.weight
        return self.head.weight

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Transformer features of the tokens.

        Args:
            tokens: ``[B, N, in_dim]`` float tokens, ``N = grid_size ** 2``.

        Returns:
            ``[B, N, width]``.

        Example:
            >>> dec = TriplaneDecoder(grid_size=2, width=8, depth=1, heads=2, plane_resolution=4)
            >>> dec.forward_features(torch.zeros(1, 4, 8)).shape
            torch.Size([1, 4, 8])
        """
        check_tensor("tokens", tokens, shape=(None, self.num_tokens, self.in_dim), floating=True)
        check_tensor("tokens", tokens, finite=True)
        x = self.input_proj(tokens) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward_head(
        self, features: torch.Tensor, with_depth_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Features ``[B, N, width]`` -> triplane ``[B, 3, C, R, R]`` (linear head + unpatchify).

        With ``with_depth_logits`` it returns ``(planes, logits)``: the lifting's depth-bin logits
        ``[B, D, R, R]`` (``None`` without a lifting with depth bins).

        Example:
            >>> dec = TriplaneDecoder(grid_size=2, width=8, depth=1, heads=2, plane_channels=2,
            ...                       plane_resolution=4)
            >>> dec.forward_head(torch.zeros(5, 4, 8)).shape
            torch.Size([5, 3, 2, 4, 4])
        """
        check_tensor("features", features, shape=(None, self.num_tokens, self.width), floating=True)
        x = self.head(features)
        g, p = self.grid_size, self.upscale
        planes = rearrange(x, "b (h w) (k c p q) -> b k c (h p) (w q)", h=g, w=g, k=3, p=p, q=p)
        logits = None
        if self.lifting is not None:
            patches = self.lift_head(features)
            image = rearrange(patches, "b (h w) (c p q) -> b c (h p) (w q)", h=g, w=g, p=p, q=p)
            lifted, bins = self.lifting(image, with_logits=True)
            planes = planes + lifted
            if self.lifting.depth_bins:
                logits = bins
        planes = self.refine(planes)
        return (planes, logits) if with_depth_logits else planes

    def forward(
        self, tokens: torch.Tensor, with_depth_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """``[B, N, in_dim]`` code tokens -> ``[B, 3, C, R, R]`` triplane (planes xy, xz, yz).

        ``with_depth_logits``: also return the lifting's depth-bin logits (see :meth:`forward_head`).

        Example:
            >>> dec = TriplaneDecoder(grid_size=2, width=8, depth=1, heads=2, plane_channels=2,
            ...                       plane_resolution=4)
            >>> dec(torch.zeros(0, 4, 8)).shape
            torch.Size([0, 3, 2, 4, 4])
        """
        return self.forward_head(self.forward_features(tokens), with_depth_logits)
