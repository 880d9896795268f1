"""``ContractedTriplane``: a triplane feature field over (optionally contracted) unbounded space.

Either owns learnable planes (fitting one scene) or samples planes passed per call (generators,
where a network predicts ``[B, 3, C, R, R]`` planes for each image).

Example:
    >>> import torch
    >>> field = ContractedTriplane(resolution=32, channels=8, contraction="linf")
    >>> field(torch.randn(100, 3)).shape
    torch.Size([100, 8])
    >>> gen = ContractedTriplane(channels=8, learnable=False, reduce="concat")
    >>> gen(torch.randn(4, 50, 3), planes=torch.randn(4, 3, 8, 16, 16)).shape
    torch.Size([4, 50, 24])
"""

from __future__ import annotations

import torch
from torch import nn

from vq3dlib._validation import check_choice, check_positive
from vq3dlib.contraction import CONTRACTIONS
from vq3dlib.ops.triplane import PADDINGS, REDUCTIONS, triplane_sample


class ContractedTriplane(nn.Module):
    """Three axis-aligned feature planes (xy, xz, yz) sampled at contracted 3D points.

    Args:
        resolution: plane size ``R`` (planes are ``R × R``); used when ``learnable``.
        channels: features per plane ``C``.
        contraction: ``"linf"`` (MERF, default), ``"l2"`` (mip-NeRF 360) or ``"none"``.
        bound: radius of the uncontracted region (points are divided by it before contraction).
        reduce: how the three plane features combine: ``"sum"``, ``"mean"`` or ``"concat"``.
        learnable: own a ``[1, 3, C, R, R]`` parameter (one scene); otherwise ``planes`` must be
            passed to :meth:`forward`.
        init_std: standard deviation of the learnable planes' initialisation.
        align_corners, padding_mode: ``F.grid_sample`` conventions (see :func:`vq3dlib.ops.triplane_sample`).

    Shapes:
        ``forward(points, planes=None, scene_index=None)``: points ``[N, 3]`` or ``[B, N, 3]``
        (dense, one scene per batch row) or packed ``[S, 3]`` with ``scene_index [S]``;
        returns ``[..., C]`` (``3C`` for concat).

    Example:
        >>> import torch
        >>> tri = ContractedTriplane(resolution=16, channels=4)
        >>> tri.out_channels, tri.planes.shape
        (4, torch.Size([1, 3, 4, 16, 16]))
    """

    def __init__(
        self,
        resolution: int = 128,
        channels: int = 32,
        *,
        contraction: str = "linf",
        bound: float = 1.0,
        reduce: str = "sum",
        learnable: bool = True,
        init_std: float = 0.1,
        align_corners: bool = False,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        check_positive("resolution", resolution)
        check_positive("channels", channels)
        check_positive("bound", bound)
        check_choice("contraction", contraction, CONTRACTIONS)
        check_choice("reduce", reduce, REDUCTIONS)
        check_choice("padding_mode", padding_mode, PADDINGS)
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.contraction = contraction
        self.bound = float(bound)
        self.reduce = reduce
        self.align_corners = bool(align_corners)
        self.padding_mode = padding_mode
        if learnable:
            init = torch.randn(1, 3, channels, resolution, resolution) * init_std
            # stored channels-last ([1, 3, R, R, C] in memory, [1, 3, C, R, R] as seen): the kernels
            # read it without a layout copy per call and write its gradient in place
            self.planes = nn.Parameter(init.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3))
        else:
            self.register_parameter("planes", None)

    @property
    def out_channels(self) -> int:
        """Feature width of :meth:`forward`'s output (``3C`` for concat, else ``C``).

        Example:
            >>> ContractedTriplane(channels=4, reduce="concat", learnable=False).out_channels
            12
        """
        return 3 * self.channels if self.reduce == "concat" else self.channels

    def forward(
        self,
        points: torch.Tensor,
        planes: torch.Tensor | None = None,
        scene_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Features of ``points`` (see the class docstring for shapes)."""
        if planes is None:
            if self.planes is None:
                raise ValueError(
                    "planes must be passed to forward() when ContractedTriplane(learnable=False)"
                )
            planes = self.planes
        elif planes.dim() == 5 and planes.shape[2] != self.channels:
            raise ValueError(
                f"planes must have {self.channels} channels ([B, 3, {self.channels}, R, R]), "
                f"got {list(planes.shape)}"
            )
        squeeze = False
        if points.dim() == 2 and scene_index is None and planes.dim() == 5 and planes.shape[0] == 1:
            points, squeeze = points[None], True
        out = triplane_sample(
            planes,
            points,
            scene_index,
            contraction=self.contraction,
            bound=self.bound,
            reduce=self.reduce,
            align_corners=self.align_corners,
            padding_mode=self.padding_mode,
        )
        return out[0] if squeeze else out

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, channels={self.channels}, contraction={self.contraction!r}, "
            f"bound={self.bound}, reduce={self.reduce!r}, learnable={self.planes is not None}"
        )
