"""Runs the example programs of docs/examples in their ``--quick`` mode so they cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


def _run(script: str, out: Path, *extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--quick", "--device", "cpu", "--out", str(out), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def test_fit_scene_quick(tmp_path):
    stdout = _run("fit_scene.py", tmp_path)
    initial = _number(r"initial train PSNR: ([\d.]+) dB", stdout)
    train = _number(r"\ntrain PSNR: ([\d.]+) dB", stdout)
    held_out = _number(r"held-out PSNR: ([\d.]+) dB", stdout)
    baseline = _number(r"baseline \(mean training colour\) held-out PSNR: ([\d.]+) dB", stdout)
    abs_rel = _number(r"depth abs-rel: ([\d.]+)", stdout)
    assert train > initial + 1.0, "a few steps of fitting must improve the training PSNR"
    assert held_out > 0 and baseline > 0 and abs_rel >= 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["vq3dlib"]["train_psnr"] == pytest.approx(train, abs=0.01)
    with Image.open(tmp_path / "turntable.gif") as gif:
        assert gif.n_frames == 4  # --quick turntable
        assert gif.size == (3 * 16, 16)  # ground truth | render | depth at 16x16


def test_fit_scene_compare_nerfacc_needs_cuda(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "fit_scene.py"),
            "--quick",
            "--device",
            "cpu",
            "--compare-nerfacc",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "needs --device cuda" in proc.stderr


def test_triplane_gan_quick(tmp_path):
    stdout = _run("triplane_gan.py", tmp_path)
    history = json.loads((tmp_path / "losses.json").read_text())
    assert len(history) == 4 and all(set(h) == {"step", "d_loss", "g_loss", "r1"} for h in history)
    d_losses = [h["d_loss"] for h in history]
    g_losses = [h["g_loss"] for h in history]
    assert max(d_losses) - min(d_losses) > 1e-3 and max(g_losses) - min(g_losses) > 1e-3, "losses must move"
    assert all(abs(v) < 1e3 for v in d_losses + g_losses)
    assert "losses moved: d_loss" in stdout
    with Image.open(tmp_path / "samples.png") as png:
        assert png.size == (5 * 16, 4 * 16)  # 5 views x 4 latents at 16x16
        colours = png.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 1, "the sample grid must not be one flat colour"
