"""Runs the example programs of docs/examples in their ``--quick`` mode so they cannot rot."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vq3dlib import finite_checks_enabled, set_finite_checks

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
    match = re.search(pattern, text, re.M)
    assert match is not None, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def test_fit_scene_quick(tmp_path):
    stdout = _run("fit_scene.py", tmp_path)
    initial = _number(r"initial train PSNR: ([\d.]+) dB", stdout)
    train = _number(r"\ntrain PSNR: ([\d.]+) dB", stdout)
    held_out = _number(r"^held-out PSNR: ([\d.]+) dB", stdout)  # not the baseline's line
    baseline = _number(r"^baseline \(mean training colour\) held-out PSNR: ([\d.]+) dB", stdout)
    abs_rel = _number(r"^held-out depth abs-rel: ([\d.]+)", stdout)
    assert train > initial + 1.0, "a few steps of fitting must improve the training PSNR"
    # --quick beats the mean-colour baseline by about 1.5 dB on held-out views
    assert held_out > baseline + 0.5, "the fitted scene must beat the trivial baseline on held-out views"
    assert abs_rel >= 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["vq3dlib"]["train_psnr"] == pytest.approx(train, abs=0.01)
    assert metrics["vq3dlib"]["heldout"]["psnr"] == pytest.approx(held_out, abs=0.01)
    assert metrics["baseline_heldout_psnr"] == pytest.approx(baseline, abs=0.01)
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


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triplane_gan_quick(tmp_path, monkeypatch):
    """In-process (one short run): the weights of both networks move, losses stay finite, views differ."""
    gan = _load_example("triplane_gan")
    seen = {}
    real_train = gan.train

    def spy_train(gen, disc, *args, **kwargs):
        seen["before"] = {
            f"{net}.{name}": p.detach().clone()
            for net, module in (("gen", gen), ("disc", disc))
            for name, p in module.named_parameters()
        }
        seen["gen"], seen["disc"] = gen, disc
        return real_train(gen, disc, *args, **kwargs)

    monkeypatch.setattr(gan, "train", spy_train)
    checks = finite_checks_enabled()
    try:
        result = gan.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    finally:
        set_finite_checks(checks)  # main() turns the NaN/Inf checks off globally
    history = result["history"]
    assert len(history) == 4 and all(set(h) == {"step", "d_loss", "g_loss", "r1"} for h in history)
    assert all(math.isfinite(h[k]) for h in history for k in ("d_loss", "g_loss", "r1"))
    d_losses = [h["d_loss"] for h in history]
    g_losses = [h["g_loss"] for h in history]
    assert max(d_losses) - min(d_losses) > 1e-3 and max(g_losses) - min(g_losses) > 1e-3, "losses must move"
    # both networks were trained: every generator parameter moved (gradients reach all of it through the
    # renderer); every discriminator parameter but possibly its output bias, whose hinge-loss gradient
    # cancels (-1 per real, +1 per fake) while both margins are active, as in the first steps
    for net, may_stay in (("gen", set()), ("disc", {"out.bias"})):
        params = dict(seen[net].named_parameters())
        before = seen["before"]
        unchanged = {n for n, p in params.items() if torch.equal(p.detach(), before[f"{net}.{n}"])}
        assert unchanged <= may_stay, f"{net}: parameters unchanged by training: {sorted(unchanged)}"
    # several views of one latent: 4 latents x 5 azimuths, each view different from the others
    samples = result["samples"]
    assert samples.shape == (20, 3, 16, 16) and torch.isfinite(samples).all()
    views = samples.view(4, 5, 3, 16, 16)
    for i in range(5):
        for j in range(i + 1, 5):
            assert (views[:, i] - views[:, j]).abs().flatten(1).amax(1).min() > 1e-3, (
                f"views {i} and {j} match"
            )
    assert (views[0] - views[1]).abs().amax() > 1e-3, "different latents must give different scenes"
    assert json.loads((tmp_path / "losses.json").read_text()) == history
    with Image.open(tmp_path / "samples.png") as png:
        assert png.size == (5 * 16, 4 * 16)  # 5 views x 4 latents at 16x16
