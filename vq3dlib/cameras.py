"""Batched pinhole cameras, ray generation, convention converters and camera samplers.

Conventions (one place, used by the whole library):

- Camera axes follow OpenCV: x right, y down, z forward (the camera looks along +z).
- ``intrinsics`` ``[B, 3, 3]`` map camera coordinates to pixels; pixel ``(row i, column j)`` covers
  ``[j, j+1) x [i, i+1)`` so its centre is ``(u, v) = (j + 0.5, i + 0.5)`` (as in nerfstudio/nerfacc).
  A centred camera therefore has ``cx = W / 2, cy = H / 2``.
- ``cam_to_world`` ``[B, 4, 4]`` maps camera coordinates to world coordinates.
- The samplers use a y-up world: the canonical camera sits on the +z axis at ``(0, 0, distance)``
  and looks at the origin (its forward axis is world -z, its right axis world +x, its down axis
  world -y). Scenes put their content in the ball of radius ~1 around the origin.

Example:
    >>> cams = canonical_cameras(2, distance=2.5, fov_degrees=40.0, image_size=(4, 6))
    >>> rays = cams.generate_rays()
    >>> rays.origins.shape, rays.directions.shape, rays.scene_index.shape
    (torch.Size([2, 4, 6, 3]), torch.Size([2, 4, 6, 3]), torch.Size([2, 4, 6]))
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vq3dlib._validation import check_choice, check_positive, check_same_device, check_tensor, has_values

__all__ = [
    "Cameras",
    "NovelViewSampler",
    "Rays",
    "canonical_cameras",
    "intrinsics_from_fov",
    "look_at",
    "orbit_cameras",
    "perturb_cameras",
    "rigid_inverse",
]

_FLOAT_DTYPES = (torch.float32, torch.float64)
# camera-axis flip between OpenCV (x right, y down, z forward) and OpenGL (x right, y up, z backward)
_CV_GL_FLIP = (1.0, -1.0, -1.0, 1.0)


def _check_image_size(image_size: object) -> tuple[int, int]:
    if not isinstance(image_size, Sequence) or len(image_size) != 2:
        raise ValueError(f"image_size must be a (height, width) pair, got {image_size!r}")
    h, w = image_size
    for name, v in (("image_size[0] (height)", h), ("image_size[1] (width)", w)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        check_positive(name, v)
    return int(h), int(w)


@dataclass
class Rays:
    """A batch of camera rays, one per pixel.

    Attributes:
        origins: ``[B, H, W, 3]`` ray origins in world space.
        directions: ``[B, H, W, 3]`` unit ray directions in world space.
        scene_index: ``[B, H, W]`` int64, the batch index of the camera that made the ray (so one
            renderer call can render a batch of different scenes).
        z_scale: ``[B, H, W]`` cosine between the direction and the camera's forward axis:
            ``z_depth = t * z_scale`` for a point ``origins + t * directions``.

    Example:
        >>> cams = canonical_cameras(2, 3.0, 45.0, (2, 3))
        >>> o, d, idx, shape = cams.generate_rays().flatten()
        >>> o.shape, d.shape, idx.tolist(), shape
        (torch.Size([12, 3]), torch.Size([12, 3]), [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1], (2, 2, 3))
    """

    origins: Tensor
    directions: Tensor
    scene_index: Tensor
    z_scale: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(B, H, W)``, the batch and image shape of the rays."""
        return tuple(self.scene_index.shape)  # type: ignore[return-value]

    def flatten(self) -> tuple[Tensor, Tensor, Tensor, tuple[int, int, int]]:
        """Packs the rays: ``origins [N, 3]``, ``directions [N, 3]``, ``scene_index [N]``, ``(B, H, W)``.

        ``N = B * H * W`` in row-major order (batch, row, column). Use :meth:`unflatten` to bring
        per-ray results back to image layout. ``self.z_scale.reshape(-1)`` gives the packed z-scale.

        Example:
            >>> rays = canonical_cameras(1, 3.0, 45.0, (2, 2)).generate_rays()
            >>> [t.shape[0] for t in rays.flatten()[:3]]
            [4, 4, 4]
        """
        return (
            self.origins.reshape(-1, 3),
            self.directions.reshape(-1, 3),
            self.scene_index.reshape(-1),
            self.shape,
        )

    def unflatten(self, values: Tensor) -> Tensor:
        """Reshapes per-ray values ``[N, *C]`` to ``[B, H, W, *C]``.

        Example:
            >>> rays = canonical_cameras(2, 3.0, 45.0, (2, 3)).generate_rays()
            >>> rays.unflatten(torch.zeros(12, 4)).shape
            torch.Size([2, 2, 3, 4])
        """
        n = math.prod(self.shape)
        check_tensor("values", values)
        if values.dim() == 0 or values.shape[0] != n:
            raise ValueError(
                f"values must have shape [{n}, ...] (one entry per ray), got {list(values.shape)}"
            )
        return values.reshape(*self.shape, *values.shape[1:])

    def to(self, device: torch.device | str) -> Rays:
        """Moves all fields to ``device``.

        Example:
            >>> canonical_cameras(1, 3.0, 45.0, (2, 2)).generate_rays().to("cpu").origins.device.type
            'cpu'
        """
        return Rays(
            self.origins.to(device),
            self.directions.to(device),
            self.scene_index.to(device),
            self.z_scale.to(device),
        )


class Cameras:
    """A batch of pinhole cameras in the OpenCV convention (x right, y down, z forward).

    Args:
        intrinsics: ``[B, 3, 3]`` calibration matrices (last row ``[0, 0, 1]``), pixel centres at
            ``+0.5`` (see the module docstring).
        cam_to_world: ``[B, 4, 4]`` camera-to-world transforms (last row ``[0, 0, 0, 1]``).
        image_size: ``(height, width)`` in pixels, shared by the batch.

    Both matrices must be float32 or float64, of one dtype, on one device, finite.

    Example:
        >>> K = intrinsics_from_fov(60.0, (32, 32)).expand(2, 3, 3)
        >>> cams = Cameras(K, torch.eye(4).expand(2, 4, 4), (32, 32))
        >>> len(cams), cams[1].intrinsics.shape
        (2, torch.Size([1, 3, 3]))
    """

    def __init__(self, intrinsics: Tensor, cam_to_world: Tensor, image_size: Sequence[int]) -> None:
        check_tensor("intrinsics", intrinsics, shape=(None, 3, 3), dtypes=_FLOAT_DTYPES, finite=True)
        check_tensor("cam_to_world", cam_to_world, shape=(None, 4, 4), dtypes=_FLOAT_DTYPES, finite=True)
        check_same_device(intrinsics=intrinsics, cam_to_world=cam_to_world)
        if intrinsics.shape[0] != cam_to_world.shape[0]:
            raise ValueError(
                f"intrinsics and cam_to_world must have the same batch size, got {intrinsics.shape[0]} "
                f"and {cam_to_world.shape[0]}"
            )
        if intrinsics.dtype != cam_to_world.dtype:
            raise TypeError(
                "intrinsics and cam_to_world must have one dtype, got "
                f"{intrinsics.dtype} and {cam_to_world.dtype}"
            )
        if intrinsics.shape[0] > 0 and has_values(intrinsics) and has_values(cam_to_world):
            last = intrinsics[:, 2, :]
            if not torch.allclose(last, last.new_tensor([0.0, 0.0, 1.0]).expand_as(last)):
                raise ValueError("intrinsics must have last row [0, 0, 1]")
            if bool((intrinsics[:, 0, 0] == 0).any() | (intrinsics[:, 1, 1] == 0).any()):
                raise ValueError("intrinsics must have non-zero focal lengths fx, fy")
            bottom = cam_to_world[:, 3, :]
            if not torch.allclose(bottom, bottom.new_tensor([0.0, 0.0, 0.0, 1.0]).expand_as(bottom)):
                raise ValueError("cam_to_world must have last row [0, 0, 0, 1]")
            det = torch.linalg.det(cam_to_world[:, :3, :3].double())
            singular = det.abs() < 1e-12
            if bool(singular.any()):
                i = int(singular.nonzero()[0, 0])
                raise ValueError(
                    f"cam_to_world must have an invertible rotation block [:3, :3] (camera {i} has "
                    f"determinant {float(det[i]):g}): its rays would have zero-length directions"
                )
        self.intrinsics = intrinsics
        self.cam_to_world = cam_to_world
        self.image_size = _check_image_size(image_size)

    # ---- basic properties ------------------------------------------------------------------------
    @property
    def height(self) -> int:
        """Image height in pixels."""
        return self.image_size[0]

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return self.image_size[1]

    @property
    def device(self) -> torch.device:
        """Device of the camera tensors."""
        return self.intrinsics.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the camera tensors."""
        return self.intrinsics.dtype

    @property
    def world_to_cam(self) -> Tensor:
        """``[B, 4, 4]`` world-to-camera transforms (:func:`rigid_inverse` of ``cam_to_world``)."""
        return rigid_inverse(self.cam_to_world)

    @property
    def centers(self) -> Tensor:
        """``[B, 3]`` camera centres in world space."""
        return self.cam_to_world[:, :3, 3]

    def __len__(self) -> int:
        return self.intrinsics.shape[0]

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> Cameras:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"camera index {index} out of range for {len(self)} cameras")
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(self.intrinsics[index], self.cam_to_world[index], self.image_size)

    def __repr__(self) -> str:
        return (
            f"Cameras(batch={len(self)}, image_size={self.image_size}, dtype={self.dtype}, "
            f"device={self.device})"
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cameras:
        """Returns the cameras on ``device`` and/or in ``dtype`` (float32 or float64).

        Example:
            >>> canonical_cameras(1, 2.0, 50.0, (8, 8)).to(dtype=torch.float64).dtype
            torch.float64
        """
        return Cameras(
            self.intrinsics.to(device=device, dtype=dtype),
            self.cam_to_world.to(device=device, dtype=dtype),
            self.image_size,
        )

    @staticmethod
    def cat(cameras: Sequence[Cameras]) -> Cameras:
        """Concatenates camera batches of one image size.

        Example:
            >>> c = canonical_cameras(2, 2.0, 50.0, (8, 8))
            >>> len(Cameras.cat([c, c[0]]))
            3
        """
        if len(cameras) == 0:
            raise ValueError("cameras must contain at least one Cameras")
        sizes = {c.image_size for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"cameras must share one image_size, got {sorted(sizes)}")
        return Cameras(
            torch.cat([c.intrinsics for c in cameras]),
            torch.cat([c.cam_to_world for c in cameras]),
            cameras[0].image_size,
        )

    def resize(self, image_size: Sequence[int]) -> Cameras:
        """The same cameras rendering at another resolution (intrinsics rescaled, same field of view).

        Example:
            >>> c = canonical_cameras(1, 2.0, 50.0, (8, 8)).resize((16, 16))
            >>> c.image_size, c.intrinsics[0, 0, 2].item()
            ((16, 16), 8.0)
        """
        h, w = _check_image_size(tuple(image_size))
        scale = self.intrinsics.new_tensor([w / self.width, h / self.height, 1.0])
        return Cameras(self.intrinsics * scale[:, None], self.cam_to_world, (h, w))

    # ---- rays and projection ---------------------------------------------------------------------
    def generate_rays(self) -> Rays:
        """One ray through the centre of every pixel, see :class:`Rays`.

        Returns:
            ``Rays`` with ``origins``/``directions`` ``[B, H, W, 3]`` (unit directions),
            ``scene_index`` ``[B, H, W]`` (int64, the camera's batch index), ``z_scale`` ``[B, H, W]``.

        Example:
            >>> rays = canonical_cameras(1, 2.0, 50.0, (3, 3)).generate_rays()
            >>> rays.directions[0, 1, 1]  # centre pixel looks at the origin (world -z)
            tensor([ 0.,  0., -1.])
        """
        b, (h, w) = len(self), self.image_size
        dev, dt = self.device, self.dtype
        v, u = torch.meshgrid(
            torch.arange(h, device=dev, dtype=dt) + 0.5,
            torch.arange(w, device=dev, dtype=dt) + 0.5,
            indexing="ij",
        )
        pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # [H, W, 3]
        k_inv = torch.linalg.inv(self.intrinsics) if b > 0 else self.intrinsics
        dirs_cam = torch.einsum("bij,hwj->bhwi", k_inv, pix)  # z == 1
        inv_norm = torch.rsqrt((dirs_cam * dirs_cam).sum(-1))
        z_scale = dirs_cam[..., 2] * inv_norm
        rot = self.cam_to_world[:, :3, :3]
        dirs = torch.einsum("bij,bhwj->bhwi", rot, dirs_cam * inv_norm[..., None])
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        origins = self.cam_to_world[:, None, None, :3, 3].expand(b, h, w, 3)
        scene_index = torch.arange(b, device=dev, dtype=torch.int64)[:, None, None].expand(b, h, w)
        return Rays(origins, dirs, scene_index, z_scale)

    def project(self, points_world: Tensor) -> tuple[Tensor, Tensor]:
        """Projects world points to pixel coordinates with each camera of the batch.

        Args:
            points_world: ``[B, ..., 3]`` points; batch entry ``b`` is seen by camera ``b``.

        Returns:
            ``pixels [B, ..., 2]`` as ``(u, v)`` (column, row; pixel centres at ``+0.5``) and
            ``depth [B, ...]`` the camera-space z. Points with ``depth <= 0`` are behind the camera
            and their pixels are meaningless (inf for ``depth == 0``).

        Example:
            >>> cams = canonical_cameras(1, 2.0, 50.0, (8, 8))
            >>> uv, z = cams.project(torch.zeros(1, 1, 3))
            >>> uv, z
            (tensor([[[4., 4.]]]), tensor([[2.]]))
        """
        check_tensor("points_world", points_world, floating=True, last_dim=3)
        check_same_device(points_world=points_world, cameras=self.intrinsics)
        if points_world.dim() < 2 or points_world.shape[0] != len(self):
            raise ValueError(
                f"points_world must have shape [B={len(self)}, ..., 3] (one batch entry per camera), "
                f"got {list(points_world.shape)}"
            )
        b = len(self)
        lead = points_world.shape[:-1]
        pts = points_world.reshape(b, math.prod(lead[1:]), 3).to(self.dtype)
        w2c = self.world_to_cam
        cam = pts @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
        pix = cam @ self.intrinsics.transpose(1, 2)
        depth = cam[..., 2]
        uv = pix[..., :2] / pix[..., 2:3]
        return uv.reshape(*lead, 2), depth.reshape(lead)

    # ---- conventions -----------------------------------------------------------------------------
    def to_opengl(self) -> Tensor:
        """``[B, 4, 4]`` cam-to-world in the OpenGL/nerfstudio convention (x right, y up, z backward).

        The intrinsics are unchanged (nerfstudio also measures pixels from the top-left corner with
        centres at ``+0.5``); ``Cameras.from_opengl(cams.intrinsics, cams.to_opengl(), size)`` round-trips.

        Example:
            >>> canonical_cameras(1, 2.0, 50.0, (8, 8)).to_opengl()[0, :3, :3] + 0.0  # y-up world: identity
            tensor([[1., 0., 0.],
                    [0., 1., 0.],
                    [0., 0., 1.]])
        """
        flip = self.cam_to_world.new_tensor(_CV_GL_FLIP)
        return self.cam_to_world * flip  # scales the columns: flips the camera's y and z axes

    @classmethod
    def from_opengl(cls, intrinsics: Tensor, cam_to_world_gl: Tensor, image_size: Sequence[int]) -> Cameras:
        """Builds cameras from OpenGL/nerfstudio cam-to-world matrices ``[B, 3, 4]`` or ``[B, 4, 4]``.

        Example:
            >>> c = canonical_cameras(2, 2.0, 50.0, (8, 8))
            >>> c2 = Cameras.from_opengl(c.intrinsics, c.to_opengl()[:, :3], c.image_size)
            >>> torch.equal(c2.cam_to_world, c.cam_to_world)
            True
        """
        check_tensor("cam_to_world_gl", cam_to_world_gl, ndim=3, dtypes=_FLOAT_DTYPES)
        if cam_to_world_gl.shape[1:] == (3, 4):
            bottom = cam_to_world_gl.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(cam_to_world_gl.shape[0], 1, 4)
            cam_to_world_gl = torch.cat([cam_to_world_gl, bottom], dim=1)
        elif cam_to_world_gl.shape[1:] != (4, 4):
            raise ValueError(
                f"cam_to_world_gl must have shape [B, 3, 4] or [B, 4, 4], got {list(cam_to_world_gl.shape)}"
            )
        flip = cam_to_world_gl.new_tensor(_CV_GL_FLIP)
        return cls(intrinsics, cam_to_world_gl * flip, image_size)

    def to_kornia(self):  # -> kornia.geometry.camera.PinholeCamera
        """The same cameras as a kornia ``PinholeCamera`` (4x4 intrinsics, world-to-camera extrinsics).

        Example:
            >>> cam = canonical_cameras(2, 2.0, 50.0, (8, 6)).to_kornia()
            >>> cam.batch_size, cam.height.tolist(), cam.width.tolist()
            (2, [8.0, 8.0], [6.0, 6.0])
        """
        from kornia.geometry.camera import PinholeCamera

        b = len(self)
        k4 = torch.eye(4, dtype=self.dtype, device=self.device).repeat(b, 1, 1)
        k4[:, :3, :3] = self.intrinsics
        h = torch.full((b,), float(self.height), dtype=self.dtype, device=self.device)
        w = torch.full((b,), float(self.width), dtype=self.dtype, device=self.device)
        return PinholeCamera(k4, self.world_to_cam, h, w)

    @classmethod
    def from_kornia(cls, camera) -> Cameras:
        """Builds cameras from a kornia ``PinholeCamera`` (all of one image size).

        Example:
            >>> c = canonical_cameras(2, 2.0, 50.0, (8, 6))
            >>> torch.allclose(Cameras.from_kornia(c.to_kornia()).cam_to_world, c.cam_to_world)
            True
        """
        from kornia.geometry.camera import PinholeCamera

        if not isinstance(camera, PinholeCamera):
            raise TypeError(f"camera must be a kornia PinholeCamera, got {type(camera).__name__}")
        heights, widths = camera.height.reshape(-1), camera.width.reshape(-1)
        if heights.numel() == 0:
            raise ValueError("camera must hold at least one camera")
        if bool((heights != heights[0]).any() | (widths != widths[0]).any()):
            raise ValueError("camera must have one image size for the whole batch")
        c2w = rigid_inverse(camera.extrinsics)
        size = (int(round(float(heights[0]))), int(round(float(widths[0]))))
        return cls(camera.intrinsics[:, :3, :3].contiguous(), c2w, size)


# ---- construction helpers ------------------------------------------------------------------------


def rigid_inverse(transform: Tensor) -> Tensor:
    """Inverse ``[..., 4, 4]`` of rigid transforms ``[R | t]``: ``[R^T | -R^T t]`` (a transpose, no solve).

    ``R`` must be a rotation (orthonormal), as in camera-to-world and world-to-camera matrices.

    Example:
        >>> c2w = look_at(torch.tensor([[1.0, 2.0, 3.0]]))
        >>> torch.allclose(rigid_inverse(c2w) @ c2w, torch.eye(4), atol=1e-6)
        True
    """
    rot_t = transform[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(transform)
    out[..., :3, :3] = rot_t
    out[..., :3, 3:] = -rot_t @ transform[..., :3, 3:]
    out[..., 3, 3] = 1.0
    return out
def intrinsics_from_fov(
    fov_degrees: float,
    image_size: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``[1, 3, 3]`` centred intrinsics with square pixels for a vertical field of view.

    ``fy = fx = (H / 2) / tan(fov / 2)``, ``cx = W / 2``, ``cy = H / 2``.

    Example:
        >>> intrinsics_from_fov(90.0, (4, 6))
        tensor([[[2., 0., 3.],
                 [0., 2., 2.],
                 [0., 0., 1.]]])
    """
    h, w = _check_image_size(tuple(image_size))
    if not 0.0 < float(fov_degrees) < 180.0:
        raise ValueError(f"fov_degrees must be in (0, 180), got {fov_degrees}")
    f = (h / 2.0) / math.tan(math.radians(float(fov_degrees)) / 2.0)
    return torch.tensor([[[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]]], device=device, dtype=dtype)


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """OpenCV cam-to-world matrices ``[B, 4, 4]`` for cameras at ``eye`` looking at ``target``.

    Args:
        eye: ``[B, 3]`` camera centres.
        target: ``[B, 3]`` or ``[3]`` points to look at (default: the origin).
        up: ``[B, 3]`` or ``[3]`` world up direction (default: ``+y``); the camera's y axis (down)
            points away from it. Must not be parallel to the viewing direction.

    Example:
        >>> look_at(torch.tensor([[0.0, 0.0, 2.0]]))[0] + 0.0  # + 0.0 turns -0. into 0.
        tensor([[ 1.,  0.,  0.,  0.],
                [ 0., -1.,  0.,  0.],
                [ 0.,  0., -1.,  2.],
                [ 0.,  0.,  0.,  1.]])
    """
    check_tensor("eye", eye, shape=(None, 3), dtypes=_FLOAT_DTYPES, finite=True)
    if target is None:
        target = torch.zeros(3, dtype=eye.dtype, device=eye.device)
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device)
    check_tensor("target", target, ndim=(1, 2), last_dim=3, dtypes=_FLOAT_DTYPES, finite=True)
    check_tensor("up", up, ndim=(1, 2), last_dim=3, dtypes=_FLOAT_DTYPES, finite=True)
    check_same_device(eye=eye, target=target, up=up)
    target, up = target.to(eye.dtype).expand_as(eye), up.to(eye.dtype).expand_as(eye)
    forward = target - eye
    fn = forward.norm(dim=-1, keepdim=True)
    if bool((fn <= 1e-9).any()):
        raise ValueError("eye and target must differ (the viewing direction is undefined)")
    forward = forward / fn
    right = torch.linalg.cross(forward, up)
    rn = right.norm(dim=-1, keepdim=True)
    if bool((rn <= 1e-6 * up.norm(dim=-1, keepdim=True)).any()):
        raise ValueError("up must not be parallel to the viewing direction (target - eye)")
    right = right / rn
    down = torch.linalg.cross(forward, right)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, forward, eye
    c2w[:, 3, 3] = 1.0
    return c2w


def canonical_cameras(
    batch: int,
    distance: float,
    fov_degrees: float,
    image_size: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """``batch`` identical cameras at ``(0, 0, distance)`` looking at the origin, world +y up.

    The camera's forward axis is world -z, right is +x and down is -y (cam-to-world rotation
    ``diag(1, -1, -1)``); ``fov_degrees`` is the vertical field of view.

    Example:
        >>> cams = canonical_cameras(3, 2.7, 40.0, (64, 64))
        >>> cams.centers[0], len(cams)
        (tensor([0.0000, 0.0000, 2.7000]), 3)
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch must be an int >= 0, got {batch!r}")
    check_positive("distance", distance)
    k = intrinsics_from_fov(fov_degrees, image_size, device=device, dtype=dtype).repeat(batch, 1, 1)
    z = torch.tensor(float(distance), dtype=dtype)
    if not bool(torch.isfinite(z)) or float(z) <= 0:
        raise ValueError(f"distance {distance!r} is not a positive finite {str(dtype).replace('torch.', '')}")
    # the rotation look_at gives for this eye, written out: no normalisation to overflow or underflow
    c2w = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=dtype))
    c2w[2, 3] = z
    return Cameras(k, c2w.to(device).expand(batch, 4, 4).contiguous(), tuple(image_size))


def orbit_cameras(
    n_frames: int,
    distance: float,
    elevation_degrees: float,
    fov_degrees: float,
    image_size: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    start_azimuth_degrees: float = 0.0,
    sweep_degrees: float = 360.0,
) -> Cameras:
    """A turntable path: ``n_frames`` cameras evenly spaced over 360 degrees of azimuth, or swinging
    back and forth over ``sweep_degrees`` of it.

    With ``sweep_degrees = 360`` (default) camera ``k`` sits at azimuth ``start + 360 k / n_frames``;
    with less, at ``start + sweep / 2 · sin(2π k / n_frames)`` (a swing around ``start``, e.g. the
    views near the input view that a single-image reconstruction can show). Azimuth is measured
    around world +y (azimuth 0 is the canonical camera on the +z axis, positive azimuth moves towards
    +x); the cameras sit ``elevation_degrees`` above the xz-plane, look at the origin, world +y up.

    Example:
        >>> cams = orbit_cameras(4, 2.0, 0.0, 45.0, (8, 8))
        >>> cams.centers.round(decimals=4)
        tensor([[ 0.,  0.,  2.],
                [ 2.,  0.,  0.],
                [ 0.,  0., -2.],
                [-2.,  0., -0.]])
        >>> swing = orbit_cameras(4, 2.0, 0.0, 45.0, (8, 8), sweep_degrees=60.0)  # azimuth 0, 30, 0, -30
        >>> swing.centers[:, 0].round(decimals=4)
        tensor([ 0.,  1.,  0., -1.])
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames must be an int >= 1, got {n_frames!r}")
    check_positive("distance", distance)
    if not -90.0 < float(elevation_degrees) < 90.0:
        raise ValueError(f"elevation_degrees must be in (-90, 90), got {elevation_degrees}")
    if not 0.0 < float(sweep_degrees) <= 360.0:
        raise ValueError(f"sweep_degrees must be in (0, 360], got {sweep_degrees}")
    k = torch.arange(n_frames, dtype=torch.float64)
    if float(sweep_degrees) >= 360.0:
        offsets = k * (360.0 / n_frames)
    else:
        offsets = float(sweep_degrees) / 2 * torch.sin(2 * math.pi * k / n_frames)
    az = torch.deg2rad(float(start_azimuth_degrees) + offsets)
    el = math.radians(float(elevation_degrees))
    eye = float(distance) * torch.stack(
        [math.cos(el) * torch.sin(az), torch.full_like(az, math.sin(el)), math.cos(el) * torch.cos(az)],
        dim=-1,
    )
    c2w = look_at(eye).to(device=device, dtype=dtype)
    intrinsics = intrinsics_from_fov(fov_degrees, image_size, device=device, dtype=dtype)
    return Cameras(intrinsics.repeat(n_frames, 1, 1), c2w, tuple(image_size))


def _axis_angle(axis: Tensor, angle: Tensor) -> Tensor:
    """Rotation matrices ``[B, 3, 3]`` about unit ``axis [B, 3]`` by ``angle [B]`` radians (Rodrigues)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(skew)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return eye + s * skew + (1 - c) * (skew @ skew)


_Range = tuple[float, float]


def _as_range(name: str, value: float | Sequence[float]) -> _Range:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = -abs(float(value)), abs(float(value))
    elif isinstance(value, Sequence) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise ValueError(f"{name} must be a number a (meaning [-a, a]) or a (low, high) pair, got {value!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be a finite range with low <= high, got ({lo}, {hi})")
    return lo, hi


class NovelViewSampler:
    """Random camera perturbations around a canonical pose, for novel-view losses and evaluation.

    Each sampled camera starts from a base pose (by default :func:`canonical_cameras` with
    ``distance``, ``fov_degrees``, ``image_size``) and is then

    1. orbited about the origin: ``yaw`` about world +y (positive moves a camera on +z towards +x),
       then ``pitch`` about the camera's right axis (positive raises the camera towards +y); a camera
       that looked at the origin still does;
    2. rolled by ``roll`` about its own forward axis;
    3. moved by ``translation`` (per camera axis x, y, z, in scene units) in its own frame, so it
       looks roughly at the origin for small offsets.

    Angles are degrees. Each range is ``(low, high)`` or one number ``a`` meaning ``(-a, a)``.
    ``distribution="uniform"`` draws uniformly in the range; ``"gaussian"`` draws from a normal with
    the range's midpoint as mean and ``(high - low) * gaussian_std_fraction`` as standard deviation,
    truncated to the range (exact inverse-CDF truncation, no clamping). All draws use a CPU
    ``torch.Generator`` (``seed`` or the ``generator`` passed to :meth:`sample`), so results do not
    depend on the device.

    Example:
        >>> sampler = NovelViewSampler(2.7, 40.0, (32, 32), yaw=30.0, pitch=(-10.0, 20.0), seed=0)
        >>> cams = sampler.sample(4)
        >>> len(cams), cams.image_size
        (4, (32, 32))
    """

    def __init__(
        self,
        distance: float,
        fov_degrees: float,
        image_size: Sequence[int],
        yaw: float | Sequence[float] = 30.0,
        pitch: float | Sequence[float] = 15.0,
        roll: float | Sequence[float] = 0.0,
        translation: float | Sequence[float] | Sequence[Sequence[float]] = 0.0,
        distribution: str = "uniform",
        gaussian_std_fraction: float = 0.25,
        seed: int | None = None,
    ) -> None:
        check_positive("distance", distance)
        self.image_size = _check_image_size(tuple(image_size))
        if not 0.0 < float(fov_degrees) < 180.0:
            raise ValueError(f"fov_degrees must be in (0, 180), got {fov_degrees}")
        check_choice("distribution", distribution, ("uniform", "gaussian"))
        check_positive("gaussian_std_fraction", gaussian_std_fraction)
        self.distance, self.fov_degrees = float(distance), float(fov_degrees)
        self.yaw = _as_range("yaw", yaw)
        self.pitch = _as_range("pitch", pitch)
        if max(abs(self.pitch[0]), abs(self.pitch[1])) >= 90.0:
            raise ValueError(f"pitch must stay within (-90, 90) degrees, got {self.pitch}")
        self.roll = _as_range("roll", roll)
        if isinstance(translation, Sequence) and len(translation) == 3:
            self.translation = tuple(_as_range(f"translation[{i}]", t) for i, t in enumerate(translation))
        else:
            self.translation = (_as_range("translation", translation),) * 3  # type: ignore[arg-type]
        self.distribution = distribution
        self.gaussian_std_fraction = float(gaussian_std_fraction)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def _draw(self, rng: _Range, n: int, gen: torch.Generator | None) -> Tensor:
        lo, hi = rng
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        if hi == lo:
            return torch.full((n,), lo, dtype=torch.float64)
        if self.distribution == "uniform":
            return lo + (hi - lo) * u
        mean, std = 0.5 * (lo + hi), (hi - lo) * self.gaussian_std_fraction
        normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
        a, b = normal.cdf(torch.tensor((lo - mean) / std)), normal.cdf(torch.tensor((hi - mean) / std))
        p = (a + (b - a) * u).clamp(1e-15, 1 - 1e-15)
        return (mean + std * torch.special.ndtri(p)).clamp(lo, hi)

    def sample_parameters(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draws ``n`` perturbations: ``yaw, pitch, roll`` ``[n]`` (degrees), ``translation [n, 3]``.

        Example:
            >>> p = NovelViewSampler(2.0, 40.0, (8, 8), yaw=(0.0, 10.0), seed=1).sample_parameters(5)
            >>> bool(((p["yaw"] >= 0) & (p["yaw"] <= 10)).all()), p["translation"].shape
            (True, torch.Size([5, 3]))
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        gen = generator if generator is not None else self.generator
        yaw = self._draw(self.yaw, n, gen)
        pitch = self._draw(self.pitch, n, gen)
        roll = self._draw(self.roll, n, gen)
        trans = torch.stack([self._draw(r, n, gen) for r in self.translation], dim=-1)
        return {"yaw": yaw, "pitch": pitch, "roll": roll, "translation": trans}

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        base: Cameras | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Cameras:
        """Samples ``n`` perturbed cameras (``base`` of length ``n`` overrides the canonical pose).

        Example:
            >>> s = NovelViewSampler(2.0, 40.0, (8, 8), yaw=0.0, pitch=0.0)
            >>> torch.allclose(s.sample(2).cam_to_world, canonical_cameras(2, 2.0, 40.0, (8, 8)).cam_to_world)
            True
        """
        params = self.sample_parameters(n, generator)
        if base is None:
            base = canonical_cameras(
                n, self.distance, self.fov_degrees, self.image_size, device=device, dtype=dtype
            )
        elif not isinstance(base, Cameras) or len(base) != n:
            raise ValueError(f"base must be Cameras with {n} cameras, got {base!r}")
        return perturb_cameras(base, **params)


def perturb_cameras(
    cameras: Cameras, yaw: Tensor, pitch: Tensor, roll: Tensor, translation: Tensor
) -> Cameras:
    """Applies orbit (``yaw``, ``pitch``), ``roll`` (degrees, ``[B]``) and ``translation [B, 3]``.

    See :class:`NovelViewSampler` for the meaning of each parameter.

    Example:
        >>> c = canonical_cameras(1, 2.0, 40.0, (8, 8))
        >>> z = torch.zeros(1)
        >>> perturb_cameras(c, torch.tensor([90.0]), z, z, torch.zeros(1, 3)).centers.round(decimals=4)
        tensor([[2., 0., 0.]])
    """
    b = len(cameras)
    for name, v, shape in (("yaw", yaw, (b,)), ("pitch", pitch, (b,)), ("roll", roll, (b,))):
        check_tensor(name, v, shape=shape, floating=True, finite=True)
    check_tensor("translation", translation, shape=(b, 3), floating=True, finite=True)
    dev, dt = cameras.device, cameras.dtype
    yaw, pitch, roll, translation = (t.to(device=dev, dtype=dt) for t in (yaw, pitch, roll, translation))
    c2w = cameras.cam_to_world.clone()
    up = torch.tensor([0.0, 1.0, 0.0], device=dev, dtype=dt).expand(b, 3)
    orbit = _axis_angle(up, torch.deg2rad(yaw))
    c2w[:, :3, :] = orbit @ c2w[:, :3, :]
    right = c2w[:, :3, 0]
    orbit = _axis_angle(right, -torch.deg2rad(pitch))
    c2w[:, :3, :] = orbit @ c2w[:, :3, :]
    forward = torch.tensor([0.0, 0.0, 1.0], device=dev, dtype=dt).expand(b, 3)
    c2w[:, :3, :3] = c2w[:, :3, :3] @ _axis_angle(forward, torch.deg2rad(roll))
    c2w[:, :3, 3] = c2w[:, :3, 3] + (c2w[:, :3, :3] @ translation[:, :, None])[..., 0]
    return Cameras(cameras.intrinsics, c2w, cameras.image_size)
