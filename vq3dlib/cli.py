"""The ``vq3d`` command line: demo, training, reconstruction, rendering, sampling, evaluation, meshes.

Run ``vq3d --help`` or ``vq3d <command> --help``. Commands:

* ``vq3d demo`` — trains the ``tiny`` model on procedural scenes for a few minutes on a CPU, then
  reconstructs held-out scenes: turntable GIFs, depth maps, ``metrics.json`` and logs in ``--out``;
  prints held-out reconstruction PSNR, novel-view PSNR and aligned depth error next to trivial
  baselines (:func:`vq3dlib.demo.run_demo`); then trains a class-conditional prior and a classifier
  and reports the stage-2 figures, with ``samples.gif`` (:mod:`vq3dlib.demo_stage2`).
* ``vq3d train`` — stage 1 (:func:`vq3dlib.train.stage1.train_stage1`) or stage 2
  (:func:`vq3dlib.train.stage2.train_stage2`); any config field via ``--set key=value``.
* ``vq3d reconstruct IMAGE... [--mesh out.glb]`` — images or folders → 3D scenes → for each, in its
  own folder: turntable MP4 and GIF, colour-mapped depth, a coloured mesh, scene codes
  (:func:`vq3dlib.reconstruction.reconstruct_images`); the bundled ``tiny-procedural`` model unless
  ``--model`` is given.
* ``vq3d render`` — a model + scene codes → images from a turntable and any camera.
* ``vq3d sample`` — stage-2 prior samples → scenes → turntables.
* ``vq3d eval`` — held-out metrics of a stage-1 model (procedural scenes or an image folder); with
  ``--prior`` also the stage-2 figures (:mod:`vq3dlib.train.evaluate_stage2`).
* ``vq3d export-mesh`` — a closed marching-cubes mesh with vertex colours (GLB, OBJ, PLY) of a
  reconstructed scene.

The commands are thin: the work is library code (:mod:`vq3dlib.io` for files, :mod:`vq3dlib.models.scene`
for turntables and meshes, :mod:`vq3dlib.reconstruction`, :mod:`vq3dlib.demo`, :mod:`vq3dlib.train`).
User errors — bad arguments,
bad ``--set`` values, input files that are missing or unreadable — print ``vq3d: error: ...`` and exit
with status 2 (set ``VQ3D_DEBUG=1`` for the traceback); any other exception is a bug and shows its
traceback.

Example:
    >>> main(["--version"])  # doctest: +ELLIPSIS
    vq3d ...
    0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from vq3dlib.cameras import Cameras
from vq3dlib.cpu_allocator import tune_cpu_allocator
from vq3dlib.io import (
    CROP_MODES,
    SCENE_FILE,
    UnreadableImageError,
    colorize_depth,
    disparity_image,
    load_image,
    load_scene_indices,
    save_scene,
    write_gif,
    write_mesh,
    write_png,
)
from vq3dlib.models.pretrained import DEFAULT_PRETRAINED
from vq3dlib.models.prior import DEFAULT_CFG_SCALE, DEFAULT_TOP_K
from vq3dlib.models.scene import DEFAULT_ELEVATION, DEFAULT_SWEEP, render_turntable, view_cameras


class UsageError(Exception):
    """A problem with what the user gave the command line: printed without a traceback, exit status 2.

    Example:
        >>> main(["export-mesh", "--model", "m"])  # neither IMAGE nor --scene: a UsageError
        2
    """


@contextlib.contextmanager
def user_input(what: str, *errors: type[Exception]) -> Iterator[None]:
    """Turns ``errors`` raised inside (reading ``what`` the user gave) into a :class:`UsageError`.

    Example:
        >>> try:
        ...     with user_input("--model", FileNotFoundError):
        ...         raise FileNotFoundError("model file not found: x")
        ... except UsageError as e:
        ...     print(e)
        --model: model file not found: x
    """
    try:
        yield
    except errors as exc:
        raise UsageError(f"{what}: {exc}") from exc


# ----------------------------------------------------------------------------------- helpers


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def _load_model(path: str | None, device: str = "cpu"):
    """The stage-1 model of ``--model`` (eval mode); ``None``: the bundled default model."""
    from vq3dlib.train.stage1 import load_stage1_model

    with user_input("--model", FileNotFoundError, ValueError):
        return load_stage1_model(path or DEFAULT_PRETRAINED, map_location=device).eval()


def _load_image(path: str, size: int, args: argparse.Namespace | None = None) -> torch.Tensor:
    extra = {} if args is None else {"background": args.background, "crop": args.crop}
    with user_input("IMAGE", FileNotFoundError, ValueError):
        return load_image(path, size, **extra)


def _view(args: argparse.Namespace):
    """The camera of ``--yaw --pitch --distance --fov`` (``None`` when neither angle is given)."""
    from vq3dlib.reconstruction import View

    if args.yaw is None and args.pitch is None:
        return None
    return View(args.yaw or 0.0, args.pitch or 0.0, args.distance, args.fov)


def _load_scene(path: str) -> torch.Tensor:
    with user_input("--scene", FileNotFoundError, ValueError):
        return load_scene_indices(path)


def _check_dir_arg(path: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out must be a folder, but {p} is a file")
    return p


def _check_json_arg(path: str | None) -> Path | None:
    """``--json``: a file path whose folder exists or can be made (checked before the work starts)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"--json must be a file path, but {p} is a folder")
    parent = next((a for a in p.absolute().parents if a.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--json: cannot write {p} (its folder {p.parent} cannot be created)")
    return p


def _print_metrics(metrics: dict[str, Any], n: int) -> None:
    colour, mean_image, constant = "mean colour", "mean image of the test set", "constant depth"
    rows = [
        ("reconstruction PSNR [dB] (higher is better)", "psnr", "baseline_colour_psnr", colour),
        ("", "psnr", "baseline_psnr", mean_image),
        ("novel-view PSNR [dB] (true novel cameras)", "novel_psnr", "baseline_novel_colour_psnr", colour),
        ("", "novel_psnr", "baseline_novel_psnr", mean_image),
        ("depth AbsRel, aligned (lower is better)", "depth_abs_rel", "baseline_depth_abs_rel", constant),
        ("depth delta<1.25, aligned (higher is better)", "depth_delta1", "baseline_depth_delta1", constant),
        ("own-vs-other PSNR gap [dB] (higher is better)", "own_vs_other_db", "baseline_own_vs_other_db",
         colour),
        ("holes: opacity < 0.99, input view (fraction)", "holes_fraction", None, ""),
        ("holes: opacity < 0.99, novel views (fraction)", "novel_holes_fraction", None, ""),
    ]
    print(f"\nheld-out scenes: {n}")
    print(f"{'metric':<46} {'VQ3D':>9} {'baseline':>9}  baseline is")
    for label, key, base, what in rows:
        if key in metrics and base is None:
            print(f"{label:<46} {metrics[key]:>9.3f}")
        elif key in metrics:
            print(f"{label:<46} {metrics[key]:>9.3f} {metrics.get(base, float('nan')):>9.3f}  {what}")
    if "ssim" in metrics:
        print(f"{'SSIM':<46} {metrics['ssim']:>9.3f}")
    if "codebook_perplexity" in metrics:
        print(
            f"{'codebook perplexity / used fraction':<46} {metrics['codebook_perplexity']:>9.1f} "
            f"{metrics['codebook_used']:>9.3f}"
        )


def _configure(config: Any, sets: Sequence[str] | None) -> Any:
    """``config`` with the ``--set`` overrides applied and checked (bad values are user errors)."""
    from vq3dlib.train.loop import apply_overrides

    with user_input("--set", ValueError, TypeError):
        config = apply_overrides(config, sets or [])
        if hasattr(config, "model_config"):
            config.model_config()  # validate the model fields early
    return config


def _check_training_data(config: Any) -> None:
    """A data folder must exist and (stage 1) give a usable split with the depth it asks for."""
    if config.data == "procedural":
        return
    if not Path(config.data).is_dir():
        raise UsageError(f"--data must be 'procedural' or an existing image folder, got {config.data!r}")
    from vq3dlib.train.stage1 import Stage1Config, build_datasets

    if isinstance(config, Stage1Config):  # e.g. depth=required and images without depth maps
        with user_input("--data", FileNotFoundError, ValueError):
            build_datasets(config, config.model_config().image_size)


# ----------------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    """Train tiny on procedural scenes, then reconstruct held-out scenes and report metrics."""
    from vq3dlib.demo import DemoViews, baseline_verdict, demo_config, run_demo

    _threads(args.threads)
    out = _check_dir_arg(args.out)
    with user_input("demo", ValueError):
        cfg = demo_config(
            out,
            steps=args.steps,
            batch_size=args.batch_size,
            train_size=args.train_size,
            eval_size=args.eval_size,
            time_budget_s=args.time_budget,
            seed=args.seed,
            progress=not args.no_progress,
            device=args.device,
            resume=args.resume,
        )
    cfg = _configure(cfg, args.set)
    stage2 = _stage2_demo(args)
    print(
        f"vq3d demo: training '{cfg.model}' on {cfg.train_size} procedural scenes for up to "
        f"{cfg.steps} steps (batch {cfg.batch_size}, time budget {cfg.time_budget_s:.0f} s, "
        f"{torch.get_num_threads()} threads); "
        f"output in {out}/",
        flush=True,
    )
    t0 = time.perf_counter()
    summary = run_demo(cfg, out, DemoViews(args.scenes, args.frames, args.elevation, args.sweep), stage2)
    print(
        f"\ntrained {summary['train_steps']} steps in {summary['train_seconds']:.0f} s "
        f"({summary['images_per_second']:.1f} images/s, {summary['skipped_steps']} generator and "
        f"{summary['skipped_disc_steps']} discriminator steps skipped)"
    )
    metrics = summary["held_out"]
    if metrics:
        _print_metrics(metrics, metrics.get("n_images", 0))
        note = baseline_verdict(metrics)
        if note:
            print(note)
    samples = ""
    if "stage2" in summary:
        _print_stage2(summary["stage2"])
        samples = f"{out}/samples.gif, "
    print(
        f"\nwrote {out}/turntables.gif, {out}/depth_*.png, {samples}{out}/metrics.json, logs in "
        f"{out}/train/logs (total {time.perf_counter() - t0:.0f} s)"
    )
    return 0


def _stage2_demo(args: argparse.Namespace):
    """The demo's :class:`~vq3dlib.demo_stage2.Stage2Demo` from the command line's stage-2 options."""
    from vq3dlib.demo_stage2 import Stage2Demo
    from vq3dlib.train.evaluate_stage2 import Stage2EvalConfig

    with user_input("demo", ValueError):
        base = Stage2Demo()
        ev = Stage2EvalConfig(
            **{**vars(base.eval), "samples_per_class": args.samples_per_class, "cfg_scale": args.cfg_scale,
               "top_k": args.top_k, "classifier_steps": args.classifier_steps,
               "eval_size": args.prior_eval_size}
        )  # fmt: skip
        return Stage2Demo(
            enabled=not args.no_stage2, prior_steps=args.prior_steps, prior_time_s=args.prior_time_budget,
            eval=ev,
        )  # fmt: skip


def _print_stage2(result: dict[str, Any]) -> None:
    from vq3dlib.train.evaluate_stage2 import stage2_table

    m = result["metrics"]
    print(
        f"\nstage 2: prior trained {result['prior_steps']} steps in {result['prior_seconds']:.0f} s (loss "
        f"{result['prior_loss']:.3f}); classifier {m['classifier_steps']:.0f} steps in "
        f"{m['classifier_seconds']:.0f} s"
    )
    print(stage2_table(m))


def cmd_train(args: argparse.Namespace) -> int:
    """Stage-1 or stage-2 training."""
    _threads(args.threads)
    given = dict(
        data=args.data,
        out_dir=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        resume=args.resume or None,
        device=args.device,
        progress=not args.no_progress,
    )
    if args.out is not None:
        _check_dir_arg(args.out)
    if args.stage == 1:
        from vq3dlib.train.stage1 import Stage1Config, train_stage1

        with user_input("train", ValueError, TypeError):
            cfg = Stage1Config(model=args.config, **{k: v for k, v in given.items() if v is not None})
        cfg = _configure(cfg, args.set)
        _check_training_data(cfg)
        with user_input("--data", UnreadableImageError):  # an image of the folder that cannot be read
            result = train_stage1(cfg)
        print(
            f"stage 1: {result['step']} steps, {result['skipped_steps']} generator and "
            f"{result['skipped_disc_steps']} discriminator steps skipped; model: {result['model_path']}"
        )
        if result["metrics"]:
            _print_metrics(result["metrics"], result["metrics"].get("n_images", 0))
        return 0
    from vq3dlib.train.stage1 import stage1_model_file
    from vq3dlib.train.stage2 import Stage2Config, train_stage2

    if args.config != "tiny":
        raise UsageError("--config applies to stage 1; stage 2 takes the model config from --stage1")
    if not args.stage1:
        raise UsageError(
            "stage 2 needs --stage1 PATH (a stage-1 run folder, checkpoint or model.safetensors)"
        )
    if not Path(args.stage1).exists():
        raise UsageError(f"--stage1 path not found: {args.stage1}")
    with user_input("--stage1", FileNotFoundError):
        stage1_model_file(args.stage1)
    with user_input("train", ValueError, TypeError):
        cfg = Stage2Config(stage1=args.stage1, **{k: v for k, v in given.items() if v is not None})
    prior = "prior."  # --set prior.<field>: a field of prior_overrides
    sets = [s.replace(prior, "prior_overrides.", 1) if s.startswith(prior) else s for s in args.set or ()]
    cfg = _configure(cfg, sets)
    _check_training_data(cfg)
    result = train_stage2(cfg)
    print(f"stage 2: {result['step']} steps, final loss {result['loss']:.4f}; prior: {result['prior_path']}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """Images → scenes → per image: turntable MP4/GIF, depth, optional coloured mesh, scene codes."""
    from tqdm import tqdm

    from vq3dlib.io import find_images
    from vq3dlib.reconstruction import ReconstructOptions, reconstruct_images

    _threads(args.threads)
    with user_input("reconstruct", ValueError):
        options = ReconstructOptions(
            frames=args.frames,
            elevation=args.elevation,
            sweep=args.sweep,
            size=args.size,
            render_size=args.render_size,
            fps=args.fps,
            background=args.background,
            crop=args.crop,
            mesh=args.mesh,
            mesh_resolution=args.mesh_resolution,
            threshold=args.threshold,
            distance=args.distance,
            fov=args.fov,
            view=_view(args),
        )
    out = _check_dir_arg(args.out)
    images = find_images(args.images)
    if not images:
        raise UsageError(f"no image files in {', '.join(args.images)}")
    model = _load_model(args.model, args.device)
    report = reconstruct_images(
        model, images, out, options, progress=not args.no_progress,
        on_error=lambda path, message: tqdm.write(f"vq3d: error: {message}", file=sys.stderr),
    )  # fmt: skip
    for name, files in report.written.items():
        print(f"{out / name}/: {', '.join(p.name for p in files)}")
    if report.failed:
        print(f"vq3d: {len(report.failed)} of {len(images)} images failed", file=sys.stderr)
        return 2
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Scene codes → turntable images."""
    _threads(args.threads)
    model = _load_model(args.model, args.device)
    out = _check_dir_arg(args.out)
    indices = _load_scene(args.scene)
    expected = (model.config.grid_size, model.config.grid_size)
    if tuple(indices.shape[1:3]) != expected and indices.shape[1:2] != (model.config.num_tokens,):
        raise UsageError(
            f"the scene codes have shape {list(indices.shape)} but the model expects "
            f"[B, {expected[0]}, {expected[1]}] or [B, {model.config.num_tokens}]"
        )
    with user_input("--scene", ValueError):  # e.g. codes outside the model's vocabulary
        scene = model.decode_indices(indices.to(next(model.parameters()).device))
    for b in range(len(scene)):
        turn = render_turntable(
            scene, args.frames, args.elevation, b, args.sweep, distance=args.distance, fov_degrees=args.fov
        )
        write_gif(turn["rgb"], out / f"scene{b:02d}_turntable.gif", size=args.size)
        for f in range(turn["rgb"].shape[0]) if args.frames_png else ():
            write_png(turn["rgb"][f], out / f"scene{b:02d}_frame{f:03d}.png", size=args.size)
        write_png(disparity_image(turn["depth"][:1])[0], out / f"scene{b:02d}_depth.png", size=args.size)
    view = _view(args)
    if view is not None:
        cams = view_cameras(model.config, view.yaw, view.pitch, view.distance, view.fov, resolution=args.size)
        seen = scene.render(Cameras.cat([cams] * len(scene))).images()  # camera i sees scene i
        for b in range(len(scene)):
            write_png(seen["rgb"][b].clamp(0, 1).cpu(), out / f"scene{b:02d}_view.png")
            write_png(colorize_depth(seen["depth"][b : b + 1])[0], out / f"scene{b:02d}_view_depth.png")
    print(f"rendered {len(scene)} scene(s) x {args.frames} frames into {out}")
    return 0


def _load_prior(path: str, model, device: str):
    """The stage-2 prior of ``--prior`` (eval mode), checked against the stage-1 ``model``."""
    from vq3dlib.train.stage2 import load_prior

    with user_input("--prior", FileNotFoundError, ValueError):
        prior = load_prior(path, map_location=device)
    if prior.vocab_size != model.config.vocab_size or prior.seq_len != model.config.prior_seq_len:
        raise UsageError(
            f"the prior (vocab {prior.vocab_size}, length {prior.seq_len}) does not match the stage-1 "
            f"model (vocab {model.config.vocab_size}, length {model.config.prior_seq_len})"
        )
    return prior


def cmd_sample(args: argparse.Namespace) -> int:
    """Prior samples → scenes → turntables."""
    _threads(args.threads)
    model = _load_model(args.model, args.device)
    prior = _load_prior(args.prior, model, args.device)
    if args.label is not None and not 0 <= args.label < max(prior.num_classes, 1):
        raise UsageError(f"--label must be in [0, {prior.num_classes}), got {args.label}")
    out = _check_dir_arg(args.out)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    with user_input("sample", ValueError):  # --temperature, --top-k, --top-p, --cfg-scale out of range
        codes = prior.sample(
            args.n,
            args.label,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            cfg_scale=args.cfg_scale,
            generator=gen,
        )
    scene = model.decode_indices(codes)  # the prior's flat [n, prior_seq_len] codes -> grid layout
    frames = [
        render_turntable(scene, args.frames, args.elevation, index=b, sweep=args.sweep)["rgb"]
        for b in range(args.n)
    ]
    for b, fr in enumerate(frames):
        write_gif(fr, out / f"sample{b:02d}_turntable.gif", size=args.size)
    write_gif(torch.cat(frames, dim=-1), out / "samples.gif", size=args.size)
    save_scene(scene.indices, out / f"samples.{SCENE_FILE}")
    print(f"sampled {args.n} scene(s) into {out} (samples.gif, sampleXX_turntable.gif, samples.{SCENE_FILE})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Held-out metrics of a stage-1 model."""
    from vq3dlib.data import ImageFolderDataset, ProceduralScenes
    from vq3dlib.train.evaluate import evaluate_stage1

    if args.prior and args.data != "procedural":
        raise UsageError("--prior is scored on procedural scenes (their classes); leave --data at procedural")
    _threads(args.threads)
    model = _load_model(args.model, args.device)
    size = model.config.image_size
    if args.data == "procedural":
        data = ProceduralScenes(args.n, size, n_novel_views=1, seed=args.data_seed)
    else:
        if not Path(args.data).is_dir():
            raise UsageError(f"--data must be 'procedural' or an image folder, got {args.data!r}")
        with user_input("--data", FileNotFoundError, ValueError):
            data = ImageFolderDataset(args.data, size)
    json_path = _check_json_arg(args.json)
    with user_input("--data", UnreadableImageError):
        metrics = evaluate_stage1(model, data, batch_size=args.batch_size, max_items=args.n)
    _print_metrics(metrics, metrics["n_images"])
    if args.prior:
        metrics["stage2"] = _eval_prior(args, model)
        from vq3dlib.train.evaluate_stage2 import stage2_table

        print()
        print(stage2_table(metrics["stage2"]))
    if json_path is not None:
        with user_input("--json", OSError):
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(metrics, indent=2))
        print(f"wrote {json_path}")
    return 0


def _eval_prior(args: argparse.Namespace, model) -> dict[str, float]:
    """The stage-2 figures of ``--prior`` on procedural scenes (:mod:`vq3dlib.train.evaluate_stage2`)."""
    from vq3dlib.train.evaluate_stage2 import (
        Stage2EvalConfig,
        evaluate_stage2_procedural,
        prior_training_codes,
    )

    prior = _load_prior(args.prior, model, args.device)
    if prior.num_classes < 2:
        raise UsageError(f"--prior must be class-conditional (num_classes >= 2), got {prior.num_classes}")
    with user_input("eval", ValueError):
        cfg = Stage2EvalConfig(
            eval_size=args.prior_eval_size, samples_per_class=args.samples_per_class,
            cfg_scale=args.cfg_scale, top_k=args.top_k, classifier_steps=args.classifier_steps,
            batch_size=args.batch_size,
        )  # fmt: skip
    train_seed = args.data_seed - 1  # --data-seed is the held-out seed (training seed + 1)
    codes = prior_training_codes(args.prior, model, args.train_size, train_seed)
    return evaluate_stage2_procedural(model, prior, codes, args.train_size, train_seed, cfg)["metrics"]


def cmd_export_mesh(args: argparse.Namespace) -> int:
    """Scene → closed marching-cubes mesh with vertex colours (GLB, OBJ, PLY)."""
    from vq3dlib.io import MESH_FORMATS

    _threads(args.threads)
    if (args.image is None) == (args.scene is None):
        raise UsageError("give exactly one of IMAGE or --scene FILE")
    if Path(args.out).suffix.lower() not in MESH_FORMATS:
        raise UsageError(f"--out must end in {', '.join(MESH_FORMATS)}, got {args.out!r}")
    model = _load_model(args.model, args.device)
    device = next(model.parameters()).device
    if args.image is not None:
        scene = model.reconstruct(_load_image(args.image, model.config.image_size, args).to(device))
    else:
        with user_input("--scene", ValueError):
            scene = model.decode_indices(_load_scene(args.scene).to(device))
    if not 0 <= args.index < len(scene):
        raise UsageError(f"--index must be in [0, {len(scene)}) for this scene file, got {args.index}")
    with user_input("export-mesh", ValueError):  # e.g. a --threshold outside the density range
        mesh = scene.mesh(args.resolution, args.threshold, scene=args.index, colors=not args.no_colors)
    path = write_mesh(mesh, args.out)
    closed = "watertight" if mesh.is_watertight else "not watertight"
    print(f"wrote {path} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces, {closed})")
    return 0


# ----------------------------------------------------------------------------------- parser


def _add_common(p: argparse.ArgumentParser, model: bool = True, bundled_default: bool = False) -> None:
    if model:
        p.add_argument(
            "--model",
            "-m",
            required=not bundled_default,
            default=None,
            help="stage-1 model: a run folder (vq3d train/demo --out), a checkpoint, a model.safetensors or "
            "the name of a bundled model"
            + (f" (default: the bundled {DEFAULT_PRETRAINED!r})" if bundled_default else ""),
        )
    p.add_argument("--device", type=_device_arg, default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _top_k_arg(text: str) -> int | None:
    """``--top-k``: a whole number >= 1, or 0 for no top-k filtering (``None``)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (0: no filtering), got {text}")
    return value or None


def _add_top_k(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--top-k",
        type=_top_k_arg,
        default=DEFAULT_TOP_K,
        help=f"{what}keep the k most likely codes per token, 0 = all (default: {DEFAULT_TOP_K})",
    )


def _device_arg(text: str) -> str:
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` of a GPU that is there."""
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or auto, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or auto, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA device is available here (use cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: there are {torch.cuda.device_count()} CUDA device(s)")
    return text


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _open_interval(low: float, high: float):
    """An argparse type: a number strictly between ``low`` and ``high``."""

    def parse(text: str) -> float:
        value = _finite_float(text)
        if not low < value < high:
            raise argparse.ArgumentTypeError(f"must be in ({low:g}, {high:g}) degrees, got {text}")
        return value

    return parse


def _colour_arg(text: str) -> str:
    from vq3dlib.io import parse_color

    try:
        parse_color(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _sweep_degrees(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 360.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 360] degrees, got {text}")
    return value


def _add_turntable(p: argparse.ArgumentParser, frames: int = 24) -> None:
    p.add_argument(
        "--frames", type=_positive_int, default=frames, help=f"turntable frames (default: {frames})"
    )
    p.add_argument(
        "--elevation",
        type=_open_interval(-90.0, 90.0),
        default=DEFAULT_ELEVATION,
        help=f"turntable elevation in degrees (default: {DEFAULT_ELEVATION:g})",
    )
    p.add_argument(
        "--sweep",
        type=_sweep_degrees,
        default=DEFAULT_SWEEP,
        help=f"degrees of azimuth the turntable swings through around the input view; 360 orbits the "
        f"whole scene (default: {DEFAULT_SWEEP:g})",
    )


def _add_view(p: argparse.ArgumentParser, frames: int = 24) -> None:
    _add_turntable(p, frames)
    p.add_argument(
        "--size", type=_positive_int, default=128, help="output image height in pixels (default: 128)"
    )


def _add_camera(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("camera", "render any view: --yaw/--pitch add a still view from that camera")
    g.add_argument(
        "--yaw", type=_finite_float, default=None, help="view azimuth in degrees (0: the input view)"
    )
    g.add_argument(
        "--pitch", type=_open_interval(-90.0, 90.0), default=None,
        help="view elevation in degrees above the horizon",
    )  # fmt: skip
    g.add_argument(
        "--distance",
        type=_positive_float,
        default=None,
        help="camera distance of views and turntable (default: the model's)",
    )
    g.add_argument(
        "--fov",
        type=_open_interval(0.0, 180.0),
        default=None,
        help="vertical field of view in degrees (default: the model's)",
    )


def _add_input_image(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--background",
        type=_colour_arg,
        default="white",
        help="colour transparent pixels are put on, also the padding of --crop pad: a name or #rrggbb "
        "(default: white)",
    )
    p.add_argument(
        "--crop",
        choices=CROP_MODES,
        default="center",
        help="make the image square by cropping its centre or padding it (default: center)",
    )


def _add_mesh_level(p: argparse.ArgumentParser, resolution_flag: str) -> None:
    p.add_argument(
        resolution_flag, type=_positive_int, default=128, help="marching-cubes grid per axis (default: 128)"
    )
    p.add_argument(
        "--threshold",
        type=_finite_float,
        default=None,
        help="density level (default: automatic, the density at which one grid cell is 50%% opaque, or "
        "the middle of the density range when that is outside it)",
    )


def _add_stage2_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prior-eval-size", type=_positive_int, default=96, help="stage 2: held-out scenes (default: 96)"
    )
    p.add_argument(
        "--samples-per-class", type=_positive_int, default=16, help="stage 2: samples per class (default: 16)"
    )
    p.add_argument(
        "--cfg-scale",
        type=float,
        default=DEFAULT_CFG_SCALE,
        help=f"stage 2: classifier-free guidance scale (default: {DEFAULT_CFG_SCALE:g})",
    )
    _add_top_k(p, "stage 2: ")
    p.add_argument(
        "--classifier-steps", type=_positive_int, default=300, help="stage 2: classifier steps (default: 300)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``vq3d`` argument parser (one sub-parser per command).

    Example:
        >>> build_parser().parse_args(["demo", "--steps", "10"]).steps
        10
    """
    from vq3dlib import __version__

    parser = argparse.ArgumentParser(
        prog="vq3d",
        description="VQ3D: train a 3D-aware image autoencoder, reconstruct images as 3D scenes, "
        "sample scenes.",
        epilog="Start with 'vq3d demo' (a few minutes on a laptop CPU). Config fields: --set key=value "
        "(see vq3dlib.train.stage1.Stage1Config / Stage2Config; model fields as model.<field>).",
    )
    parser.add_argument("--version", action="version", version=f"vq3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="train tiny on procedural scenes, reconstruct held-out scenes, report metrics",
        description="Trains the 'tiny' VQ3D model on procedural scenes (a few minutes on a 2-core "
        "CPU), reconstructs held-out scenes from one image each and writes turntable "
        "GIFs, depth maps, metrics.json and training logs to --out. Prints held-out "
        "reconstruction PSNR, novel-view PSNR and aligned depth error next to trivial "
        "baselines (mean image, constant depth).",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    from vq3dlib.demo import DEMO_DEFAULTS as d  # noqa: N811
    p.add_argument("--steps", type=int, default=d["steps"], help=f"training steps (default: {d['steps']})")
    p.add_argument(
        "--time-budget",
        type=float,
        default=d["time_budget_s"],
        help=f"stop training after this many seconds, 0 = no limit (default: {d['time_budget_s']:.0f})",
    )
    batch = d["batch_size"]
    p.add_argument("--batch-size", type=int, default=batch, help=f"images per step (default: {batch})")
    p.add_argument(
        "--train-size",
        type=int,
        default=d["train_size"],
        help=f"procedural training scenes (default: {d['train_size']})",
    )
    p.add_argument(
        "--eval-size", type=int, default=d["eval_size"], help=f"held-out scenes (default: {d['eval_size']})"
    )
    p.add_argument("--scenes", type=int, default=4, help="held-out scenes shown as turntables (default: 4)")
    _add_turntable(p)
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out/train")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a Stage1Config field")
    p.add_argument(
        "--no-stage2", action="store_true", help="stage 1 only: no prior, samples or stage-2 figures"
    )
    p.add_argument(
        "--prior-steps", type=_positive_int, default=1000, help="prior training steps (default: 1000)"
    )
    p.add_argument(
        "--prior-time-budget",
        type=float,
        default=120.0,
        help="prior training seconds, 0 = no limit (default: 120)",
    )
    _add_stage2_eval(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p, model=False)
    p.set_defaults(func=cmd_demo, device="auto")

    p = sub.add_parser(
        "train",
        help="train stage 1 (autoencoder) or stage 2 (prior)",
        description="Stage 1 trains the VQ3D autoencoder (+ discriminators); stage 2 trains the "
        "code prior on codes of a frozen stage-1 model. Runs under torchrun for DDP.",
    )
    p.add_argument("--stage", type=int, choices=(1, 2), default=1, help="1 or 2 (default: 1)")
    p.add_argument("--config", default="tiny", help="model config name for stage 1 (default: tiny)")
    p.add_argument(
        "--data",
        default=None,
        help="'procedural' (default) or an image folder (depth maps next to the images: x.npy or "
        "x.depth.png; --set depth=required makes them mandatory, depth=none ignores them)",
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/stage1 or runs/stage2)")
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.add_argument(
        "--batch-size", type=int, default=None, help="images (stage 1) / sequences (stage 2) per step"
    )
    p.add_argument("--stage1", default=None, help="stage 2: the stage-1 model (run folder, checkpoint, file)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field, e.g. lr=3e-4, amp=bf16, model.image_size=16, prior.prior_width=64",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(p, model=False)
    p.set_defaults(func=cmd_train, device="auto")

    p = sub.add_parser(
        "reconstruct",
        help="images -> 3D scenes -> turntable MP4/GIF, depth, coloured mesh, scene codes",
        description="Reconstructs a 3D scene from each image (one forward pass) and writes, into "
        "OUT/<image name>/: turntable.mp4 and turntable.gif (the camera swinging around the input "
        "view), turntable_depth.gif and depth.png (colour-mapped depth), input.png, "
        "reconstruction.png, the scene codes scene.safetensors and, with --mesh, a mesh with the "
        "scene's colour at each vertex. Unreadable files are reported and skipped (exit status 2).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any Pillow format) or folders")
    p.add_argument("--out", default="reconstructions", help="output folder (default: reconstructions)")
    p.add_argument(
        "--mesh",
        default=None,
        metavar="FILE",
        help="also write a coloured mesh, named FILE (.glb, .obj or .ply) in each image's folder",
    )
    _add_mesh_level(p, "--mesh-resolution")
    p.add_argument("--fps", type=_positive_int, default=12, help="turntable frames per second (default: 12)")
    p.add_argument(
        "--render-size",
        type=_positive_int,
        default=None,
        help="side the scene is rendered at before the model's super-resolution head brings it to --size "
        "(default: the model's own ratio, 64 for --size 128 with the bundled model; --render-size equal "
        "to --size renders every pixel, about 3x the turntable time)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_input_image(p)
    _add_common(p, bundled_default=True)
    _add_view(p, frames=30)
    _add_camera(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser(
        "render",
        help="model + scene codes -> turntable images",
        description="Decodes saved scene codes (from reconstruct or sample) and renders them.",
    )
    p.add_argument("--scene", required=True, help="scene codes (*.scene.safetensors from reconstruct/sample)")
    p.add_argument("--out", default="renders", help="output folder (default: renders)")
    p.add_argument("--frames-png", action="store_true", help="also write every frame as a PNG")
    _add_common(p)
    _add_view(p)
    _add_camera(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "sample",
        help="stage-2 prior samples -> scenes -> turntables",
        description="Samples code sequences from a trained prior and renders the decoded scenes.",
    )
    p.add_argument(
        "--prior", required=True, help="stage-2 prior: run folder, checkpoint or prior.safetensors"
    )
    p.add_argument("--n", type=_positive_int, default=4, help="number of samples (default: 4)")
    p.add_argument("--label", type=int, default=None, help="class label (default: unconditional)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1)")
    _add_top_k(p, "")
    p.add_argument("--top-p", type=float, default=None, help="nucleus filtering")
    p.add_argument(
        "--cfg-scale",
        type=float,
        default=DEFAULT_CFG_SCALE,
        help=f"classifier-free guidance scale (default: {DEFAULT_CFG_SCALE:g})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--out", default="samples", help="output folder (default: samples)")
    _add_common(p)
    _add_view(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "eval",
        help="held-out metrics of a stage-1 model",
        description="Reconstruction PSNR/SSIM, novel-view PSNR, aligned depth error and codebook "
        "usage, each next to a trivial baseline.",
    )
    p.add_argument("--data", default="procedural", help="'procedural' (default) or an image folder")
    p.add_argument("--n", type=_positive_int, default=64, help="images to evaluate (default: 64)")
    p.add_argument(
        "--data-seed",
        type=int,
        default=1,
        help="procedural seed (default: 1 = the held-out scenes of training with data_seed 0)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=16, help="batch size (default: 16)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.add_argument(
        "--prior",
        default=None,
        help="also evaluate this stage-2 prior (run folder, checkpoint or prior.safetensors): class accuracy "
        "of class-conditional samples, FID vs held-out images next to the reconstructions' FID, copies "
        "of training code grids (procedural scenes)",
    )
    p.add_argument(
        "--train-size",
        type=_positive_int,
        default=512,
        help="--prior: procedural training scenes (seed --data-seed - 1) for the classifier, and for the "
        "codes when the prior's folder has no codes.safetensors (default: 512)",
    )
    _add_stage2_eval(p)
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "export-mesh",
        help="scene -> closed marching-cubes mesh with vertex colours (GLB, OBJ or PLY)",
        description="Extracts a density level set of a reconstructed (IMAGE) or decoded (--scene) "
        "scene with marching cubes, closed where it meets the meshed cube, colours each vertex with "
        "the scene's colour there and writes it (GLB, OBJ or PLY by the --out extension).",
    )
    p.add_argument("image", nargs="?", default=None, help="input image (or give --scene)")
    p.add_argument("--scene", default=None, help="scene codes file instead of an image")
    p.add_argument("--index", type=int, default=0, help="which scene of the file (default: 0)")
    p.add_argument("--out", default="mesh.glb", help="mesh file: .glb, .obj or .ply (default: mesh.glb)")
    _add_mesh_level(p, "--resolution")
    p.add_argument("--no-colors", action="store_true", help="no vertex colours")
    _add_input_image(p)
    _add_common(p, bundled_default=True)
    p.set_defaults(func=cmd_export_mesh)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vq3d`` console script; returns the exit status.

    Usage errors (:class:`UsageError`, and argparse's) print a one-line message and return 2; any
    other exception propagates with its traceback.

    Example:
        >>> main(["render", "--model", "/no/such/model", "--scene", "x"])  # the message goes to stderr
        2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version / usage errors
        return int(exc.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    tune_cpu_allocator()
    try:
        code = int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("vq3d: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        if os.environ.get("VQ3D_DEBUG"):
            raise
        print(f"vq3d: error: {exc}", file=sys.stderr)
        return 2
    from vq3dlib.train.distributed import exit_worker, launched_distributed

    if launched_distributed():  # a torchrun worker whose command is done: no gloo teardown abort
        exit_worker(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
