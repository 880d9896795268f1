"""Lifting an image-aligned feature map onto the triplane through the input camera.

A ViT decoder's tokens are image patches: token ``(i, j)`` sees what the input camera sees in
patch row ``i``, column ``j``. Predicting the triplane texel by texel from them (the plain
unpatchify head) asks the network to learn the camera's perspective projection. The lifting does
that projection in closed form instead, once, as fixed sampling grids:

* the **xy plane** (texels at ``z = 0``) samples the first ``C`` channels of the feature map where the
  texel projects into the image;
* the **xz plane** samples the column means of the next ``C`` channels at the image column its texel
  ``(x, z)`` projects to (the column a ray through that texel crosses);
* the **yz plane** samples the row means of the last ``C`` channels at the image row of ``(y, z)``.

With ``depth_bins = D > 0`` the feature map carries ``D`` more channels, logits of a distribution over
``D`` depth bins per pixel (bins uniform in ``t = 2 d / (d + camera_distance) - 1``, ``d`` the depth
along the camera's forward axis). The xz and yz planes then sample depth-weighted column and row
sums, ``sum_v p(bin | u, v) f(u, v)`` (scaled by ``D / h``, so a uniform distribution gives the plain
means), at the texel's column or row *and* its depth bin: a pixel's feature lands on the texels at
the depth it predicts instead of on every texel along its ray (Lift-Splat-Shoot's lifting, written
for the triplane's side planes).

Texels are placed in world space by undoing the triplane's contraction (``linf`` or ``none``), so
the far field is lifted too; texels behind (or at) the camera fade to zero. The result is added to
the decoder's own planes (:class:`~vq3dlib.models.decoder.TriplaneDecoder` with ``lifting``).

The canonical camera is the one of :func:`~vq3dlib.cameras.canonical_cameras`: at ``(0, 0, d)``
looking at the origin along ``-z``, image right ``+x``, image down ``-y``.

Example:
    >>> import torch
    >>> lift = PlaneLifting(16, camera_distance=2.7, fov_degrees=40.0, channels=4)
    >>> lift(torch.rand(2, 12, 8, 8)).shape
    torch.Size([2, 3, 4, 16, 16])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq3dlib._validation import check_choice, check_positive, check_tensor
from vq3dlib.contraction import uncontract
from vq3dlib.ops.triplane import PLANE_AXES

LIFTING_CONTRACTIONS = ("linf", "axis", "none")


def _texel_world_points(resolution: int, plane: int, bound: float, contraction: str) -> Tensor:
    """World points ``[R, R, 3]`` of the texel centres of plane ``plane`` (its third axis at 0)."""
    # fixed grids, computed on the CPU (also while a model is built on the meta device)
    g = (torch.arange(resolution, dtype=torch.float64, device="cpu") * 2 + 1) / resolution - 1
    rows, cols = torch.meshgrid(g, g, indexing="ij")  # row = the plane's height axis, col = its width
    width_axis, height_axis = PLANE_AXES[plane]
    q = torch.zeros(resolution, resolution, 3, dtype=torch.float64, device="cpu")
    q[..., width_axis] = cols
    q[..., height_axis] = rows
    if contraction == "none":
        return q * bound
    return uncontract(2 * q, contraction) * bound  # the triplane halves the contracted cube (-2, 2)^3


def depth_bin_coordinate(depth: Tensor, camera_distance: float) -> Tensor:
    """The lifting's depth-bin coordinate ``t = 2 d / (d + camera_distance) - 1`` in ``[-1, 1)``.

    ``d`` is the depth in front of the camera (clamped at 0: ``t = -1`` at or behind it); ``t = 0`` at
    the camera's distance to the origin, ``t -> 1`` far away. Bins are uniform in ``t``.

    Example:
        >>> depth_bin_coordinate(torch.tensor([0.0, 2.0, 1e9]), camera_distance=2.0).tolist()
        [-1.0, 0.0, 1.0]
    """
    d = depth.clamp(min=0)
    return 2 * d / (d + camera_distance) - 1


def lifting_depth_loss(logits: Tensor, disparity: Tensor, camera_distance: float) -> Tensor:
    """Cross-entropy of the lifting's per-pixel depth bins against a disparity target.

    The target depth ``1 / disparity`` is placed between its two nearest bin centres (linear
    "two-hot" weights in :func:`depth_bin_coordinate`); pixels with disparity ``<= 0`` (no
    measurement) are left out.

    Args:
        logits: ``[B, D, h, w]`` depth-bin logits (:class:`PlaneLifting`'s last ``D`` channels).
        disparity: ``[B, h, w]`` target disparity (``1 / depth``).
        camera_distance: the canonical camera's distance.

    Returns:
        Scalar mean over the measured pixels (0 when there are none).

    Example:
        >>> logits = torch.full((1, 4, 1, 1), -20.0); logits[0, 1] = 20.0  # all mass in bin 1
        >>> t = torch.tensor(-0.25)  # bin 1's centre when D = 4
        >>> d = 2.0 * (1 + t) / (1 - t)  # the depth at t for camera_distance 2
        >>> float(lifting_depth_loss(logits, (1 / d).reshape(1, 1, 1), 2.0)) < 1e-6
        True
    """
    check_tensor("logits", logits, shape=(None, None, None, None), floating=True)
    b, n_bins, h, w = logits.shape
    check_tensor("disparity", disparity, shape=(b, h, w), floating=True)
    valid = disparity > 0
    t = depth_bin_coordinate(1 / disparity.clamp(min=1e-6), camera_distance)
    pos = ((t + 1) / 2 * n_bins - 0.5).clamp(0, n_bins - 1)  # in bin-centre units
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n_bins - 1)
    frac = pos - lo.to(pos.dtype)
    logp = logits.log_softmax(dim=1)
    nll = -((1 - frac) * logp.gather(1, lo[:, None])[:, 0] + frac * logp.gather(1, hi[:, None])[:, 0])
    return (nll * valid).sum() / valid.sum().clamp(min=1)


def lifting_grids(
    resolution: int,
    camera_distance: float,
    fov_degrees: float,
    bound: float = 1.0,
    contraction: str = "linf",
) -> tuple[Tensor, Tensor]:
    """Sampling grids and fade weights of :class:`PlaneLifting`.

    The xz and yz grids carry the texel's depth-bin coordinate ``t = 2 d / (d + camera_distance) - 1``
    as their second entry (``d`` its depth in front of the camera, ``t = -1`` at or behind it); the
    plain column and row means have one entry along that axis, so it does not change them.

    Args:
        resolution: plane side ``R``.
        camera_distance: distance ``d`` of the canonical camera from the origin.
        fov_degrees: its field of view (square images).
        bound: the triplane's ``bound``.
        contraction: the triplane's contraction, ``"linf"``, ``"axis"`` or ``"none"``.

    Returns:
        ``(grids [3, R, R, 2], fade [3, R, R])``: ``F.grid_sample`` coordinates (``align_corners=False``)
        into the image (xy plane) and into the column (xz) and row (yz) sums, stored as ``(u, t)`` and
        ``(v, t)``; fade in ``[0, 1]`` (0 behind the camera).

    Example:
        >>> grids, fade = lifting_grids(4, 2.7, 40.0)
        >>> grids.shape, fade.shape, bool(fade[0].eq(1).all())
        (torch.Size([3, 4, 4, 2]), torch.Size([3, 4, 4]), True)
    """
    check_positive("resolution", resolution)
    check_positive("camera_distance", camera_distance)
    check_positive("bound", bound)
    check_choice("contraction", contraction, LIFTING_CONTRACTIONS)
    if not 0 < fov_degrees < 180:
        raise ValueError(f"fov_degrees must be in (0, 180), got {fov_degrees}")
    tan_half = math.tan(math.radians(fov_degrees) / 2)
    grids, fades = [], []
    for plane in range(3):
        p = _texel_world_points(resolution, plane, bound, contraction)
        depth = camera_distance - p[..., 2]  # along the camera's forward axis (-z)
        safe = depth.clamp(min=1e-3 * camera_distance)
        u = (p[..., 0] / (safe * tan_half)).clamp(-4, 4)  # image right = +x
        v = (-p[..., 1] / (safe * tan_half)).clamp(-4, 4)  # image down = -y
        near, full = 0.05 * camera_distance, 0.3 * camera_distance
        fades.append(((depth - near) / (full - near)).clamp(0, 1))
        t = depth_bin_coordinate(depth, camera_distance)
        if plane == 0:
            grids.append(torch.stack([u, v], dim=-1))
        elif plane == 1:
            grids.append(torch.stack([u, t], dim=-1))
        else:
            grids.append(torch.stack([v, t], dim=-1))
    return torch.stack(grids).float(), torch.stack(fades).float()


class PlaneLifting(nn.Module):
    """Image-aligned features ``[B, 3C + D, h, w]`` → triplane ``[B, 3, C, R, R]`` (module docstring).

    Args:
        resolution: plane side ``R``.
        camera_distance, fov_degrees: the canonical input camera.
        channels: ``C``, channels per plane.
        bound, contraction: those of the triplane the planes are sampled by.
        depth_bins: ``D``; with ``D > 0`` the last ``D`` input channels are per-pixel depth-bin logits
            and the side planes are lifted at the predicted depth (0: column and row means).
        depth_channels: how many of the side planes' ``C`` channels (the last ones) are lifted at
            the predicted depth; the others keep the column and row means (default: all ``C``).

    Example:
        >>> lift = PlaneLifting(8, camera_distance=2.0, fov_degrees=60.0, channels=1)
        >>> feats = torch.zeros(1, 3, 8, 8); feats[:, 0, :, 4:] = 1.0  # right half of the image
        >>> xy = lift(feats)[0, 0, 0]
        >>> float(xy[:, :4].max()), float(xy[:, 5:].min())  # the plane's +x half is lit
        (0.0, 1.0)
        >>> deep = PlaneLifting(8, camera_distance=2.0, fov_degrees=60.0, channels=1, depth_bins=4)
        >>> deep(torch.zeros(1, 3 + 4, 8, 8)).shape
        torch.Size([1, 3, 1, 8, 8])
    """

    def __init__(
        self,
        resolution: int,
        camera_distance: float,
        fov_degrees: float,
        channels: int,
        bound: float = 1.0,
        contraction: str = "linf",
        depth_bins: int = 0,
        depth_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_positive("channels", channels)
        if isinstance(depth_bins, bool) or not isinstance(depth_bins, int) or depth_bins < 0:
            raise ValueError(f"depth_bins must be an int >= 0, got {depth_bins!r}")
        grids, fade = lifting_grids(resolution, camera_distance, fov_degrees, bound, contraction)
        self.channels = channels
        self.depth_bins = depth_bins
        self.depth_channels = channels if depth_channels is None else int(depth_channels)
        if not 0 < self.depth_channels <= channels:
            raise ValueError(f"depth_channels must be in [1, channels = {channels}], got {depth_channels}")
        self.resolution = resolution
        self.register_buffer("grids", grids, persistent=False)
        self.register_buffer("fade", fade, persistent=False)

    @property
    def in_channels(self) -> int:
        """Channels of the feature map it lifts: ``3 C + D``."""
        return 3 * self.channels + self.depth_bins

    def forward(self, features: Tensor, with_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``features [B, 3C + D, h, w]`` → planes ``[B, 3, C, R, R]``; with ``with_logits`` also the
        depth-bin logits ``[B, D, h, w]`` (the last ``D`` channels of ``features``)."""
        check_tensor("features", features, shape=(None, self.in_channels, None, None), floating=True)
        b, c, d = features.shape[0], self.channels, self.depth_bins
        h, w = features.shape[-2:]
        m = c - self.depth_channels if d else c  # channels that keep the plain column/row means
        # one split (its backward is one concatenation; a slice's backward zero-fills the whole input)
        xy, xz, xz_deep, yz, yz_deep, bins = features.split([c, m, c - m, m, c - m, d], dim=1)
        columns = xz.mean(dim=2, keepdim=True)  # [B, m, 1, w]
        rows = yz.mean(dim=3, keepdim=True).transpose(2, 3)  # [B, m, 1, h]
        if d:  # depth-weighted column [B, c - m, D, w] and row [B, c - m, D, h] sums of the others
            p = bins.softmax(dim=1)
            deep_columns = torch.einsum("bchw,bdhw->bcdw", xz_deep, p) * (d / h)
            deep_rows = torch.einsum("bchw,bdhw->bcdh", yz_deep, p) * (d / w)
            # the plain means are constant along the bins axis
            columns = torch.cat([columns.expand(-1, -1, d, -1), deep_columns], dim=1)
            rows = torch.cat([rows.expand(-1, -1, d, -1), deep_rows], dim=1)
        grids = self.grids.to(features.device, features.dtype)
        fade = self.fade.to(features.device, features.dtype)

        def sample(x: Tensor, grid: Tensor) -> Tensor:
            return F.grid_sample(
                x, grid.expand(b, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False
            )

        planes = [
            sample(xy, grids[0]),
            sample(columns, grids[1]) * fade[1],
            sample(rows, grids[2]) * fade[2],
        ]
        lifted = torch.stack(planes, dim=1)
        return (lifted, bins) if with_logits else lifted


__all__ = [
    "LIFTING_CONTRACTIONS",
    "PlaneLifting",
    "depth_bin_coordinate",
    "lifting_depth_loss",
    "lifting_grids",
]
