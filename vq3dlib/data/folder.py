"""A dataset of images in a folder, with optional depth maps stored next to the images.

Layout (any sub-folders; files sorted by path)::

    root/cat_001.jpg
    root/cat_001.npy          # optional depth, float array [H, W] (or [1, H, W] / [H, W, 1])
    root/dog_002.png
    root/dog_002.depth.png    # optional depth, 16-bit PNG: depth = value / depth_png_scale

Depth maps have the size of their image; values ``<= 0`` (e.g. 0 in a PNG) mark invalid pixels
(:mod:`vq3dlib.metrics` and the masked losses ignore them). Depth may be metric or relative (it is
aligned per image by scale and shift before use). When files are missing, a user-supplied
``depth_fn`` (e.g. a monocular depth network loaded from local weights) can compute depth;
nothing is ever downloaded.

Example:
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> from vq3dlib.data.folder import ImageFolderDataset
    >>> root = tempfile.mkdtemp()
    >>> Image.new("RGB", (40, 30), (255, 0, 0)).save(f"{root}/a.png")
    >>> np.save(f"{root}/a.npy", np.full((30, 40), 2.0, np.float32))
    >>> item = ImageFolderDataset(root, resolution=16)[0]
    >>> item["image"].shape, item["depth"].shape, item["depth"].max().item()
    (torch.Size([3, 16, 16]), torch.Size([1, 16, 16]), 2.0)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vq3dlib._validation import check_choice, check_tensor
from vq3dlib.io import UnreadableImageError, rgb8_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEPTH_PNG_SUFFIX = ".depth.png"
DEFAULT_DEPTH_PNG_SCALE = 1000.0  # 16-bit value 1000 = depth 1.0 (millimetres -> metres)
DEPTH_MODES = ("auto", "required", "none")


def _resolution(resolution: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(resolution, (int, np.integer)):
        h = w = int(resolution)
    else:
        if len(resolution) != 2:
            raise ValueError(f"resolution must be an int or (height, width), got {resolution!r}")
        h, w = (int(r) for r in resolution)
    if h <= 0 or w <= 0:
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    return h, w


def depth_files(image_path: str | os.PathLike) -> tuple[Path, Path]:
    """The two depth files looked for next to an image: ``name.npy`` and ``name.depth.png``.

    Example:
        >>> [p.name for p in depth_files("data/cat.jpg")]
        ['cat.npy', 'cat.depth.png']
    """
    p = Path(image_path)
    stem = p.with_suffix("")
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + DEPTH_PNG_SUFFIX)


def write_depth_png(
    path: str | os.PathLike, depth: Tensor | np.ndarray, scale: float = DEFAULT_DEPTH_PNG_SCALE
) -> None:
    """Writes a depth map ``[H, W]`` (or ``[1, H, W]``) as a 16-bit PNG holding ``round(depth * scale)``.

    Values must fit in ``[0, 65535 / scale]``; invalid pixels should be 0. With the default scale
    the range is 0 to 65.535 at 1/1000 resolution.

    Example:
        >>> import tempfile, numpy as np
        >>> p = tempfile.mkdtemp() + "/x.depth.png"
        >>> write_depth_png(p, np.full((4, 5), 1.5))
        >>> read_depth(p).shape, float(read_depth(p).max())
        ((4, 5), 1.5)
    """
    from PIL import Image

    arr = depth.detach().cpu().numpy() if isinstance(depth, Tensor) else np.asarray(depth)
    arr = arr.squeeze(0) if arr.ndim == 3 and arr.shape[0] == 1 else arr
    if arr.ndim != 2:
        raise ValueError(f"depth must have shape [H, W] or [1, H, W], got {list(arr.shape)}")
    q = np.round(arr.astype(np.float64) * scale)
    if not np.isfinite(q).all() or q.min() < 0 or q.max() > 65535:
        raise ValueError(f"depth * scale must be finite and in [0, 65535] (scale={scale}), got range "
                         f"[{np.nanmin(arr)}, {np.nanmax(arr)}]")  # fmt: skip
    Image.fromarray(q.astype(np.uint16)).save(path)


def read_depth(path: str | os.PathLike, depth_png_scale: float = DEFAULT_DEPTH_PNG_SCALE) -> np.ndarray:
    """Reads a depth map (``.npy`` float array or 16-bit ``.png``) as a float32 ``[H, W]`` array.

    Example:
        >>> import tempfile, numpy as np
        >>> p = tempfile.mkdtemp() + "/d.npy"; np.save(p, np.ones((1, 3, 2)))
        >>> read_depth(p).shape
        (3, 2)
    """
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"depth file {path} must hold a numeric array, got dtype {arr.dtype}")
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.squeeze(0) if arr.shape[0] == 1 else arr.squeeze(-1)
        if arr.ndim != 2:
            raise ValueError(f"depth file {path} must hold an [H, W] array, got shape {list(arr.shape)}")
        return arr.astype(np.float32)
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ValueError(
                f"depth PNG {path} must be a 16-bit grayscale PNG (mode I;16), got mode {img.mode}; "
                f"write it with vq3dlib.data.folder.write_depth_png"
            )
        arr = np.asarray(img).astype(np.float32)
    return arr / float(depth_png_scale)


class ImageFolderDataset(Dataset):
    """Images from a folder (center-cropped and resized), with optional depth maps.

    Args:
        root: folder searched recursively for ``.png/.jpg/.jpeg/.bmp/.webp`` images (files ending in
            ``.depth.png`` are depth maps, not images).
        resolution: output size, an int (square) or ``(height, width)``. Images are center-cropped to
            that aspect ratio and resized (bicubic); depth gets the same crop and a nearest-neighbour
            resize (so invalid zeros do not bleed into valid pixels).
        depth: ``"auto"``: return depth if every image has a depth file (or ``depth_fn`` fills the
            gaps), no depth if none has one and there is no ``depth_fn``; ``"required"``: every item
            must get depth (file or ``depth_fn``), else a ``FileNotFoundError`` naming the first
            missing file; ``"none"``: never return depth.
        depth_fn: optional callable ``image [3, H, W] in [0, 1] -> depth [H, W] or [1, H, W]`` used
            for images without a depth file (after crop/resize, so at ``resolution``).
        depth_png_scale: 16-bit PNG depth is ``value / depth_png_scale`` (default 1000: millimetres
            to metres); 0 is invalid.

    Item (a dict): ``image [3, H, W]`` float32 in ``[0, 1]``, ``depth [1, H, W]`` float32 (only when
    the dataset has depth, see :attr:`has_depth`), ``path`` (str), ``index`` (int64 scalar).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> Image.new("RGB", (8, 8)).save(f"{root}/x.jpg")
        >>> ds = ImageFolderDataset(root, 4, depth_fn=lambda img: img.mean(0) + 1.0)
        >>> len(ds), ds.has_depth, ds[0]["depth"].shape
        (1, True, torch.Size([1, 4, 4]))
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int | Sequence[int] = 64,
        depth: str = "auto",
        depth_fn: Callable[[Tensor], Tensor] | None = None,
        *,
        depth_png_scale: float = DEFAULT_DEPTH_PNG_SCALE,
    ) -> None:
        check_choice("depth", depth, DEPTH_MODES)
        if depth_fn is not None and not callable(depth_fn):
            raise TypeError(f"depth_fn must be callable or None, got {type(depth_fn).__name__}")
        if depth_png_scale <= 0:
            raise ValueError(f"depth_png_scale must be > 0, got {depth_png_scale}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root must be an existing folder, got {self.root}")
        self.resolution = _resolution(resolution)
        self.depth_fn = depth_fn
        self.depth_png_scale = float(depth_png_scale)
        self.paths = sorted(
            p
            for p in self.root.rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMAGE_EXTENSIONS
            and not p.name.lower().endswith(DEPTH_PNG_SUFFIX)
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )
        if not self.paths:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}")
        self.depth_paths: list[Path | None] = [self._find_depth(p) for p in self.paths]
        missing = [p for p, d in zip(self.paths, self.depth_paths) if d is None]
        if depth == "none":
            self.has_depth = False
        elif not missing or depth_fn is not None:
            self.has_depth = True
        elif depth == "auto" and len(missing) == len(self.paths):
            self.has_depth = False
        else:
            npy, png = depth_files(missing[0])
            why = "depth='required'" if depth == "required" else "depth='auto' and some images have depth"
            shown = ", ".join(str(p) for p in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"{why}, but {len(missing)} of {len(self.paths)} images have no depth map: {shown}. "
                f"E.g. {missing[0]} needs {npy} (float array [H, W]) or {png} (16-bit PNG, depth = value / "
                f"{self.depth_png_scale:g}). Options: add the files, pass depth_fn=callable(image [3, H, W]) "
                f"-> depth [H, W] to compute them, or use depth='none'."
            )

    @staticmethod
    def _find_depth(image_path: Path) -> Path | None:
        for candidate in depth_files(image_path):
            if candidate.is_file():
                return candidate
        return None

    def __len__(self) -> int:
        return len(self.paths)

    def _crop_box(self, w: int, h: int) -> tuple[int, int, int, int]:
        th, tw = self.resolution
        if w * th > h * tw:  # too wide
            cw, ch = max(1, round(h * tw / th)), h
        else:
            cw, ch = w, max(1, round(w * th / tw))
        left, top = (w - cw) // 2, (h - ch) // 2
        return left, top, left + cw, top + ch

    def __getitem__(self, index: int) -> dict[str, Tensor | str]:
        from PIL import Image

        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = index % len(self)
        path = self.paths[index]
        th, tw = self.resolution
        try:
            with Image.open(path) as img:
                img = rgb8_image(img)  # 16-bit greyscale scaled, not clipped to white
                w, h = img.size
                box = self._crop_box(w, h)
                img = img.crop(box).resize((tw, th), Image.Resampling.BICUBIC)
                pixels = np.asarray(img, dtype=np.float32)
        except (OSError, SyntaxError, ValueError) as exc:  # truncated, or not an image after all
            raise UnreadableImageError(path, exc) from None
        image = torch.from_numpy(pixels / 255.0).permute(2, 0, 1).contiguous()
        item: dict[str, Tensor | str] = {
            "image": image,
            "path": str(path),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self.has_depth:
            item["depth"] = self._load_depth(index, image, (w, h), box)
        return item

    def _load_depth(self, index: int, image: Tensor, size: tuple[int, int], box: tuple[int, ...]) -> Tensor:
        th, tw = self.resolution
        dpath = self.depth_paths[index]
        if dpath is None:
            assert self.depth_fn is not None
            with torch.no_grad():
                d = self.depth_fn(image)
            check_tensor("depth_fn(image)", d, floating=True)
            if tuple(d.shape) not in ((th, tw), (1, th, tw)):
                raise ValueError(
                    f"depth_fn(image) must return shape [{th}, {tw}] or [1, {th}, {tw}], got {list(d.shape)}"
                )
            return d.detach().reshape(1, th, tw).float().cpu()
        arr = read_depth(dpath, self.depth_png_scale)
        w, h = size
        if arr.shape != (h, w):
            raise ValueError(f"depth map {dpath} has shape {list(arr.shape)} but its image is {h}x{w} (HxW)")
        left, top, right, bottom = box
        d = torch.from_numpy(np.ascontiguousarray(arr[top:bottom, left:right]))[None, None]
        return F.interpolate(d, size=(th, tw), mode="nearest-exact")[0]
