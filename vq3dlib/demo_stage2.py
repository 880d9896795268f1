"""The demo's second stage: a class-conditional prior on the codes of the demo's stage-1 model, scored.

:func:`run_stage2_demo` trains a :class:`~vq3dlib.models.CodePrior` on the codes of the demo's
training scenes (:func:`~vq3dlib.train.stage2.train_stage2` into ``out/prior``) within
:class:`Stage2Demo`'s budget, trains the classifier and computes the stage-2 figures
(:func:`~vq3dlib.train.evaluate_stage2.evaluate_stage2_procedural`), and writes ``samples.gif``: one
row per class shown (a few samples of each, turntables side by side). :func:`~vq3dlib.demo.run_demo`
calls it after stage 1 and stores the figures under ``"stage2"`` in ``metrics.json``.

Example:
    >>> Stage2Demo().prior_steps, Stage2Demo().prior_time_s, Stage2Demo().eval.samples_per_class
    (1000, 120.0, 16)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vq3dlib.io import write_gif
from vq3dlib.models.prior import DEFAULT_CFG_SCALE, DEFAULT_TOP_K
from vq3dlib.models.scene import render_turntable
from vq3dlib.train.evaluate_stage2 import Stage2EvalConfig, evaluate_stage2_procedural


@dataclass
class Stage2Demo:
    """What the demo does after stage 1 (all of it within about ``prior_time_s + eval.classifier_time_s``
    plus the sampling and rendering).

    Attributes:
        enabled: run stage 2 at all.
        prior_steps, prior_time_s, prior_batch_size, prior_lr: the prior's training (stops at
            whichever of steps and seconds comes first).
        prior_overrides: ``prior_*`` fields of the model config for the prior (e.g. ``prior_dropout``).
        eval: the evaluation (:class:`~vq3dlib.train.evaluate_stage2.Stage2EvalConfig`).
        gif_classes, gif_samples, gif_frames: ``samples.gif`` shows ``gif_samples`` samples of each of
            the first ``gif_classes`` classes, turntables of ``gif_frames`` frames.

    Example:
        >>> Stage2Demo(prior_steps=10).prior_steps
        10
    """

    enabled: bool = True
    prior_steps: int = 1000
    prior_time_s: float = 120.0
    prior_batch_size: int = 32
    prior_lr: float = 5e-4
    prior_overrides: dict[str, Any] = field(default_factory=dict)
    eval: Stage2EvalConfig = field(default_factory=Stage2EvalConfig)
    gif_classes: int = 3
    gif_samples: int = 3
    gif_frames: int = 12


def write_samples_gif(
    model: torch.nn.Module,
    prior: torch.nn.Module,
    path: str | os.PathLike,
    classes: int = 3,
    per_class: int = 3,
    frames: int = 12,
    cfg_scale: float = DEFAULT_CFG_SCALE,
    seed: int = 0,
    top_k: int | None = DEFAULT_TOP_K,
) -> Path:
    """Samples ``per_class`` scenes of each of the first ``classes`` classes and writes their turntables
    (frames ``[F, 3, classes * r, per_class * r]``: a row per class) to the GIF ``path``.

    Example:
        >>> import tempfile
        >>> from vq3dlib.models import CodePrior, VQ3DModel
        >>> model = VQ3DModel.from_config("tiny", render_resolution=8, plane_resolution=16).eval()
        >>> prior = CodePrior.from_config(model.config.replace(prior_width=16, prior_depth=1, prior_heads=2))
        >>> write_samples_gif(model, prior, tempfile.mkdtemp() + "/s.gif", 2, 1, frames=2).name
        's.gif'
    """
    classes = max(1, min(classes, prior.num_classes or 1))
    labels = torch.arange(classes).repeat_interleave(per_class).to(prior.pos_embed.device)
    gen = torch.Generator(device=prior.pos_embed.device).manual_seed(seed)
    codes = prior.sample(
        len(labels), labels if prior.num_classes else None, cfg_scale=cfg_scale, top_k=top_k, generator=gen
    )
    scene = model.decode_indices(codes.to(next(model.parameters()).device))
    turns = [render_turntable(scene, frames, index=i)["rgb"] for i in range(len(scene))]
    rows = [torch.cat(turns[c * per_class : (c + 1) * per_class], dim=-1) for c in range(classes)]
    grid = torch.cat(rows, dim=-2)
    return write_gif(grid, path, size=3 * grid.shape[-2])


def run_stage2_demo(stage1_out: str | os.PathLike, stage1_config: Any, out: str | os.PathLike,
                    settings: Stage2Demo | None = None) -> dict[str, Any]:  # fmt: skip
    """Trains the prior on the codes of the stage-1 run ``stage1_out``, scores it, writes ``samples.gif``.

    Args:
        stage1_out: the stage-1 run folder (its ``model.safetensors``).
        stage1_config: that run's :class:`~vq3dlib.train.stage1.Stage1Config` (data, sizes, seed,
            device, progress).
        out: the demo's output folder (the prior goes to ``out/prior``).
        settings: :class:`Stage2Demo`.

    Returns:
        ``{"metrics": {...}, "prior_steps", "prior_seconds", "prior_loss", "config": {...}}``.
    """
    from safetensors.torch import load_file

    from vq3dlib.train.stage1 import load_stage1_model
    from vq3dlib.train.stage2 import Stage2Config, train_stage2

    s = settings or Stage2Demo()
    out = Path(out)
    c1 = stage1_config
    cfg = Stage2Config(
        stage1=str(stage1_out), out_dir=str(out / "prior"), data=c1.data, train_size=c1.train_size,
        data_seed=c1.data_seed, steps=s.prior_steps, time_budget_s=s.prior_time_s,
        batch_size=s.prior_batch_size, lr=s.prior_lr, prior_overrides=dict(s.prior_overrides),
        warmup_steps=min(50, s.prior_steps), log_every=50, ckpt_every=0, seed=c1.seed, device=c1.device,
        progress=c1.progress,
    )  # fmt: skip
    result = train_stage2(cfg)
    prior = result["prior"].eval()
    model = load_stage1_model(stage1_out, map_location=next(prior.parameters()).device).eval()
    train_codes = load_file(str(result["codes_path"]))["indices"]
    report = evaluate_stage2_procedural(model, prior, train_codes, c1.train_size, c1.data_seed, s.eval)
    write_samples_gif(model, prior, out / "samples.gif", s.gif_classes, s.gif_samples, s.gif_frames,
                      s.eval.cfg_scale, s.eval.seed, s.eval.top_k)  # fmt: skip
    return {
        "metrics": report["metrics"],
        "prior_steps": result["step"],
        "prior_seconds": round(result["train_seconds"], 1),
        "prior_loss": result["loss"],
        "config": asdict(s),
    }


__all__ = ["Stage2Demo", "run_stage2_demo", "write_samples_gif"]
