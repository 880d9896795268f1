"""Reconstructed scenes of a VQ3D model: render them, sample their density, orbit them, mesh them.

:meth:`VQ3DModel.reconstruct <vq3dlib.models.VQ3DModel.reconstruct>` (one image → one scene) and
:meth:`VQ3DModel.decode_indices <vq3dlib.models.VQ3DModel.decode_indices>` (code indices, e.g. sampled
by the stage-2 prior → scenes) return a :class:`Scene` batch: the triplanes, the code indices they
came from, and the model whose field and renderer draw them. Here too: the turntable cameras of a
model (:func:`turntable_cameras`, :func:`render_turntable`) and marching-cubes meshes
(:meth:`Scene.export_mesh`, with the automatic level :func:`mesh_threshold`).

Example:
    >>> import torch
    >>> from vq3dlib.models import VQ3DModel
    >>> model = VQ3DModel.from_config("tiny", render_resolution=8)
    >>> scene = model.reconstruct(torch.rand(2, 3, 32, 32))
    >>> len(scene), scene[1].planes.shape
    (2, torch.Size([1, 3, 16, 32, 32]))
    >>> render_turntable(scene, n_frames=3, index=1)["rgb"].shape
    torch.Size([3, 3, 8, 8])
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vq3dlib._validation import check_tensor
from vq3dlib.cameras import Cameras, orbit_cameras
from vq3dlib.render.renderer import RenderOutput

if TYPE_CHECKING:
    from vq3dlib.models.configs import VQ3DConfig
    from vq3dlib.models.vq3d import VQ3DModel

DEFAULT_SWEEP = 60.0  # degrees of azimuth a turntable swings through (360: a full orbit)
DEFAULT_ELEVATION = 10.0  # degrees above the horizon, inside the novel-view training range


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


@dataclass
class Scene:
    """A batch of 3D scenes: triplanes plus the model whose field and renderer draw them.

    Attributes:
        planes: ``[B, 3, C, R, R]`` contracted triplanes.
        indices: code indices the scenes were decoded from, on the token grid: ``[B, g, g]``
            (``[B, g, g, depth]`` for the residual quantizer), ``g = config.grid_size``.
        model: the :class:`~vq3dlib.models.VQ3DModel` that made them.

    ``scene[i]`` (an int or a slice) is a batch of the selected scenes.

    Example:
        >>> import torch
        >>> from vq3dlib.models import VQ3DModel
        >>> model = VQ3DModel.from_config("tiny", render_resolution=8)
        >>> scene = model.reconstruct(torch.rand(1, 3, 32, 32))
        >>> scene.render(model.canonical_cameras(1)).images()["rgb"].shape
        torch.Size([1, 3, 8, 8])
    """

    planes: Tensor
    indices: Tensor
    model: VQ3DModel

    def __len__(self) -> int:
        return self.planes.shape[0]

    def __getitem__(self, index: int | slice) -> Scene:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"scene index {index} out of range for {len(self)} scenes")
            index = slice(index % len(self), index % len(self) + 1)
        if not isinstance(index, slice):
            raise TypeError(f"scenes are selected by an int or a slice, got {type(index).__name__}")
        return Scene(self.planes[index], self.indices[index], self.model)

    @torch.no_grad()
    def render(self, cameras: Cameras, background: float | None = None) -> RenderOutput:
        """Renders the scenes from ``cameras`` (one camera per scene, or ``k·B`` cameras = ``k`` each).

        Returns the :class:`~vq3dlib.render.RenderOutput` of :meth:`VQ3DModel.render
        <vq3dlib.models.VQ3DModel.render>`; ``.images()`` gives ``rgb [N, 3, H, W]``, ``depth
        [N, 1, H, W]`` (z-depth), ``disparity``, ``opacity`` (and ``features [N, E, H, W]`` when the
        field has ``field_out_features = E > 0``).
        """
        return self.model.render(self.planes, cameras, background=background)

    @torch.no_grad()
    def density(self, points: Tensor, scene: int = 0) -> Tensor:
        """Density ``[P]`` at world ``points [P, 3]`` of scene ``scene``."""
        check_tensor("points", points, shape=(None, 3), floating=True)
        index = torch.full((points.shape[0],), scene, dtype=torch.long, device=points.device)
        return self.model.density(self.planes, points, index)

    @torch.no_grad()
    def density_volume(self, resolution: int = 128, scene: int = 0, extent: float | None = None) -> Tensor:
        """Density ``[R, R, R]`` (indexed x, y, z) on a regular grid over ``[-extent, extent]^3``.

        ``extent`` defaults to ``config.scene_bound``; grid points are ``linspace(-extent, extent, R)``.

        Example:
            >>> import torch
            >>> from vq3dlib.models import VQ3DModel
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
        in world units; :func:`vq3dlib.io.write_ply` writes them.
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


def turntable_cameras(
    config: VQ3DConfig,
    n_frames: int,
    elevation: float = DEFAULT_ELEVATION,
    resolution: int | None = None,
    sweep: float = DEFAULT_SWEEP,
) -> Cameras:
    """Cameras around the scene origin at a model's camera distance and field of view.

    They swing through ``sweep`` degrees of azimuth around the input (canonical) view, the views a
    single-image reconstruction is trained for (novel views within ``novel_yaw_degrees``);
    ``sweep=360`` orbits the whole scene, whose far side a single image does not show.

    Args:
        config: the model's :class:`~vq3dlib.models.VQ3DConfig`.
        n_frames: cameras on the path.
        elevation: degrees above the horizon.
        resolution: image side (default ``config.render_resolution``).
        sweep: degrees of azimuth, in ``(0, 360]``.

    Example:
        >>> from vq3dlib.models import get_config
        >>> len(turntable_cameras(get_config("tiny"), 4))
        4
    """
    r = resolution or config.render_resolution
    return orbit_cameras(
        n_frames, config.camera_distance, elevation, config.fov_degrees, (r, r), sweep_degrees=sweep
    )


def render_turntable(
    scene: Scene,
    n_frames: int = 24,
    elevation: float = DEFAULT_ELEVATION,
    index: int = 0,
    sweep: float = DEFAULT_SWEEP,
) -> dict[str, Tensor]:
    """Renders scene ``index`` of ``scene`` from :func:`turntable_cameras` (a fixed seed for the ray jitter).

    Returns:
        ``{"rgb": [F, 3, r, r] in [0, 1], "depth": [F, 1, r, r], "image": [F, 3, s, s] in [0, 1]}`` on
        the CPU (``F = n_frames``; ``image`` is the model's output image, super-resolved to the image
        size ``s`` when the model has the head, else upsampled).

    Example:
        >>> import torch
        >>> from vq3dlib.models import VQ3DModel
        >>> model = VQ3DModel.from_config("tiny", render_resolution=8)
        >>> frames = render_turntable(model.reconstruct(torch.rand(1, 3, 32, 32)), n_frames=2)
        >>> frames["rgb"].shape, frames["depth"].shape, frames["image"].shape
        (torch.Size([2, 3, 8, 8]), torch.Size([2, 1, 8, 8]), torch.Size([2, 3, 32, 32]))
    """
    one = scene[index]
    cams = turntable_cameras(scene.model.config, n_frames, elevation, sweep=sweep).to(scene.planes.device)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        images = one.render(cams).images()
    image = images.get("image", images["rgb"]).clamp(0, 1).cpu()
    return {"rgb": images["rgb"].clamp(0, 1).cpu(), "depth": images["depth"].cpu(), "image": image}


__all__ = [
    "DEFAULT_ELEVATION",
    "DEFAULT_SWEEP",
    "Scene",
    "mesh_threshold",
    "render_turntable",
    "turntable_cameras",
]
