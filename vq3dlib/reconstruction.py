"""Images in, 3D scenes out (``vq3d reconstruct``): each image's turntable video, depth, mesh and codes.

:func:`reconstruct_images` reconstructs image files (:func:`~vq3dlib.io.find_images` lists a
folder's) with a stage-1 model, one forward pass each, and writes each result into its own folder
``out/<image name>/`` (:func:`write_reconstruction`):

* ``turntable.mp4`` and ``turntable.gif``: the camera swinging around the input view;
* ``turntable_depth.gif`` and ``depth.png``: the depth, colour-mapped (near is warm);
* ``input.png`` (the image as the model saw it: cropped or padded, resized) and
  ``reconstruction.png`` (the scene rendered from the input view);
* ``view.png`` and ``view_depth.png`` from the camera of :class:`ReconstructOptions` ``view``;
* the mesh with the field's colour at each vertex (``mesh``: a GLB, OBJ or PLY file name);
* ``scene.safetensors``: the scene codes (``vq3d render --scene``, :func:`~vq3dlib.io.save_scene`).

A file that cannot be read is reported (``on_error``) and skipped; the others are still processed.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from vq3dlib.models import VQ3DModel
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (40, 30), "orange").save(folder / "cat.png")
    >>> model = VQ3DModel.from_config("tiny", render_resolution=8).eval()  # untrained
    >>> report = reconstruct_images(model, [folder / "cat.png"], folder / "out",
    ...                             ReconstructOptions(frames=2, size=16), progress=False)
    >>> sorted(p.name for p in report.written["cat"])[:3], report.failed
    (['depth.png', 'input.png', 'reconstruction.png'], {})
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from vq3dlib.cameras import Cameras
from vq3dlib.io import (
    CROP_MODES,
    MESH_FORMATS,
    SCENE_FILE,
    colorize_depth,
    load_image,
    parse_color,
    save_scene,
    write_gif,
    write_mesh,
    write_png,
    write_video,
)
from vq3dlib.models.configs import VQ3DConfig
from vq3dlib.models.scene import (
    DEFAULT_ELEVATION,
    DEFAULT_SWEEP,
    MeshThresholdError,
    Scene,
    render_turntable,
    view_cameras,
)


@dataclass(frozen=True)
class View:
    """One camera around the scene: ``yaw`` degrees of azimuth, ``pitch`` degrees of elevation, at
    ``distance`` with vertical field of view ``fov`` (``None``: the model's camera distance and field
    of view); :func:`~vq3dlib.models.view_cameras` builds it.

    Example:
        >>> View(yaw=30.0).pitch
        0.0
    """

    yaw: float = 0.0
    pitch: float = 0.0
    distance: float | None = None
    fov: float | None = None


@dataclass(frozen=True)
class ReconstructOptions:
    """What :func:`reconstruct_images` writes and how.

    Attributes:
        frames: turntable frames; ``elevation`` (degrees above the horizon) and ``sweep`` (degrees of
            azimuth swung through around the input view, 360: a full orbit) place them.
        size: side in pixels of the turntables, views and PNGs.
        render_size: side of the field's renders behind them, super-resolved to ``size`` by the
            model's head (bilinear upsampling for a model without one; depth bilinear): the model's
            own render → output image path. ``None``: the model's ratio, ``size · render_resolution /
            image_size`` (64 for ``size=128`` with the tiny preset: a quarter of the rays);
            ``render_size = size`` renders every pixel from the field. :func:`render_size_of`.
        fps: frames per second of the MP4 and GIF turntables.
        background: colour transparent input pixels are composited on (:func:`~vq3dlib.io.parse_color`),
            also the padding of ``crop="pad"``.
        crop: ``"center"`` crops input images to a centred square, ``"pad"`` pads them to one.
        mesh: file name of the coloured mesh (``.glb``, ``.obj`` or ``.ply``), or just its format
            (``"glb"``); ``None``: no mesh.
        mesh_resolution: marching-cubes grid points per axis; ``threshold`` the density level
            (``None``: automatic, :func:`~vq3dlib.models.mesh_threshold`).
        distance, fov: camera distance and vertical field of view of the turntable (``None``: the
            model's).
        view: also render this camera (``view.png``, ``view_depth.png``).

    Example:
        >>> ReconstructOptions(mesh="glb").mesh_file
        'mesh.glb'
    """

    frames: int = 30
    elevation: float = DEFAULT_ELEVATION
    sweep: float = DEFAULT_SWEEP
    size: int = 128
    render_size: int | None = None
    fps: int = 12
    background: str | tuple[float, float, float] = "white"
    crop: str = "center"
    mesh: str | None = None
    mesh_resolution: int = 128
    threshold: float | None = None
    distance: float | None = None
    fov: float | None = None
    view: View | None = None

    def __post_init__(self) -> None:
        for name in ("frames", "size", "fps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.render_size is not None and not 1 <= int(self.render_size) <= int(self.size):
            raise ValueError(f"render_size must be in [1, size={self.size}], got {self.render_size}")
        if self.mesh_resolution < 2:
            raise ValueError(f"mesh_resolution must be >= 2, got {self.mesh_resolution}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        parse_color(self.background)  # a ValueError naming a bad colour, before any work
        self.mesh_file  # noqa: B018 - checks the mesh name

    @property
    def mesh_file(self) -> str | None:
        """The mesh's file name inside each result folder (``None``: no mesh)."""
        if self.mesh is None:
            return None
        name = f"mesh.{self.mesh.lstrip('.')}" if "." + self.mesh.lstrip(".") in MESH_FORMATS else self.mesh
        if Path(name).name != name or Path(name).suffix.lower() not in MESH_FORMATS:
            raise ValueError(
                f"mesh must be a file name ending in {', '.join(MESH_FORMATS)} (written into each image's "
                f"folder) or one of {', '.join(f[1:] for f in MESH_FORMATS)}, got {self.mesh!r}"
            )
        return name


def render_size_of(config: VQ3DConfig, options: ReconstructOptions) -> int:
    """The side the field is rendered at for ``options`` (``options.render_size``, else the model's
    ratio ``size · render_resolution / image_size``, rounded, at least 1).

    Example:
        >>> from vq3dlib.models import get_config
        >>> cfg = get_config("tiny")  # renders 16 px, outputs 32 px
        >>> render_size_of(cfg, ReconstructOptions()), render_size_of(cfg, ReconstructOptions(render_size=96))
        (64, 96)
    """
    if options.render_size is not None:
        return int(options.render_size)
    return max(1, min(options.size, round(options.size * config.render_resolution / config.image_size)))


def _at_size(images: dict[str, torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rgb [N, 3, size, size]`` (the output image when rendered smaller) and depth at ``size``."""
    rgb, depth = images["rgb"], images["depth"]
    if rgb.shape[-1] != size:
        rgb = images["image"]
        depth = F.interpolate(depth, size=(size, size), mode="bilinear", align_corners=False)
    return rgb.clamp(0, 1).cpu(), depth.cpu()


def _render(scene: Scene, cameras: Cameras, options: ReconstructOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """``cameras`` (at the render size) → ``rgb, depth`` at ``options.size`` (a fixed seed for the jitter)."""
    size = options.size
    with torch.random.fork_rng():
        torch.manual_seed(0)
        images = scene.render(cameras, image_size=size if cameras.image_size[0] != size else None).images()
    return _at_size(images, size)


def _frames(scene: Scene, options: ReconstructOptions) -> tuple[torch.Tensor, torch.Tensor]:
    size, render = options.size, render_size_of(scene.model.config, options)
    turn = render_turntable(
        scene,
        options.frames,
        options.elevation,
        sweep=options.sweep,
        resolution=render,
        distance=options.distance,
        fov_degrees=options.fov,
        image_size=size if render != size else None,
    )
    return _at_size(turn, size)


def write_reconstruction(
    scene: Scene, image: torch.Tensor, folder: str | os.PathLike, options: ReconstructOptions
) -> list[Path]:
    """Writes the files of one reconstructed ``scene`` (one scene) of ``image [1, 3, S, S]`` into
    ``folder`` (the list in the module docstring); returns them.

    Example:
        >>> import tempfile, torch
        >>> from vq3dlib.models import VQ3DModel
        >>> model = VQ3DModel.from_config("tiny", render_resolution=8).eval()
        >>> image = torch.rand(1, 3, 32, 32)
        >>> files = write_reconstruction(model.reconstruct(image), image, tempfile.mkdtemp(),
        ...                              ReconstructOptions(frames=2, size=16, view=View(yaw=90.0)))
        >>> sorted(p.name for p in files)[-3:]
        ['turntable_depth.gif', 'view.png', 'view_depth.png']
    """
    folder = Path(folder)
    size, fps = options.size, options.fps
    config = scene.model.config
    render = render_size_of(config, options)
    rgb, depth = _frames(scene, options)
    front_rgb, front_depth = _render(scene, view_cameras(config, resolution=render), options)
    written = [
        write_video(rgb, folder / "turntable.mp4", size=size, fps=fps),
        write_gif(rgb, folder / "turntable.gif", size=size, fps=fps),
        write_gif(colorize_depth(depth), folder / "turntable_depth.gif", size=size, fps=fps),
        write_png(image[0].float().cpu(), folder / "input.png", size=size),
        write_png(front_rgb[0], folder / "reconstruction.png"),
        write_png(colorize_depth(front_depth)[0], folder / "depth.png"),
    ]
    if options.view is not None:
        v = options.view
        cams = view_cameras(config, v.yaw, v.pitch, v.distance, v.fov, resolution=render)
        seen_rgb, seen_depth = _render(scene, cams, options)
        written.append(write_png(seen_rgb[0], folder / "view.png"))
        written.append(write_png(colorize_depth(seen_depth)[0], folder / "view_depth.png"))
    if options.mesh_file is not None:
        mesh = scene.mesh(options.mesh_resolution, options.threshold)
        written.append(write_mesh(mesh, folder / options.mesh_file))
    written.append(save_scene(scene.indices, folder / SCENE_FILE))
    return written


@dataclass
class ReconstructionReport:
    """What :func:`reconstruct_images` did: ``written`` (result folder name → files) and ``failed``
    (image path → the one-line reason it was skipped).

    Example:
        >>> ReconstructionReport().failed
        {}
    """

    written: dict[str, list[Path]] = field(default_factory=dict)
    failed: dict[Path, str] = field(default_factory=dict)


def _report_to_stderr(path: Path, message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def result_names(images: Sequence[Path]) -> list[str]:
    """One folder name per image: its name without the extension, ``name_ext`` where two images share
    a name (``cat.png``, ``cat.jpg`` → ``cat``, ``cat_jpg``).

    Example:
        >>> from pathlib import Path
        >>> result_names([Path("a/cat.png"), Path("b/cat.jpg"), Path("dog.png")])
        ['cat', 'cat_jpg', 'dog']
    """
    names: list[str] = []
    for image in images:
        name = image.stem or image.name
        if name in names:
            name = f"{name}_{image.suffix.lstrip('.')}" if image.suffix else f"{name}_2"
        while name in names:
            name += "_"
        names.append(name)
    return names


def reconstruct_images(
    model: torch.nn.Module,
    images: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    options: ReconstructOptions = ReconstructOptions(),
    progress: bool = True,
    on_error: Callable[[Path, str], None] = _report_to_stderr,
) -> ReconstructionReport:
    """Reconstructs each image file with ``model`` and writes its results into ``out/<name>/``
    (:func:`result_names`, :func:`write_reconstruction`), with a progress bar over the images.

    A file that is missing or that Pillow cannot read is skipped: ``on_error(path, message)`` gets a
    one-line message naming it (default: printed to stderr above the progress bar) and the report
    lists it in ``failed``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vq3dlib.models import VQ3DModel
        >>> folder = Path(tempfile.mkdtemp()); (folder / "broken.png").write_text("no image")
        8
        >>> model = VQ3DModel.from_config("tiny", render_resolution=8).eval()
        >>> report = reconstruct_images(model, [folder / "broken.png"], folder, progress=False,
        ...                             on_error=lambda path, message: print("skipped:", message))
        skipped: .../broken.png is not an image Pillow can read ...
        >>> list(report.written), len(report.failed)
        ([], 1)
    """
    from tqdm import tqdm

    paths = [Path(p) for p in images]
    device = next(model.parameters()).device
    report = ReconstructionReport()
    bar = tqdm(list(zip(paths, result_names(paths))), desc="reconstruct", unit="image", disable=not progress)
    for path, name in bar:
        bar.set_postfix_str(path.name, refresh=False)
        try:
            image = load_image(path, model.config.image_size, options.background, options.crop)
        except (FileNotFoundError, ValueError) as exc:
            report.failed[path] = str(exc)  # names the file: "image not found: ...", "... is not an image"
            on_error(path, report.failed[path])
            continue
        scene = model.reconstruct(image.to(device))
        try:
            report.written[name] = write_reconstruction(scene, image, Path(out) / name, options)
        except MeshThresholdError as exc:  # this scene's densities do not reach the chosen threshold
            report.failed[path] = f"{path}: mesh {exc} (choose another threshold)"
            on_error(path, report.failed[path])
    return report


__all__ = [
    "ReconstructOptions",
    "ReconstructionReport",
    "View",
    "reconstruct_images",
    "render_size_of",
    "result_names",
    "write_reconstruction",
]
