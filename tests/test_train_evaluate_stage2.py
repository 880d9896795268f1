"""Tests for vq3dlib.train.evaluate_stage2: code copies, feature FID, the stage-2 figures end to end."""

from __future__ import annotations

import math

import pytest
import torch

from vq3dlib.classifier import SceneClassifier, classifier_accuracy, train_classifier
from vq3dlib.models import CodePrior, VQ3DModel
from vq3dlib.train.evaluate_stage2 import (
    Stage2EvalConfig,
    code_copy_stats,
    evaluate_stage2,
    feature_fid,
    nearest_code_distance,
    procedural_images,
    render_input_view,
    stage2_table,
)

MICRO = dict(
    image_size=16, render_resolution=8, plane_resolution=16, plane_channels=8, samples_per_ray=8,
    occupancy_resolution=16, encoder_width=32, encoder_heads=2, decoder_width=32, decoder_heads=2,
    codebook_size=32, code_dim=8, field_hidden_dim=16, prior_width=32, prior_depth=1, prior_heads=2,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def test_nearest_code_distance_matches_brute_force():
    codes, ref = torch.randint(0, 4, (7, 5)), torch.randint(0, 4, (9, 5))
    want = torch.tensor([min(int((c != r).sum()) for r in ref) for c in codes])
    assert torch.equal(nearest_code_distance(codes, ref, chunk=3), want)


def test_copy_fraction_is_one_for_training_grids_and_zero_for_random_grids():
    train = torch.randint(0, 512, (50, 64))
    assert code_copy_stats(train[torch.tensor([3, 7, 7, 49])], train) == {
        "copy_fraction": 1.0,
        "nn_token_distance": 0.0,
    }
    fresh = code_copy_stats(torch.randint(0, 512, (20, 64)), train)
    assert fresh["copy_fraction"] == 0.0 and fresh["nn_token_distance"] > 55  # ~64 * (1 - 1/512) expected
    one_off = train[:4].clone()
    one_off[:, 0] = (one_off[:, 0] + 1) % 512
    assert code_copy_stats(one_off, train) == {"copy_fraction": 0.0, "nn_token_distance": 1.0}


def test_code_distance_errors():
    with pytest.raises(ValueError, match="reference"):
        nearest_code_distance(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="reference must hold"):
        nearest_code_distance(torch.zeros(2, 4, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="codes"):
        nearest_code_distance(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long))


def test_feature_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    net = SceneClassifier(6).eval()
    x = torch.rand(40, 3, 16, 16)
    assert abs(feature_fid(net.forward_features, x, x, batch_size=16)) < 1e-6
    shifted = [feature_fid(net.forward_features, x, (x + s).clamp(0, 1)) for s in (0.1, 0.4)]
    assert 0 < shifted[0] < shifted[1]


class _CopyingPrior(CodePrior):
    """A prior whose samples of class ``k`` are the given code grids of class ``k``, in order."""

    def __init__(self, cfg, codes, labels):
        super().__init__(cfg.vocab_size, cfg.prior_seq_len, cfg.num_classes, width=16, depth=1, heads=2)
        self.codes, self.code_labels = codes, labels

    def sample(self, n, labels=None, **kw):
        picked = [self.codes[self.code_labels == int(k)][i % int((self.code_labels == int(k)).sum())]
                  for i, k in enumerate(labels)]  # fmt: skip
        return torch.stack(picked)


@pytest.fixture(scope="module")
def micro_setup():
    torch.manual_seed(0)
    model = VQ3DModel.from_config("tiny", **MICRO).eval()
    train_x, train_y = procedural_images(36, 16, seed=0)
    held_x, held_y = procedural_images(12, 16, seed=1)
    _, train_codes, _ = model.encode(train_x)
    classifier = train_classifier(train_x, train_y, 6, steps=30, batch_size=12).model
    return model, train_x, train_y, train_codes.reshape(36, -1), held_x, held_y, classifier


def test_evaluate_stage2_counts_copies_and_scores_copied_scenes_like_reconstructions(micro_setup):
    model, train_x, train_y, train_codes, held_x, held_y, classifier = micro_setup
    prior = _CopyingPrior(model.config, train_codes, train_y)
    cfg = Stage2EvalConfig(eval_size=12, samples_per_class=2, batch_size=8)
    m = evaluate_stage2(model, prior, classifier, held_x, held_y, train_codes, train_x, cfg)
    assert m["copy_fraction"] == 1.0 and m["nn_token_distance"] == 0.0
    assert (m["n_samples"], m["n_held_out"], m["seq_len"], m["chance_accuracy"]) == (12, 12, 16, 1 / 6)
    # samples of class k are training scenes of class k: scored like their reconstructions
    labels = torch.arange(6).repeat_interleave(2)
    copied = prior.sample(12, labels)
    rows = [int(torch.nonzero((train_codes == c).all(dim=1))[0, 0]) for c in copied]
    assert torch.equal(train_y[rows], labels)  # each sample is a training grid of its class
    recon = render_input_view(model, model.reconstruct(train_x[rows]), 8)
    assert m["class_accuracy"] == pytest.approx(classifier_accuracy(classifier, recon, labels))
    assert m["classifier_accuracy"] == pytest.approx(classifier_accuracy(classifier, held_x, held_y))
    assert m["fid_ratio"] == pytest.approx(m["fid_samples"] / m["fid_reconstructions"])
    assert m["fid_samples"] > 0 and m["fid_train_images"] > 0
    assert 0.0 <= m["heldout_copy_fraction"] <= 1.0 and 0 <= m["heldout_nn_token_distance"] <= 16
    assert "class accuracy of conditional samples" in stage2_table(m)


def test_evaluate_stage2_with_a_real_prior_and_errors(micro_setup):
    model, train_x, train_y, train_codes, held_x, held_y, classifier = micro_setup
    prior = CodePrior.from_config(model.config)
    cfg = Stage2EvalConfig(eval_size=12, samples_per_class=1, batch_size=8, top_k=4)
    state = torch.get_rng_state()
    a = evaluate_stage2(model, prior, classifier, held_x, held_y, train_codes, config=cfg)
    assert torch.equal(torch.get_rng_state(), state)
    b = evaluate_stage2(model, prior, classifier, held_x, held_y, train_codes, config=cfg)
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert "fid_train_images" not in a and 0.0 <= a["class_accuracy"] <= 1.0
    assert math.isfinite(a["fid_samples"]) and a["fid_samples"] > 0
    with pytest.raises(ValueError, match="classifier num_classes=3"):
        evaluate_stage2(model, prior, SceneClassifier(3), held_x, held_y, train_codes, config=cfg)
    with pytest.raises(ValueError, match="train_codes"):
        evaluate_stage2(model, prior, classifier, held_x, held_y, train_codes[:, :5], config=cfg)
    with pytest.raises(ValueError, match="eval_size"):
        Stage2EvalConfig(eval_size=1)


def test_a_second_fid_classifier_gives_the_features_and_its_own_accuracies(micro_setup):
    model, train_x, train_y, train_codes, held_x, held_y, classifier = micro_setup
    prior = _CopyingPrior(model.config, train_codes, train_y)
    cfg = Stage2EvalConfig(eval_size=12, samples_per_class=2, batch_size=8)
    other = SceneClassifier(6).eval()  # untrained: features and decisions unlike the judge's
    one = evaluate_stage2(model, prior, classifier, held_x, held_y, train_codes, config=cfg)
    two = evaluate_stage2(
        model, prior, classifier, held_x, held_y, train_codes, config=cfg, fid_classifier=other
    )
    as_judge = evaluate_stage2(model, prior, other, held_x, held_y, train_codes, config=cfg)
    assert two["class_accuracy"] == one["class_accuracy"]  # the judge decides the class accuracy
    assert two["fid_samples"] == pytest.approx(as_judge["fid_samples"])  # the FID network the features
    assert two["fid_reconstructions"] == pytest.approx(as_judge["fid_reconstructions"])
    assert two["class_accuracy_fid_classifier"] == pytest.approx(as_judge["class_accuracy"])
    recon_accuracy = as_judge["classifier_recon_accuracy"]
    assert two["classifier_recon_accuracy_fid_classifier"] == pytest.approx(recon_accuracy)
    assert "class_accuracy_fid_classifier" not in one
    assert "judged by the sharp-image classifier" in stage2_table(two)
    assert "judged by the sharp-image classifier" not in stage2_table(one)
    with pytest.raises(ValueError, match="classifier_blur"):
        Stage2EvalConfig(classifier_blur=-1.0)
