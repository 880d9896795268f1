"""Tests for vq3dlib.train.stage2: code extraction and caching, labels, resume, NaN skip, prior I/O."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vq3dlib.data import ProceduralScenes
from vq3dlib.models import CodePrior, VQ3DModel
from vq3dlib.train import stage2 as S2
from vq3dlib.train.checkpoint import checkpoint_path, save_checkpoint
from vq3dlib.train.stage1 import load_stage1_model
from vq3dlib.train.stage2 import Stage2Config, extract_codes, load_prior, train_stage2

MICRO = dict(
    image_size=16, render_resolution=8, plane_resolution=16, plane_channels=8, samples_per_ray=8,
    occupancy_resolution=16, encoder_width=32, encoder_heads=2, decoder_width=32, decoder_heads=2,
    codebook_size=32, code_dim=8, disc_channels=8, disc_max_channels=16, field_hidden_dim=16,
    prior_width=32, prior_depth=1, prior_heads=2,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def stage1_file(tmp_path):
    path = tmp_path / "stage1" / "model.safetensors"
    path.parent.mkdir()
    VQ3DModel.from_config("tiny", **MICRO).save(path)
    return path


def config(stage1, out, **kw) -> Stage2Config:
    base = dict(stage1=str(stage1), out_dir=str(out), steps=4, batch_size=4, train_size=6, progress=False,
                log_every=1, ckpt_every=0, warmup_steps=1, device="cpu")  # fmt: skip
    base.update(kw)
    return Stage2Config(**base)


def test_codes_match_the_frozen_model_and_labels_come_from_the_dataset(stage1_file):
    model = VQ3DModel.load(stage1_file)
    data = ProceduralScenes(5, 16, seed=0)
    codes = extract_codes(model, data, batch_size=2)
    assert codes["indices"].shape == (5, model.config.num_tokens) and codes["indices"].dtype == torch.int64
    assert codes["labels"].tolist() == [int(data[i]["label"]) for i in range(5)]
    _, direct, _ = model.eval().encode(torch.stack([data[i]["image"] for i in range(5)]))
    assert torch.equal(codes["indices"], direct.reshape(5, -1))


def test_codes_extracted_once_and_cached(stage1_file, tmp_path, monkeypatch):
    calls = []
    original = S2.extract_codes
    monkeypatch.setattr(S2, "extract_codes", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = train_stage2(config(stage1_file, tmp_path / "a"))
    assert len(calls) == 1 and first["codes_path"].is_file() and first["n_codes"] == 6
    assert first["conditional"]
    train_stage2(config(stage1_file, tmp_path / "a", steps=6, resume=True))
    assert len(calls) == 1  # same stage-1 weights and data: the cache is reused
    train_stage2(config(stage1_file, tmp_path / "a", steps=6, train_size=5))
    assert len(calls) == 2  # different data: extracted again
    VQ3DModel.from_config("tiny", **MICRO).save(stage1_file)  # new stage-1 weights
    train_stage2(config(stage1_file, tmp_path / "a", steps=6, train_size=5))
    assert len(calls) == 3


def test_codes_re_extracted_after_more_stage1_training_without_model_file(tmp_path, monkeypatch):
    # a stage-1 run still training: checkpoints/ only, no model.safetensors yet
    run = tmp_path / "stage1-run"

    def stage1_checkpoint(step: int, seed: int) -> None:
        torch.manual_seed(seed)
        model = VQ3DModel.from_config("tiny", **MICRO)
        extra = {"model_config": model.config.to_dict()}
        save_checkpoint(checkpoint_path(run / "checkpoints", step), {"model": model}, step=step, extra=extra)

    calls = []
    original = S2.extract_codes
    monkeypatch.setattr(S2, "extract_codes", lambda *a, **k: calls.append(1) or original(*a, **k))
    stage1_checkpoint(100, seed=0)
    codes_file = train_stage2(config(run, tmp_path / "s2", steps=1))["codes_path"]
    before = load_file(str(codes_file))["indices"]
    train_stage2(config(run, tmp_path / "s2", steps=1))
    assert len(calls) == 1  # unchanged stage-1 checkpoint: cached
    stage1_checkpoint(200, seed=1)  # more stage-1 training: a newer checkpoint
    train_stage2(config(run, tmp_path / "s2", steps=1))
    assert len(calls) == 2
    after = load_file(str(codes_file))["indices"]
    expected = original(load_stage1_model(run), ProceduralScenes(6, 16, seed=0))["indices"]
    assert torch.equal(after, expected) and not torch.equal(after, before)  # the newest weights' codes
    stage1_checkpoint(200, seed=2)  # the same checkpoint file rewritten
    train_stage2(config(run, tmp_path / "s2", steps=1))
    assert len(calls) == 3


def test_time_budget_and_ema(stage1_file, tmp_path):
    stopped = train_stage2(config(stage1_file, tmp_path / "t", steps=1000, time_budget_s=1e-9))
    assert stopped["step"] == 0 and (tmp_path / "t" / "checkpoints" / "step_000000000.safetensors").is_file()
    assert (tmp_path / "t" / "prior.safetensors").is_file()
    result = train_stage2(
        config(stage1_file, tmp_path / "e", steps=4, ema_decay=0.5, ema_warmup=0.0, lr=3e-3)
    )
    ema = result["prior"].state_dict()
    exported = load_prior(tmp_path / "e").state_dict()  # prior.safetensors: the EMA weights
    assert all(torch.equal(ema[k], v) for k, v in exported.items())
    ckpt = tmp_path / "e" / "checkpoints" / "step_000000004.safetensors"
    assert all(torch.equal(ema[k], v) for k, v in load_prior(ckpt).state_dict().items())
    raw = load_prior(ckpt, ema=False).state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)  # the average lags the raw weights
    with pytest.raises(ValueError, match="ema_decay"):
        config(stage1_file, tmp_path, ema_decay=1.0)
    with pytest.raises(ValueError, match="time_budget_s"):
        config(stage1_file, tmp_path, time_budget_s=-1.0)


def test_resume_is_bit_exact_and_prior_file_loads(stage1_file, tmp_path):
    straight = train_stage2(config(stage1_file, tmp_path / "a", steps=6))
    half = train_stage2(config(stage1_file, tmp_path / "b", steps=6, stop_at_step=3))
    assert half["step"] == 3
    resumed = train_stage2(config(stage1_file, tmp_path / "b", steps=6, resume=True))
    assert resumed["step"] == 6 and resumed["loss"] == straight["loss"]
    a, b = straight["prior"].state_dict(), resumed["prior"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    loaded = load_prior(tmp_path / "a")  # run folder -> prior.safetensors
    assert all(torch.equal(a[k], v) for k, v in loaded.state_dict().items())
    assert loaded.vq3d_config.image_size == 16
    from_ckpt = load_prior(tmp_path / "a" / "checkpoints" / "step_000000006.safetensors")
    assert all(torch.equal(a[k], v) for k, v in from_ckpt.state_dict().items())
    init = CodePrior.from_config(VQ3DModel.load(stage1_file).config)
    assert any(not torch.equal(init.state_dict()[k], a[k]) for k in a)  # training changed the weights


def test_training_lowers_the_loss(stage1_file, tmp_path):
    short = train_stage2(config(stage1_file, tmp_path / "s", steps=1, lr=3e-3))
    long = train_stage2(config(stage1_file, tmp_path / "l", steps=40, lr=3e-3))
    assert long["loss"] < short["loss"]


def test_non_finite_step_is_skipped(stage1_file, tmp_path, monkeypatch):
    reference = train_stage2(config(stage1_file, tmp_path / "ref", steps=3, stop_at_step=1))
    original = CodePrior.forward
    calls = {"n": 0}

    def poisoned(self, indices, labels=None):
        calls["n"] += 1
        out = original(self, indices, labels)
        return out * float("nan") if calls["n"] == 2 else out

    monkeypatch.setattr(CodePrior, "forward", poisoned)
    result = train_stage2(config(stage1_file, tmp_path / "nan", steps=3, stop_at_step=2))
    assert result["skipped_steps"] == 1
    a, b = reference["prior"].state_dict(), result["prior"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_errors(stage1_file, tmp_path):
    with pytest.raises(ValueError, match="prior_overrides"):
        config(stage1_file, tmp_path, prior_overrides={"image_size": 8})
    with pytest.raises(FileNotFoundError):
        train_stage2(config(tmp_path / "missing.safetensors", tmp_path / "x"))
    with pytest.raises(ValueError, match="num_classes"):
        train_stage2(config(stage1_file, tmp_path / "y", prior_overrides={"num_classes": 2}, train_size=12))
    with pytest.raises(FileNotFoundError):
        load_prior(tmp_path / "nothing")
    with pytest.raises(ValueError, match="amp"):
        config(stage1_file, tmp_path, amp="int8")


DDP_WORKER = """
import os, sys, torch
from vq3dlib.train.stage2 import Stage2Config, train_stage2

torch.set_num_threads(1)
stage1, out = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])
cfg = Stage2Config(stage1=stage1, out_dir=out, steps=2, batch_size=2, train_size=8, progress=False,
                   ckpt_every=0, warmup_steps=0, device="cpu")
result = train_stage2(cfg)
torch.save({"state": result["prior"].state_dict(), "step": result["step"]}, f"{out}/rank{rank}.pt")
from vq3dlib.train.distributed import exit_worker
exit_worker()  # no gloo teardown abort after the work is done
"""


def test_ddp_two_cpu_processes_identical_prior_weights(stage1_file, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(stage1_file), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 2
    init = CodePrior.from_config(load_stage1_model(stage1_file).config).state_dict()
    assert any(not torch.equal(init[k], r0["state"][k]) for k in init)  # the weights moved ...
    for k in r0["state"]:  # ... and stayed identical on both ranks (gradients averaged by DDP)
        torch.testing.assert_close(r0["state"][k], r1["state"][k], rtol=0, atol=0)
    assert (out / "codes.safetensors").is_file()  # extracted once by rank 0, read by rank 1
