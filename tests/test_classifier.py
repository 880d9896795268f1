"""Tests for vq3dlib.classifier: the small scene classifier learns the procedural classes."""

from __future__ import annotations

import math

import pytest
import torch

from vq3dlib.classifier import SceneClassifier, classifier_accuracy, train_classifier
from vq3dlib.data.procedural import CLASSES
from vq3dlib.train.evaluate_stage2 import procedural_images

pytestmark = pytest.mark.usefixtures("one_thread")


def test_learns_procedural_classes_well_above_chance():
    train_x, train_y = procedural_images(120, 16, seed=0)
    held_x, held_y = procedural_images(36, 16, seed=1)
    r = train_classifier(train_x, train_y, len(CLASSES), held_out=(held_x, held_y), steps=60, batch_size=32)
    assert r.steps == 60 and r.model.num_classes == len(CLASSES)
    assert r.accuracy >= 0.6 > 3.0 / len(CLASSES)  # chance is 1/6
    assert r.accuracy == classifier_accuracy(r.model, held_x, held_y)
    assert not r.model.training


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16) % 3
    state = torch.get_rng_state()
    a = train_classifier(x, y, steps=3, batch_size=4, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_classifier(x, y, steps=3, batch_size=4, seed=5)
    pairs = zip(a.model.state_dict().values(), b.model.state_dict().values())
    assert all(torch.equal(p, q) for p, q in pairs)
    assert a.model.num_classes == 3 and math.isnan(a.accuracy)


def test_time_budget_stops_training():
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 2
    r = train_classifier(x, y, steps=10_000, time_budget_s=0.2, batch_size=4)
    assert 1 <= r.steps < 10_000 and r.seconds < 5.0


def test_features_and_head_compose_and_predict_matches_argmax():
    net = SceneClassifier(4, widths=(8, 16), feature_dim=12).eval()
    x = torch.rand(5, 3, 16, 16)
    feats = net.forward_features(x)
    assert feats.shape == (5, 12)
    torch.testing.assert_close(net.forward_head(feats), net(x))
    assert torch.equal(net.predict(x, batch_size=2), net(x).argmax(-1))


def test_bad_inputs_name_the_argument():
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="num_classes"):
        SceneClassifier(1)
    with pytest.raises(ValueError, match="images"):
        train_classifier(torch.rand(4, 1, 8, 8), y)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(x, y[:3])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        train_classifier(x, torch.tensor([0, 1, 2, 1]), num_classes=2)
    with pytest.raises(ValueError, match="steps"):
        train_classifier(x, y, steps=0)
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        SceneClassifier(2)(torch.rand(2, 3, 8, 8).long())
