"""Tests for vq3dlib.train.checkpoint: round trips, bit-exact resume, atomic writes, rotation."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vq3dlib.train.checkpoint as ckpt_mod
from vq3dlib.train import ModelEMA
from vq3dlib.train.checkpoint import (
    checkpoint_path,
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)

ROOT = Path(__file__).resolve().parents[1]


def _make(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    ema = ModelEMA(model, decay=0.9, warmup=2)
    return model, opt, sched, ema


def _train(model, opt, sched, ema, steps):
    model.train()
    for _ in range(steps):
        # data drawn from all three RNGs so each one must be restored for an exact resume
        x = torch.randn(8, 4) + float(np.random.rand()) + random.random()
        loss = model(x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update()


def _objects(model, opt, sched, ema):
    return {"model": model, "optimizer": opt, "scheduler": sched, "ema": ema}


def test_resume_is_bit_exact(tmp_path):
    n = 6
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    straight = _make()
    _train(*straight, n)
    after_straight = get_rng_state()

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    first = _make()
    _train(*first, n // 2)
    path = save_checkpoint(
        checkpoint_path(tmp_path, n // 2), _objects(*first), step=n // 2, config={"lr": 1e-2}
    )
    # scramble every RNG and start from fresh, differently initialised objects
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    resumed = _make(seed=5)
    ckpt = load_checkpoint(path, _objects(*resumed))
    assert ckpt.step == n // 2 and ckpt.config == {"lr": 1e-2}
    _train(*resumed, n - n // 2)

    for a, b in zip(straight[0].state_dict().values(), resumed[0].state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight[3].state_dict().values(), resumed[3].state_dict().values()):
        assert torch.equal(a, b)
    assert straight[2].get_last_lr() == resumed[2].get_last_lr()
    sa, sb = straight[1].state_dict()["state"], resumed[1].state_dict()["state"]
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][name], sb[k][name])
    # and the RNG streams continue identically
    assert torch.equal(torch.rand(3), (set_rng_state(after_straight), torch.rand(3))[1])


def test_rng_state_round_trip_through_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    path = save_checkpoint(tmp_path / "r.safetensors", {}, step=0)
    want = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn())
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    load_checkpoint(path)
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    assert want[2] == got[2] and want[3] == got[3]
    # restore_rng=False leaves the streams alone
    state = get_rng_state()
    load_checkpoint(path, restore_rng=False)
    x = torch.rand(2)
    set_rng_state(state)
    assert torch.equal(x, torch.rand(2))


@dataclass
class _Cfg:
    width: int = 8
    name: str = "tiny"
    betas: tuple = (0.9, 0.99)


def test_plain_state_config_extra_round_trip(tmp_path):
    nested = {
        "t": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "f16": torch.ones(2, dtype=torch.float16),
        "view": torch.arange(10.0)[2:5],  # partial storage
        "ints": {1: "a", 2: None},  # non-string keys
        "tuple": (1, 2.5, "x", True, None),
        "list": [torch.zeros(0), float("inf"), -0.0, 1e-300, 2**70],
        "np": np.arange(3, dtype=np.uint32),
        "dtype": torch.bfloat16,
    }
    tied = nn.Linear(3, 3)
    shared = nn.Sequential(tied, tied)  # tied weights share storage
    path = save_checkpoint(
        tmp_path / "p.safetensors",
        {"state": nested, "shared": shared},
        step=7,
        config=_Cfg(),
        extra={"skipped": 2},
    )
    ckpt = load_checkpoint(path)
    got = ckpt.states["state"]
    assert torch.equal(got["t"], nested["t"]) and got["t"].dtype == torch.int32
    assert got["f16"].dtype == torch.float16 and torch.equal(got["view"], torch.tensor([2.0, 3.0, 4.0]))
    assert got["ints"] == {1: "a", 2: None} and got["tuple"] == nested["tuple"]
    assert got["list"][0].shape == (0,) and got["list"][1:] == nested["list"][1:]
    assert str(got["list"][2]) == "-0.0"
    assert got["np"].dtype == np.uint32 and got["np"].tolist() == [0, 1, 2]
    assert got["dtype"] is torch.bfloat16
    assert ckpt.config == {"width": 8, "name": "tiny", "betas": (0.9, 0.99)}
    assert ckpt.extra == {"skipped": 2} and ckpt.step == 7
    fresh = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    load_checkpoint(path, {"shared": fresh})
    assert torch.equal(fresh[0].weight, tied.weight) and torch.equal(fresh[1].weight, tied.weight)


def test_file_is_plain_safetensors(tmp_path):
    from safetensors import safe_open

    model = nn.Linear(2, 3)
    path = save_checkpoint(tmp_path / "m.safetensors", {"model": model}, step=3)
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("model/weight"), model.weight.detach())
        meta = f.metadata()
    assert meta["step"] == "3" and json.loads(meta["vq3dlib"])["format"] == "vq3dlib.checkpoint"


def test_atomic_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(4, 4)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"model": model}, step=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    real_write = ckpt_mod._write_safetensors

    def crash_halfway(tensors, tmp, metadata):
        real_write(tensors, tmp, metadata)
        data = open(tmp, "rb").read()
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt_mod, "_write_safetensors", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": model}, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]  # temp file removed
    fresh = nn.Linear(4, 4)
    ckpt = load_checkpoint(path, {"model": fresh})
    assert ckpt.step == 1 and torch.equal(fresh.weight, before["weight"])


def test_latest_and_prune(tmp_path):
    assert latest_checkpoint(tmp_path) is None and latest_checkpoint(tmp_path / "missing") is None
    for step in (5, 100, 20, 7):
        save_checkpoint(checkpoint_path(tmp_path, step), {"x": {"s": torch.tensor(step)}}, step=step)
    (tmp_path / ".step_000000999.safetensors.abc.tmp").write_bytes(b"partial")  # left by a killed save
    (tmp_path / "notes.txt").write_text("x")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 100)
    assert load_checkpoint(tmp_path).step == 100
    deleted = prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == [
        *(checkpoint_path(tmp_path, s).name for s in (5, 7)),
        ".step_000000999.safetensors.abc.tmp",  # the leftover goes too
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", *(checkpoint_path(tmp_path, s).name for s in (20, 100))
    ]  # fmt: skip
    (tmp_path / ".step_000000150.safetensors.q.tmp").write_bytes(b"partial")
    save_checkpoint(checkpoint_path(tmp_path, 200), {}, step=200, keep_last=2)  # prunes after saving
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["notes.txt", *(checkpoint_path(tmp_path, s).name for s in (100, 200))]


KILLED_WRITER = textwrap.dedent(
    """
    import sys, torch
    from vq3dlib.train.checkpoint import checkpoint_path, save_checkpoint

    torch.set_num_threads(1)
    payload = torch.empty(4_000_000)  # 16 MB: most of each iteration is spent writing the file
    step = 0
    while True:
        step += 1
        payload.fill_(float(step))
        state = {"payload": payload, "step": torch.tensor(step), "tail": torch.arange(step + 1.0)}
        save_checkpoint(checkpoint_path(sys.argv[1], step), {"w": state}, step=step, keep_last=2)
    """
)


def _tmp_files(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def _being_written(directory) -> bool:
    for p in directory.glob(".step_*.tmp"):
        try:
            if p.stat().st_size > 0:
                return True
        except FileNotFoundError:  # renamed in the meantime
            pass
    return False


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_while_saving_leaves_an_intact_latest_checkpoint(tmp_path):
    """A real kill (SIGKILL, no cleanup handlers) of a process saving checkpoints in a loop."""
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    ckpts = tmp_path / "ckpts"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(script), str(ckpts)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and proc.poll() is None:
            latest = latest_checkpoint(ckpts)
            # once two saves are complete, kill while a temp file is being filled (mid-save)
            if latest is not None and int(latest.name[5:14]) >= 2:
                if _being_written(ckpts) or time.monotonic() > deadline - 3.0:
                    break
            time.sleep(0.0005)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    leftovers = _tmp_files(ckpts)
    latest = latest_checkpoint(ckpts)
    step = int(latest.name[5:14])
    assert step >= 2
    # every checkpoint still on disk (the latest included) loads and holds exactly what was saved
    for path in sorted(ckpts.glob("step_*.safetensors")):
        ckpt = load_checkpoint(path, restore_rng=False)
        s = ckpt.step
        assert path == checkpoint_path(ckpts, s)
        w = ckpt.states["w"]
        assert w["step"].item() == s and torch.equal(w["tail"], torch.arange(s + 1.0))
        assert w["payload"].shape == (4_000_000,) and bool((w["payload"] == s).all())
    # the next save (or an explicit prune) removes what the killed save left behind
    save_checkpoint(checkpoint_path(ckpts, step + 1), {"w": {"x": torch.ones(1)}}, step=step + 1, keep_last=2)
    assert _tmp_files(ckpts) == []
    assert load_checkpoint(ckpts).step == step + 1
    print(f"killed after step {step}; temp files left by the kill: {leftovers}")


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no step_"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match="cannot store a object"):
        save_checkpoint(tmp_path / "a.safetensors", {"bad": {"x": object()}})
    with pytest.raises(TypeError, match="state_dict"):
        save_checkpoint(tmp_path / "a.safetensors", {"bad": 3})
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path / "a.safetensors", {}, step=-1)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a vq3dlib checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")
    p = save_checkpoint(tmp_path / "b.safetensors", {"model": nn.Linear(2, 2)})
    with pytest.raises(KeyError, match="optimizer"):
        load_checkpoint(p, {"optimizer": torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)})
    load_checkpoint(p, {"optimizer": torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)}, strict=False)
    with pytest.raises(RuntimeError):
        load_checkpoint(p, {"model": nn.Linear(2, 3)})
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, 0)


def test_checksum_nonfinite_and_fallback_to_the_newest_intact_checkpoint(tmp_path):
    import warnings

    from vq3dlib.train.checkpoint import latest_intact_checkpoint

    for step in (1, 2, 3):
        state = {"w": {"x": torch.full((64,), float(step))}}
        save_checkpoint(checkpoint_path(tmp_path, step), state, step=step)
    newest = checkpoint_path(tmp_path, 3)
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the tensor data
    newest.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is corrupt: its tensors do not match the sha256"):
        load_checkpoint(newest)
    second = checkpoint_path(tmp_path, 2)
    second.write_bytes(second.read_bytes()[:50])  # truncated
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert latest_intact_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)
    assert len(caught) == 2
    ckpt = load_checkpoint(tmp_path, restore_rng=False)
    assert ckpt.step == 1 and torch.equal(ckpt.states["w"]["x"], torch.ones(64))
    with pytest.raises(ValueError, match="refusing to save checkpoint of step 4: 1 non-finite"):
        save_checkpoint(checkpoint_path(tmp_path, 4), {"w": {"x": torch.tensor([1.0, float("nan")])}}, step=4)
    assert not checkpoint_path(tmp_path, 4).exists()
