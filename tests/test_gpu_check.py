"""benchmarks/gpu_check.sh stays runnable: its dry run writes a plan that fits the GPU machine's time."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_plans_every_step_within_the_time_budget(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split("\t") for line in (tmp_path / "plan.txt").read_text().splitlines()]
    names = [r[0] for r in rows]
    limits = [int(r[1]) for r in rows]
    for needed in ("build", "cuda_kernel_tests", "memcheck", "racecheck"):
        assert needed in names
    benches = sorted(p.stem for p in (ROOT / "benchmarks").glob("*_speed.py"))
    assert set(benches) <= set(names)
    assert all(limit > 0 for limit in limits) and sum(limits) <= 700
    commands = dict((r[0], r[2]) for r in rows)
    assert "--tool memcheck" in commands["memcheck"] and "--tool racecheck" in commands["racecheck"]
    assert "not cuda-emu" in commands["memcheck"]  # the real CUDA kernels, not their emulation
    assert all("--json" in commands[b] for b in benches)
