"""Reconstructed scenes of a VQ3D model: render them, sample their density, orbit them, mesh them.

:meth:`VQ3DModel.reconstruct <vq3dlib.models.VQ3DModel.reconstruct>` (one image → one scene) and
:meth:`VQ3DModel.decode_indices <vq3dlib.models.VQ3DModel.decode_indices>` (code indices, e.g. sampled
by the stage-2 prior → scenes) return a :class:`Scene` batch: the triplanes, the code indices they
came from, and the model whose field and renderer draw them. Here too: the cameras of a model
(:func:`view_cameras` for any view, :func:`turntable_cameras` and :func:`render_turntable` for an
orbit) and closed marching-cubes meshes (:meth:`Scene.export_mesh`, with the automatic level
:func:`mesh_threshold`; :meth:`Scene.mesh` adds the field's colour at each vertex).

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vq3dlib._validation import check_tensor
from vq3dlib.cameras import Cameras, orbit_cameras
from vq3dlib.render.renderer import RenderOutput

if TYPE_CHECKING:
    import trimesh

    from vq3dlib.models.configs import VQ3DConfig
    from vq3dlib.models.vq3d import VQ3DModel

DEFAULT_SWEEP = 60.0  # degrees of azimuth a turntable swings through (360: a full orbit)
DEFAULT_ELEVATION = 10.0  # degrees above the horizon, inside the novel-view training range


class MeshThresholdError(ValueError):
    """A mesh threshold outside the density range of the scene's sampled volume (no level set there).

    Example:
        >>> issubclass(MeshThresholdError, ValueError)
        True
    """


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
        >>> model = VQ3DModel.from_config("tiny", render_resolution=8).eval()  # eval: no ray jitter
        >>> scene = model.reconstruct(torch.rand(1, 3, 32, 32))
        >>> scene.render(model.canonical_cameras(1)).images()["rgb"].shape
        torch.Size([1, 3, 8, 8])

        Any camera: :func:`view_cameras` places cameras by yaw and pitch (degrees) around the scene
        at any distance, field of view and image size (any :class:`~vq3dlib.cameras.Cameras` works):

        >>> cams = view_cameras(model.config, yaw=[0.0, 30.0], pitch=15.0, distance=3.0, fov_degrees=35.0,
        ...                     resolution=16)
        >>> scene.render(cams).images()["rgb"].shape  # two views of the one scene
        torch.Size([2, 3, 16, 16])

        A background colour (what shows where the field is transparent): a grey level or ``[3]`` rgb:

        >>> front = model.canonical_cameras(1)
        >>> black = scene.render(front, background=0.0).images()
        >>> red = scene.render(front, background=torch.tensor([1.0, 0.0, 0.0])).images()
        >>> gap = red["rgb"] - black["rgb"]  # red shows through by the transparency, 1 - opacity
        >>> bool(torch.allclose(gap[0, 0], 1 - black["opacity"][0, 0], atol=1e-5))
        True
        >>> float(gap[0, 1:].abs().max())  # green and blue: the black background's
        0.0

        A batch of scenes renders in one call: ``k·B`` cameras, camera ``i`` sees scene ``i mod B``:

        >>> batch = model.reconstruct(torch.rand(3, 3, 32, 32))
        >>> batch.render(view_cameras(model.config, yaw=[-20.0] * 3 + [20.0] * 3)).images()["rgb"].shape
        torch.Size([6, 3, 8, 8])
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
    def render(
        self,
        cameras: Cameras,
        background: float | Sequence[float] | Tensor | None = None,
        image_size: int | None = None,
    ) -> RenderOutput:
        """Renders the scenes from ``cameras`` (one camera per scene, or ``k·B`` cameras = ``k`` each;
        camera ``i`` sees scene ``i mod B``) over ``background`` (a grey level or ``[3]`` rgb; ``None``:
        black).

        Returns the :class:`~vq3dlib.render.RenderOutput` of :meth:`VQ3DModel.render
        <vq3dlib.models.VQ3DModel.render>`; ``.images()`` gives ``rgb [N, 3, H, W]``, ``depth
        [N, 1, H, W]`` (z-depth), ``disparity``, ``opacity`` (and ``features [N, E, H, W]`` when the
        field has ``field_out_features = E > 0``), and ``image [N, 3, S, S]``, the model's output image
        (super-resolved), for cameras at the model's render resolution (``S``: its image size) or any
        cameras with ``image_size = S``.
        """
        return self.model.render(self.planes, cameras, background=background, image_size=image_size)

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

    @torch.no_grad()
    def colors(self, points: Tensor, scene: int = 0, view_from: Tensor | None = None) -> Tensor:
        """The field's colour ``[P, 3]`` in [0, 1] at world ``points [P, 3]`` of scene ``scene``.

        A field with view-dependent colour (``config.use_view_dirs``) is seen from the point
        ``view_from [3]`` (default: the canonical camera, the input view).

        Example:
            >>> import torch
            >>> from vq3dlib.models import VQ3DModel
            >>> scene = VQ3DModel.from_config("tiny").reconstruct(torch.rand(1, 3, 32, 32))
            >>> rgb = scene.colors(torch.zeros(5, 3))
            >>> rgb.shape, bool(((rgb >= 0) & (rgb <= 1)).all())
            (torch.Size([5, 3]), True)
        """
        check_tensor("points", points, shape=(None, 3), floating=True)
        if not 0 <= scene < len(self):
            raise ValueError(f"scene must be in [0, {len(self)}), got {scene}")
        model = self.model
        eye = points.new_tensor([0.0, 0.0, model.config.camera_distance]) if view_from is None else view_from
        out = []
        for chunk in points.split(1 << 18):
            index = torch.full((chunk.shape[0],), scene, dtype=torch.long, device=chunk.device)
            features = model.triplane(chunk, planes=self.planes, scene_index=index)
            dirs = torch.nn.functional.normalize(chunk - eye.to(chunk), dim=-1)
            out.append(model.field(features, dirs if model.config.use_view_dirs else None).rgb[..., :3])
        return torch.cat(out).float().clamp(0.0, 1.0) if out else points.new_zeros(0, 3)

    def export_mesh(
        self,
        resolution: int = 128,
        threshold: float | None = None,
        scene: int = 0,
        extent: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """A closed marching-cubes mesh of the density level set ``threshold`` in ``[-extent, extent]^3``.

        Args:
            resolution: grid points per axis.
            threshold: density level; ``None`` picks it automatically (:func:`mesh_threshold`: the
                density at which one grid cell is 50% opaque, or the middle of the sampled density
                range with a warning when that level is outside it).
            scene: which scene of the batch.
            extent: half-size of the meshed cube (default ``config.scene_bound``).

        The outermost layer of the sampled density is set below the level before marching cubes, so
        where the surface meets the cube's faces it is closed, less than a grid cell inside them:
        the mesh is watertight (every edge shared by two triangles) and lies inside the cube. Needs
        scikit-image. Returns ``(vertices [V, 3], faces [F, 3])`` in world units; :meth:`mesh` adds
        vertex colours and :func:`vq3dlib.io.write_mesh` writes it.

        Example:
            >>> import torch
            >>> from vq3dlib.models import VQ3DModel
            >>> model = VQ3DModel.from_config("tiny")
            >>> scene = model.reconstruct(torch.rand(1, 3, 32, 32))
            >>> model.density = lambda planes, x, i: 10.0 * (x.norm(dim=-1) < 0.5)  # a ball, for the example
            >>> vertices, faces = scene.export_mesh(resolution=16)
            >>> round(float(vertices.norm(dim=-1).mean()), 1), faces.shape[1]
            (0.5, 3)
        """
        try:
            from skimage.measure import marching_cubes
        except ImportError as exc:  # a dependency; named if an environment lacks it
            raise ImportError("Scene.export_mesh needs scikit-image: pip install scikit-image") from exc
        extent = self.model.config.scene_bound if extent is None else extent
        sigma = self.density_volume(resolution, scene, extent)
        cell = 2 * extent / (resolution - 1)
        if threshold is None:
            threshold = mesh_threshold(sigma, cell)
        lo, hi = float(sigma.min()), float(sigma.max())
        if not lo <= threshold <= hi:
            raise MeshThresholdError(
                f"threshold {threshold} is outside the density range [{lo:.3g}, {hi:.3g}]"
            )
        # the outermost grid layer below the level: the surface closes between it and the next one
        below = min(lo, 2 * threshold - hi) - 0.01 * (hi - lo) - 1e-6
        volume = sigma.double().cpu().numpy()
        for axis in range(3):
            volume[(slice(None),) * axis + (0,)] = below
            volume[(slice(None),) * axis + (-1,)] = below
        verts, faces, _, _ = marching_cubes(volume, level=threshold)
        verts = torch.from_numpy(verts.copy()).float() * cell - extent
        return verts, torch.from_numpy(faces.copy()).long()

    def mesh(
        self,
        resolution: int = 128,
        threshold: float | None = None,
        scene: int = 0,
        extent: float | None = None,
        colors: bool = True,
    ) -> trimesh.Trimesh:
        """:meth:`export_mesh` as a ``trimesh.Trimesh``, each vertex coloured by the field (:meth:`colors`).

        :func:`vq3dlib.io.write_mesh` writes it as GLB, OBJ or PLY. ``colors=False``: no vertex colours.

        Example:
            >>> import torch
            >>> from vq3dlib.models import VQ3DModel
            >>> model = VQ3DModel.from_config("tiny")
            >>> scene = model.reconstruct(torch.rand(1, 3, 32, 32))
            >>> model.density = lambda planes, x, i: 10.0 * (x.norm(dim=-1) < 0.5)  # a ball, for the example
            >>> mesh = scene.mesh(resolution=16)
            >>> mesh.is_watertight, mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
            (True, True)
        """
        import trimesh

        verts, faces = self.export_mesh(resolution, threshold, scene, extent)
        rgba = None
        if colors:
            rgb = self.colors(verts.to(self.planes.device), scene).cpu()
            rgba = torch.cat([(rgb * 255).round(), torch.full_like(rgb[:, :1], 255)], 1).to(torch.uint8)
            rgba = rgba.numpy()
        return trimesh.Trimesh(verts.numpy(), faces.numpy(), vertex_colors=rgba, process=False)


def view_cameras(
    config: VQ3DConfig,
    yaw: float | Sequence[float] = 0.0,
    pitch: float | Sequence[float] = 0.0,
    distance: float | None = None,
    fov_degrees: float | None = None,
    resolution: int | None = None,
) -> Cameras:
    """Cameras looking at the scene origin from ``yaw`` degrees of azimuth and ``pitch`` degrees above
    the horizon (``yaw = pitch = 0``: the canonical, input view), world +y up.

    ``yaw`` and ``pitch`` are numbers or equally long lists (one camera each; a number repeats);
    ``distance`` and ``fov_degrees`` (vertical) default to the model's ``config.camera_distance`` and
    ``config.fov_degrees``, ``resolution`` (image side) to ``config.render_resolution``. Positive yaw
    moves the camera towards +x (:func:`~vq3dlib.cameras.orbit_cameras`).

    Example:
        >>> from vq3dlib.models import get_config
        >>> cams = view_cameras(get_config("tiny"), yaw=[0.0, 90.0], distance=2.0)
        >>> cams.centers.round(decimals=4)
        tensor([[0., 0., 2.],
                [2., 0., 0.]])
    """
    yaws = [float(yaw)] if isinstance(yaw, (int, float)) else [float(y) for y in yaw]
    pitches = [float(pitch)] if isinstance(pitch, (int, float)) else [float(q) for q in pitch]
    n = max(len(yaws), len(pitches))
    if len(yaws) not in (1, n) or len(pitches) not in (1, n):
        raise ValueError(f"yaw and pitch must be numbers or lists of one length, got {yaw!r} and {pitch!r}")
    yaws, pitches = yaws * (n // len(yaws)), pitches * (n // len(pitches))
    r = resolution or config.render_resolution
    d = config.camera_distance if distance is None else distance
    fov = config.fov_degrees if fov_degrees is None else fov_degrees
    cams = [orbit_cameras(1, d, q, fov, (r, r), start_azimuth_degrees=y) for y, q in zip(yaws, pitches)]
    return Cameras.cat(cams)


def turntable_cameras(
    config: VQ3DConfig,
    n_frames: int,
    elevation: float = DEFAULT_ELEVATION,
    resolution: int | None = None,
    sweep: float = DEFAULT_SWEEP,
    distance: float | None = None,
    fov_degrees: float | None = None,
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
        distance: camera distance from the origin (default ``config.camera_distance``).
        fov_degrees: vertical field of view (default ``config.fov_degrees``).

    Example:
        >>> from vq3dlib.models import get_config
        >>> len(turntable_cameras(get_config("tiny"), 4))
        4
    """
    r = resolution or config.render_resolution
    d = config.camera_distance if distance is None else distance
    fov = config.fov_degrees if fov_degrees is None else fov_degrees
    return orbit_cameras(n_frames, d, elevation, fov, (r, r), sweep_degrees=sweep)


def render_turntable(
    scene: Scene,
    n_frames: int = 24,
    elevation: float = DEFAULT_ELEVATION,
    index: int = 0,
    sweep: float = DEFAULT_SWEEP,
    resolution: int | None = None,
    distance: float | None = None,
    fov_degrees: float | None = None,
    image_size: int | None = None,
) -> dict[str, Tensor]:
    """Renders scene ``index`` of ``scene`` from :func:`turntable_cameras` (a fixed seed for the ray jitter).

    ``resolution``, ``distance`` and ``fov_degrees`` default to the model's render resolution, camera
    distance and field of view.

    Returns:
        ``{"rgb": [F, 3, r, r] in [0, 1], "depth": [F, 1, r, r], "image": [F, 3, s, s] in [0, 1]}`` on
        the CPU (``F = n_frames``; ``image`` is the model's output image, super-resolved to the image
        size ``s`` when the model has the head, else upsampled: ``s = image_size`` when given, else the
        model's image size for frames at its render resolution and ``r`` for others, ``image = rgb``).
        ``resolution=64, image_size=128`` for the tiny preset (render 16, image 32): 128² frames
        through the model's own render-and-super-resolve path at its ratio, from a quarter of the rays.

    Example:
        >>> import torch
        >>> from vq3dlib.models import VQ3DModel
        >>> model = VQ3DModel.from_config("tiny", render_resolution=8)
        >>> frames = render_turntable(model.reconstruct(torch.rand(1, 3, 32, 32)), n_frames=2)
        >>> frames["rgb"].shape, frames["depth"].shape, frames["image"].shape
        (torch.Size([2, 3, 8, 8]), torch.Size([2, 1, 8, 8]), torch.Size([2, 3, 32, 32]))
        >>> one = model.reconstruct(torch.rand(1, 3, 32, 32))
        >>> sharp = render_turntable(one, 2, resolution=16, image_size=64)
        >>> sharp["rgb"].shape, sharp["image"].shape
        (torch.Size([2, 3, 16, 16]), torch.Size([2, 3, 64, 64]))
    """
    one = scene[index]
    cams = turntable_cameras(
        scene.model.config, n_frames, elevation, resolution, sweep, distance=distance, fov_degrees=fov_degrees
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        images = one.render(cams.to(scene.planes.device), image_size=image_size).images()
    image = images.get("image", images["rgb"]).clamp(0, 1).cpu()
    return {"rgb": images["rgb"].clamp(0, 1).cpu(), "depth": images["depth"].cpu(), "image": image}


__all__ = [
    "DEFAULT_ELEVATION",
    "DEFAULT_SWEEP",
    "MeshThresholdError",
    "Scene",
    "mesh_threshold",
    "render_turntable",
    "turntable_cameras",
    "view_cameras",
]
