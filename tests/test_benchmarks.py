"""The speed benchmarks run end to end (CPU, quick sizes) and report the documented JSON fields."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vq3dlib.ops import extension_supports

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--device", "cpu", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_render_speed_quick_run_reports_every_method():
    quick = ["--resolution", "16", "--grid-resolution", "64", "--plane-resolution", "128"]
    out = _run("render_speed.py", *quick, "--reference-samples", "256", "--rounds", "1", "--busy")
    assert out["benchmark"] == "render_speed" and out["device"].startswith("CPU")
    assert out["resolution"] == 16 and out["batch"] == 1
    rows = {r["method"]: r for r in out["rows"]}
    expected = {"dense torch", "vq3dlib (torch)"}
    ours = []
    if extension_supports("ray_march", "cpu"):
        ours = ["vq3dlib (ext)", "vq3dlib (ext, threads=1)"][: 1 + (out["threads"] > 1)]
        expected.update(ours)
    assert set(rows) == expected  # nerfacc needs CUDA: skipped with a note
    for name in ["dense torch", *ours]:  # timed again beside a busy process (--busy)
        r = rows[name]
        assert r["busy_ms_per_frame"] > 0
        assert r["busy_slowdown"] == pytest.approx(r["busy_ms_per_frame"] / r["ms_per_frame"])
        assert 0 < r["cores"] <= out["threads"] + 0.5 and 0 < r["busy_cores"] <= out["threads"] + 0.5
        assert r["busy_cpu_time_ratio"] > 0
    for name in ours:  # ours against the dense path's slowdown
        t = out["targets"][f"busy_slowdown {name}"]
        assert t["target"] == pytest.approx(rows["dense torch"]["busy_slowdown"])
        assert t["value"] == pytest.approx(rows[name]["busy_slowdown"])
        assert t["met"] == (t["value"] <= t["target"])
    assert any("nerfacc" in note for note in out["notes"])
    for r in rows.values():
        assert r["ms_per_frame"] > 0 and r["rays_per_s"] > 0 and r["peak_bytes"] >= 0
        assert r["samples_per_ray"] > 0 and math.isfinite(r["psnr"]) and r["psnr"] > 10
        assert r["speedup_vs_dense"] > 0 and "speedup_vs_nerfacc" not in r
    assert rows["dense torch"]["samples_per_ray"] == out["dense_samples"]
    assert rows["dense torch"]["speedup_vs_dense"] == pytest.approx(1.0)
    if "vq3dlib (ext)" in rows:  # both backends march the same samples and render the same image
        ext, ref = rows["vq3dlib (ext)"], rows["vq3dlib (torch)"]
        assert ext["samples_per_ray"] == ref["samples_per_ray"]
        assert ext["psnr"] == pytest.approx(ref["psnr"], abs=0.05)
        target = out["targets"]["speedup_vs_dense"]
        assert target["target"] == 10.0 and target["value"] == pytest.approx(ext["speedup_vs_dense"])
        assert target["met"] == (target["value"] >= 10.0 and target["equal_psnr"])
        assert out["peer"] == "dense torch"
        assert out["speedup_vs_peer"] == pytest.approx(ext["speedup_vs_dense"])


def test_triplane_speed_quick_run_reports_every_method():
    quick = ["--points", "4096", "--double-points", "1024", "--resolution", "32", "--channels", "8"]
    quick += ["--iters", "1"]
    out = _run("triplane_speed.py", *quick)
    assert out["benchmark"] == "triplane_speed" and out["points"] == 4096 and out["double_points"] == 1024
    assert out["peer"] == "F.grid_sample x3" and out["align_corners"] is False
    rows = {(r["section"], r["method"]): r for r in out["rows"]}
    methods = {"torch reference", "F.grid_sample x3", "F.grid_sample folded"}
    if extension_supports("triplane_sample", "cpu"):
        methods.add("vq3dlib (ext)")
    assert set(rows) == {(s, m) for s in ("fwd_bwd", "double_backward") for m in methods}
    for r in rows.values():
        assert r["ms_value"] > 0 and r["peak_value"] >= 0
    if "vq3dlib (ext)" in methods:
        ours = rows["fwd_bwd", "vq3dlib (ext)"]["ms_value"]
        peer = rows["fwd_bwd", "F.grid_sample x3"]["ms_value"]
        assert out["speedup_vs_grid_sample"] == pytest.approx(peer / ours)
        targets = out["targets"]
        assert set(targets) == {
            "fwd_bwd_vs_F.grid_sample x3",
            "fwd_bwd_vs_F.grid_sample folded",
            "double_backward_vs_F.grid_sample x3",
        }
        t = targets["fwd_bwd_vs_F.grid_sample x3"]
        assert t["target"] == 5.0 and t["met"] == (t["value"] >= 5.0)
        assert targets["double_backward_vs_F.grid_sample x3"]["target"] == 3.0
        assert out["met"] == all(t["met"] for t in targets.values())


def test_reconstruct_speed_quick_run_reports_the_pipeline_and_its_verdict():
    quick = ["--frames", "2", "--size", "32", "--mesh-resolution", "16", "--threads", "1"]
    out = _run("reconstruct_speed.py", *quick)
    assert out["benchmark"] == "reconstruct_speed" and out["device"] == "CPU" and out["threads"] == 1
    assert out["frames"] == 2 and out["size"] == 32 and out["mesh_resolution"] == 16
    assert out["render_size"] == 16  # the bundled tiny model's ratio: renders 16, outputs 32
    assert out["mesh"]["watertight"] is True and out["mesh"]["faces"] > 0
    parts = {"reconstruct", "turntable", "mesh", "total_with_files"}
    assert set(out["seconds"]) == set(out["cpu_seconds"]) == parts
    assert all(t > 0 for t in out["seconds"].values())
    assert out["target_s"] == 5.0 and out["met"] == (out["seconds"]["total_with_files"] <= 5.0)


def test_quantize_speed_quick_run_reports_targets_and_verdict():
    tiny = ["--quick", "--vectors", "512", "--dim", "64", "--codebook-size", "128", "--code-dim", "8"]
    args = [*tiny, "--chunk-size", "32", "--warmup", "0", "--repeats", "1", "--device", "cpu", "--json"]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "quantize_speed.py"), *args],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # benchmarks/gpu_check.sh appends it to a .jsonl file
    out = json.loads(lines[0])
    assert out["benchmark"] == "quantize_speed" and out["device"].startswith("CPU")
    assert out["config"]["vectors"] == 512 and out["config"]["chunk_size"] == 32
    assert out["full_size"] is False
    assert set(out["results"]) == {"vq3dlib", "vector-quantize-pytorch"}
    for r in out["results"].values():
        assert r["ms_median"] > 0 and r["peak_bytes"] > 0
    assert out["speedup"] > 0 and out["peak_ratio"] > 0
    targets = out["targets"]
    assert targets["speedup"]["target"] == 3.0 and targets["peak_ratio"]["target"] == 0.15  # CPU
    assert targets["speedup"]["value"] == pytest.approx(out["speedup"])
    assert targets["speedup"]["met"] == (out["speedup"] >= 3.0)
    assert targets["peak_ratio"]["met"] == (out["peak_ratio"] <= 0.15)
    assert out["met"] == (targets["speedup"]["met"] and targets["peak_ratio"]["met"])


def test_quantize_speed_workers_import_only_their_own_library(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setitem(sys.modules, "vector_quantize_pytorch", None)  # importing it raises ImportError
    import quantize_speed

    tiny = ["--quick", "--vectors", "64", "--dim", "16", "--codebook-size", "32", "--code-dim", "4",
            "--chunk-size", "8", "--warmup", "0", "--repeats", "1"]
    for worker in ("vq3dlib", "baseline:vq3dlib"):
        quantize_speed.main([*tiny, "--worker", worker])
        out = json.loads(capsys.readouterr().out.strip())
        assert out["method"] == worker and out["peak_bytes"] > 0
        assert (out["ms_median"] is None) == worker.startswith("baseline")
    for worker in ("vector-quantize-pytorch", "baseline:vector-quantize-pytorch"):
        with pytest.raises(ImportError):  # the peer's processes import the peer
            quantize_speed.main([*tiny, "--worker", worker])


def _common_with_fake_busy_process(monkeypatch) -> tuple[Any, list[bool]]:
    """benchmarks/common.py with ``busy_process`` replaced by one that only sets a flag while inside."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import common

    busy_now = [False]

    @contextlib.contextmanager
    def fake_busy_process(settle_s: float = 1.0):
        busy_now[0] = True
        try:
            yield
        finally:
            busy_now[0] = False

    monkeypatch.setattr(common, "busy_process", fake_busy_process)
    return common, busy_now


def _spin(seconds: float) -> None:
    """Keeps one thread on the CPU for ``seconds`` of its CPU time."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_quiet_and_busy_rounds_pair_each_busy_time_with_a_quiet_one(monkeypatch):
    common, busy_now = _common_with_fake_busy_process(monkeypatch)
    log = []
    durations = iter([10, 30, 20, 60, 40, 40])  # ms: quiet, busy of rounds 1, 2, 3

    def method():
        log.append(busy_now[0])
        time.sleep(next(durations) / 1e3)

    out = common.time_quiet_and_busy_ms({"m": method}, "cpu", rounds=3)
    assert log == [False, True] * 3  # each round: quiet, then beside the busy process
    assert out.quiet_ms["m"] == pytest.approx(20, abs=8) and out.busy_ms["m"] == pytest.approx(40, abs=8)
    # the median of the rounds' slowdowns (3, 3, 1), not the ratio of the medians (2)
    assert out.slowdown["m"] == pytest.approx(3, abs=0.6)
    assert out.quiet_cores["m"] < 0.5 and out.busy_cores["m"] < 0.5  # it slept


def test_quiet_and_busy_rounds_count_the_cores_a_call_keeps_busy(monkeypatch):
    common, _ = _common_with_fake_busy_process(monkeypatch)

    def spin_then_sleep():  # 30 ms on the CPU, then 30 ms asleep
        _spin(0.03)
        time.sleep(0.03)

    fns = {"spin": lambda: _spin(0.03), "half": spin_then_sleep}
    out = common.time_quiet_and_busy_ms(fns, "cpu", rounds=2)
    for cores in (out.quiet_cores, out.busy_cores):
        assert cores["spin"] == pytest.approx(1.0, abs=0.25)
        assert cores["half"] == pytest.approx(0.5, abs=0.2)
    assert out.cpu_time_ratio["spin"] == pytest.approx(1.0, abs=0.25)


def test_quiet_and_busy_slowdown_is_the_cores_ratio_times_the_cpu_time_ratio(monkeypatch):
    common, busy_now = _common_with_fake_busy_process(monkeypatch)
    wall = {"quiet": [], "busy": []}

    def method():  # quiet: 20 ms on the CPU; busy: 30 ms on the CPU and 30 ms asleep
        start = time.perf_counter()
        _spin(0.03 if busy_now[0] else 0.02)
        if busy_now[0]:
            time.sleep(0.03)
        wall["busy" if busy_now[0] else "quiet"].append(time.perf_counter() - start)

    out = common.time_quiet_and_busy_ms({"m": method}, "cpu", rounds=3)
    assert out.cpu_time_ratio["m"] == pytest.approx(1.5, rel=0.2)
    assert out.quiet_cores["m"] / out.busy_cores["m"] == pytest.approx(2.0, rel=0.3)
    total_slowdown = sum(wall["busy"]) / sum(wall["quiet"])
    assert out.quiet_cores["m"] / out.busy_cores["m"] * out.cpu_time_ratio["m"] == pytest.approx(
        total_slowdown, rel=0.05
    )


def test_interleaved_rounds_start_one_function_later_each(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import common

    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = common.time_interleaved_ms(fns, "cpu", warmup=0, rounds=4)
    assert "".join(order) == "abc" + "bca" + "cab" + "abc"  # each follows each other one in turn
    assert set(times) == set("abc")
