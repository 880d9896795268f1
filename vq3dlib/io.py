"""Files in and out: images, MP4 and GIF turntables, PNGs, colour-mapped depth, meshes, scene codes.

Images are tensors in ``[0, 1]``, channels first. :func:`load_image` reads any image Pillow reads
(greyscale, 16-bit, with transparency composited on a background colour; cropped or padded to a
square); :func:`find_images` lists the images of folders. Libraries write the files: imageio with
its ffmpeg plug-in the MP4 videos (:func:`write_video`), Pillow the GIFs and PNGs, kornia's colour
maps the depth images (:func:`colorize_depth`), trimesh the meshes (:func:`write_mesh`: OBJ, GLB,
PLY with vertex colours). Scene codes (the indices a
:class:`~vq3dlib.models.Scene` was decoded from) are safetensors files (``*.scene.safetensors``):
:func:`save_scene` writes them, :func:`load_scene_indices` reads them back, and
:meth:`VQ3DModel.decode_indices <vq3dlib.models.VQ3DModel.decode_indices>` turns them into scenes again.

Example:
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> write_png(torch.rand(3, 8, 8), f"{folder}/image.png").name
    'image.png'
    >>> load_image(f"{folder}/image.png", 4).shape
    torch.Size([1, 3, 4, 4])
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vq3dlib._validation import check_tensor
from vq3dlib.render.volrend import depth_to_disparity

if TYPE_CHECKING:
    import trimesh

#: the file name ending of saved scene codes (``photo.scene.safetensors``)
SCENE_FILE = "scene.safetensors"


#: what ``crop`` of :func:`load_image` accepts: centre crop or pad to a square
CROP_MODES = ("center", "pad")


def parse_color(color: str | Sequence[float]) -> tuple[float, float, float]:
    """A colour as ``(r, g, b)`` in [0, 1]: a name or ``#rrggbb`` (as Pillow's ``ImageColor``
    reads them) or three numbers in [0, 1].

    Example:
        >>> parse_color("white"), parse_color("#ff0000"), parse_color((0.0, 0.5, 1.0))
        ((1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.0, 0.5, 1.0))
    """
    from PIL import ImageColor

    if isinstance(color, str):
        try:
            rgb = ImageColor.getrgb(color)[:3]
        except ValueError:
            raise ValueError(f"unknown colour {color!r}: give a name such as 'white' or '#rrggbb'") from None
        return tuple(c / 255 for c in rgb)  # type: ignore[return-value]
    values = tuple(float(c) for c in color)
    if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
        raise ValueError(f"a colour must be three numbers in [0, 1], got {color!r}")
    return values  # type: ignore[return-value]


def _rgba_array(img) -> np.ndarray:
    """A Pillow image as ``[H, W, 4]`` float32 RGBA in [0, 1] (16-bit and 32-bit integer modes / 65535)."""
    if img.mode.startswith("I"):  # I;16, I;16B, I;16L and I (how 16-bit greyscale PNGs open)
        grey = np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)
        return np.concatenate([np.repeat(grey[..., None], 3, -1), np.ones_like(grey[..., None])], -1)
    if img.mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.concatenate([np.repeat(grey[..., None], 3, -1), np.ones_like(grey[..., None])], -1)
    return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0


def rgb8_image(img):
    """A Pillow image as an 8-bit RGB Pillow image; 16/32-bit integer greyscale (``I;16``, ``I``) is
    scaled by 1/65535 and float greyscale (``F``) clipped to [0, 1] first, where Pillow's own
    ``convert("RGB")`` would clip them to white.

    Example:
        >>> from PIL import Image
        >>> grey16 = Image.fromarray(np.full((2, 2), 32768, dtype=np.uint16))
        >>> rgb8_image(grey16).mode, rgb8_image(grey16).getpixel((0, 0))
        ('RGB', (128, 128, 128))
    """
    from PIL import Image

    if img.mode.startswith("I") or img.mode == "F":
        rgb = _rgba_array(img)[..., :3]
        return Image.fromarray(np.round(rgb * 255.0).astype(np.uint8))
    return img.convert("RGB")


class UnreadableImageError(ValueError):
    """A file that is not an image Pillow can read (truncated, not an image); names the file.

    Example:
        >>> str(UnreadableImageError("x.png", OSError("truncated")))
        'x.png is not an image Pillow can read (OSError: truncated)'
    """

    def __init__(self, path: str | os.PathLike, cause: BaseException) -> None:
        super().__init__(f"{path} is not an image Pillow can read ({type(cause).__name__}: {cause})")
        self.path = Path(path)


def load_image(
    path: str | os.PathLike,
    size: int,
    background: str | Sequence[float] = "white",
    crop: str = "center",
) -> Tensor:
    """An image file as ``[1, 3, size, size]`` in [0, 1].

    Reads any image Pillow reads, upright as its EXIF orientation says: colour or greyscale, 8- or
    16-bit (16-bit greyscale is scaled by 1/65535), with transparency (alpha or a palette's
    transparent colour) composited on ``background`` (:func:`parse_color`). ``crop="center"``
    crops the centre square, ``"pad"`` pads the short side with ``background`` to a square; then an
    antialiased bicubic resize to ``size``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one Pillow cannot read.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/a.png"; Image.new("RGBA", (12, 8), (255, 0, 0, 0)).save(p)
        >>> image = load_image(p, 4, background="black")  # fully transparent: the background
        >>> image.shape, float(image.max())
        (torch.Size([1, 3, 4, 4]), 0.0)
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
    bg = np.asarray(parse_color(background), dtype=np.float32)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        with Image.open(p) as img:
            img = ImageOps.exif_transpose(img)
            rgba = _rgba_array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(p, exc) from None
    rgb = rgba[..., :3] * rgba[..., 3:] + bg * (1.0 - rgba[..., 3:])
    h, w = rgb.shape[:2]
    if crop == "center":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        rgb = rgb[top : top + s, left : left + s]
    else:
        s = max(h, w)
        square = np.empty((s, s, 3), dtype=np.float32)
        square[:] = bg
        top, left = (s - h) // 2, (s - w) // 2
        square[top : top + h, left : left + w] = rgb
        rgb = square
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    if image.shape[-1] != size:
        image = F.interpolate(image, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return image.clamp(0.0, 1.0)


def find_images(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The image files of ``paths``: each folder's files with an extension Pillow reads (sorted, not
    recursive), each file as given (whatever its extension; a missing one stays in the list, for the
    caller to report).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a.jpg", "notes.txt"): (folder / name).touch()
        >>> [p.name for p in find_images(folder)]
        ['a.jpg', 'b.png']
    """
    from PIL import Image

    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    extensions = set(Image.registered_extensions())
    found: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in extensions)
        else:
            found.append(item)
    return found


def _to_pil(image: Tensor, size: int | None = None):
    from PIL import Image

    from vq3dlib.train.logger import image_grid

    if image.shape[0] == 1:
        image = image_grid(image[None], pad=0)
    arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr)
    if size is not None and img.height != size:
        img = img.resize((round(img.width * size / img.height), size), Image.Resampling.NEAREST)
    return img


def write_gif(frames: Tensor, path: str | os.PathLike, size: int = 128, fps: int = 12) -> Path:
    """Writes ``frames [F, 3, H, W]`` in [0, 1] as a looping GIF, upscaled to height ``size``.

    Example:
        >>> import tempfile
        >>> write_gif(torch.rand(3, 3, 8, 8), tempfile.mkdtemp() + "/t.gif", size=16).suffix
        '.gif'
    """
    check_tensor("frames", frames, ndim=4, floating=True)
    images = [_to_pil(f, size) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


def write_video(frames: Tensor, path: str | os.PathLike, size: int = 128, fps: int = 12) -> Path:
    """Writes ``frames [F, 3, H, W]`` in [0, 1] as an H.264 MP4 (imageio's ffmpeg plug-in), upscaled to
    height ``size`` (the width rounded to even, as H.264 needs).

    Without the ffmpeg plug-in (``pip install imageio-ffmpeg``) it warns and writes a GIF next to
    ``path`` instead (:func:`write_gif`). Returns the file written.

    Example:
        >>> import tempfile
        >>> write_video(torch.rand(4, 3, 8, 8), tempfile.mkdtemp() + "/t.mp4", size=16).suffix
        '.mp4'
    """
    check_tensor("frames", frames, ndim=4, floating=True)
    path = Path(path)
    problem = _ffmpeg_problem()
    if problem is not None:
        gif = path.with_suffix(".gif")
        warnings.warn(f"cannot write MP4 videos ({problem}); writing the GIF {gif} instead", stacklevel=2)
        return write_gif(frames, gif, size=size, fps=fps)
    import imageio.v2 as imageio

    images = [np.asarray(_to_pil(f, size)) for f in frames]
    h, w = images[0].shape[:2]
    if h % 2 or w % 2:
        images = [np.pad(im, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for im in images]
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                            macro_block_size=1, ffmpeg_log_level="error") as writer:  # fmt: skip
        for image in images:
            writer.append_data(image)
    return path


def _ffmpeg_problem() -> str | None:
    """Why MP4s cannot be written here (``None``: they can)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return "imageio-ffmpeg is not installed: pip install imageio-ffmpeg"
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        return f"no ffmpeg binary: {exc}"
    return None


def colorize_depth(depth: Tensor, colormap: str = "turbo") -> Tensor:
    """Depth ``[B, 1, H, W]`` → ``[B, 3, H, W]`` colours: :func:`disparity_image` (near = high) through
    one of kornia's colour maps (``"turbo"``, ``"viridis"``, ``"plasma"``, ...).

    Example:
        >>> colours = colorize_depth(torch.tensor([[[[1.0, 2.0, 0.0]]]]))
        >>> colours.shape, colours[0, :, 0, 0].tolist() != colours[0, :, 0, 2].tolist()
        (torch.Size([1, 3, 1, 3]), True)
    """
    from kornia.color import ColorMap, apply_colormap

    check_tensor("depth", depth, shape=(None, 1, None, None), floating=True)
    levels = (disparity_image(depth.float().cpu()) * 255).round().long()
    return apply_colormap(levels, ColorMap(colormap, num_colors=256, dtype=torch.float32))


def write_png(image: Tensor, path: str | os.PathLike, size: int | None = None) -> Path:
    """Writes ``image [3 or 1, H, W]`` (1 channel: normalised grey) as a PNG, optionally upscaled.

    Example:
        >>> import tempfile
        >>> write_png(torch.rand(1, 4, 4), tempfile.mkdtemp() + "/d.png", size=8).suffix
        '.png'
    """
    check_tensor("image", image, ndim=3, floating=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(image, size).save(path)
    return path


def disparity_image(depth: Tensor) -> Tensor:
    """Depth ``[..., 1, H, W]`` → a displayable ``[..., 1, H, W]`` normalised disparity (near = bright).

    The disparity is :func:`~vq3dlib.render.depth_to_disparity` (depth ``<= 0``, nothing there, is
    shown as far), scaled to ``[0, 1]`` per image.

    Example:
        >>> disparity_image(torch.tensor([[[[1.0, 2.0, 0.0]]]])).flatten().tolist()
        [1.0, 0.5, 0.0]
    """
    disp = depth_to_disparity(depth)
    lo = disp.flatten(-3).amin(-1)[..., None, None, None]
    hi = disp.flatten(-3).amax(-1)[..., None, None, None]
    return (disp - lo) / (hi - lo).clamp_min(1e-8)


#: mesh file formats :func:`write_mesh` writes (by the file name's extension)
MESH_FORMATS = (".glb", ".obj", ".ply")


def write_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike) -> Path:
    """Writes a trimesh mesh (with its vertex colours) as GLB, OBJ or PLY, by ``path``'s extension.

    Example:
        >>> import tempfile, trimesh
        >>> box = trimesh.creation.box()
        >>> box.visual.vertex_colors = [255, 0, 0, 255]
        >>> path = write_mesh(box, tempfile.mkdtemp() + "/box.glb")
        >>> loaded = trimesh.load(path, force="mesh")
        >>> len(loaded.vertices), loaded.visual.vertex_colors[0].tolist()
        (8, [255, 0, 0, 255])
    """
    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise ValueError(f"mesh files are {', '.join(MESH_FORMATS)}; got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path


def save_scene(indices: Tensor, path: str | os.PathLike, labels: Tensor | None = None) -> Path:
    """Saves scene code indices ``[B, ...]`` (and optional labels ``[B]``) to a safetensors file.

    Example:
        >>> import tempfile
        >>> p = save_scene(torch.zeros(1, 4, 4, dtype=torch.long), tempfile.mkdtemp() + "/s.safetensors")
        >>> load_scene_indices(p).shape
        torch.Size([1, 4, 4])
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"indices": indices.detach().long().cpu().contiguous()}
    if labels is not None:
        tensors["labels"] = labels.detach().long().cpu().contiguous()
    save_file(tensors, str(path), metadata={"format": "vq3d.scene"})
    return path


def load_scene_indices(path: str | os.PathLike) -> Tensor:
    """Code indices saved by :func:`save_scene` (or any safetensors/``torch.save`` file with ``indices``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an unreadable one, one
    without ``indices`` or with indices that are not integers.

    Example:
        >>> import tempfile
        >>> p = save_scene(torch.ones(2, 3, dtype=torch.long), tempfile.mkdtemp() + "/s.safetensors")
        >>> load_scene_indices(p).tolist()
        [[1, 1, 1], [1, 1, 1]]
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"scene file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(p))
        else:
            data = torch.load(p, map_location="cpu", weights_only=True)
            data = data if isinstance(data, dict) else {"indices": data}
    except Exception as exc:  # a truncated file, text, a pickle weights_only refuses
        raise ValueError(f"{p} cannot be read as a scene file: {type(exc).__name__}: {exc}") from None
    if "indices" not in data or not isinstance(data["indices"], Tensor):
        raise ValueError(f"{p} holds no 'indices' tensor (keys: {sorted(data)})")
    indices = data["indices"]
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"{p}: 'indices' must be integer code indices, got dtype {indices.dtype}")
    return indices.long()


__all__ = [
    "CROP_MODES",
    "MESH_FORMATS",
    "SCENE_FILE",
    "UnreadableImageError",
    "colorize_depth",
    "disparity_image",
    "find_images",
    "load_image",
    "load_scene_indices",
    "parse_color",
    "rgb8_image",
    "save_scene",
    "write_gif",
    "write_mesh",
    "write_png",
    "write_video",
]
