"""Held-out evaluation of a stage-1 model, each metric next to a trivial baseline.

:func:`evaluate_stage1` reconstructs every image of a dataset and reports

* ``psnr``/``ssim`` of the reconstruction (the model's output image) against the input;
* ``own_psnr``/``other_psnr``/``own_vs_other_db``: how much closer a reconstruction is to its own
  input than to the other inputs of the set (:func:`own_and_other_psnr`; a model that ignores its
  input scores 0 dB), next to ``baseline_own_vs_other_db``, the same gap of the per-image mean colour;
* ``holes_fraction``/``novel_holes_fraction``: pixels of the canonical/novel renders whose opacity is
  below 0.99 (see-through holes);
* ``novel_psnr``: the reconstructed scene rendered from the dataset's true novel cameras (procedural
  scenes) against the true novel views — the test of 3D consistency;
* ``depth_abs_rel``/``depth_delta1``: the rendered depth against the true depth after a per-image
  scale/shift alignment in disparity space (:func:`vq3dlib.metrics.depth_abs_rel`), on the pixels
  closer than ``max_depth`` (scene content; the far sky is left out). The truth is taken at the
  render's own pixel centres when the dataset can render it (a ``true_depth(index, cameras)``
  method, as :class:`~vq3dlib.data.ProceduralScenes` has); otherwise the item's ``depth`` is
  resized to the render resolution (nearest), which moves each truth sample up to half a pixel of
  the input off its pixel's ray;
* ``codebook_perplexity``/``codebook_used``: code usage over the dataset;

and the baselines ``baseline_colour_psnr``/``baseline_novel_colour_psnr`` (each view predicted by its
own mean colour), ``baseline_psnr``/``baseline_novel_psnr`` (predict the mean image of the evaluated
views — a stronger baseline that has seen the test set) and
``baseline_depth_abs_rel``/``baseline_depth_delta1`` (a constant depth, aligned like the
prediction, i.e. the best constant per image).

Example:
    >>> from vq3dlib.data import ProceduralScenes
    >>> from vq3dlib.models import VQ3DModel
    >>> small = dict(render_resolution=4, plane_resolution=16, samples_per_ray=4, occupancy_resolution=8)
    >>> model = VQ3DModel.from_config("tiny", image_size=16, encoder_depth=1, decoder_depth=1, **small)
    >>> m = evaluate_stage1(model, ProceduralScenes(1, 16, n_novel_views=1), batch_size=1)
    >>> sorted(k for k in m if k.startswith("baseline"))[:3]
    ['baseline_colour_psnr', 'baseline_depth_abs_rel', 'baseline_depth_delta1']
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vq3dlib.metrics import codebook_usage, depth_abs_rel, depth_delta, psnr, ssim
from vq3dlib.train.loop import get_batch


def _mean_colour(images: Tensor) -> Tensor:
    """Each image replaced by its own mean colour (the trivial per-image baseline)."""
    return images.mean((2, 3), keepdim=True).expand_as(images)


def _output_image(view: dict[str, Tensor], size: tuple[int, int]) -> Tensor:
    """The model's output image of a render (super-resolved when it has one), at ``size``, in [0, 1]."""
    image = view.get("image", view["rgb"])
    return _resize(image, size).clamp(0, 1)


def own_and_other_psnr(predictions: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """PSNR of each prediction against its own target and, averaged, against every other target.

    Args:
        predictions: ``[N, C, H, W]`` in [0, 1].
        targets: ``[N, C, H, W]`` in [0, 1], ``N >= 2``.

    Returns:
        ``(own [N], other [N])``: ``own[i] = psnr(pred_i, target_i)``, ``other[i]`` the mean of
        ``psnr(pred_i, target_j)`` over ``j != i``. ``own - other`` is the own-vs-other gap in dB.

    Example:
        >>> targets = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
        >>> own, other = own_and_other_psnr(targets * 0.9 + 0.05, targets)
        >>> [round(v, 1) for v in own.tolist()], [round(v, 1) for v in other.tolist()]
        ([26.0, 26.0], [0.4, 0.4])
    """
    if predictions.shape != targets.shape or predictions.dim() != 4:
        raise ValueError(
            f"predictions and targets must both be [N, C, H, W] of one shape, got {list(predictions.shape)} "
            f"and {list(targets.shape)}"
        )
    n = predictions.shape[0]
    if n < 2:
        raise ValueError(f"own_and_other_psnr needs at least 2 images, got {n}")
    p, t = predictions.flatten(1).double(), targets.flatten(1).double()
    mse = ((p * p).sum(1, keepdim=True) - 2 * p @ t.T + (t * t).sum(1)[None]) / p.shape[1]
    table = -10 * torch.log10(mse.clamp(min=1e-10))  # [i, j]: prediction i against target j
    own = table.diagonal()
    other = (table.sum(1) - own) / (n - 1)
    return own.float(), other.float()


def _resize(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


@torch.no_grad()
def _true_depth(dataset: Dataset, batch: dict[str, Tensor], cameras: Any, r: int) -> Tensor:
    """``[B, 1, r, r]`` true depth at the pixel centres of the ``r x r`` render of ``cameras``."""
    base = dataset  # through Subset and MemoryDataset to a source that can render its scenes
    while not hasattr(base, "true_depth") and hasattr(base, "dataset"):
        base = base.dataset
    exact = getattr(base, "true_depth", None)
    if exact is None or "index" not in batch:
        return _resize(batch["depth"], (r, r), "nearest")
    return torch.cat([exact(int(i), cameras[k : k + 1]) for k, i in enumerate(batch["index"])])


def evaluate_stage1(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 8,
    max_items: int | None = None,
    device: torch.device | str | None = None,
    max_depth: float = 10.0,
) -> dict[str, Any]:
    """Metrics of ``model`` (a :class:`~vq3dlib.models.VQ3DModel`) on ``dataset`` (see the module docstring).

    Args:
        model: the stage-1 model (evaluated in eval mode; its train/eval mode is restored).
        dataset: items with ``image [3, H, W]``; optional ``depth [1, H, W]`` (true depth), and
            ``novel_images [V, 3, H, W]`` + cameras (``novel_intrinsics``, ``novel_cam_to_world``) as
            in :class:`~vq3dlib.data.ProceduralScenes`.
        batch_size: images per forward pass.
        max_items: evaluate the first ``max_items`` items only.
        device: where to run (default: the model's device).
        max_depth: depth is evaluated on pixels whose true depth is below this (the procedural sky
            sphere, at 20, is left out, like the depth cap of driving benchmarks), and aligned
            predicted depths are capped at it (so one pixel whose aligned disparity is near 0 cannot
            dominate AbsRel).

    Returns:
        ``{metric: float}`` averaged over images, plus ``"n_images"``; metrics whose inputs are
        missing from the dataset are left out.

    The global RNG is left untouched (the renderer's sample jitter runs under ``fork_rng``).
    """
    from vq3dlib.cameras import Cameras

    n = len(dataset) if max_items is None else min(len(dataset), int(max_items))  # type: ignore[arg-type]
    if n <= 0:
        raise ValueError("dataset is empty")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, list[Tensor]] = {}
    images_all, novel_all, indices_all, recon_all = [], [], [], []
    cfg = model.config
    r = cfg.render_resolution

    def add(name: str, values: Tensor) -> None:
        sums.setdefault(name, []).append(values.detach().float().cpu())

    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            for start in range(0, n, batch_size):
                batch = get_batch(dataset, torch.arange(start, min(start + batch_size, n)))
                images = batch["image"].to(device)
                b = images.shape[0]
                scene = model.reconstruct(images)
                indices_all.append(scene.indices.reshape(b, -1).cpu())
                view = scene.render(model.canonical_cameras(b)).images()
                recon = _output_image(view, tuple(images.shape[-2:]))
                add("psnr", psnr(recon, images))
                add("ssim", ssim(recon, images))
                add("holes_fraction", (view["opacity"] < 0.99).float().mean((1, 2, 3)))
                images_all.append(images.cpu())
                recon_all.append(recon.cpu())
                if "depth" in batch:
                    gt = _true_depth(dataset, batch, model.canonical_cameras(b), r).to(device)
                    mask = gt < max_depth
                    pred = view["depth"]
                    cap = {"max_depth": max_depth}  # aligned depths capped like the evaluated pixels
                    add("depth_abs_rel", depth_abs_rel(pred, gt, mask, **cap))
                    add("depth_delta1", depth_delta(pred, gt, mask, **cap))
                    const = torch.ones_like(gt)
                    add("baseline_depth_abs_rel", depth_abs_rel(const, gt, mask, **cap))
                    add("baseline_depth_delta1", depth_delta(const, gt, mask, **cap))
                if "novel_images" in batch and batch["novel_images"].shape[1] > 0:
                    target = batch["novel_images"].flatten(0, 1).to(device)
                    v = batch["novel_images"].shape[1]
                    cams = Cameras(
                        batch["novel_intrinsics"].reshape(-1, 3, 3),
                        batch["novel_cam_to_world"].reshape(-1, 4, 4),
                        tuple(target.shape[-2:]),
                    ).resize((r, r))
                    # camera i of the flattened [B, V] list sees scene i // V; render() maps camera
                    # j to scene j mod B, so reorder to view-major and back
                    order = torch.arange(b * v).reshape(b, v).t().reshape(-1)
                    novel_view = scene.render(cams[order]).images()
                    add("novel_holes_fraction", (novel_view["opacity"] < 0.99).float().mean((1, 2, 3)))
                    novel = _output_image(novel_view, tuple(target.shape[-2:]))[torch.argsort(order)]
                    add("novel_psnr", psnr(novel, target))
                    novel_all.append(target.cpu())
    finally:
        model.train(was_training)

    out: dict[str, Any] = {k: float(torch.cat(v).nanmean()) for k, v in sums.items()}
    images = torch.cat(images_all)
    mean_image = images.mean(0, keepdim=True).expand_as(images)
    out["baseline_psnr"] = float(psnr(mean_image, images).mean())
    out["baseline_colour_psnr"] = float(psnr(_mean_colour(images), images).mean())
    if n >= 2:
        own, other = own_and_other_psnr(torch.cat(recon_all), images)
        out["own_psnr"], out["other_psnr"] = float(own.mean()), float(other.mean())
        out["own_vs_other_db"] = out["own_psnr"] - out["other_psnr"]
        base_own, base_other = own_and_other_psnr(_mean_colour(images), images)
        out["baseline_own_vs_other_db"] = float(base_own.mean() - base_other.mean())
    if novel_all:
        novel = torch.cat(novel_all)
        out["baseline_novel_psnr"] = float(psnr(novel.mean(0, keepdim=True).expand_as(novel), novel).mean())
        out["baseline_novel_colour_psnr"] = float(psnr(_mean_colour(novel), novel).mean())
    usage = codebook_usage(torch.cat(indices_all), cfg.vocab_size)
    out["codebook_perplexity"] = float(usage["perplexity"])
    out["codebook_used"] = float(usage["used_fraction"])
    out["n_images"] = n
    return dict(sorted(out.items()))


__all__ = ["evaluate_stage1", "own_and_other_psnr"]
