"""Tests for vq3dlib.train.ema.ModelEMA against the update formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vq3dlib.train.ema import ModelEMA, unwrap_model


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize("warmup", [0.0, 3.0])
def test_update_matches_formula(warmup):
    model = _net()
    decay = 0.8
    ema = ModelEMA(model, decay=decay, warmup=warmup)
    want = {k: v.detach().clone().double() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for t in range(1, 6):
        model.train()
        loss = model(torch.randn(8, 3)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        d = decay if warmup == 0 else decay * (1 - math.exp(-t / warmup))
        assert ema.current_decay() == pytest.approx(d)
        for k, p in model.named_parameters():
            want[k] = d * want[k] + (1 - d) * p.detach().double()
    got = dict(ema.module.named_parameters())
    for k, w in want.items():
        torch.testing.assert_close(got[k].double(), w, rtol=1e-6, atol=1e-6)
    # buffers (BatchNorm running stats, batch counter) are copied, not averaged
    for (k, b), (_, eb) in zip(model.named_buffers(), ema.module.named_buffers()):
        assert torch.equal(b, eb), k
    assert int(ema.num_updates) == 5


def test_ema_copy_is_frozen_eval_and_detached():
    model = _net()
    ema = ModelEMA(model, decay=0.5)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    ema.train()
    assert not ema.module.training
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), ema.module.parameters()))
    # the source model is not a registered submodule: state_dict holds only the average + counter
    assert set(ema.state_dict()) == {f"module.{k}" for k in model.state_dict()} | {"num_updates"}


def test_state_dict_round_trip_and_copy_to():
    model = _net()
    ema = ModelEMA(model, decay=0.9, warmup=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    ema.update()
    other = ModelEMA(_net(), decay=0.9, warmup=2)
    other.load_state_dict(ema.state_dict())
    assert int(other.num_updates) == 2 and other.current_decay() == ema.current_decay()
    for a, b in zip(ema.module.parameters(), other.module.parameters()):
        assert torch.equal(a, b)
    target = _net()
    ema.copy_to(target)
    for a, b in zip(ema.module.state_dict().values(), target.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(KeyError, match="match"):
        ema.copy_to(nn.Linear(3, 4))


def test_update_from_explicit_and_wrapped_model():
    model = nn.Linear(2, 2)
    ema = ModelEMA(nn.DataParallel(model), decay=0.0)  # decay 0: the average equals the model
    assert unwrap_model(nn.DataParallel(model)) is model
    replacement = nn.Linear(2, 2)
    ema.update(replacement)
    assert torch.equal(ema.module.weight, replacement.weight)
    with pytest.raises(KeyError, match="missing"):
        ema.update(nn.Sequential(nn.Linear(2, 2)))


def test_errors():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(nn.Linear(1, 1), decay=1.0)
    with pytest.raises(ValueError, match="warmup"):
        ModelEMA(nn.Linear(1, 1), warmup=-1)
    with pytest.raises(TypeError, match="model"):
        ModelEMA("not a model")
