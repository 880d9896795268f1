"""Fused ContractedTriplane sampling vs ``F.grid_sample`` (what EG3D-style code uses), side by side.

Two benchmarks on ``planes [1, 3, C, R, R]`` sampled at random points with L∞ contraction:

* **fwd+bwd** (``--points``, default 2^18): forward, then backward to the planes and the points of
  ``out.square().sum()``, as in NeRF training;
* **double backward** (``--double-points``, default 2^16), an eikonal-style loss: ``s = features · w``
  (a fixed vector ``w``), ``n = ∂s/∂points`` with ``create_graph=True``, then
  ``((|n| - 1)^2).mean().backward()`` to the planes and points.

Methods: ``vq3dlib (ext)`` (the compiled kernels), the peers ``F.grid_sample x3`` (one call per
plane, as EG3D does) and ``F.grid_sample folded`` (one call over the three planes folded into the
batch, as TripoSR/OpenLRM do), both with ``align_corners=False`` like our default, on the same
contracted points; and our pure-torch ``torch reference``. The headline is ours vs each peer, with
its target and a met / NOT met verdict. Times are medians of interleaved rounds in one process; on
CPU each method's peak memory comes from its own subprocess (peak RSS). On CUDA the fwd+bwd also
reports the achieved bandwidth (bytes touched / time) as a fraction of a measured copy.

    python benchmarks/triplane_speed.py [--device cpu|cuda] [--points 262144] [--double-points 65536]
                                        [--resolution 256] [--channels 32] [--iters 5] [--threads N]
                                        [--skip-fwd-bwd | --skip-double] [--json]

Targets (checked here, never in unit tests): CPU fwd+bwd ≥ 5× either peer and double backward ≥ 3×
``F.grid_sample x3`` (2 cores, 2^18 points, 3×32×256²); CUDA fwd+bwd ≥ 2.5× either peer and ≥ 50%
of the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch
import torch.nn.functional as F

from common import (
    check_target,
    copy_bandwidth_gbs,
    device_name,
    fmt_bytes,
    peak_memory_bytes,
    print_table,
    run_worker,
    time_interleaved_ms,
)

METHODS = {
    "vq3dlib (ext)": "ext",
    "F.grid_sample x3": "grid_sample",
    "F.grid_sample folded": "grid_sample_folded",
    "torch reference": "torch",
}
PEERS = ("F.grid_sample x3", "F.grid_sample folded")
ALIGN_CORNERS = False  # triplane_sample's default; the peers use the same
PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # (width axis, height axis) of the xy, xz, yz planes
# ours / peer (>=) per device type and benchmark; CUDA double backward has no target (ratio only)
TARGETS = {
    "cpu": {"fwd_bwd": 5.0, "double_backward": 3.0},
    "cuda": {"fwd_bwd": 2.5, "bandwidth_fraction": 0.5},
}


def _inputs(args: argparse.Namespace, device: torch.device, n_points: int):
    """Planes, two sets of points (the steps alternate between them: each step sees other points, as
    a training step does, so nothing computed from the points carries over) and the eikonal vector."""
    gen = torch.Generator().manual_seed(0)
    planes = (torch.randn(1, 3, args.channels, args.resolution, args.resolution, generator=gen) * 0.1).to(
        device
    )
    points = [(torch.randn(1, n_points, 3, generator=gen) * 1.5).to(device) for _ in range(2)]
    points = [p.requires_grad_() for p in points]
    weight = torch.randn(args.channels, generator=gen).to(device)
    return planes.requires_grad_(), points, weight


def _features_fn(method: str, planes: torch.Tensor, contraction: str):
    """``points [1, N, 3] -> features [N, C]`` of one method."""
    from vq3dlib import backend
    from vq3dlib.contraction import contract
    from vq3dlib.ops import triplane_sample

    if method in ("ext", "torch"):

        def features(points):
            with backend.forced(method):
                out = triplane_sample(planes, points, contraction=contraction, align_corners=ALIGN_CORNERS)
            return out[0]

        return features

    def grids(points):
        q = contract(points[0], contraction) / 2 if contraction != "none" else points[0]
        return [torch.stack([q[:, a], q[:, b]], -1) for a, b in PLANE_AXES]  # 3 x [N, 2]

    if method == "grid_sample":  # one call per plane (EG3D)

        def features(points):
            total = 0
            for p, grid in enumerate(grids(points)):
                total = total + F.grid_sample(planes[:, p], grid[None, :, None], align_corners=ALIGN_CORNERS)
            return total[0, :, :, 0].t()

        return features

    def features(points):  # planes folded into the batch: one call (TripoSR, OpenLRM)
        folded = planes.reshape(-1, *planes.shape[2:])  # [3, C, R, R]
        out = F.grid_sample(folded, torch.stack(grids(points))[:, :, None], align_corners=ALIGN_CORNERS)
        return out.sum(0)[:, :, 0].t()

    return features


def _step_fn(method: str, section: str, planes, points: list, weight, contraction: str):
    features = _features_fn(method, planes, contraction)
    calls = itertools.count()
    if section == "fwd_bwd":

        def step():
            features(points[next(calls) % 2]).square().sum().backward()

        return step

    def step():  # eikonal-style: gradient of a scalar field w.r.t. the points, then backward through it
        x = points[next(calls) % 2]
        s = features(x) @ weight
        (normal,) = torch.autograd.grad(s.sum(), x, create_graph=True)
        (normal.norm(dim=-1) - 1).square().mean().backward()

    return step


def _worker(args: argparse.Namespace) -> None:
    """Peak memory of one method in a fresh process (CPU peak RSS is per process)."""
    device = torch.device(args.device)
    n = args.points if args.section == "fwd_bwd" else args.double_points
    planes, points, weight = _inputs(args, device, n)
    step = _step_fn(args.worker, args.section, planes, points, weight, args.contraction)
    print(json.dumps({"peak_bytes": peak_memory_bytes(step, device)}))


def _bytes_touched(args: argparse.Namespace) -> float:
    """Minimum bytes a fused fwd+bwd must move: texel reads/writes, points, features, gradients."""
    s, c, r = args.points, args.channels, args.resolution
    texels = 12 * c * 4 * s  # 3 planes x 4 corners x C floats, per pass
    fwd = 12 + texels + c * 4 * s
    bwd = 12 + c * 4 * s + texels * 3 + 12 + 2 * 3 * c * r * r * 4  # read, read+write grads, zero-init
    return float(fwd + bwd)


def _run_section(args, argv, device, methods: dict[str, str], section: str) -> list[dict]:
    n = args.points if section == "fwd_bwd" else args.double_points
    planes, points, weight = _inputs(args, device, n)
    steps = {
        label: _step_fn(m, section, planes, points, weight, args.contraction) for label, m in methods.items()
    }
    times = time_interleaved_ms(steps, device, rounds=args.iters)
    rows = []
    for label, method in methods.items():
        if args.no_memory:
            peak = float("nan")
        elif device.type == "cpu":
            forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
            worker = [*forwarded, "--device", "cpu", "--worker", method, "--section", section]
            peak = run_worker(__file__, worker)["peak_bytes"]
        else:
            peak = peak_memory_bytes(steps[label], device)
        rows.append(
            {"method": label, "section": section, "points": n, "ms_value": times[label], "peak_value": peak}
        )
    by = {r["method"]: r for r in rows}
    ours = by.get("vq3dlib (ext)")
    for r in rows:
        r["ms"] = f"{r['ms_value']:.1f}"
        r["points_per_s"] = f"{n / (r['ms_value'] * 1e-3):.3g}"
        r["peak"] = fmt_bytes(r["peak_value"])
        if ours is not None:
            r["ours_speedup"] = r["ms_value"] / ours["ms_value"]
            r["ours_memory"] = ours["peak_value"] / max(r["peak_value"], 1)
            r["speedup_cell"] = f"{r['ours_speedup']:.2f}x"
            r["memory_cell"] = f"{r['ours_memory']:.2f}x"
    return rows


def _verdicts(rows: list[dict], section: str, device: torch.device) -> dict[str, dict]:
    """``{"<section>_vs_<peer>": check_target(...)}`` for the peers with a target on this device."""
    target = TARGETS[device.type].get(section)
    by = {r["method"]: r for r in rows}
    if target is None or "vq3dlib (ext)" not in by:
        return {}
    peers = PEERS if section == "fwd_bwd" else PEERS[:1]
    return {f"{section}_vs_{peer}": check_target(by[peer]["ours_speedup"], target) for peer in peers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--points", type=int, default=2**18, help="points of the fwd+bwd benchmark")
    parser.add_argument("--double-points", type=int, default=2**16, help="points of the double backward")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--contraction", default="linf", choices=["none", "l2", "linf"])
    parser.add_argument("--iters", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--skip-double", action="store_true", help="only the fwd+bwd benchmark")
    parser.add_argument("--skip-fwd-bwd", action="store_true", help="only the double-backward benchmark")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the slow torch reference")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--worker", choices=list(METHODS.values()), help=argparse.SUPPRESS)
    parser.add_argument(
        "--section", default="fwd_bwd", choices=["fwd_bwd", "double_backward"], help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        _worker(args)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but no GPU is available")
    from vq3dlib.ops import use_extension

    methods = dict(METHODS)
    if args.skip_reference:
        methods.pop("torch reference")
    if not use_extension("triplane_sample", device):  # builds the extension before timing
        methods.pop("vq3dlib (ext)")
    sections = ([] if args.skip_fwd_bwd else ["fwd_bwd"]) + ([] if args.skip_double else ["double_backward"])
    if not sections:
        parser.error("--skip-fwd-bwd and --skip-double leave nothing to run")
    rows = {s: _run_section(args, argv, device, methods, s) for s in sections}
    targets: dict[str, dict] = {}
    for s in sections:
        targets.update(_verdicts(rows[s], s, device))
    summary = {
        "benchmark": "triplane_speed",
        "device": device_name(device),
        "points": args.points,
        "double_points": args.double_points,
        "resolution": args.resolution,
        "channels": args.channels,
        "contraction": args.contraction,
        "align_corners": ALIGN_CORNERS,
        "peer": PEERS[0],
        "rows": [r for s in sections for r in rows[s]],
        "targets": targets,
    }
    by = {r["method"]: r for r in rows.get("fwd_bwd", [])}
    if "double_backward" in rows and "vq3dlib (ext)" in {r["method"] for r in rows["double_backward"]}:
        summary["double_backward_speedup_vs_grid_sample"] = rows["double_backward"][1]["ours_speedup"]
    if "vq3dlib (ext)" in by:
        for peer, key in zip(PEERS, ("speedup_vs_grid_sample", "speedup_vs_grid_sample_folded")):
            summary[key] = by[peer]["ours_speedup"]
        if "torch reference" in by:
            summary["speedup_vs_reference"] = by["torch reference"]["ours_speedup"]
        if device.type == "cuda":
            achieved = _bytes_touched(args) / (by["vq3dlib (ext)"]["ms_value"] * 1e-3) / 1e9
            copy = copy_bandwidth_gbs(device)
            summary["achieved_gbs"] = achieved
            summary["copy_bandwidth_gbs"] = copy
            summary["fraction_of_bandwidth_floor"] = achieved / copy
            fraction = TARGETS["cuda"]["bandwidth_fraction"]
            targets["bandwidth_fraction"] = check_target(achieved / copy, fraction)
    summary["met"] = bool(targets) and all(t["met"] for t in targets.values())
    if args.json:
        print(json.dumps(summary))
        return 0
    columns = [("method", "method"), ("ms", "ms"), ("points_per_s", "points/s"), ("peak", "peak mem")]
    if "vq3dlib (ext)" in methods:
        columns += [("speedup_cell", "ours faster by"), ("memory_cell", "ours / its memory")]
    titles = {"fwd_bwd": "fwd+bwd", "double_backward": "double backward (eikonal-style)"}
    for s in sections:
        print(
            f"triplane_sample {titles[s]} on {summary['device']}: {rows[s][0]['points']} points, planes "
            f"3x{args.channels}x{args.resolution}^2, contraction={args.contraction}, "
            f"align_corners={ALIGN_CORNERS}"
        )
        print_table(rows[s], columns)
        print()
    for name, t in targets.items():
        unit = "" if name == "bandwidth_fraction" else "x"
        verdict = "met" if t["met"] else "NOT met"
        print(f"vq3dlib (ext) {name}: {t['value']:.2f}{unit} (target >= {t['target']}{unit}): {verdict}")
    if "fraction_of_bandwidth_floor" in summary:
        print(
            f"achieved {summary['achieved_gbs']:.0f} GB/s of bytes touched = "
            f"{100 * summary['fraction_of_bandwidth_floor']:.0f}% of a measured copy "
            f"({summary['copy_bandwidth_gbs']:.0f} GB/s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
