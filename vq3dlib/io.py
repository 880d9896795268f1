"""Files in and out: images, GIF turntables, PNGs, depth shown as disparity, PLY meshes, scene codes.

Images are tensors in ``[0, 1]``, channels first. Scene codes (the indices a
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
from pathlib import Path

import torch
from torch import Tensor

from vq3dlib._validation import check_tensor
from vq3dlib.render.volrend import depth_to_disparity

#: the file name ending of saved scene codes (``photo.scene.safetensors``)
SCENE_FILE = "scene.safetensors"


def load_image(path: str | os.PathLike, size: int) -> Tensor:
    """An image file as ``[1, 3, size, size]`` in [0, 1] (center crop to a square, bicubic resize).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one PIL cannot read.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/a.png"; Image.new("RGB", (12, 8), "red").save(p)
        >>> load_image(p, 4).shape
        torch.Size([1, 3, 4, 4])
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        with Image.open(p) as img:
            img = img.convert("RGB")
            w, h = img.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC)
            arr = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(size, size, 3)
    except UnidentifiedImageError:
        raise ValueError(f"{p} is not an image PIL can read") from None
    return (arr.permute(2, 0, 1).float() / 255.0)[None]


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


def write_ply(vertices: Tensor, faces: Tensor, path: str | os.PathLike) -> Path:
    """Writes a triangle mesh (``vertices [V, 3]``, ``faces [F, 3]``) as ASCII PLY.

    Example:
        >>> import tempfile
        >>> v = torch.eye(3); f = torch.tensor([[0, 1, 2]])
        >>> write_ply(v, f, tempfile.mkdtemp() + "/m.ply").read_text().splitlines()[2]
        'element vertex 3'
    """
    check_tensor("vertices", vertices, shape=(None, 3), floating=True)
    check_tensor("faces", faces, shape=(None, 3), integer=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "ply",
        "format ascii 1.0",
        f"element vertex {vertices.shape[0]}",
        "property float x",
        "property float y",
        "property float z",
        f"element face {faces.shape[0]}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    lines += [f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices.tolist()]
    lines += [f"3 {a} {b} {c}" for a, b, c in faces.tolist()]
    path.write_text("\n".join(lines) + "\n")
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

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one without ``indices``.

    Example:
        >>> import tempfile
        >>> p = save_scene(torch.ones(2, 3, dtype=torch.long), tempfile.mkdtemp() + "/s.safetensors")
        >>> load_scene_indices(p).tolist()
        [[1, 1, 1], [1, 1, 1]]
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"scene file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(p))
    else:
        data = torch.load(p, map_location="cpu", weights_only=True)
        data = data if isinstance(data, dict) else {"indices": data}
    if "indices" not in data:
        raise ValueError(f"{p} holds no 'indices' tensor (keys: {sorted(data)})")
    return data["indices"].long()


__all__ = [
    "SCENE_FILE",
    "disparity_image",
    "load_image",
    "load_scene_indices",
    "save_scene",
    "write_gif",
    "write_png",
    "write_ply",
]
