"""Training logs: scalars and images to TensorBoard when it is installed, always to plain files.

:class:`TrainLogger` writes every scalar to ``<dir>/scalars.jsonl`` (one JSON object per call) and
every image grid to ``<dir>/images/<name>_<step>.png``; if the ``tensorboard`` package is
importable it also writes TensorBoard event files to ``<dir>/tb`` (``tensorboard --logdir <dir>/tb``).
TensorBoard is optional: without it the JSONL and PNG files are the logs.

Example:
    >>> import tempfile, torch
    >>> log = TrainLogger(tempfile.mkdtemp(), tensorboard=False)
    >>> log.scalars(1, {"loss": 0.5})
    >>> log.images(1, {"recon": torch.rand(2, 3, 8, 8)})[0].name
    'recon_000000001.png'
    >>> log.close()
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from vq3dlib._validation import check_tensor


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by ``torch.utils.tensorboard``) is importable.

    Example:
        >>> isinstance(tensorboard_available(), bool)
        True
    """
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> Tensor:
    """Tiles ``images [N, C, H, W]`` (C = 1 or 3, values in [0, 1]) into one ``[3, H', W']`` grid.

    One-channel images are normalised to [0, 1] per image (min/max) and shown in grey.

    Example:
        >>> image_grid(torch.rand(4, 3, 8, 8), nrow=2).shape
        torch.Size([3, 19, 19])
    """
    check_tensor("images", images, ndim=4, floating=True)
    n, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    x = images.detach().float().cpu()
    if c == 1:
        flat = x.flatten(1)
        finite = torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat))
        lo, hi = finite.amin(1)[:, None, None, None], finite.amax(1)[:, None, None, None]
        x = ((x - lo) / (hi - lo).clamp_min(1e-8)).repeat(1, 3, 1, 1)
    x = torch.nan_to_num(x.clamp(0, 1))
    nrow = nrow or max(1, math.ceil(math.sqrt(max(n, 1))))
    rows = max(1, math.ceil(n / nrow))
    grid = torch.ones(3, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[
            :,
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + col * (w + pad) : pad + col * (w + pad) + w,
        ] = x[i]
    return grid


def save_image(image: Tensor, path: str | os.PathLike, scale: int = 1) -> Path:
    """Writes ``image [3, H, W]`` or ``[1, H, W]`` in [0, 1] as a PNG (nearest upscaling by ``scale``).

    Example:
        >>> import tempfile
        >>> save_image(torch.rand(3, 4, 4), tempfile.mkdtemp() + "/x.png", scale=2).suffix
        '.png'
    """
    from PIL import Image

    check_tensor("image", image, ndim=3, floating=True)
    if image.shape[0] == 1:
        image = image_grid(image[None])[:, 1:-1, 1:-1]
    arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _truncate_scalars(path: Path, last_step: int) -> None:
    """Drops the rows of ``path`` (JSONL scalars) logged after ``last_step``, and a torn last line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line a kill cut short
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) <= last_step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


class TrainLogger:
    """Scalar and image logging for one run (see the module docstring).

    Args:
        log_dir: output folder (created).
        tensorboard: ``None``: use TensorBoard if installed; ``True``: require it; ``False``: files only.
        enabled: ``False`` turns every call into a no-op (e.g. on non-zero DDP ranks).
        resume_step: a run resumed from the checkpoint of this step: the scalars logged after it
            (by the interrupted run, which will log them again) are dropped from ``scalars.jsonl``
            and from TensorBoard (``purge_step``).

    Example:
        >>> import json, tempfile
        >>> d = tempfile.mkdtemp()
        >>> log = TrainLogger(d, tensorboard=False)
        >>> for step in (1, 2, 3):
        ...     log.scalars(step, {"loss": 1.0 / step})
        >>> log.close()
        >>> log = TrainLogger(d, tensorboard=False, resume_step=2)  # resumed from step 2's checkpoint
        >>> log.scalars(3, {"loss": 0.3}); log.close()
        >>> [json.loads(line)["step"] for line in open(f"{d}/scalars.jsonl")]
        [1, 2, 3]
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        tensorboard: bool | None = None,
        enabled: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.dir = Path(log_dir)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        use_tb = tensorboard_available() if tensorboard is None else tensorboard
        if use_tb:
            if not tensorboard_available():
                raise ImportError("tensorboard=True but the tensorboard package is not installed")
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else int(resume_step) + 1
            self.writer = SummaryWriter(str(self.dir / "tb"), purge_step=purge)
        if resume_step is not None:
            _truncate_scalars(self.dir / "scalars.jsonl", int(resume_step))
        self._jsonl = open(self.dir / "scalars.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    @property
    def backend(self) -> str:
        """``"tensorboard+files"`` or ``"files"`` (JSONL scalars and PNG images)."""
        return "tensorboard+files" if self.writer is not None else "files"

    def scalars(self, step: int, values: Mapping[str, float | Tensor]) -> None:
        """Logs ``{name: number}`` at ``step``."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in values.items():
            row[k] = float(v.detach().float().mean()) if isinstance(v, Tensor) else float(v)
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self.writer is not None:
            for k, v in row.items():
                if k != "step":
                    self.writer.add_scalar(k, v, int(step))

    def images(self, step: int, values: Mapping[str, Tensor], scale: int = 2) -> list[Path]:
        """Logs image batches ``{name: [N, C, H, W]}`` as grids; returns the PNG paths."""
        if not self.enabled:
            return []
        paths = []
        for name, batch in values.items():
            grid = image_grid(batch)
            paths.append(save_image(grid, self.dir / "images" / f"{name}_{int(step):09d}.png", scale=scale))
            if self.writer is not None:
                self.writer.add_image(name, grid, int(step))
        return paths

    def close(self) -> None:
        """Flushes and closes the files."""
        if not self.enabled:
            return
        self._jsonl.close()
        if self.writer is not None:
            self.writer.close()


__all__ = ["TrainLogger", "image_grid", "save_image", "tensorboard_available"]
