"""Helpers shared by the benchmarks: device naming, timing, peak memory, output.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` around the measured call; on CPU each
method runs in its own subprocess and reports its peak RSS (``ru_maxrss``) minus the RSS it had
before the measured call, so methods cannot inflate each other's figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from vq3dlib.cpu_allocator import tune_cpu_allocator  # noqa: E402

# as the CLI and the trainers do; every method of a benchmark runs with the same allocator, and a
# benchmark whose peer runs faster with glibc mapping its large buffers says so
# (tune_cpu_allocator(large_buffers_from_heap=False): quantize_speed.py)
tune_cpu_allocator()


def device_name(device: torch.device | str) -> str:
    """A readable name of the device, e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"CPU: ... (2 threads)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device | str) -> None:
    """Waits for queued work on ``device`` (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device | str, warmup: int = 1, iters: int = 5) -> float:
    """Median wall time of ``fn`` in milliseconds (device-synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def time_interleaved_ms(
    fns: dict[str, Callable[[], Any]], device: torch.device | str, warmup: int = 1, rounds: int = 5
) -> dict[str, float]:
    """Median ms of each function, timed in alternating rounds (A, B, C, then B, C, A, ...).

    Interleaving makes the ratios robust to load that drifts during the run (shared machines), and
    each round starting one function later makes them robust to what a function leaves behind for
    the next one (a cold cache, memory the C library hands back to the OS in the next call).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for k in range(rounds):
        _time_round(fns, device, samples, k)
    return _medians(samples)


def _medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(v) for name, v in samples.items()}


def _time_round(
    fns: dict[str, Callable[[], Any]],
    device: torch.device | str,
    samples: dict[str, list[float]],
    k: int,
    cpu_samples: dict[str, list[float]] | None = None,
) -> None:
    """Times each function once, appending its ms to ``samples[name]`` (and the CPU ms of all of
    this process's threads during the call to ``cpu_samples[name]``, if given); round ``k`` starts
    with the ``k``-th function (mod their count) and goes on in their order."""
    names = list(fns)
    for name in names[k % len(names) :] + names[: k % len(names)]:
        fn = fns[name]
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        samples[name].append((time.perf_counter() - start) * 1e3)
        if cpu_samples is not None:
            cpu_samples[name].append((time.process_time() - cpu_start) * 1e3)


class QuietAndBusy(NamedTuple):
    """What :func:`time_quiet_and_busy_ms` measured, each a ``{function name: value}`` dict."""

    quiet_ms: dict[str, float]  #: median ms, quiet
    busy_ms: dict[str, float]  #: median ms beside the busy process
    slowdown: dict[str, float]  #: median of the rounds' busy / quiet
    quiet_cores: dict[str, float]  #: CPU time / wall time of all quiet calls (cores kept busy)
    busy_cores: dict[str, float]  #: the same beside the busy process
    cpu_time_ratio: dict[str, float]  #: CPU time of all busy calls / of all quiet calls


def time_quiet_and_busy_ms(
    fns: dict[str, Callable[[], Any]], device: torch.device | str, rounds: int = 5
) -> QuietAndBusy:
    """Each round times every function quiet, then again beside one busy process started for that
    half of the round (:func:`busy_process`), so each busy time has a quiet one seconds before it
    (rounds start one function later each, as in :func:`time_interleaved_ms`).

    The slowdowns are the median of each round's busy / quiet: they compare methods timed in the
    same seconds, whatever the machine's speed does between rounds. The cores are the CPU time of
    this process's threads over the wall time of the calls (how many cores a method keeps busy,
    spin-waiting threads included); the busy calls' total time over the quiet calls' is exactly
    ``quiet_cores / busy_cores * cpu_time_ratio``: a method slows either because it gets fewer
    cores beside the busy process or because its work takes more CPU time there.
    """
    wall: dict[str, dict[str, list[float]]] = {h: {name: [] for name in fns} for h in ("quiet", "busy")}
    cpu: dict[str, dict[str, list[float]]] = {h: {name: [] for name in fns} for h in ("quiet", "busy")}
    for k in range(rounds):
        _time_round(fns, device, wall["quiet"], k, cpu["quiet"])
        with busy_process(settle_s=0.5):
            _time_round(fns, device, wall["busy"], k, cpu["busy"])
    quiet, busy = wall["quiet"], wall["busy"]
    slowdowns = {name: statistics.median(b / q for b, q in zip(busy[name], quiet[name])) for name in fns}
    cores = {h: {name: sum(cpu[h][name]) / sum(wall[h][name]) for name in fns} for h in cpu}
    cpu_ratio = {name: sum(cpu["busy"][name]) / sum(cpu["quiet"][name]) for name in fns}
    return QuietAndBusy(_medians(quiet), _medians(busy), slowdowns, cores["quiet"], cores["busy"], cpu_ratio)


@contextlib.contextmanager
def busy_process(settle_s: float = 1.0) -> Iterator[None]:
    """Runs one competing CPU-bound process (``python -c "while True: pass"``) while inside."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(settle_s)
        yield
    finally:
        proc.kill()
        proc.wait()


def rss_bytes() -> int:
    """Current resident set size of this process (Linux), else 0."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    Reads ``VmHWM`` (per address space, so it starts afresh in an exec'd child) where available;
    ``ru_maxrss`` is inherited from the parent across fork/exec on Linux and would be wrong there.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * 1024 if sys.platform != "darwin" else peak


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Peak memory of one call of ``fn`` above the level before it (bytes).

    On CUDA: ``max_memory_allocated``. On CPU: the process's peak RSS minus its RSS before the call,
    so call it once per fresh process (see :func:`run_worker`).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        base = rss_bytes()
        fn()
        peak = max(0, peak_rss_bytes() - base)
    return float(peak)


def run_worker(script: str, args: Sequence[str], timeout: float = 1800) -> dict[str, Any]:
    """Runs ``python script *args`` and parses the last line of its stdout as JSON."""
    proc = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({' '.join(args)}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def copy_bandwidth_gbs(device: torch.device | str, megabytes: int = 1024) -> float:
    """Measured device memory bandwidth (GB/s, read + write bytes) of a large copy on ``device``."""
    n = megabytes * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=2, iters=10)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def fmt_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def check_target(value: float, target: float, *, at_most: bool = False, valid: bool = True) -> dict[str, Any]:
    """``{"value", "target", "met"}``: ``value >= target`` (``<=`` when ``at_most``, e.g. a memory
    ratio), and only if the comparison is ``valid`` (e.g. both methods reached equal quality)."""
    ok = value <= target if at_most else value >= target
    return {"value": value, "target": target, "met": bool(ok and valid)}


def print_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Prints ``rows`` as an aligned table with ``(key, header)`` columns."""
    cells = [[h for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
