"""Tests for vq3dlib.train.stage1: outputs, bit-exact resume, NaN steps skipped, AMP, DDP, errors."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vq3dlib.models import VQ3DModel
from vq3dlib.train.checkpoint import load_checkpoint
from vq3dlib.train.stage1 import (
    Stage1Config,
    build_datasets,
    dataset_has_depth,
    depth_target,
    load_stage1_model,
    train_stage1,
)

ROOT = Path(__file__).resolve().parents[1]

# a micro model: 16 px, 4x4 tokens, tiny widths; adversarial terms from step 1
MICRO = dict(
    image_size=16, render_resolution=8, plane_resolution=16, plane_channels=8, samples_per_ray=8,
    occupancy_resolution=16, encoder_width=32, encoder_heads=2, decoder_width=32, decoder_heads=2,
    codebook_size=32, code_dim=8, disc_channels=8, disc_max_channels=16, field_hidden_dim=16,
    adversarial_weight=0.1, novel_adversarial_weight=0.1,
    prior_width=32, prior_depth=1, prior_heads=2, adversarial_start_step=1,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and immune to a busy machine
    yield
    torch.set_num_threads(n)


def micro_config(tmp_path: Path, **kw) -> Stage1Config:
    base = dict(
        model_overrides=dict(MICRO), steps=4, batch_size=2, train_size=6, eval_size=2, out_dir=str(tmp_path),
        progress=False, log_every=1, image_every=0, ckpt_every=0, warmup_steps=1, device="cpu",
    )  # fmt: skip
    base.update(kw)
    return Stage1Config(**base)


def _states_equal(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_run_writes_model_logs_checkpoints_and_metrics(tmp_path):
    cfg = micro_config(tmp_path, steps=3, ckpt_every=2, image_every=2)
    result = train_stage1(cfg)
    assert result["step"] == 3 and result["skipped_steps"] == 0
    assert {"loss/l2", "loss/total", "disc/loss"} <= set(result["losses"])
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step_000000002.safetensors", "step_000000003.safetensors"]
    rows = [json.loads(line) for line in (tmp_path / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/total" in r] == [1, 2, 3]
    assert any("eval/psnr" in r for r in rows)
    assert list((tmp_path / "logs" / "images").glob("reconstruction_*.png"))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["step"] == 3 and summary["held_out"]["n_images"] == 2
    # the exported model and the checkpoint both load back to the trained weights
    trained = result["model"].state_dict()
    for source in (tmp_path / "model.safetensors", tmp_path / "checkpoints" / "step_000000003.safetensors"):
        assert not _states_equal(trained, load_stage1_model(source).state_dict())
    assert json.loads((tmp_path / "train_config.json").read_text())["steps"] == 3


def test_resume_is_bit_exact(tmp_path):
    # adversarial training (from step 1), EMA and the LR schedule all span the interruption at step 2
    kw = dict(steps=4, ema_decay=0.9, ema_warmup=0.0)
    straight = train_stage1(micro_config(tmp_path / "a", **kw))
    first = train_stage1(micro_config(tmp_path / "b", stop_at_step=2, **kw))
    assert first["step"] == 2
    resumed = train_stage1(micro_config(tmp_path / "b", resume=True, **kw))
    assert resumed["step"] == 4
    assert not _states_equal(straight["model"].state_dict(), resumed["model"].state_dict())
    assert straight["losses"] == resumed["losses"]
    a = load_stage1_model(tmp_path / "a" / "checkpoints", ema=True).state_dict()
    b = load_stage1_model(tmp_path / "b" / "checkpoints", ema=True).state_dict()
    assert not _states_equal(a, b)  # EMA weights too
    # sanity: training changed the weights (so the equality above is not vacuous)
    init = VQ3DModel.from_config("tiny", **MICRO)
    assert _states_equal(init.state_dict(), straight["model"].state_dict())


def test_non_finite_loss_step_is_skipped_and_not_written(tmp_path, monkeypatch):
    reference = train_stage1(micro_config(tmp_path / "ref", steps=3, stop_at_step=1))
    original = VQ3DModel.forward

    def poisoned(self, images, depth=None, step=0, cameras=None):
        out = original(self, images, depth=depth, step=step, cameras=cameras)
        if self.training and step == 1:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(VQ3DModel, "forward", poisoned)
    result = train_stage1(micro_config(tmp_path / "nan", steps=3, stop_at_step=2))
    assert result["step"] == 2 and result["skipped_steps"] == 1
    # step 1 was skipped: weights AND buffers (quantizer EMA statistics) equal those after step 0
    assert not _states_equal(reference["model"].state_dict(), result["model"].state_dict())
    assert all(
        torch.isfinite(v).all() for v in result["model"].state_dict().values() if v.is_floating_point()
    )
    ckpt_extra = json.loads((tmp_path / "nan" / "metrics.json").read_text())
    assert ckpt_extra["skipped_steps"] == 1


def test_bf16_autocast_on_cpu(tmp_path):
    result = train_stage1(micro_config(tmp_path, steps=1, amp="bf16", eval_size=0))
    assert result["step"] == 1 and result["skipped_steps"] == 0
    assert torch.isfinite(torch.tensor(result["losses"]["loss/total"]))
    assert result["metrics"] == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a gradient scaler needs CUDA")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_steps_on_cuda(tmp_path, amp):
    result = train_stage1(micro_config(tmp_path, steps=3, amp=amp, eval_size=2, device="cuda"))
    assert result["step"] == 3 and result["skipped_steps"] == 0
    assert torch.isfinite(torch.tensor(result["losses"]["loss/total"]))
    assert next(result["model"].parameters()).dtype == torch.float32  # autocast, not a half model
    assert all(torch.isfinite(p).all() for p in result["model"].parameters())


def test_time_budget_stops_early_with_a_checkpoint(tmp_path):
    result = train_stage1(micro_config(tmp_path, steps=1000, time_budget_s=1e-9, eval_size=0))
    assert result["step"] == 0
    assert (tmp_path / "checkpoints" / "step_000000000.safetensors").is_file()


def test_depth_target_prefers_disparity_and_inverts_depth():
    d = torch.tensor([[[[2.0, 0.0]]]])
    assert depth_target({"depth": d}).flatten().tolist() == [0.5, 0.0]
    assert depth_target({"disparity": d, "depth": d}) is not None
    assert torch.equal(depth_target({"disparity": d, "depth": d}), d)
    assert depth_target({"image": d}) is None


def test_image_folder_training_uses_depth_files(tmp_path):
    from PIL import Image

    from vq3dlib.data.folder import write_depth_png

    data = tmp_path / "images"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 16), (60 * i, 100, 200)).save(data / f"{i}.png")
        write_depth_png(data / f"{i}.depth.png", torch.full((16, 20), 1.0 + i))
    result = train_stage1(micro_config(tmp_path / "run", data=str(data), steps=1, eval_size=1))
    assert "loss/depth" in result["losses"]  # depth files -> disparity -> pointwise depth loss
    assert {"depth_abs_rel", "psnr"} <= set(result["metrics"])  # user depth maps are the depth truth


def _folder(root: Path, n: int, depth: bool = False) -> Path:
    from PIL import Image

    from vq3dlib.data.folder import write_depth_png

    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (20, 16), (40 * i, 100, 200 - 30 * i)).save(root / f"img{i}.png")
        if depth:
            write_depth_png(root / f"img{i}.depth.png", torch.full((16, 20), 1.0 + i))
    return root


def _depth_warnings(record) -> list:
    return [w for w in record if "no depth" in str(w.message)]


def test_depth_fn_drives_training_on_a_folder_without_depth_files(tmp_path):
    data = _folder(tmp_path / "images", 3)
    calls = []

    def depth_fn(image):
        calls.append(tuple(image.shape))
        return 1.0 + image.mean(0)  # [H, W]

    cfg = micro_config(tmp_path / "run", data=str(data), steps=1, eval_size=1, depth="required")
    result = train_stage1(cfg, depth_fn=depth_fn)
    assert result["uses_depth"] and "loss/depth" in result["losses"]
    assert {"depth_abs_rel", "baseline_depth_abs_rel"} <= set(result["metrics"])  # held-out depth: depth_fn
    assert len(calls) >= 3 and set(calls) == {(3, 16, 16)}  # every image, at the model's resolution


def test_depth_required_but_missing_names_the_files(tmp_path):
    data = _folder(tmp_path / "images", 2)
    with pytest.raises(FileNotFoundError, match="2 of 2 images have no depth map") as e:
        train_stage1(micro_config(tmp_path / "run", data=str(data), depth="required"))
    for name in ("img0.png", "img1.png", "img0.npy", "img0.depth.png", "depth_fn", "depth=none"):
        assert name in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before training


def test_depth_auto_without_depth_warns_once_and_trains_without_the_depth_loss(tmp_path, recwarn):
    data = _folder(tmp_path / "images", 3)
    result = train_stage1(micro_config(tmp_path / "auto", data=str(data), steps=2, eval_size=1))
    assert len(_depth_warnings(recwarn)) == 1  # once per run, not once per step
    assert "depth=none" in str(_depth_warnings(recwarn)[0].message)
    assert not result["uses_depth"] and "loss/depth" not in result["losses"]
    recwarn.clear()
    quiet = train_stage1(micro_config(tmp_path / "none", data=str(data), steps=1, eval_size=1, depth="none"))
    assert _depth_warnings(recwarn) == [] and not quiet["uses_depth"]
    with_files = _folder(tmp_path / "with-depth", 3, depth=True)
    off = train_stage1(
        micro_config(tmp_path / "off", data=str(with_files), steps=1, eval_size=0, depth="none")
    )
    assert "loss/depth" not in off["losses"]  # depth="none" ignores the depth files


def test_datasets_argument_and_its_depth_check(tmp_path, recwarn):
    from vq3dlib.data import ProceduralScenes

    scenes = ProceduralScenes(4, 16, n_novel_views=0, seed=3)
    with_depth = [scenes[i] for i in range(4)]
    without = [{"image": item["image"]} for item in with_depth]
    assert dataset_has_depth(with_depth) and not dataset_has_depth(without) and not dataset_has_depth([])
    result = train_stage1(
        micro_config(tmp_path / "a", steps=1, depth="required"), datasets=(with_depth, None)
    )
    assert result["uses_depth"] and "loss/depth" in result["losses"] and result["metrics"] == {}
    with pytest.raises(ValueError, match="depth='required'.*datasets"):
        train_stage1(micro_config(tmp_path / "b", depth="required"), datasets=(without, without[:1]))
    result = train_stage1(micro_config(tmp_path / "c", steps=1), datasets=(without, without[:1]))
    assert len(_depth_warnings(recwarn)) == 1 and "loss/depth" not in result["losses"]
    assert result["metrics"]["n_images"] == 1
    with pytest.raises(ValueError, match=r"'image' \[3, 16, 16\]"):
        train_stage1(micro_config(tmp_path / "d"), datasets=([{"image": torch.zeros(3, 8, 8)}], None))
    with pytest.raises(TypeError, match="pair"):
        train_stage1(micro_config(tmp_path / "e"), datasets=with_depth)
    with pytest.raises(ValueError, match="depth_fn"):  # procedural scenes have exact depth
        train_stage1(micro_config(tmp_path / "f"), depth_fn=lambda image: image.mean(0))


def test_folder_held_out_images_are_not_trained_on(tmp_path):
    data = _folder(tmp_path / "images", 7, depth=True)
    cfg = micro_config(tmp_path, data=str(data), eval_size=3)
    train, held = build_datasets(cfg, 16)
    train_paths = {train[i]["path"] for i in range(len(train))}
    held_paths = {held[i]["path"] for i in range(len(held))}
    assert len(train_paths) == 4 and len(held_paths) == 3 and not train_paths & held_paths
    assert train_paths | held_paths == {
        str(p) for p in data.glob("*.png") if not p.name.endswith(".depth.png")
    }
    again = build_datasets(cfg, 16)[1]
    assert {again[i]["path"] for i in range(3)} == held_paths  # fixed by data_seed
    splits = {
        frozenset(h[i]["path"] for i in range(3))
        for seed in range(6)
        for h in [build_datasets(micro_config(tmp_path, data=str(data), eval_size=3, data_seed=seed), 16)[1]]
    }
    assert len(splits) > 1  # a random choice, not the first images by name
    assert build_datasets(micro_config(tmp_path, data=str(data), eval_size=0), 16)[1] is None
    with pytest.raises(ValueError, match="7 images; eval_size=7"):
        build_datasets(micro_config(tmp_path, data=str(data), eval_size=7), 16)


def test_non_finite_discriminator_step_is_skipped_and_counted_separately(tmp_path, monkeypatch):
    init = VQ3DModel.from_config("tiny", **MICRO)  # adversarial terms (and discriminator steps) from step 1
    reference = train_stage1(
        micro_config(tmp_path / "ref", steps=3, stop_at_step=2), model=copy.deepcopy(init)
    )
    original = VQ3DModel.discriminator_loss
    calls = {"n": 0}

    def poisoned(self, images, outputs):
        calls["n"] += 1
        losses = original(self, images, outputs)
        if calls["n"] == 1:  # the discriminator step of step 1
            losses["loss"] = losses["loss"] * float("inf")
        return losses

    monkeypatch.setattr(VQ3DModel, "discriminator_loss", poisoned)
    result = train_stage1(micro_config(tmp_path / "nan", steps=3, stop_at_step=2), model=copy.deepcopy(init))
    assert calls["n"] == 1 and result["step"] == 2
    assert result["skipped_disc_steps"] == 1 and result["skipped_steps"] == 0
    trained, ref, start = result["model"].state_dict(), reference["model"].state_dict(), init.state_dict()
    disc = [k for k in start if k.startswith("loss.disc_")]
    assert disc and all(torch.equal(trained[k], start[k]) for k in disc)  # nothing reached the discriminators
    assert any(not torch.equal(ref[k], start[k]) for k in disc)  # (which a good step does change)
    assert not _states_equal({k: v for k, v in ref.items() if k not in disc}, trained)  # generator unaffected
    summary = json.loads((tmp_path / "nan" / "metrics.json").read_text())
    assert summary["skipped_disc_steps"] == 1 and summary["skipped_steps"] == 0
    lines = (tmp_path / "nan" / "logs" / "scalars.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert [r["skipped_disc_steps"] for r in logged if "skipped_disc_steps" in r] == [0, 1]
    ckpt = load_checkpoint(tmp_path / "nan" / "checkpoints", restore_rng=False)
    assert ckpt.extra["skipped_disc_steps"] == 1


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(amp="fp8"), "amp"),
        (dict(depth="maybe"), "depth"),
        (dict(steps=0), "steps"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(betas=(0.9,)), "betas"),
    ],
)
def test_config_validation(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        micro_config(tmp_path, **kw)


def test_bad_data_and_model_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data"):
        train_stage1(micro_config(tmp_path, data=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="model_overrides"):
        micro_config(tmp_path, model_overrides={"no_such_field": 1}).model_config()
    with pytest.raises(ValueError, match="patch_size"):
        micro_config(tmp_path, model_overrides={"image_size": 18}).model_config()
    with pytest.raises(TypeError, match="Stage1Config"):
        train_stage1({"steps": 1})
    with pytest.raises(FileNotFoundError):
        load_stage1_model(tmp_path / "nothing-here")


DDP_WORKER = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, os.environ["TEST_DIR"])
    from test_train_stage1 import MICRO
    from vq3dlib.models import VQ3DModel
    from vq3dlib.train.stage1 import Stage1Config, train_stage1

    torch.set_num_threads(1)
    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    cfg = Stage1Config(model_overrides=dict(MICRO, adversarial_start_step=0), steps=1, batch_size=2,
                       train_size=8, eval_size=0, out_dir=out, progress=False, device="cpu", warmup_steps=0)
    result = train_stage1(cfg)
    torch.save({"state": result["model"].state_dict(), "losses": result["losses"]}, f"{out}/rank{rank}.pt")
    from vq3dlib.train.distributed import exit_worker
    exit_worker()  # no gloo teardown abort after the work is done
    """
)


def _run_two_ranks(worker: str, tmp_path: Path) -> tuple[dict, dict]:
    """Runs ``worker`` under ``torchrun`` with two CPU processes; returns what each rank saved."""
    script = tmp_path / "worker.py"
    script.write_text(worker)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TEST_DIR=str(ROOT / "tests"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    return r0, r1


def test_ddp_two_cpu_processes_one_step_identical_weights(tmp_path):
    r0, r1 = _run_two_ranks(DDP_WORKER, tmp_path)
    # the ranks trained on different images (different losses) ...
    assert r0["losses"]["loss/l2"] != r1["losses"]["loss/l2"]
    # ... yet generator AND discriminator weights and the quantizer's EMA statistics are identical
    assert not _states_equal(r0["state"], r1["state"])
    init = VQ3DModel.from_config("tiny", **dict(MICRO, adversarial_start_step=0)).state_dict()
    changed = _states_equal(init, r0["state"])
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("loss.disc_") for k in changed)
    assert (tmp_path / "checkpoints" / "step_000000001.safetensors").is_file()


DDP_BUDGET_WORKER = textwrap.dedent(
    """
    import itertools, os, sys, torch
    sys.path.insert(0, os.environ["TEST_DIR"])
    from test_train_stage1 import MICRO
    import vq3dlib.train.run as run_module
    from vq3dlib.train.stage1 import Stage1Config, train_stage1

    torch.set_num_threads(1)
    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    if rank == 0:  # rank 0's clock races (one second per reading): its budget runs out after a few steps
        ticks = itertools.count()
        run_module.time = type("FastClock", (), {"perf_counter": staticmethod(lambda: float(next(ticks)))})
    cfg = Stage1Config(model_overrides=MICRO, steps=40, batch_size=2, train_size=8, eval_size=0,
                       out_dir=out, progress=False, device="cpu", warmup_steps=0, time_budget_s=6.0,
                       schedule_by_time=True, ckpt_every=0)
    result = train_stage1(cfg)
    torch.save({"state": result["model"].state_dict(), "step": result["step"]}, f"{out}/rank{rank}.pt")
    from vq3dlib.train.distributed import exit_worker
    exit_worker()
    """
)


def test_ddp_time_budget_stops_every_rank_after_the_same_step_with_the_same_schedule(tmp_path):
    """One rank's budget runs out long before the other's: both must stop after the same step (no rank
    left waiting in a collective) with identical weights (the time-following LR agreed)."""
    r0, r1 = _run_two_ranks(DDP_BUDGET_WORKER, tmp_path)
    assert r0["step"] == r1["step"]
    assert 1 <= r0["step"] < 40  # the budget (of the racing clock) ended the run
    assert not _states_equal(r0["state"], r1["state"])


def test_trainer_steps_are_separate_methods(tmp_path):
    from vq3dlib.train.stage1 import Stage1Trainer

    trainer = Stage1Trainer(micro_config(tmp_path, steps=2))
    images, depth = trainer.batch(1)
    assert images.shape == (2, 3, 16, 16) and depth.shape == (2, 1, 16, 16)
    gen = trainer.generator_step(images, depth, step=1)
    assert gen.ok and torch.isfinite(gen.loss) and gen.outputs["novel_rgb"] is not None
    before = [p.detach().clone() for p in trainer.disc_params]
    d_losses = trainer.discriminator_step(images, gen.outputs)
    assert {"canonical", "novel", "loss"} <= set(d_losses)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.disc_params, strict=True))
    losses = trainer.step_losses(gen, d_losses)
    assert "loss/total" in losses and "disc/loss" in losses
    assert {"input", "reconstruction", "depth"} <= set(trainer.preview(trainer.model))
    assert {"psnr", "n_images"} <= set(trainer.evaluate(0))


def test_items_with_nan_or_inf_pixels_or_depth_are_left_out_and_counted(tmp_path, recwarn):
    from vq3dlib.data import ProceduralScenes

    scenes = ProceduralScenes(4, 16, n_novel_views=0, seed=3)
    items = [dict(scenes[i]) for i in range(4)]
    items[1]["image"] = items[1]["image"].clone()
    items[1]["image"][0, 2, 3] = float("nan")
    items[2]["depth"] = items[2]["depth"].clone()
    items[2]["depth"][0, 5, 5] = float("nan")
    items[3]["image"] = items[3]["image"].clone()
    items[3]["image"][1, 0, 0] = float("inf")
    # batch 2 of 4 items: each epoch's 2 batches hold the 3 bad items once; 3 steps = 1.5 epochs
    result = train_stage1(micro_config(tmp_path, steps=3, train_size=4, eval_size=0), datasets=(items, None))
    assert result["step"] == 3
    named = [str(w.message) for w in recwarn if "NaN/Inf" in str(w.message)]
    lists = [json.loads(re.search(r"items (\[[0-9, ]+\])", m).group(1)) for m in named]
    assert sorted(i for ids in lists for i in ids) == [1, 2, 3]  # each bad item named once
    from vq3dlib.train.loop import step_indices

    seen = [int(i) for s in range(3) for i in step_indices(s, 4, 2, 0)]
    expected_skips = sum(i in (1, 2, 3) for i in seen)
    both_bad = sum(
        all(int(i) in (1, 2, 3) for i in step_indices(s, 4, 2, 0)) for s in range(3)
    )  # steps left without a usable item are skipped
    assert result["skipped_items"] == expected_skips > 0
    assert result["skipped_steps"] == both_bad
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped_items"] == expected_skips
    rows = [json.loads(line) for line in (tmp_path / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_items"] == expected_skips
    assert all(
        torch.isfinite(v).all() for v in result["model"].state_dict().values() if v.is_floating_point()
    )


def test_resume_drops_the_scalars_logged_after_the_checkpoint(tmp_path):
    first = train_stage1(micro_config(tmp_path, steps=4, stop_at_step=3, ckpt_every=2, eval_size=0))
    assert first["step"] == 3
    ckpt = tmp_path / "checkpoints" / "step_000000003.safetensors"
    ckpt.unlink()  # as if killed after logging step 3 but before its checkpoint: resume from step 2
    log = tmp_path / "logs" / "scalars.jsonl"
    with log.open("a") as f:
        f.write('{"step": 3, "loss/total"')  # and a line the kill cut short
    resumed = train_stage1(micro_config(tmp_path, steps=4, ckpt_every=2, eval_size=0, resume=True))
    assert resumed["step"] == 4
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
