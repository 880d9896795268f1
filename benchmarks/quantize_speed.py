"""Forward+backward speed and peak memory: vq3dlib ``VectorQuantizer`` vs vector-quantize-pytorch.

Both run the same configuration (default: 2^16 input vectors of width 768, codebook 8192 x 32,
l2-normalised / cosine codes, EMA decay 0.99, commitment weight 0.25, plain straight-through
gradient) side by side in one invocation. On CPU every method runs in its own subprocess, which
imports torch and that method's library only (what a user of it runs), and its peak memory is the
process's peak RSS (``VmHWM``); "above baseline" subtracts the peak of a process that imports the
same and allocates the same input and output gradient, without running the method. Timings and
peaks come from separate processes with different glibc settings (``ALLOCATOR_MMAP_THRESHOLD``,
the same for every method). On CUDA the peak is ``torch.cuda.max_memory_allocated``.

    python benchmarks/quantize_speed.py                 # full size (vector-quantize-pytorch: ~9 GB)
    python benchmarks/quantize_speed.py --quick         # small sizes, seconds
    python benchmarks/quantize_speed.py --device cuda --json

Targets (checked here, never in unit tests; ratios of total peaks): on CPU >= 3x faster than
vector-quantize-pytorch with <= 0.15x its peak memory; on CUDA >= 1.5x faster with <= 0.5x. The
verdict is printed (``--json``: ``"targets"`` and ``"met"``); ``--json`` prints one line, so that
``benchmarks/gpu_check.sh`` can append it to a ``.jsonl`` file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import (
    check_target,
    device_name,
    fmt_bytes,
    peak_rss_bytes,
    print_table,
    run_worker,
    synchronize,
)
from vq3dlib.cpu_allocator import tune_cpu_allocator

# One allocator setting per measure, the same for every method, each the peer's better one
# (2026-12-05, 2 runs each): vector-quantize-pytorch's step allocates and frees many buffers above
# 32 MiB; served from the heap (common.py's setting) it ran 1.3x slower and peaked at 13.1 GiB
# instead of 9.2 (2026-12-04), so the timed runs map buffers of 32 MiB and more (glibc's largest
# threshold). The peaks are measured with buffers of 1 MiB and more mapped: a freed buffer on the
# heap is not reused for a same-sized aligned request (posix_memalign asks for the size plus the
# alignment), so the heap grows by holes that count in the peak; mapped, vector-quantize-pytorch
# peaked at 9.07 GiB instead of 9.17 (and ran 6% slower: hence not for the timings).
ALLOCATOR_MMAP_THRESHOLD = {"speed": 32 * 2**20, "memory": 2**20}

METHODS = ("vq3dlib", "vector-quantize-pytorch")
# a worker runs a method, or (``baseline:<method>``) only imports its library and allocates the tensors
WORKERS = (*METHODS, *(f"baseline:{m}" for m in METHODS))
# ours vs vector-quantize-pytorch: speed-up (>=) and ratio of total peak memory (<=), per device type
TARGETS = {"cpu": {"speedup": 3.0, "peak_ratio": 0.15}, "cuda": {"speedup": 1.5, "peak_ratio": 0.5}}
FULL_SIZE = {"vectors": 1 << 16, "dim": 768, "codebook_size": 8192, "code_dim": 32}  # the targets' size


def _build(method: str, args: argparse.Namespace):
    """A callable ``x -> (out, loss)`` for ``method``, or ``None`` for a baseline."""
    if method.startswith("baseline:"):
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
                chunk_size=args.chunk_size,
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

    return run_theirs


def worker(args: argparse.Namespace) -> dict:
    """Runs one method in this process and returns its timings and peak memory.

    The process imports torch and the method's library only: importing vector-quantize-pytorch
    (and einops and what they pull in) adds about 160 MB to a process's peak, which a user of
    vq3dlib does not pay. A ``baseline:<method>`` worker imports the same as ``<method>``.
    """
    import torch

    tune_cpu_allocator(
        large_buffers_from_heap=False, mmap_threshold_bytes=ALLOCATOR_MMAP_THRESHOLD[args.allocator]
    )
    if args.worker.endswith("vector-quantize-pytorch"):
        import vector_quantize_pytorch  # noqa: F401
    else:
        import vq3dlib.quantize  # noqa: F401

    torch.manual_seed(0)
    dev = torch.device(args.device)
    x = torch.randn(args.vectors, args.dim, device=dev, requires_grad=True)
    grad = torch.randn(args.vectors, args.dim, device=dev)
    run = _build(args.worker, args)
    cuda = dev.type == "cuda"
    if cuda:
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times, cpu_times = [], []
    if run is not None:
        for i in range(args.warmup + args.repeats):
            x.grad = None
            synchronize(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            out, loss = run(x)
            torch.autograd.backward([out, loss], [grad, torch.ones_like(loss)])
            synchronize(dev)
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
    p.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    p.add_argument("--allocator", choices=tuple(ALLOCATOR_MMAP_THRESHOLD), default="speed",
                   help=argparse.SUPPRESS)  # a worker's setting (see ALLOCATOR_MMAP_THRESHOLD)
    args = p.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda requested but no GPU is available")
    if args.chunk_size is not None and args.chunk_size <= 0:
        p.error(f"--chunk-size must be > 0, got {args.chunk_size}")
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
    methods = METHODS[:1] if args.only_ours else METHODS
    results = {}
    for m in methods:  # timings with the speed setting, peaks (and the baseline's) with the memory one
        r = run_worker(__file__, [*sizes, "--worker", m, "--allocator", "speed"])
        r["peak_bytes_speed_setting"] = r["peak_bytes"]
        r["peak_bytes"] = run_worker(__file__, [*sizes, "--worker", m, "--allocator", "memory"])["peak_bytes"]
        base_args = [*sizes, "--worker", f"baseline:{m}", "--allocator", "memory"]
        r["baseline_peak_bytes"] = run_worker(__file__, base_args)["peak_bytes"]
        r["extra_peak_bytes"] = r["peak_bytes"] - r["baseline_peak_bytes"]
        results[m] = r
    base = results["vq3dlib"]["baseline_peak_bytes"]
    report = {
        "benchmark": "quantize_speed",
        "device": results["vq3dlib"]["device"],
        "config": {
            "vectors": args.vectors,
            "dim": args.dim,
            "codebook_size": args.codebook_size,
            "code_dim": args.code_dim,
            "chunk_size": args.chunk_size,
            "l2_normalize": True,
            "ema_decay": 0.99,
            "warmup": args.warmup,
            "repeats": args.repeats,
        },
        # the targets are set for the full size; smaller runs (--quick) still report the verdict
        "full_size": all(getattr(args, k) == v for k, v in FULL_SIZE.items()),
        "baseline_peak_bytes": base,
        "allocator_mmap_threshold_bytes": ALLOCATOR_MMAP_THRESHOLD,
        "results": results,
        "targets": {},
        "met": None,  # None: nothing to compare with (--only-ours)
    }
    if not args.only_ours:
        ours, theirs = results["vq3dlib"], results["vector-quantize-pytorch"]
        report["speedup"] = theirs["ms_median"] / ours["ms_median"]
        report["cpu_time_speedup"] = theirs["cpu_ms_median"] / ours["cpu_ms_median"]
        report["peak_ratio"] = ours["peak_bytes"] / theirs["peak_bytes"]
        key = "peak_bytes_speed_setting"
        report["peak_ratio_speed_setting"] = ours[key] / theirs[key]
        report["extra_peak_ratio"] = ours["extra_peak_bytes"] / max(theirs["extra_peak_bytes"], 1)
        # no method can go below its baseline plus the two [N, dim] float tensors every fwd+bwd
        # holds at its end: the output and the input's gradient (here: our baseline)
        floor = base + 2 * args.vectors * args.dim * 4
        report["peak_ratio_floor"] = floor / theirs["peak_bytes"]
        want = TARGETS["cuda" if args.device.startswith("cuda") else "cpu"]
        report["targets"] = {
            "speedup": check_target(report["speedup"], want["speedup"]),
            "peak_ratio": check_target(report["peak_ratio"], want["peak_ratio"], at_most=True),
        }
        report["met"] = all(t["met"] for t in report["targets"].values())
    if args.json:
        print(json.dumps(report))  # one line: gpu_check.sh appends it to a .jsonl file
        return report
    print(f"quantize_speed on {report['device']}")
    print(f"config: {report['config']}")
    print(f"our baseline process peak: {fmt_bytes(base)} (torch + vq3dlib + input + output grad)")
    rows = [
        {
            "method": name,
            "median": f"{r['ms_median']:.1f}",
            "min": f"{r['ms_min']:.1f}",
            "cpu": f"{r['cpu_ms_median']:.1f}",
            "peak": fmt_bytes(r["peak_bytes"]),
            "base": fmt_bytes(r["baseline_peak_bytes"]),
            "extra": fmt_bytes(r["extra_peak_bytes"]),
        }
        for name, r in results.items()
    ]
    columns = [("method", "method"), ("median", "median ms"), ("min", "min ms"), ("cpu", "cpu ms"),
               ("peak", "peak"), ("base", "its baseline"), ("extra", "above baseline")]
    print_table(rows, columns)
    if not args.only_ours:
        print(
            f"speedup (theirs / ours): {report['speedup']:.2f}x wall, "
            f"{report['cpu_time_speedup']:.2f}x cpu time"
        )
        print(
            f"peak memory ratio (ours / theirs): {report['peak_ratio']:.3f} total, "
            f"{report['extra_peak_ratio']:.3f} above baseline; floor {report['peak_ratio_floor']:.3f} "
            f"(our baseline + output + input gradient); {report['peak_ratio_speed_setting']:.3f} total "
            f"in the timed runs (buffers mapped from 32 MiB instead of 1 MiB)"
        )
        for name, t in report["targets"].items():
            cmp = "<=" if name == "peak_ratio" else ">="
            verdict = "met" if t["met"] else "NOT met"
            print(f"target {name} {cmp} {t['target']}x: {t['value']:.3f}x, {verdict}")
        print(f"all targets: {'met' if report['met'] else 'NOT met'}")
        if not report["full_size"]:
            print(f"(the targets are set for the full size {FULL_SIZE}; this run used smaller sizes)")
    return report


if __name__ == "__main__":
    main()
