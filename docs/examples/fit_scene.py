"""Fit one procedural scene with a learnable contracted triplane + a small MLP ("a NeRF in minutes").

Built only from vq3dlib's public blocks:

* data: :class:`vq3dlib.ProceduralScenes` gives a scene; it is ray cast (exact colour and depth) from
  three rings of :func:`vq3dlib.orbit_cameras` (training) and random :class:`vq3dlib.NovelViewSampler`
  views (held out);
* field: :class:`vq3dlib.ContractedTriplane` (learnable planes over MERF's L∞-contracted space, so the
  sky sphere at radius 20 fits) + :class:`vq3dlib.TriplaneField` (density and colour MLP), joined into
  the renderer's field protocol by :class:`vq3dlib.RadianceField`;
* rendering: :class:`vq3dlib.OccupancyGrid` filled by the nerfacc-style EMA update
  (``update_every_n_steps``) and :class:`vq3dlib.Renderer` (packed marching, early stop, volume
  rendering, starting ``--near`` = 1 in front of the cameras so no floaters grow on them);
* metrics: :func:`vq3dlib.psnr`, :func:`vq3dlib.depth_abs_rel`, :func:`vq3dlib.depth_delta`.

It prints training and held-out PSNR (and the PSNR of a trivial baseline: the mean training colour),
depth errors, and writes ``turntable.gif`` (ground truth | render | depth) and ``metrics.json``.

CPU::

    PYTHONPATH=. python docs/examples/fit_scene.py --steps 300 --out /tmp/fit

No distortion loss: :func:`vq3dlib.losses.distortion_loss` on world-space ``t`` of an unbounded scene
(samples out to the sky at t ≈ 20) rewards opaque walls near the camera; it needs normalised distances.

GPU, side by side with nerfacc's ``OccGridEstimator`` on the same field, data and optimiser::

    python docs/examples/fit_scene.py --device cuda --resolution 256 --steps 5000 --compare-nerfacc

``--compare-nerfacc`` trains three pipelines from the same initial weights: ``vq3dlib`` (contracted grid,
steps growing outside the unit cube, as on the CPU), ``vq3dlib-nested`` and ``nerfacc``. The last two
sample identically: nerfacc's layout (a grid of 6 nested levels around the unit box, reaching the sky
at radius 20) with uniform steps of ``--step-size`` along the ray and no cone angle, so their rows
compare the implementations. Peak memory is measured over the training steps only (setup and
evaluation excluded).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from vq3dlib import (
    Cameras,
    ContractedTriplane,
    NovelViewSampler,
    OccupancyGrid,
    ProceduralScenes,
    RadianceField,
    Renderer,
    TriplaneField,
    depth_abs_rel,
    depth_delta,
    orbit_cameras,
    psnr,
    set_finite_checks,
)

DISTANCE, FOV = 2.7, 40.0  # the dataset's camera distance and vertical field of view


UNIT_BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
NESTED_LEVELS = 6  # nested grid levels around the unit box: 2^5 = 32 > the sky radius 20


def make_field(args: argparse.Namespace) -> RadianceField:
    """Triplane + MLP as the renderer's field: ``(x, d, scene) -> (density, rgb)`` and ``.density``."""
    triplane = ContractedTriplane(args.plane_resolution, args.channels, contraction="linf", reduce="sum")
    # density ~1 at init: every cell starts occupied (density * step > occ_thre) and is carved away
    return RadianceField(
        triplane, TriplaneField(args.channels, args.hidden, hidden_layers=1, density_bias=0.0)
    )


def make_data(args: argparse.Namespace, device: torch.device) -> dict:
    """Ground-truth renders: training orbit rings and held-out novel views of one scene."""
    size = (args.resolution, args.resolution)
    scene = ProceduralScenes(size=args.scene + 1, resolution=args.resolution, seed=args.seed).scene(
        args.scene
    )
    rings = ((5.0, 0.0), (22.0, 7.0), (40.0, 14.0))  # (elevation, first azimuth) of each orbit ring
    per_ring = max(args.train_views // len(rings), 1)
    train = Cameras.cat(
        [orbit_cameras(per_ring, DISTANCE, el, FOV, size, start_azimuth_degrees=az) for el, az in rings]
    )
    sampler = NovelViewSampler(DISTANCE, FOV, size, yaw=180.0, pitch=(5.0, 40.0), seed=args.seed + 1)
    test = sampler.sample(args.test_views)
    gt_train, gt_test = scene.render(train), scene.render(test)
    gen = torch.Generator().manual_seed(args.seed)
    rays = train.generate_rays()
    return {
        "scene": scene,
        "train": train.to(device),
        "test": test.to(device),
        "train_rgb": gt_train["rgb"].to(device),
        "test_rgb": gt_test["rgb"].to(device),
        "test_depth": gt_test["depth"].to(device),
        "test_objects": (gt_test["mask"] > 0.5).to(device),
        # every training ray with its target colour, flattened
        "origins": rays.origins.reshape(-1, 3).to(device),
        "directions": rays.directions.reshape(-1, 3).to(device),
        "colors": gt_train["rgb"].permute(0, 2, 3, 1).reshape(-1, 3).to(device),
        "eval_pixels": torch.randperm(len(train) * size[0] * size[1], generator=gen)[:4096].to(device),
    }


# ------------------------------------------------------------------------------------------- ours
class VQ3DPipeline:
    """The vq3dlib way: an ``OccupancyGrid`` with nerfacc's EMA update + the packed ``Renderer``.

    ``layout="contracted"`` (default): one grid over MERF's contracted cube, steps growing as
    ``|x|_inf^2`` outside the unit cube. ``layout="nested"``: nerfacc's layout and sampling (6 nested
    world-space levels, uniform steps, no step cap) for a like-for-like comparison with nerfacc.
    """

    def __init__(
        self, field: RadianceField, args: argparse.Namespace, device: torch.device, layout: str = "contracted"
    ) -> None:
        self.field, self.args = field, args
        if layout == "contracted":
            self.name = "vq3dlib"
            self.sampling = f"contracted grid, step {args.step_size:.4g} x max(1, |x|^2)"
            self.grid = OccupancyGrid(resolution=args.grid_resolution)  # the contracted cube [-2, 2]^3
            spacing, max_samples = "contracted", 1024
        else:
            self.name, self.sampling = "vq3dlib-nested", nested_sampling(args)
            self.grid = OccupancyGrid(
                UNIT_BOX, resolution=args.grid_resolution, levels=NESTED_LEVELS, contraction="none"
            )
            # no cap on the samples per ray, like nerfacc: enough steps for the outer box's diagonal
            spacing, max_samples = "t", math.ceil(2**NESTED_LEVELS * math.sqrt(3) / args.step_size) + 1
        self.renderer = Renderer(
            self.grid,
            step_size=args.step_size,
            spacing=spacing,
            near=args.near,
            max_samples=max_samples,
            jitter=True,  # stratified sampling in training mode; evaluation passes jitter=False
        ).to(device)

    def occupancy(self, x: Tensor) -> Tensor:
        # occupancy = opacity of one marching step at x (steps grow as |x|_inf^2 with contracted spacing)
        return self.field.density(x) * self.renderer.step_length(x)

    def train_step(self, step: int, origins: Tensor, directions: Tensor) -> tuple[Tensor, int]:
        self.grid.update_every_n_steps(step, self.occupancy, occ_thre=1e-2, warmup_steps=self.args.warmup)
        out = self.renderer(self.field, (origins, directions))
        return out.rgb, out.t_starts.numel()

    @torch.no_grad()
    def render_rays(self, origins: Tensor, directions: Tensor) -> Tensor:
        return self.renderer(self.field, (origins, directions), jitter=False).rgb

    @torch.no_grad()
    def render_views(self, cameras: Cameras) -> tuple[Tensor, Tensor]:
        # Cameras → rays on the field's device (with z-scale: z-depth) → channels-first images
        images = self.renderer(self.field, cameras, jitter=False).images()
        return images["rgb"], images["depth"]

    def occupied_fraction(self) -> float:
        return float(self.grid.occupancy_fraction()[0])  # one scene


def nested_sampling(args: argparse.Namespace) -> str:
    return f"{NESTED_LEVELS} nested levels, uniform step {args.step_size:.4g}, no cone angle"


# ----------------------------------------------------------------------------------- nerfacc (GPU)
class NerfaccPipeline:
    """nerfacc 0.5's ``OccGridEstimator`` + ``rendering`` on the same field (CUDA only).

    Same layout and sampling as ``VQ3DPipeline(layout="nested")``: nested levels around the unit box,
    ``render_step_size = --step-size``, ``cone_angle = 0``, the same near plane, early stop
    (``early_stop_eps=1e-4``, ``alpha_thre=0``, nerfacc's defaults and ours) and EMA update.
    """

    name = "nerfacc"

    def __init__(self, field: RadianceField, args: argparse.Namespace, device: torch.device) -> None:
        import nerfacc

        self.nerfacc, self.field, self.args, self.device = nerfacc, field, args, device
        self.sampling = nested_sampling(args)
        self.estimator = nerfacc.OccGridEstimator(
            roi_aabb=UNIT_BOX, resolution=args.grid_resolution, levels=NESTED_LEVELS
        ).to(device)
        self.step_size = args.step_size

    def _render(self, origins: Tensor, directions: Tensor, train: bool) -> tuple[Tensor, Tensor, Tensor]:
        def sigma_fn(t_starts, t_ends, ray_indices):
            x = origins[ray_indices] + directions[ray_indices] * ((t_starts + t_ends) / 2)[:, None]
            return self.field.density(x)

        def rgb_sigma_fn(t_starts, t_ends, ray_indices):
            x = origins[ray_indices] + directions[ray_indices] * ((t_starts + t_ends) / 2)[:, None]
            density, rgb = self.field(x, directions[ray_indices])
            return rgb, density

        ray_indices, t_starts, t_ends = self.estimator.sampling(
            origins,
            directions,
            sigma_fn=sigma_fn,
            near_plane=self.args.near,
            render_step_size=self.step_size,
            early_stop_eps=1e-4,
            alpha_thre=0.0,
            stratified=train,
            cone_angle=0.0,
        )
        rgb, _, depth, _ = self.nerfacc.rendering(
            t_starts, t_ends, ray_indices, n_rays=origins.shape[0], rgb_sigma_fn=rgb_sigma_fn
        )
        return rgb, depth[:, 0], t_starts

    def train_step(self, step: int, origins: Tensor, directions: Tensor) -> tuple[Tensor, int]:
        def occ_eval_fn(x):
            return self.field.density(x) * self.step_size

        self.estimator.update_every_n_steps(step, occ_eval_fn, occ_thre=1e-2, warmup_steps=self.args.warmup)
        rgb, _, t_starts = self._render(origins, directions, train=True)
        return rgb, t_starts.numel()

    @torch.no_grad()
    def render_rays(self, origins: Tensor, directions: Tensor) -> Tensor:
        return self._render(origins, directions, train=False)[0]

    @torch.no_grad()
    def render_views(self, cameras: Cameras) -> tuple[Tensor, Tensor]:
        rays = cameras.to(self.device).generate_rays()
        o, d = rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)
        parts = [
            self._render(o[i : i + 65536], d[i : i + 65536], train=False) for i in range(0, len(o), 65536)
        ]
        rgb = torch.cat([p[0] for p in parts]).reshape(*rays.shape, 3).permute(0, 3, 1, 2)
        depth = (torch.cat([p[1] for p in parts]) * rays.z_scale.reshape(-1)).reshape(rays.shape)[:, None]
        return rgb, depth

    def occupied_fraction(self) -> float:
        return float(self.estimator.binaries.float().mean())


# ------------------------------------------------------------------------------------------ train
def evaluate(pipe, cameras: Cameras, rgb: Tensor, depth: Tensor | None = None, objects=None) -> dict:
    pred_rgb, pred_depth = pipe.render_views(cameras)
    out = {"psnr": float(psnr(pred_rgb.clamp(0, 1), rgb).mean())}
    if depth is not None:  # metric depth errors (no alignment); the sky sphere (depth ~20) is left out
        for name, mask in (("", depth < 10.0), ("objects_", objects)):
            out[name + "depth_abs_rel"] = float(depth_abs_rel(pred_depth, depth, mask, space=None).nanmean())
            out[name + "depth_delta"] = float(depth_delta(pred_depth, depth, mask, space=None).nanmean())
    return out


def train_psnr(pipe, data: dict) -> float:
    """PSNR on a fixed random subset of the training pixels (cheap enough to run before training)."""
    idx = data["eval_pixels"]
    rgb = pipe.render_rays(data["origins"][idx], data["directions"][idx])
    return float(psnr(rgb.clamp(0, 1)[None], data["colors"][idx][None]))


class PeakMemory:
    """Peak CUDA memory over the training steps only: ``pause()`` before an evaluation, ``resume()`` after."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device, self.peak, self.start = device, 0, 0

    def resume(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = self.start or torch.cuda.memory_allocated(self.device)

    def pause(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))

    def mib(self) -> tuple[float, float]:
        """(peak, peak above what was allocated when training started) in MiB; NaN off CUDA."""
        if not self.cuda:
            return float("nan"), float("nan")
        return self.peak / 2**20, (self.peak - self.start) / 2**20


def fit(pipe, data: dict, params: list[dict], args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """Trains ``pipe.field``; returns the history and the time to ``args.target_psnr`` (held out)."""
    device = data["origins"].device
    gen = torch.Generator(device=device).manual_seed(args.seed)
    opt = torch.optim.Adam(params, eps=1e-15)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, [int(args.steps * f) for f in (0.5, 0.75, 0.9)], gamma=0.33
    )
    n_rays_total = data["origins"].shape[0]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    first = train_psnr(pipe, data)
    log(f"[{pipe.name}] initial train PSNR: {first:.2f} dB (4096 training pixels)")
    log(f"[{pipe.name}] sampling: {pipe.sampling}")
    train_time, reached, history = 0.0, None, []
    memory = PeakMemory(device)
    memory.resume()  # setup and the evaluation above are not counted
    for step in range(args.steps):
        sync()
        t0 = time.perf_counter()
        idx = torch.randint(n_rays_total, (args.batch_rays,), device=device, generator=gen)
        rgb, n_samples = pipe.train_step(step, data["origins"][idx], data["directions"][idx])
        mse = (rgb - data["colors"][idx]).square().mean()
        loss = mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        sync()
        train_time += time.perf_counter() - t0
        last = step == args.steps - 1
        if step % args.log_every == 0 or last:
            log(
                f"[{pipe.name}] step {step + 1:5d}/{args.steps}  loss {loss.item():.4f}  "
                f"batch_psnr {-10 * math.log10(max(mse.item(), 1e-10)):5.2f}  "
                f"samples/ray {n_samples / args.batch_rays:5.1f}  "
                f"occupied {100 * pipe.occupied_fraction():5.1f}%  "
                f"{train_time:6.1f}s"
            )
        if args.target_psnr and reached is None and ((step + 1) % args.eval_every == 0 or last):
            memory.pause()
            held = evaluate(pipe, data["test"], data["test_rgb"])["psnr"]
            memory.resume()
            history.append((step + 1, train_time, held))
            log(f"[{pipe.name}] held-out PSNR {held:.2f} dB at step {step + 1} ({train_time:.1f}s)")
            if held >= args.target_psnr:
                reached = (step + 1, train_time)
                log(
                    f"[{pipe.name}] reached held-out PSNR {held:.2f} >= {args.target_psnr} "
                    f"at step {step + 1}, {train_time:.1f}s of training"
                )
    memory.pause()
    peak, above_start = memory.mib()
    return {
        "initial_train_psnr": first,
        "train_time_s": train_time,
        "reached": reached,
        "history": history,
        "sampling": pipe.sampling,
        "peak_memory_mib": peak,
        "peak_memory_above_start_mib": above_start,
    }


def save_turntable(pipe, data: dict, args: argparse.Namespace, path: Path) -> None:
    """GIF of an orbit: ground truth | render | depth (near bright), one frame per camera."""
    size = (args.resolution, args.resolution)
    cams = orbit_cameras(args.frames, DISTANCE, 20.0, FOV, size)
    gt = data["scene"].render(cams)["rgb"]
    rgb, depth = pipe.render_views(cams)  # the renderer moves the cameras to the field's device
    disparity = (1.0 / depth.clamp_min(0.5)).clamp(0, 2) / 2  # depth 0.5 → white, far → black
    panels = torch.cat([gt, rgb.clamp(0, 1).cpu(), disparity.expand(-1, 3, -1, -1).cpu()], dim=-1)
    frames = [Image.fromarray((p.permute(1, 2, 0) * 255).round().byte().numpy()) for p in panels]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=80, loop=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="optimisation steps")
    p.add_argument("--resolution", type=int, default=64, help="image height and width")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="fit_scene_out", help="output folder (turntable.gif, metrics.json)")
    p.add_argument("--quick", action="store_true", help="a few steps at a tiny resolution (tests)")
    p.add_argument("--scene", type=int, default=0, help="index of the procedural scene")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-views", type=int, default=48)
    p.add_argument("--test-views", type=int, default=8)
    p.add_argument("--batch-rays", type=int, default=1024)
    p.add_argument("--plane-resolution", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--grid-resolution", type=int, default=64, help="occupancy grid cells per side")
    p.add_argument("--step-size", type=float, default=1 / 64, help="marching step (contracted space)")
    p.add_argument("--near", type=float, default=1.0, help="ray start (keeps floaters off the cameras)")
    p.add_argument("--warmup", type=int, default=256, help="occupancy warm-up steps (all cells evaluated)")
    p.add_argument("--lr", type=float, default=2e-2, help="triplane learning rate (MLP: lr / 4)")
    p.add_argument("--frames", type=int, default=24, help="turntable frames")
    p.add_argument("--check-finite", action="store_true", help="keep vq3dlib's NaN/Inf input checks on")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument(
        "--compare-nerfacc",
        action="store_true",
        help="also train nerfacc's OccGridEstimator on the same field and data (CUDA)",
    )
    p.add_argument(
        "--target-psnr",
        type=float,
        default=0.0,
        help="report the training time to reach this held-out PSNR (0: off; 24 with --compare-nerfacc)",
    )
    p.add_argument("--eval-every", type=int, default=100, help="held-out evaluation period for --target-psnr")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.resolution, args.train_views, args.test_views = min(args.steps, 30), 16, 9, 2
        args.batch_rays, args.plane_resolution, args.grid_resolution = 512, 32, 16
        args.step_size, args.warmup, args.frames, args.log_every = 1 / 32, 8, 4, 10
    if args.compare_nerfacc and not args.target_psnr:
        args.target_psnr = 24.0
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.compare_nerfacc and device.type != "cuda":
        raise SystemExit(
            "--compare-nerfacc needs --device cuda (nerfacc's OccGridEstimator has CUDA kernels only)"
        )
    torch.manual_seed(args.seed)
    set_finite_checks(args.check_finite)  # NaN/Inf input checks cost a reduction per op call
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = make_data(args, device)
    mean_colour = data["train_rgb"].mean(dim=(0, 2, 3))[None, :, None, None].expand_as(data["test_rgb"])
    baseline = float(psnr(mean_colour, data["test_rgb"]).mean())
    print(
        f"scene {args.scene}: {len(data['train'])} training views, {len(data['test'])} held-out views, "
        f"{args.resolution}x{args.resolution}, device {device}"
    )
    print(f"baseline (mean training colour) held-out PSNR: {baseline:.2f} dB")

    field = make_field(args).to(device)
    pipes = [VQ3DPipeline(field, args, device)]
    if args.compare_nerfacc:  # same initial weights, same sampling for the last two
        pipes.append(VQ3DPipeline(copy.deepcopy(field), args, device, layout="nested"))
        pipes.append(NerfaccPipeline(copy.deepcopy(field), args, device))
    results = {"baseline_heldout_psnr": baseline, "args": vars(args)}
    for pipe in pipes:
        params = [
            {"params": pipe.field.encoder.parameters(), "lr": args.lr},  # the triplane
            {"params": pipe.field.head.parameters(), "lr": args.lr / 4},  # the MLP
        ]
        run = fit(pipe, data, params, args, print)
        train = train_psnr(pipe, data)
        held = evaluate(pipe, data["test"], data["test_rgb"], data["test_depth"], data["test_objects"])
        prefix = "" if pipe.name == "vq3dlib" else f"[{pipe.name}] "
        print(f"{prefix}train PSNR: {train:.2f} dB (initial {run['initial_train_psnr']:.2f} dB)")
        print(f"{prefix}held-out PSNR: {held['psnr']:.2f} dB (baseline {baseline:.2f} dB)")
        print(
            f"{prefix}held-out depth abs-rel: {held['depth_abs_rel']:.4f}, "
            f"delta<1.25: {held['depth_delta']:.3f} (objects and ground)"
        )
        print(
            f"{prefix}held-out depth abs-rel: {held['objects_depth_abs_rel']:.4f}, "
            f"delta<1.25: {held['objects_depth_delta']:.3f} (objects only)"
        )
        print(f"{prefix}training time: {run['train_time_s']:.1f}s for {args.steps} steps")
        results[pipe.name] = {**run, "train_psnr": train, "heldout": held}
    save_turntable(pipes[0], data, args, out_dir / "turntable.gif")
    print(f"wrote {out_dir / 'turntable.gif'}")
    if args.compare_nerfacc:
        target = f"time to {args.target_psnr} dB"
        print(f"device {torch.cuda.get_device_name(device)}; peak memory over the training steps only")
        print(
            f"{'pipeline':15s} {target:>18s} {'peak MiB':>9s} {'(+ start)':>10s} "
            f"{'held-out PSNR':>14s}  sampling"
        )
        for pipe in pipes:
            r = results[pipe.name]
            when = f"{r['reached'][1]:.1f}s @ {r['reached'][0]}" if r["reached"] else "not reached"
            print(
                f"{pipe.name:15s} {when:>18s} {r['peak_memory_mib']:9.0f} "
                f"{r['peak_memory_above_start_mib']:+10.0f} {r['heldout']['psnr']:14.2f}  {r['sampling']}"
            )
        print("vq3dlib-nested and nerfacc sample alike (same grid layout, steps and early stop)")
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
