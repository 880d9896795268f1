"""The demo as a library function (vq3dlib.demo): its config, its outputs, its verdict on baselines."""

from __future__ import annotations

import json

import torch

from vq3dlib.cli import build_parser
from vq3dlib.demo import DEMO_DEFAULTS, DemoViews, baseline_verdict, demo_config, run_demo
from vq3dlib.demo_stage2 import Stage2Demo
from vq3dlib.train.evaluate_stage2 import Stage2EvalConfig

MICRO = dict(
    image_size=16, render_resolution=8, plane_resolution=16, plane_channels=8, samples_per_ray=8,
    occupancy_resolution=16, encoder_width=32, encoder_heads=2, decoder_width=32, decoder_heads=2,
    codebook_size=32, code_dim=8, disc_channels=8, disc_max_channels=16, field_hidden_dim=16,
    adversarial_weight=0.1, novel_adversarial_weight=0.1,
    adversarial_start_step=1,
)  # fmt: skip


def test_demo_config_defaults_and_fields():
    cfg = demo_config("runs/x")
    assert (cfg.model, cfg.steps, cfg.batch_size, cfg.train_size, cfg.eval_size) == ("tiny", 3200, 8, 512, 32)
    assert cfg.time_budget_s == 180.0 and cfg.out_dir == "runs/x/train" and cfg.eval_every == 0
    assert (cfg.lr, cfg.warmup_steps) == (DEMO_DEFAULTS["lr"], DEMO_DEFAULTS["warmup_steps"])
    assert build_parser().parse_args(["demo"]).steps == DEMO_DEFAULTS["steps"]  # the CLI shows the same
    assert demo_config("runs/x", lr=3e-4).lr == 3e-4


def test_run_demo_writes_its_outputs_and_summary(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = demo_config(tmp_path, steps=2, batch_size=2, train_size=4, eval_size=2, progress=False,
                          device="cpu", model_overrides=MICRO)  # fmt: skip
        ev = Stage2EvalConfig(eval_size=4, samples_per_class=1, classifier_steps=2)
        stage2 = Stage2Demo(prior_steps=2, eval=ev, gif_classes=2, gif_samples=1, gif_frames=2)
        summary = run_demo(cfg, tmp_path, DemoViews(scenes=2, frames=2), stage2)
    finally:
        torch.set_num_threads(n)
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert names == ["depth_00.png", "depth_01.png", "metrics.json", "samples.gif", "turntable_00.gif",
                     "turntable_01.gif", "turntables.gif"]  # fmt: skip
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["train_steps"] == summary["train_steps"] == 2
    s2 = written["stage2"]
    assert s2["prior_steps"] == 2 and s2["config"]["eval"]["eval_size"] == 4
    keys = {"class_accuracy", "classifier_accuracy", "fid_samples", "fid_reconstructions", "fid_ratio",
            "copy_fraction", "nn_token_distance", "heldout_nn_token_distance"}  # fmt: skip
    assert keys <= set(s2["metrics"]) and s2["metrics"]["n_samples"] == 6 and s2["metrics"]["n_held_out"] == 4
    assert (tmp_path / "prior" / "prior.safetensors").is_file() and "samples" in summary["outputs"]
    assert summary["held_out"]["n_images"] == 2 and "machine" in summary
    assert "turntables" in summary["outputs"]


def test_baseline_verdict():
    good = dict(psnr=20.0, baseline_colour_psnr=12.0, baseline_psnr=19.0, novel_psnr=16.0,
                baseline_novel_colour_psnr=12.0, baseline_novel_psnr=15.0, depth_abs_rel=0.2,
                baseline_depth_abs_rel=0.3)  # fmt: skip
    assert baseline_verdict(good) is None
    assert "mean image" in baseline_verdict({**good, "novel_psnr": 14.0})
    assert "trivial baseline yet" in baseline_verdict({**good, "depth_abs_rel": 0.4})
