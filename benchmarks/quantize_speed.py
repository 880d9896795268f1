"""Forward+backward speed and peak memory: vq3dlib ``VectorQuantizer`` vs vector-quantize-pytorch.

Both run the same configuration (default: 2^16 input vectors of width 768, codebook 8192 x 32,
l2-normalised / cosine codes, EMA decay 0.99, commitment weight 0.25, plain straight-through
gradient) side by side in one invocation. On CPU every method runs in its own subprocess and its
peak memory is the peak RSS (``resource.getrusage().VmHWM``) minus that of a baseline process
that imports the same libraries and allocates the same input and output gradient. On CUDA the
peak is ``torch.cuda.max_memory_allocated`` above the same baseline.

    python benchmarks/quantize_speed.py                 # full size (vector-quantize-pytorch: ~9 GB)
    python benchmarks/quantize_speed.py --quick         # small sizes, seconds
    python benchmarks/quantize_speed.py --device cuda --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import device_name, peak_rss_bytes

METHODS = ("baseline", "vq3dlib", "vector-quantize-pytorch")


def _build(method: str, args: argparse.Namespace):
    """A callable ``x -> (out, loss)`` for ``method``, or ``None`` for the baseline."""
    import torch

    if method == "baseline":
        return None
    if method == "vq3dlib":
        from vq3dlib.quantize import VectorQuantizer

        m = (
            VectorQuantizer(
                args.dim,
                args.codebook_size,
                code_dim=args.code_dim,
                l2_normalize=True,
                ema=True,
                decay=0.99,
                beta=0.25,
            )
            .to(args.device)
            .train()
        )

        def run(x):
            out, _, aux = m(x)
            return out, aux.loss

        return run
    from vector_quantize_pytorch import VectorQuantize

    m = (
        VectorQuantize(
            dim=args.dim,
            codebook_size=args.codebook_size,
            codebook_dim=args.code_dim,
            use_cosine_sim=True,
            decay=0.99,
            commitment_weight=0.25,
            rotation_trick=False,
            threshold_ema_dead_code=0,
            kmeans_init=False,
        )
        .to(args.device)
        .train()
    )

    def run_theirs(x):
        out, _, loss = m(x.unsqueeze(0))
        return out.squeeze(0), loss

    del torch
    return run_theirs


def worker(args: argparse.Namespace) -> dict:
    """Runs one method in this process and returns its timings and peak memory."""
    import torch
    import vector_quantize_pytorch  # noqa: F401  (same imports in every process, so baselines match)

    import vq3dlib.quantize  # noqa: F401

    torch.manual_seed(0)
    dev = torch.device(args.device)
    x = torch.randn(args.vectors, args.dim, device=dev, requires_grad=True)
    grad = torch.randn(args.vectors, args.dim, device=dev)
    run = _build(args.worker, args)
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
    times, cpu_times = [], []
    if run is not None:
        for i in range(args.warmup + args.repeats):
            x.grad = None
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            out, loss = run(x)
            torch.autograd.backward([out, loss], [grad, torch.ones_like(loss)])
            sync()
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
                cpu_times.append((time.process_time() - c0) * 1e3)
            del out, loss
    peak = (
        torch.cuda.max_memory_allocated(dev)
        if cuda
        else peak_rss_bytes()  # per process (VmHWM); ru_maxrss is inherited across exec
    )
    return {
        "method": args.worker,
        "ms_median": statistics.median(times) if times else None,
        "ms_min": min(times) if times else None,
        "cpu_ms_median": statistics.median(cpu_times) if cpu_times else None,
        "peak_bytes": peak,
        "device": device_name(args.device),
        "threads": torch.get_num_threads(),
    }


def _spawn(method: str, argv: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", method]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{method} failed (rc={res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--vectors", type=int, default=1 << 16)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--codebook-size", type=int, default=8192)
    p.add_argument("--code-dim", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=None, help="our nearest-code chunk (rows)")
    p.add_argument("--only-ours", action="store_true", help="skip vector-quantize-pytorch (for tuning)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small sizes (2^12 vectors, 1024 codes)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.vectors, args.codebook_size = min(args.vectors, 1 << 12), min(args.codebook_size, 1024)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}

    sizes = [
        "--device",
        args.device,
        "--vectors",
        str(args.vectors),
        "--dim",
        str(args.dim),
        "--codebook-size",
        str(args.codebook_size),
        "--code-dim",
        str(args.code_dim),
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
    ]
    if args.chunk_size is not None:
        sizes += ["--chunk-size", str(args.chunk_size)]
    methods = METHODS[:2] if args.only_ours else METHODS
    results = {m: _spawn(m, sizes) for m in methods}
    base = results.pop("baseline")["peak_bytes"]
    for r in results.values():
        r["extra_peak_bytes"] = r["peak_bytes"] - base
    report = {
        "device": results["vq3dlib"]["device"],
        "config": {
            "vectors": args.vectors,
            "dim": args.dim,
            "codebook_size": args.codebook_size,
            "code_dim": args.code_dim,
            "l2_normalize": True,
            "ema_decay": 0.99,
            "warmup": args.warmup,
            "repeats": args.repeats,
        },
        "baseline_peak_bytes": base,
        "results": results,
    }
    if not args.only_ours:
        ours, theirs = results["vq3dlib"], results["vector-quantize-pytorch"]
        report["speedup"] = theirs["ms_median"] / ours["ms_median"]
        report["cpu_time_speedup"] = theirs["cpu_ms_median"] / ours["cpu_ms_median"]
        report["peak_ratio"] = ours["peak_bytes"] / theirs["peak_bytes"]
        report["extra_peak_ratio"] = ours["extra_peak_bytes"] / max(theirs["extra_peak_bytes"], 1)
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    gib = 1 / 2**30
    print(f"device: {report['device']}")
    print(f"config: {report['config']}")
    print(f"baseline process peak: {base * gib:.2f} GiB (imports + input + output grad)")
    print(
        f"{'method':<26}{'median ms':>11}{'min ms':>10}{'cpu ms':>10}{'peak GiB':>10}{'above base GiB':>16}"
    )
    for name, r in results.items():
        print(
            f"{name:<26}{r['ms_median']:>11.1f}{r['ms_min']:>10.1f}{r['cpu_ms_median']:>10.1f}"
            f"{r['peak_bytes'] * gib:>10.2f}{r['extra_peak_bytes'] * gib:>16.2f}"
        )
    if not args.only_ours:
        print(
            f"speedup (theirs / ours): {report['speedup']:.2f}x wall, "
            f"{report['cpu_time_speedup']:.2f}x cpu time"
        )
        print(
            f"peak memory ratio (ours / theirs): {report['peak_ratio']:.3f} total, "
            f"{report['extra_peak_ratio']:.3f} above baseline"
        )
    return report


if __name__ == "__main__":
    main()
