"""The demo (``vq3d demo``): train the tiny model on procedural scenes, then reconstruct held-out scenes.

:func:`run_demo` trains a stage-1 run (:func:`~vq3dlib.train.stage1.train_stage1`) into
``out/train``, reconstructs held-out procedural scenes from one image each and writes to ``out``:
``turntables.gif`` and ``turntable_XX.gif`` (true scene | reconstruction, the camera swinging around
the input view), ``depth_XX.png`` (input | reconstruction | true disparity | rendered disparity) and
``metrics.json`` (the held-out metrics next to trivial baselines, the machine, the configs). It
returns that summary; :func:`baseline_verdict` says in one line how the metrics compare with the
baselines. ``vq3d demo`` (:mod:`vq3dlib.cli`) is a thin wrapper that prints them.

Example:
    >>> demo_config("runs/demo").model, OUTPUTS["model"]
    ('tiny', 'train/model.safetensors')
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vq3dlib.demo_stage2 import Stage2Demo, run_stage2_demo
from vq3dlib.io import disparity_image, write_gif, write_png
from vq3dlib.models.scene import DEFAULT_ELEVATION, DEFAULT_SWEEP, render_turntable, turntable_cameras
from vq3dlib.train.stage1 import Stage1Config, train_stage1

#: what each file of the demo's output folder shows (also written to ``metrics.json``)
OUTPUTS = {
    "turntables": "turntables.gif (left: true scene, right: reconstruction from one image)",
    "depth": "depth_XX.png (input | reconstruction | true disparity | rendered disparity)",
    "logs": "train/logs/scalars.jsonl, train/logs/images/*.png, train/logs/tb (TensorBoard)",
    "model": "train/model.safetensors",
    "samples": "samples.gif (class-conditional prior samples, a row per class), prior/prior.safetensors",
}


def machine_info() -> dict[str, Any]:
    """Where a command ran: platform, CPU count, torch threads, torch version, device.

    Example:
        >>> "torch" in machine_info()
        True
    """
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


#: the demo's run: 3 minutes of training on a 2-core CPU (measured in docs/training.md)
DEMO_DEFAULTS: dict[str, Any] = {
    "steps": 3200,
    "batch_size": 8,
    "train_size": 512,
    "eval_size": 32,
    "time_budget_s": 180.0,
    "lr": 2e-3,
    "warmup_steps": 100,
}


def demo_config(
    out: str | os.PathLike,
    steps: int = DEMO_DEFAULTS["steps"],
    batch_size: int = DEMO_DEFAULTS["batch_size"],
    train_size: int = DEMO_DEFAULTS["train_size"],
    eval_size: int = DEMO_DEFAULTS["eval_size"],
    time_budget_s: float = DEMO_DEFAULTS["time_budget_s"],
    seed: int = 0,
    progress: bool = True,
    device: str = "auto",
    resume: bool = False,
    **fields: Any,
) -> Stage1Config:
    """The demo's :class:`~vq3dlib.train.stage1.Stage1Config`: the ``tiny`` model on procedural scenes,
    trained into ``out/train`` (:data:`DEMO_DEFAULTS`; logs every 10 steps, images and checkpoints
    every 200, no evaluation during training); ``fields`` sets any other config field.

    Example:
        >>> demo_config("runs/demo").out_dir
        'runs/demo/train'
    """
    base = dict(
        model="tiny",
        out_dir=str(Path(out) / "train"),
        steps=steps,
        batch_size=batch_size,
        train_size=train_size,
        eval_size=eval_size,
        time_budget_s=time_budget_s,
        log_every=10,
        image_every=200,
        ckpt_every=200,
        eval_every=0,
        lr=DEMO_DEFAULTS["lr"],
        warmup_steps=DEMO_DEFAULTS["warmup_steps"],
        seed=seed,
        progress=progress,
        device=device,
        resume=resume,
    )
    return Stage1Config(**{**base, **fields})


def _area(images: torch.Tensor, r: int) -> torch.Tensor:
    return F.interpolate(images, size=(r, r), mode="area")


@dataclass(frozen=True)
class DemoViews:
    """What the demo shows: ``scenes`` held-out scenes, turntables of ``frames`` frames at
    ``elevation`` degrees swinging through ``sweep`` degrees (:func:`~vq3dlib.models.render_turntable`).

    Example:
        >>> DemoViews(scenes=2).frames
        24
    """

    scenes: int = 4
    frames: int = 24
    elevation: float = DEFAULT_ELEVATION
    sweep: float = DEFAULT_SWEEP


def write_reconstructions(
    model: torch.nn.Module, config: Stage1Config, out: str | os.PathLike, views: DemoViews = DemoViews()
) -> list[Path]:
    """Reconstructs the first ``views.scenes`` held-out procedural scenes of ``config`` from one image
    each and writes ``turntable_XX.gif``, ``depth_XX.png`` and ``turntables.gif`` (all of them) to ``out``.

    Returns the files written. Shows the model's output images (the super-resolved render when the
    model has the head) next to the true scenes, ray cast at the image size; disparity at the render
    resolution ``r``.

    Example:
        >>> import tempfile
        >>> from vq3dlib.models import VQ3DModel
        >>> model = VQ3DModel.from_config("tiny", render_resolution=8).eval()  # untrained
        >>> out = tempfile.mkdtemp()
        >>> files = write_reconstructions(model, demo_config(out, eval_size=1), out, DemoViews(1, frames=2))
        >>> sorted(p.name for p in files)
        ['depth_00.png', 'turntable_00.gif', 'turntables.gif']
    """
    from vq3dlib.data import ProceduralScenes

    out = Path(out)
    size = model.config.image_size
    held = ProceduralScenes(config.eval_size, size, n_novel_views=1, seed=config.data_seed + 1)
    device = next(model.parameters()).device
    rows, written = [], []
    frames, elevation, sweep = views.frames, views.elevation, views.sweep
    for i in range(min(views.scenes, len(held))):
        item = held[i]
        scene = model.reconstruct(item["image"][None].to(device))
        turn = render_turntable(scene, frames, elevation, sweep=sweep)
        cams = turntable_cameras(model.config, frames, elevation, resolution=size, sweep=sweep)
        truth = held.scene(i).render(cams)
        shown = turn["image"].shape[-1]
        pair = torch.cat([_area(truth["rgb"], shown), turn["image"]], dim=-1)  # [F, 3, s, 2s]
        rows.append(pair)
        canon = scene.render(model.canonical_cameras(1)).images()
        gt_depth = held.true_depth(i, model.canonical_cameras(1))  # at the render's pixels
        up = dict(size=(size, size), mode="nearest-exact")
        recon = canon.get("image", canon["rgb"]).clamp(0, 1).cpu()
        panel = torch.cat(
            [
                item["image"][None],
                F.interpolate(recon, size=(size, size), mode="bilinear", align_corners=False),
                F.interpolate(disparity_image(gt_depth), **up).expand(-1, 3, -1, -1),
                F.interpolate(disparity_image(canon["depth"].cpu()), **up).expand(-1, 3, -1, -1),
            ],
            dim=-1,
        )[0]
        written.append(write_png(panel, out / f"depth_{i:02d}.png", size=4 * size))
        written.append(write_gif(pair, out / f"turntable_{i:02d}.gif", size=4 * shown))
    if rows:
        size = 2 * rows[0].shape[-2] * len(rows)
        written.append(write_gif(torch.cat(rows, dim=-2), out / "turntables.gif", size=size))
    return written


def run_demo(
    config: Stage1Config,
    out: str | os.PathLike,
    views: DemoViews = DemoViews(),
    stage2: Stage2Demo | None = None,
) -> dict[str, Any]:
    """Trains ``config`` (see :func:`demo_config`), writes the held-out reconstructions and
    ``metrics.json`` to ``out``; then (unless ``stage2.enabled`` is false) trains the class-conditional
    prior and the classifier, writes ``samples.gif`` and the stage-2 figures
    (:func:`~vq3dlib.demo_stage2.run_stage2_demo`). Returns the summary written to ``metrics.json``.

    Args:
        config: the stage-1 run (procedural data; its held-out scenes are reconstructed).
        out: the output folder.
        views: the held-out scenes shown as turntables and depth panels (:class:`DemoViews`).
        stage2: the prior, classifier and sampling settings (:class:`~vq3dlib.demo_stage2.Stage2Demo`;
            default ``Stage2Demo()``).

    Returns:
        ``{"argv", "date", "machine", "train_steps", "skipped_steps", "skipped_disc_steps",
        "train_seconds", "total_seconds", "images_per_second", "held_out" (metrics), "config",
        "outputs"}`` and, with stage 2, ``"stage2"`` (:func:`~vq3dlib.demo_stage2.run_stage2_demo`'s
        result: ``"metrics"`` and the prior's steps, seconds, loss and settings).

    Example:
        >>> import tempfile
        >>> micro = dict(image_size=16, render_resolution=8, plane_resolution=16, samples_per_ray=8,
        ...              occupancy_resolution=16, encoder_width=32, encoder_heads=2, decoder_width=32,
        ...              decoder_heads=2, disc_channels=8, disc_max_channels=16)
        >>> out = tempfile.mkdtemp()
        >>> cfg = demo_config(out, steps=1, batch_size=2, train_size=2, eval_size=1, progress=False,
        ...                   device="cpu", model_overrides=micro)
        >>> no_prior = Stage2Demo(enabled=False)
        >>> summary = run_demo(cfg, out, DemoViews(scenes=1, frames=2), no_prior)  # doctest: +ELLIPSIS
        VQ3D 'tiny' parameters: ...
        >>> summary["train_steps"], sorted(p.name for p in Path(out).glob("*.gif"))
        (1, ['turntable_00.gif', 'turntables.gif'])
    """
    t0 = time.perf_counter()
    result = train_stage1(config)
    model = result["model"].eval()
    out = Path(out)
    write_reconstructions(model, config, out, views)
    summary = {
        "argv": sys.argv,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_info(),
        "train_steps": result["step"],
        "skipped_steps": result["skipped_steps"],
        "skipped_disc_steps": result["skipped_disc_steps"],
        "train_seconds": round(result["train_seconds"], 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "images_per_second": round(result["images_per_second"], 2),
        "held_out": result["metrics"],
        "config": {"train": dict(vars(config)), "model": model.config.to_dict()},
        "outputs": dict(OUTPUTS),
    }
    stage2 = stage2 if stage2 is not None else Stage2Demo()
    if stage2.enabled:
        summary["stage2"] = run_stage2_demo(config.out_dir, config, out, stage2)
        summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def baseline_verdict(metrics: dict[str, Any]) -> str | None:
    """A note when the held-out ``metrics`` do not yet beat every baseline (``None`` when they do).

    Example:
        >>> baseline_verdict({"psnr": 20.0, "baseline_colour_psnr": 12.0, "baseline_psnr": 19.0,
        ...                   "novel_psnr": 15.0, "baseline_novel_colour_psnr": 12.0,
        ...                   "baseline_novel_psnr": 16.0, "depth_abs_rel": 0.2,
        ...                   "baseline_depth_abs_rel": 0.3})[:45]
        'note: better than the trivial baselines (mean'
    """
    beats_trivial = (
        metrics["psnr"] > metrics["baseline_colour_psnr"]
        and metrics["novel_psnr"] > metrics["baseline_novel_colour_psnr"]
        and metrics["depth_abs_rel"] < metrics["baseline_depth_abs_rel"]
    )
    beats_mean_image = (
        metrics["psnr"] > metrics["baseline_psnr"] and metrics["novel_psnr"] > metrics["baseline_novel_psnr"]
    )
    if not beats_trivial:
        return "note: not every metric beats its trivial baseline yet; train longer (--steps, --time-budget)"
    if not beats_mean_image:
        return (
            "note: better than the trivial baselines (mean colour, constant depth); not yet better than "
            "the test-set mean image everywhere — train longer for that (--steps, --time-budget)"
        )
    return None


__all__ = [
    "DEMO_DEFAULTS",
    "OUTPUTS",
    "DemoViews",
    "baseline_verdict",
    "demo_config",
    "machine_info",
    "run_demo",
    "write_reconstructions",
]
