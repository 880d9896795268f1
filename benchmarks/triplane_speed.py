"""Fused ContractedTriplane sampling vs the pure-torch reference (and F.grid_sample), side by side.

Forward + backward (to planes and points) of ``planes [1, 3, C, R, R]`` sampled at ``N`` random
points with contraction, as in NeRF training. Prints ms, points/s, peak memory and speed-up ratios,
all measured in this one run on the named device. On CPU each method runs in its own subprocess so
peak-RSS figures are per method. On CUDA it also reports the achieved bandwidth (bytes touched /
time) as a fraction of a measured device-to-device copy.

    python benchmarks/triplane_speed.py [--device cpu|cuda] [--points 262144] [--resolution 256]
                                        [--channels 32] [--json]

Targets (checked here, never in unit tests): CPU extension ≥ 3× the torch reference on 2 cores at
2^18 points, 3×32 channels, 256² planes; CUDA ≥ 2.5× the reference.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from common import (
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
    "torch reference": "torch",
    "F.grid_sample x3": "grid_sample",
}
TARGETS = {"cpu": 3.0, "cuda": 2.5}


def _inputs(args: argparse.Namespace, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    planes = (torch.randn(1, 3, args.channels, args.resolution, args.resolution, generator=gen) * 0.1).to(
        device
    )
    points = (torch.randn(1, args.points, 3, generator=gen) * 1.5).to(device)
    return planes.requires_grad_(), points.requires_grad_()


def _step_fn(method: str, planes: torch.Tensor, points: torch.Tensor, contraction: str):
    from vq3dlib import backend
    from vq3dlib.contraction import contract
    from vq3dlib.ops import triplane_sample

    if method in ("ext", "torch"):

        def step():
            with backend.forced(method):
                out = triplane_sample(planes, points, contraction=contraction)
            out.square().sum().backward()

        return step

    def step():  # three F.grid_sample calls on the contracted points, as EG3D-style code does
        q = contract(points[0], contraction) / 2 if contraction != "none" else points[0]
        total = 0
        for p, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
            grid = torch.stack([q[:, a], q[:, b]], -1)[None, :, None, :]
            total = total + F.grid_sample(planes[:, p], grid, align_corners=False)[0, :, :, 0]
        total.square().sum().backward()

    return step


def _worker(args: argparse.Namespace) -> None:
    """Peak memory of one method in a fresh process (CPU peak RSS is per process)."""
    device = torch.device(args.device)
    planes, points = _inputs(args, device)
    step = _step_fn(args.worker, planes, points, args.contraction)
    print(json.dumps({"peak_bytes": peak_memory_bytes(step, device)}))


def _bytes_touched(args: argparse.Namespace) -> float:
    """Minimum bytes a fused fwd+bwd must move: texel reads/writes, points, features, gradients."""
    s, c, r = args.points, args.channels, args.resolution
    texels = 12 * c * 4 * s  # 3 planes x 4 corners x C floats, per pass
    fwd = 12 + texels + c * 4 * s
    bwd = 12 + c * 4 * s + texels * 3 + 12 + 2 * 3 * c * r * r * 4  # read, read+write grads, zero-init
    return float(fwd + bwd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--points", type=int, default=2**18)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--contraction", default="linf", choices=["none", "l2", "linf"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--worker", choices=list(METHODS.values()), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but no GPU is available")
    from vq3dlib.ops import use_extension

    methods = dict(METHODS)
    if not use_extension("triplane_sample", device):  # builds the extension before timing
        methods.pop("vq3dlib (ext)")
    planes, points = _inputs(args, device)
    steps = {label: _step_fn(m, planes, points, args.contraction) for label, m in methods.items()}
    times = time_interleaved_ms(steps, device, rounds=args.iters)
    rows = []
    for label, method in methods.items():
        if device.type == "cpu":
            forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
            peak = run_worker(__file__, [*forwarded, "--device", "cpu", "--worker", method])["peak_bytes"]
        else:
            peak = peak_memory_bytes(steps[label], device)
        rows.append({"method": label, "ms_value": times[label], "peak_value": peak})
    ref = next(r for r in rows if r["method"] == "torch reference")
    for r in rows:
        r["ms"] = f"{r['ms_value']:.1f}"
        r["points_per_s"] = f"{args.points / (r['ms_value'] * 1e-3):.3g}"
        r["peak"] = fmt_bytes(r["peak_value"])
        r["speedup_vs_ref"] = f"{ref['ms_value'] / r['ms_value']:.2f}x"
        r["memory_vs_ref"] = f"{r['peak_value'] / max(ref['peak_value'], 1):.2f}x"
    ours = rows[0]
    summary = {
        "benchmark": "triplane_speed",
        "device": device_name(device),
        "points": args.points,
        "resolution": args.resolution,
        "channels": args.channels,
        "contraction": args.contraction,
        "rows": rows,
    }
    if ours["method"] == "vq3dlib (ext)":
        speedup = ref["ms_value"] / ours["ms_value"]
        summary["speedup_ext_vs_reference"] = speedup
        summary["target_speedup"] = TARGETS[device.type]
        summary["target_met"] = speedup >= TARGETS[device.type]
        if device.type == "cuda":
            achieved = _bytes_touched(args) / (ours["ms_value"] * 1e-3) / 1e9
            copy = copy_bandwidth_gbs(device)
            summary["achieved_gbs"] = achieved
            summary["copy_bandwidth_gbs"] = copy
            summary["fraction_of_bandwidth_floor"] = achieved / copy
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"triplane_sample fwd+bwd on {summary['device']}: {args.points} points, "
        f"planes 3x{args.channels}x{args.resolution}^2, contraction={args.contraction}"
    )
    print_table(
        rows,
        [
            ("method", "method"),
            ("ms", "ms"),
            ("points_per_s", "points/s"),
            ("peak", "peak mem"),
            ("speedup_vs_ref", "speed-up vs ref"),
            ("memory_vs_ref", "memory vs ref"),
        ],
    )
    if "speedup_ext_vs_reference" in summary:
        met = "met" if summary["target_met"] else "NOT met"
        print(
            f"speed-up of the extension over the torch reference: {summary['speedup_ext_vs_reference']:.2f}x "
            f"(target {summary['target_speedup']}x: {met})"
        )
    if "fraction_of_bandwidth_floor" in summary:
        print(
            f"achieved {summary['achieved_gbs']:.0f} GB/s of bytes touched = "
            f"{100 * summary['fraction_of_bandwidth_floor']:.0f}% of a measured copy "
            f"({summary['copy_bandwidth_gbs']:.0f} GB/s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
