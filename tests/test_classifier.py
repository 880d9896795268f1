"""Tests for vq3dlib.classifier: the small scene classifier learns the procedural classes."""

from __future__ import annotations

import math

import pytest
import torch

from vq3dlib.classifier import SceneClassifier, classifier_accuracy, gaussian_blur, train_classifier
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


def _blurred_by_definition(image: torch.Tensor, sigma: float, r: int) -> torch.Tensor:
    # the 2-D Gaussian of radius r as an explicit weighted sum over a reflect-padded image
    c, h, w = image.shape
    padded = torch.nn.functional.pad(image[None], (r, r, r, r), mode="reflect")[0]
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    weights = torch.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / (2 * sigma**2))
    weights = weights / weights.sum()
    out = torch.zeros(c, h, w, dtype=torch.float64)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            out += weights[i, j] * padded[:, i : i + h, j : j + w]
    return out


def test_gaussian_blur_matches_the_definition_per_image():
    x = torch.rand(3, 2, 11, 13, dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.8, 1.5], dtype=torch.float64)
    y = gaussian_blur(x, sigma)
    assert torch.equal(y[0], x[0])  # sigma 0: unchanged
    for i in (1, 2):
        # one radius for the batch: three widths of the widest blur
        torch.testing.assert_close(y[i], _blurred_by_definition(x[i], float(sigma[i]), r=math.ceil(3 * 1.5)))
    torch.testing.assert_close(y.sum((-1, -2)), x.sum((-1, -2)), rtol=0.05, atol=0)  # about mass-preserving
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, torch.tensor([0.0, -1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="blur_sigma"):
        train_classifier(torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 0]), steps=1, blur_sigma=-1.0)


def test_blur_augmentation_blurs_half_the_images_up_to_blur_sigma(monkeypatch):
    import vq3dlib.classifier as classifier

    seen = []

    def spy(images, sigma):
        seen.append(sigma.clone())
        return gaussian_blur(images, sigma)

    monkeypatch.setattr(classifier, "gaussian_blur", spy)
    x, y = torch.rand(64, 3, 8, 8), torch.arange(64) % 2
    train_classifier(x, y, steps=20, batch_size=32, blur_sigma=2.0)
    sigma = torch.cat(seen)
    assert len(seen) == 20 and sigma.shape == (640,)
    assert 0.35 < float((sigma == 0).float().mean()) < 0.65  # about half of the images stay sharp
    assert float(sigma.max()) <= 2.0 and float(sigma.max()) > 1.5
    seen.clear()
    train_classifier(x, y, steps=5, batch_size=32)  # blur_sigma=0: no blur at all
    assert seen == []
