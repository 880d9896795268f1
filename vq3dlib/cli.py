"""The ``vq3d`` command line: demo, training, reconstruction, rendering, sampling, evaluation, meshes.

Run ``vq3d --help`` or ``vq3d <command> --help``. Commands:

* ``vq3d demo`` — trains the ``tiny`` model on procedural scenes for a few minutes on a CPU, then
  reconstructs held-out scenes: turntable GIFs, depth maps, ``metrics.json`` and logs in ``--out``;
  prints held-out reconstruction PSNR, novel-view PSNR and aligned depth error next to trivial baselines.
* ``vq3d train`` — stage 1 (:func:`vq3dlib.train.stage1.train_stage1`) or stage 2
  (:func:`vq3dlib.train.stage2.train_stage2`); any config field via ``--set key=value``.
* ``vq3d reconstruct IMAGE`` — one image → 3D scene → turntable GIF, depth map, scene codes.
* ``vq3d render`` — a model + scene codes → images from a turntable.
* ``vq3d sample`` — stage-2 prior samples → scenes → turntables.
* ``vq3d eval`` — held-out metrics of a stage-1 model (procedural scenes or an image folder).
* ``vq3d export-mesh`` — marching-cubes mesh (PLY) of a reconstructed scene (needs scikit-image).

Errors (missing files, bad configs) print ``vq3d: error: ...`` and exit with status 2 (set
``VQ3D_DEBUG=1`` for the traceback).

Example:
    >>> main(["--version"])  # doctest: +ELLIPSIS
    vq3d ...
    0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vq3dlib.models.scene import DEFAULT_ELEVATION, DEFAULT_SWEEP, render_turntable, turntable_cameras

SCENE_FILE = "scene.safetensors"


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


# ----------------------------------------------------------------------------------- helpers


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def load_image(path: str | os.PathLike, size: int) -> Tensor:
    """An image file as ``[1, 3, size, size]`` in [0, 1] (center crop to a square, bicubic resize).

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(image, size).save(path)
    return path


def disparity_image(depth: Tensor) -> Tensor:
    """Depth ``[..., 1, H, W]`` → a displayable ``[..., 1, H, W]`` normalised inverse depth (near = bright).

    Example:
        >>> disparity_image(torch.tensor([[[[1.0, 2.0]]]])).flatten().tolist()
        [1.0, 0.0]
    """
    disp = 1.0 / depth.clamp_min(1e-3)
    lo = disp.flatten(-3).amin(-1)[..., None, None, None]
    hi = disp.flatten(-3).amax(-1)[..., None, None, None]
    return (disp - lo) / (hi - lo).clamp_min(1e-8)


def save_scene(indices: Tensor, path: str | os.PathLike, labels: Tensor | None = None) -> Path:
    """Saves scene code indices ``[B, ...]`` (and optional labels) to a safetensors file for ``vq3d render``.

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
    """Code indices saved by :func:`save_scene` (or any safetensors/``torch.save`` file with ``indices``)."""
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


def _model(path: str, device: str = "cpu"):
    from vq3dlib.train.stage1 import load_stage1_model

    return load_stage1_model(path, map_location=device).eval()


def _print_metrics(metrics: dict[str, Any], n: int) -> None:
    rows = [
        ("reconstruction PSNR [dB] (higher is better)", "psnr", "baseline_colour_psnr", "mean colour"),
        ("", "psnr", "baseline_psnr", "mean image of the test set"),
        (
            "novel-view PSNR [dB] (true novel cameras)",
            "novel_psnr",
            "baseline_novel_colour_psnr",
            "mean colour",
        ),
        ("", "novel_psnr", "baseline_novel_psnr", "mean image of the test set"),
        (
            "depth AbsRel, aligned (lower is better)",
            "depth_abs_rel",
            "baseline_depth_abs_rel",
            "constant depth",
        ),
        (
            "depth delta<1.25, aligned (higher is better)",
            "depth_delta1",
            "baseline_depth_delta1",
            "constant depth",
        ),
    ]
    print(f"\nheld-out scenes: {n}")
    print(f"{'metric':<46} {'VQ3D':>9} {'baseline':>9}  baseline is")
    for label, key, base, what in rows:
        if key in metrics:
            print(f"{label:<46} {metrics[key]:>9.3f} {metrics.get(base, float('nan')):>9.3f}  {what}")
    if "ssim" in metrics:
        print(f"{'SSIM':<46} {metrics['ssim']:>9.3f}")
    if "codebook_perplexity" in metrics:
        print(
            f"{'codebook perplexity / used fraction':<46} {metrics['codebook_perplexity']:>9.1f} "
            f"{metrics['codebook_used']:>9.3f}"
        )


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


# ----------------------------------------------------------------------------------- commands


def _stage1_config(args: argparse.Namespace, **defaults: Any):
    from vq3dlib.train.loop import apply_overrides
    from vq3dlib.train.stage1 import Stage1Config

    base = {k: v for k, v in defaults.items() if v is not None}
    cfg = Stage1Config(**base)
    cfg = apply_overrides(cfg, args.set or [])
    cfg.model_config()  # validate early
    return cfg


def cmd_demo(args: argparse.Namespace) -> int:
    """Train tiny on procedural scenes, then reconstruct held-out scenes and report metrics."""
    from vq3dlib.data import ProceduralScenes
    from vq3dlib.models.scene import Scene
    from vq3dlib.train.stage1 import train_stage1

    _threads(args.threads)
    out = Path(args.out)
    cfg = _stage1_config(
        args,
        model="tiny",
        out_dir=str(out / "train"),
        steps=args.steps,
        batch_size=args.batch_size,
        train_size=args.train_size,
        eval_size=args.eval_size,
        time_budget_s=args.time_budget,
        log_every=10,
        image_every=100,
        ckpt_every=100,
        eval_every=0,
        seed=args.seed,
        progress=not args.no_progress,
        device=args.device,
        resume=args.resume,
    )
    print(
        f"vq3d demo: training '{cfg.model}' on {cfg.train_size} procedural scenes for up to "
        f"{cfg.steps} steps (batch {cfg.batch_size}, time budget {cfg.time_budget_s:.0f} s, "
        f"{torch.get_num_threads()} threads); "
        f"output in {out}/",
        flush=True,
    )
    t0 = time.perf_counter()
    result = train_stage1(cfg)
    model = result["model"].eval()
    metrics = result["metrics"]

    # held-out reconstructions: turntables (true scene | reconstruction) and depth maps
    held = ProceduralScenes(cfg.eval_size, model.config.image_size, n_novel_views=1, seed=cfg.data_seed + 1)
    n_show = min(args.scenes, len(held))
    rows = []
    device = next(model.parameters()).device
    for i in range(n_show):
        item = held[i]
        scene: Scene = model.reconstruct(item["image"][None].to(device))
        turn = render_turntable(scene, args.frames, args.elevation, sweep=args.sweep)
        cams = turntable_cameras(
            model.config, args.frames, args.elevation, resolution=model.config.image_size, sweep=args.sweep
        )
        truth = held.scene(i).render(cams)
        r = model.config.render_resolution
        gt_rgb = torch.nn.functional.interpolate(truth["rgb"], size=(r, r), mode="area")
        rows.append(torch.cat([gt_rgb, turn["rgb"]], dim=-1))  # [F, 3, r, 2r]
        canon = scene.render(model.canonical_cameras(1)).images()
        gt_depth = torch.nn.functional.interpolate(item["depth"][None], size=(r, r), mode="nearest-exact")
        recon = torch.nn.functional.interpolate(
            canon["rgb"].clamp(0, 1).cpu(),
            size=item["image"].shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        panel = torch.cat(
            [
                torch.nn.functional.interpolate(item["image"][None], size=(r, r), mode="area")[0],
                torch.nn.functional.interpolate(recon, size=(r, r), mode="area")[0],
                disparity_image(gt_depth)[0].expand(3, r, r),
                disparity_image(canon["depth"].cpu())[0].expand(3, r, r),
            ],
            dim=-1,
        )
        write_png(panel, out / f"depth_{i:02d}.png", size=4 * r)
        write_gif(torch.cat([gt_rgb, turn["rgb"]], dim=-1), out / f"turntable_{i:02d}.gif", size=4 * r)
    if rows:
        write_gif(torch.cat(rows, dim=-2), out / "turntables.gif", size=2 * rows[0].shape[-2] * n_show)
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
        "held_out": metrics,
        "config": {"train": {k: v for k, v in vars(cfg).items()}, "model": model.config.to_dict()},
        "outputs": {
            "turntables": "turntables.gif (left: true scene, right: reconstruction from one image)",
            "depth": "depth_XX.png (input | reconstruction | true disparity | rendered disparity)",
            "logs": "train/logs/scalars.jsonl, train/logs/images/*.png, train/logs/tb (TensorBoard)",
            "model": "train/model.safetensors",
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    print(
        f"\ntrained {result['step']} steps in {result['train_seconds']:.0f} s "
        f"({result['images_per_second']:.1f} images/s, {result['skipped_steps']} generator and "
        f"{result['skipped_disc_steps']} discriminator steps skipped)"
    )
    if metrics:
        _print_metrics(metrics, metrics.get("n_images", 0))
        beats_trivial = (
            metrics["psnr"] > metrics["baseline_colour_psnr"]
            and metrics["novel_psnr"] > metrics["baseline_novel_colour_psnr"]
            and metrics["depth_abs_rel"] < metrics["baseline_depth_abs_rel"]
        )
        beats_mean_image = (
            metrics["psnr"] > metrics["baseline_psnr"]
            and metrics["novel_psnr"] > metrics["baseline_novel_psnr"]
        )
        if not beats_trivial:
            print(
                "note: not every metric beats its trivial baseline yet; train longer (--steps, --time-budget)"
            )
        elif not beats_mean_image:
            print(
                "note: better than the trivial baselines (mean colour, constant depth); not yet better than "
                "the test-set mean image everywhere — train longer for that (--steps, --time-budget)"
            )
    print(
        f"\nwrote {out}/turntables.gif, {out}/depth_*.png, {out}/metrics.json, logs in {out}/train/logs "
        f"(total {time.perf_counter() - t0:.0f} s)"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Stage-1 or stage-2 training."""
    from vq3dlib.train.loop import apply_overrides

    _threads(args.threads)
    if args.stage == 1:
        from vq3dlib.train.stage1 import train_stage1

        cfg = _stage1_config(
            args,
            model=args.config,
            data=args.data,
            out_dir=args.out,
            steps=args.steps,
            batch_size=args.batch_size,
            resume=args.resume or None,
            device=args.device,
            progress=not args.no_progress,
        )
        result = train_stage1(cfg)
        print(
            f"stage 1: {result['step']} steps, {result['skipped_steps']} generator and "
            f"{result['skipped_disc_steps']} discriminator steps skipped; model: {result['model_path']}"
        )
        if result["metrics"]:
            _print_metrics(result["metrics"], result["metrics"].get("n_images", 0))
        return 0
    from vq3dlib.train.stage2 import Stage2Config, train_stage2

    if args.config != "tiny":
        raise CLIError("--config applies to stage 1; stage 2 takes the model config from --stage1")
    if not args.stage1:
        raise CLIError("stage 2 needs --stage1 PATH (a stage-1 run folder, checkpoint or model.safetensors)")
    if not Path(args.stage1).exists():
        raise FileNotFoundError(f"--stage1 path not found: {args.stage1}")
    base = {
        k: v
        for k, v in dict(
            stage1=args.stage1,
            data=args.data,
            out_dir=args.out,
            steps=args.steps,
            batch_size=args.batch_size,
            resume=args.resume or None,
            device=args.device,
            progress=not args.no_progress,
        ).items()
        if v is not None
    }
    sets = [
        s.replace("prior.", "prior_overrides.", 1) if s.startswith("prior.") else s for s in (args.set or [])
    ]
    cfg = apply_overrides(Stage2Config(**base), sets)
    result = train_stage2(cfg)
    print(f"stage 2: {result['step']} steps, final loss {result['loss']:.4f}; prior: {result['prior_path']}")
    return 0


def _check_dir_arg(path: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"--out must be a folder, but {p} is a file")
    return p


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """Image → scene → turntable GIF + depth map + scene codes."""
    _threads(args.threads)
    model = _model(args.model, args.device)
    out = _check_dir_arg(args.out)
    image = load_image(args.image, model.config.image_size).to(next(model.parameters()).device)
    scene = model.reconstruct(image)
    turn = render_turntable(scene, args.frames, args.elevation, sweep=args.sweep)
    canon = scene.render(model.canonical_cameras(1)).images()
    stem = Path(args.image).stem
    size = args.size
    write_gif(turn["rgb"], out / f"{stem}_turntable.gif", size=size)
    write_gif(disparity_image(turn["depth"]), out / f"{stem}_turntable_depth.gif", size=size)
    write_png(canon["rgb"][0].clamp(0, 1), out / f"{stem}_reconstruction.png", size=size)
    write_png(disparity_image(canon["depth"])[0], out / f"{stem}_depth.png", size=size)
    save_scene(scene.indices, out / f"{stem}.{SCENE_FILE}")
    print(
        f"wrote {out}/{stem}_turntable.gif, {stem}_turntable_depth.gif, {stem}_reconstruction.png, "
        f"{stem}_depth.png and the scene codes {stem}.{SCENE_FILE}"
    )
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Scene codes → turntable images."""
    _threads(args.threads)
    model = _model(args.model, args.device)
    out = _check_dir_arg(args.out)
    indices = load_scene_indices(args.scene)
    expected = (model.config.grid_size, model.config.grid_size)
    if tuple(indices.shape[1:3]) != expected and indices.shape[1:2] != (model.config.num_tokens,):
        raise CLIError(
            f"the scene codes have shape {list(indices.shape)} but the model expects "
            f"[B, {expected[0]}, {expected[1]}] or [B, {model.config.num_tokens}]"
        )
    scene = model.decode_indices(indices.to(next(model.parameters()).device))
    paths = []
    for b in range(len(scene)):
        turn = render_turntable(scene, args.frames, args.elevation, index=b, sweep=args.sweep)
        paths.append(write_gif(turn["rgb"], out / f"scene{b:02d}_turntable.gif", size=args.size))
        for f in range(turn["rgb"].shape[0]) if args.frames_png else ():
            write_png(turn["rgb"][f], out / f"scene{b:02d}_frame{f:03d}.png", size=args.size)
        write_png(disparity_image(turn["depth"][:1])[0], out / f"scene{b:02d}_depth.png", size=args.size)
    print(f"rendered {len(scene)} scene(s) x {args.frames} frames into {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Prior samples → scenes → turntables."""
    from vq3dlib.train.stage2 import load_prior

    _threads(args.threads)
    model = _model(args.model, args.device)
    prior = load_prior(args.prior, map_location=args.device)
    if prior.vocab_size != model.config.vocab_size or prior.seq_len != model.config.prior_seq_len:
        raise CLIError(
            f"the prior (vocab {prior.vocab_size}, length {prior.seq_len}) does not match the stage-1 "
            f"model (vocab {model.config.vocab_size}, length {model.config.prior_seq_len})"
        )
    if args.label is not None and not 0 <= args.label < max(prior.num_classes, 1):
        raise CLIError(f"--label must be in [0, {prior.num_classes}), got {args.label}")
    out = _check_dir_arg(args.out)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
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
    indices = scene.indices
    frames = [
        render_turntable(scene, args.frames, args.elevation, index=b, sweep=args.sweep)["rgb"]
        for b in range(args.n)
    ]
    for b, fr in enumerate(frames):
        write_gif(fr, out / f"sample{b:02d}_turntable.gif", size=args.size)
    write_gif(torch.cat(frames, dim=-1), out / "samples.gif", size=args.size)
    save_scene(indices, out / f"samples.{SCENE_FILE}")
    print(f"sampled {args.n} scene(s) into {out} (samples.gif, sampleXX_turntable.gif, samples.{SCENE_FILE})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Held-out metrics of a stage-1 model."""
    from vq3dlib.data import ImageFolderDataset, ProceduralScenes
    from vq3dlib.train.evaluate import evaluate_stage1

    _threads(args.threads)
    model = _model(args.model, args.device)
    size = model.config.image_size
    if args.data == "procedural":
        data = ProceduralScenes(args.n, size, n_novel_views=1, seed=args.data_seed)
    else:
        if not Path(args.data).is_dir():
            raise FileNotFoundError(f"--data must be 'procedural' or an image folder, got {args.data!r}")
        data = ImageFolderDataset(args.data, size)
    metrics = evaluate_stage1(model, data, batch_size=args.batch_size, max_items=args.n)
    _print_metrics(metrics, metrics["n_images"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=2))
        print(f"wrote {args.json}")
    return 0


def write_ply(vertices: Tensor, faces: Tensor, path: str | os.PathLike) -> Path:
    """Writes a triangle mesh (``vertices [V, 3]``, ``faces [F, 3]``) as ASCII PLY.

    Example:
        >>> import tempfile
        >>> v = torch.eye(3); f = torch.tensor([[0, 1, 2]])
        >>> write_ply(v, f, tempfile.mkdtemp() + "/m.ply").read_text().splitlines()[2]
        'element vertex 3'
    """
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


def cmd_export_mesh(args: argparse.Namespace) -> int:
    """Scene → marching-cubes mesh (PLY)."""
    _threads(args.threads)
    if (args.image is None) == (args.scene is None):
        raise CLIError("give exactly one of IMAGE or --scene FILE")
    model = _model(args.model, args.device)
    device = next(model.parameters()).device
    if args.image is not None:
        scene = model.reconstruct(load_image(args.image, model.config.image_size).to(device))
    else:
        scene = model.decode_indices(load_scene_indices(args.scene).to(device))
    verts, faces = scene.export_mesh(resolution=args.resolution, threshold=args.threshold, scene=args.index)
    path = write_ply(verts, faces, args.out)
    print(f"wrote {path} ({verts.shape[0]} vertices, {faces.shape[0]} faces)")
    return 0


# ----------------------------------------------------------------------------------- parser


def _add_common(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        p.add_argument(
            "--model",
            "-m",
            required=True,
            help="stage-1 model: a run folder, a checkpoint or a model.safetensors",
        )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _sweep_degrees(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 360.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 360] degrees, got {text}")
    return value


def _add_turntable(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=24, help="turntable frames (default: 24)")
    p.add_argument(
        "--elevation",
        type=float,
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


def _add_view(p: argparse.ArgumentParser) -> None:
    _add_turntable(p)
    p.add_argument("--size", type=int, default=128, help="output image height in pixels (default: 128)")


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
    p.add_argument("--steps", type=int, default=600, help="training steps (default: 600)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=240.0,
        help="stop training after this many seconds, 0 = no limit (default: 240)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="images per step (default: 4)")
    p.add_argument("--train-size", type=int, default=512, help="procedural training scenes (default: 512)")
    p.add_argument("--eval-size", type=int, default=32, help="held-out scenes (default: 32)")
    p.add_argument("--scenes", type=int, default=4, help="held-out scenes shown as turntables (default: 4)")
    _add_turntable(p)
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out/train")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a Stage1Config field")
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
        help="image file -> 3D scene -> turntable GIF, depth map, scene codes",
        description="Reconstructs a 3D scene from one image and renders a turntable.",
    )
    p.add_argument("image", help="input image (center-cropped to a square, resized to the model's size)")
    p.add_argument("--out", default="reconstructions", help="output folder (default: reconstructions)")
    _add_common(p)
    _add_view(p)
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
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "sample",
        help="stage-2 prior samples -> scenes -> turntables",
        description="Samples code sequences from a trained prior and renders the decoded scenes.",
    )
    p.add_argument(
        "--prior", required=True, help="stage-2 prior: run folder, checkpoint or prior.safetensors"
    )
    p.add_argument("--n", type=int, default=4, help="number of samples (default: 4)")
    p.add_argument("--label", type=int, default=None, help="class label (default: unconditional)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1)")
    p.add_argument("--top-k", type=int, default=None, help="top-k filtering")
    p.add_argument("--top-p", type=float, default=None, help="nucleus filtering")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (default: 1)")
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
    p.add_argument("--n", type=int, default=64, help="images to evaluate (default: 64)")
    p.add_argument(
        "--data-seed",
        type=int,
        default=1,
        help="procedural seed (default: 1 = the held-out scenes of training with data_seed 0)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "export-mesh",
        help="scene -> marching-cubes mesh (PLY; needs scikit-image)",
        description="Extracts a density level set of a reconstructed (IMAGE) or decoded (--scene) "
        "scene with marching cubes and writes it as PLY.",
    )
    p.add_argument("image", nargs="?", default=None, help="input image (or give --scene)")
    p.add_argument("--scene", default=None, help="scene codes file instead of an image")
    p.add_argument("--index", type=int, default=0, help="which scene of the file (default: 0)")
    p.add_argument("--out", default="mesh.ply", help="output PLY file (default: mesh.ply)")
    p.add_argument("--resolution", type=int, default=96, help="marching-cubes grid (default: 96)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="density level (default: automatic, the density at which one grid cell is 50%% opaque, or "
        "the middle of the density range when that is outside it)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_export_mesh)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vq3d`` console script; returns the exit status.

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
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("vq3d: interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, ValueError, TypeError, ImportError, KeyError) as exc:
        if os.environ.get("VQ3D_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"vq3d: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
