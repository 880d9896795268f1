"""The run scaffold of both stages (vq3dlib.train.run): config checks, the step loop, resume, outputs."""

from __future__ import annotations

import json

import pytest
import torch

from vq3dlib.train.run import RunConfig, TrainingRun


def _run(tmp_path, **kw) -> TrainingRun:
    cfg = RunConfig(**{"steps": 4, "out_dir": str(tmp_path), "progress": False, "device": "cpu", **kw})
    return TrainingRun(cfg, "test")


def _states(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 1)
    return net


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(steps=0), "steps"),
        (dict(lr=0.0), "lr"),
        (dict(amp="fp8"), "amp"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(betas=(0.9,)), "betas"),
        (dict(time_budget_s=-1.0), "time_budget_s"),
        (dict(train_size=-1), "train_size"),
    ],
)
def test_config_checks_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kw)


def test_the_loop_stops_at_steps_stop_at_step_and_the_time_budget(tmp_path):
    run = _run(tmp_path / "a")
    with run:
        assert list(run.steps()) == [0, 1, 2, 3] and run.step == 4 and run.train_seconds >= 0
    run = _run(tmp_path / "b", stop_at_step=2)
    with run:
        assert list(run.steps()) == [0, 1]
    run = _run(tmp_path / "c", time_budget_s=1e-9)
    with run:
        assert list(run.steps()) == [] and run.step == 0
    assert [s for s in (2, 3, 4) if _run(tmp_path / "d").due(2, s)] == [2]  # never at the last step


def _train(run: TrainingRun, net, stop: int | None = None):
    opt, sched = run.optimizer(net.parameters(), lr=0.1, betas=(0.9, 0.99), weight_decay=0.0)
    ckpt = run.resume({"net": net, "opt": opt, "sched": sched})
    run.start()
    with run:
        for _ in run.steps():
            loss = (net(torch.randn(4, 3)) ** 2).mean()  # per-step noise from the seeded RNG
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        run.save(run.step, {"note": "x"})
    return ckpt


def test_resume_continues_bit_exactly_and_writes_the_config(tmp_path):
    straight = _states()
    _train(_run(tmp_path / "a", warmup_steps=1), straight)
    half = _states()
    _train(_run(tmp_path / "b", warmup_steps=1, stop_at_step=2), half)
    resumed = _states(seed=1)  # other initial weights: the checkpoint overrides them
    ckpt = _train(_run(tmp_path / "b", warmup_steps=1, resume=True), resumed)
    assert ckpt is not None and ckpt.step == 2 and ckpt.extra["note"] == "x"
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    config = json.loads((tmp_path / "b" / "train_config.json").read_text())
    assert config["steps"] == 4 and config["resume"] is True
    assert (tmp_path / "b" / "checkpoints" / "step_000000004.safetensors").is_file()


def test_ema_scaler_and_autocast_follow_the_config(tmp_path):
    run = _run(tmp_path, ema_decay=0.5, amp="bf16")
    assert run.ema(torch.nn.Linear(2, 2)).decay == 0.5 and not run.grad_scaler().is_enabled()
    with run.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert _run(tmp_path).ema(torch.nn.Linear(2, 2)) is None
    assert _run(tmp_path).ddp(torch.nn.Linear(2, 2)).__class__ is torch.nn.Linear  # one process
    with pytest.raises(TypeError, match="RunConfig"):
        TrainingRun({"steps": 1}, "x")


def test_the_lr_schedule_follows_the_time_budget_when_asked(tmp_path, monkeypatch):
    """With a time budget the cosine decay follows the time spent: a run the budget ends at 50% of its
    steps has still annealed its learning rate; by steps only, it would stop half way down."""
    from vq3dlib.train.loop import warmup_cosine

    by_steps = warmup_cosine(10, 100, 0.1)
    for by_time in (True, False):
        run = _run(tmp_path / str(by_time), steps=100, warmup_steps=10, time_budget_s=10.0, min_lr_ratio=0.1,
                   schedule_by_time=by_time)
        _, sched = run.optimizer(_states().parameters(), lr=1.0, betas=(0.9, 0.99), weight_decay=0.0)
        factor = sched.lr_lambdas[0]
        monkeypatch.setattr(run, "elapsed", lambda: 10.0)  # the whole budget spent
        assert factor(5) == pytest.approx(0.6)  # warmup is by steps either way
        assert factor(50) == pytest.approx(0.1 if by_time else by_steps(50))
        monkeypatch.setattr(run, "elapsed", lambda: 5.0)  # half the budget: as if at step 50
        assert factor(20) == pytest.approx(by_steps(50) if by_time else by_steps(20))
        assert factor(80) == pytest.approx(by_steps(80))  # steps ahead of time: by steps
    assert by_steps(50) > 0.5 > 0.1
