"""ViT encoder built from timm's transformer blocks: images -> patch tokens.

The encoder is timm's ``PatchEmbed`` + learned positions + a stack of timm ``Block``s + a final
LayerNorm, with timm's ``forward_features`` split. In VQ3D it is followed by the quantizer, which
projects the tokens to the code dimension.

Example:
    >>> import torch
    >>> from vq3dlib.models.vit import ViTEncoder
    >>> enc = ViTEncoder(image_size=32, patch_size=8, width=64, depth=1, heads=2)
    >>> enc(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 16, 64])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from vq3dlib._validation import check_positive, check_tensor

if TYPE_CHECKING:
    from vq3dlib.models.configs import VQ3DConfig


def transformer_blocks(
    width: int,
    depth: int,
    heads: int,
    mlp_ratio: float = 4.0,
    *,
    qkv_bias: bool = True,
    drop_path: float = 0.0,
) -> nn.Sequential:
    """``depth`` timm ViT ``Block``s (pre-norm attention + MLP) with a linear drop-path schedule.

    Args:
        width: token width; ``heads`` must divide it.
        depth: number of blocks (0 gives an empty, identity stack).
        heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to ``width``.
        qkv_bias: bias in the qkv projection.
        drop_path: stochastic depth rate of the last block.

    Example:
        >>> import torch
        >>> blocks = transformer_blocks(32, depth=2, heads=4)
        >>> blocks(torch.zeros(1, 5, 32)).shape
        torch.Size([1, 5, 32])
    """
    check_positive("width", width)
    check_positive("heads", heads)
    check_positive("depth", depth, allow_zero=True)
    check_positive("mlp_ratio", mlp_ratio)
    if width % heads:
        raise ValueError(f"heads ({heads}) must divide width ({width})")
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    return nn.Sequential(
        *[Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rate) for rate in rates]
    )


def init_vit_weights(module: nn.Module) -> None:
    """timm's ViT initialisation: truncated-normal (std 0.02) linear weights, zero biases.

    Apply with ``model.apply(init_vit_weights)``; LayerNorms keep their ones/zeros.

    Example:
        >>> lin = torch.nn.Linear(4, 4); init_vit_weights(lin)
        >>> bool((lin.bias == 0).all())
        True
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ViTEncoder(nn.Module):
    """Vision transformer encoder: ``[B, C, H, W]`` images -> ``[B, N, width]`` tokens.

    ``N = (image_size // patch_size) ** 2`` tokens in row-major patch order, each with a learned
    position embedding; no class token.

    Args:
        image_size: input height = width in pixels.
        patch_size: patch side; must divide ``image_size``.
        in_channels: image channels.
        width: token width.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width relative to ``width``.
        qkv_bias: bias in the qkv projection.
        drop_path: stochastic depth rate.

    Example:
        >>> enc = ViTEncoder(image_size=16, patch_size=4, width=32, depth=1, heads=2)
        >>> enc.num_tokens, enc.forward_features(torch.rand(1, 3, 16, 16)).shape
        (16, torch.Size([1, 16, 32]))
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        *,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive("image_size", image_size)
        check_positive("patch_size", patch_size)
        check_positive("in_channels", in_channels)
        if image_size % patch_size:
            raise ValueError(f"patch_size ({patch_size}) must divide image_size ({image_size})")
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.width = width
        self.grid_size = image_size // patch_size
        self.num_tokens = self.grid_size**2
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, width))
        self.blocks = transformer_blocks(
            width, depth, heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path
        )
        self.norm = nn.LayerNorm(width)
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_vit_weights)

    @classmethod
    def from_config(cls, cfg: VQ3DConfig) -> ViTEncoder:
        """The encoder described by a :class:`~vq3dlib.models.configs.VQ3DConfig`.

        Example:
            >>> from vq3dlib.models.configs import get_config
            >>> ViTEncoder.from_config(get_config("tiny")).num_tokens
            64
        """
        return cls(
            cfg.image_size,
            cfg.patch_size,
            cfg.in_channels,
            cfg.encoder_width,
            cfg.encoder_depth,
            cfg.encoder_heads,
            cfg.encoder_mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            drop_path=cfg.drop_path,
        )

    def _check(self, images: torch.Tensor) -> None:
        s = self.image_size
        check_tensor("images", images, shape=(None, self.in_channels, s, s), floating=True)
        check_tensor("images", images, finite=True)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the blocks and the final norm.

        Args:
            images: ``[B, in_channels, image_size, image_size]`` float images.

        Returns:
            ``[B, N, width]`` tokens.

        Example:
            >>> enc = ViTEncoder(image_size=8, patch_size=4, width=16, depth=1, heads=2)
            >>> enc.forward_features(torch.zeros(3, 3, 8, 8)).shape
            torch.Size([3, 4, 16])
        """
        self._check(images)
        x = self.patch_embed(images) + self.pos_embed
        x = self.blocks(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward_features`: ``[B, C, H, W]`` -> ``[B, N, width]``.

        Example:
            >>> enc = ViTEncoder(image_size=8, patch_size=4, width=16, depth=1, heads=2)
            >>> enc(torch.zeros(0, 3, 8, 8)).shape
            torch.Size([0, 4, 16])
        """
        return self.forward_features(images)
