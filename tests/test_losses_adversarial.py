"""Tests for vq3dlib.losses.adversarial: discriminators, GAN losses, R1, adaptive weight, delayed start."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vq3dlib._validation import finite_checks_enabled, set_finite_checks
from vq3dlib.losses.adversarial import (
    PatchGANDiscriminator,
    StyleGANDiscriminator,
    adaptive_generator_weight,
    delayed_weight,
    discriminator_loss,
    generator_loss,
    hinge_d_loss,
    hinge_g_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    r1_penalty,
)

# ----------------------------------------------------------------------------- discriminators


@pytest.mark.parametrize("size", [4, 32, 64])
def test_stylegan_discriminator_shapes_and_gradients(device, size):
    disc = StyleGANDiscriminator(image_size=size, in_channels=4, channels=8, max_channels=16).to(device)
    x = torch.rand(5, 4, size, size, device=device, requires_grad=True)  # 5: mbstd group falls back to 5
    logits = disc(x)
    assert logits.shape == (5,)
    logits.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in disc.parameters())


def test_stylegan_discriminator_256_builds_paper_widths():
    disc = StyleGANDiscriminator(image_size=256)
    assert len(disc.blocks) == 6  # 256 -> 4
    assert disc.blocks[0].conv1.out_channels == 128 and disc.out.in_features == 512
    with torch.no_grad():
        assert disc(torch.rand(1, 3, 256, 256)).shape == (1,)


def test_stylegan_minibatch_std_sees_the_batch():
    disc = StyleGANDiscriminator(image_size=8, channels=4, mbstd_group=2).eval()
    x = torch.rand(2, 3, 8, 8)
    a = disc(x)[0]
    b = disc(torch.stack([x[0], x[0]]))[0]  # same first image, different batch partner
    assert not torch.allclose(a, b)


def test_patchgan_shapes_and_sizes(device):
    disc = PatchGANDiscriminator(in_channels=3, channels=8, norm="instance").to(device)
    for size in (32, 64, 256):
        out = disc(torch.rand(2, 3, size, size, device=device))
        assert out.shape == (2, 1, disc.output_size(size), disc.output_size(size))
    with pytest.raises(ValueError, match="too small"):
        disc(torch.rand(2, 3, 16, 16, device=device))


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_patchgan_norms_train(norm):
    disc = PatchGANDiscriminator(channels=8, n_layers=2, norm=norm)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    disc(x).mean().backward()
    assert torch.isfinite(x.grad).all()


def test_discriminator_bad_input():
    with pytest.raises(ValueError, match="image_size"):
        StyleGANDiscriminator(image_size=48)
    with pytest.raises(ValueError, match="images"):
        StyleGANDiscriminator(image_size=32, channels=4)(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="norm"):
        PatchGANDiscriminator(norm="group")
    with pytest.raises(ValueError, match="images"):
        PatchGANDiscriminator(channels=8)(torch.rand(1, 1, 64, 64))


# ----------------------------------------------------------------------------- losses


def test_hinge_losses_match_formula():
    real = torch.tensor([-1.0, 0.5, 2.0])
    fake = torch.tensor([-3.0, -0.5, 1.0])
    expected_d = sum(max(0.0, 1 - r) for r in real.tolist()) / 3
    expected_d += sum(max(0.0, 1 + f) for f in fake.tolist()) / 3
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected_d)
    assert hinge_g_loss(fake).item() == pytest.approx(-sum(fake.tolist()) / 3)
    # a confident, correct discriminator has zero hinge loss
    assert hinge_d_loss(torch.full((4,), 1.5), torch.full((4,), -1.5)).item() == 0.0


def test_nonsaturating_losses_match_formula():
    real = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    fake = torch.tensor([-3.0, -0.5, 1.0], dtype=torch.float64)
    sig = lambda v: 1 / (1 + math.exp(-v))
    expected_d = -sum(math.log(sig(r)) for r in real.tolist()) / 3
    expected_d -= sum(math.log(1 - sig(f)) for f in fake.tolist()) / 3
    assert nonsaturating_d_loss(real, fake).item() == pytest.approx(expected_d)
    expected_g = -sum(math.log(sig(f)) for f in fake.tolist()) / 3
    assert nonsaturating_g_loss(fake).item() == pytest.approx(expected_g)
    # numerically stable for large logits
    assert torch.isfinite(nonsaturating_d_loss(torch.tensor([-200.0]), torch.tensor([200.0])))


def test_dispatchers_and_patch_logits():
    real, fake = torch.randn(2, 1, 6, 6), torch.randn(2, 1, 6, 6)
    assert discriminator_loss(real, fake, "hinge") == hinge_d_loss(real, fake)
    assert discriminator_loss(real, fake, "non_saturating") == nonsaturating_d_loss(real, fake)
    assert generator_loss(fake, "hinge") == hinge_g_loss(fake)
    assert generator_loss(fake, "non_saturating") == nonsaturating_g_loss(fake)
    with pytest.raises(ValueError, match="kind"):
        generator_loss(fake, "wasserstein")
    with pytest.raises(TypeError, match="logits_fake"):
        generator_loss([0.0])


def test_r1_penalty_on_known_gradient():
    # D(x) = sum(a * x^2) has gradient 2 a x
    a = torch.rand(3, 4, 4, dtype=torch.float64)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    logits = (a * x**2).flatten(1).sum(1)
    r1 = r1_penalty(logits, x)
    expected = ((2 * a * x.detach()) ** 2).flatten(1).sum(1).mean()
    torch.testing.assert_close(r1, expected)
    # differentiable w.r.t. the discriminator parameters (double backward)
    a.requires_grad_()
    x2 = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(r1_penalty((a * x2**2).flatten(1).sum(1), x2), a)
    torch.testing.assert_close(g, (8 * a * x2**2).sum(0).detach() / 2)


def test_r1_penalty_through_discriminator():
    disc = StyleGANDiscriminator(image_size=8, channels=4)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    r1 = r1_penalty(disc(x), x)
    r1.backward()
    assert r1.item() > 0
    # every weight reaches the penalty (the last bias cannot: it does not change grad_x D)
    assert all(p.grad is not None for n, p in disc.named_parameters() if n != "out.bias")
    with pytest.raises(ValueError, match="requires_grad_"):
        r1_penalty(disc(torch.rand(2, 3, 8, 8)), torch.rand(2, 3, 8, 8))


def test_adaptive_weight_on_toy_graph():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    disc = nn.Linear(3, 1)
    z, target = torch.randn(5, 4), torch.randn(5, 3)
    out = decoder(z)
    rec = (out - target).square().mean()
    g = -disc(out).mean()
    last = decoder[2].weight
    weight = adaptive_generator_weight(rec, g, last)
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g, last, retain_graph=True)[0]
    torch.testing.assert_close(weight, g_rec.norm() / (g_adv.norm() + 1e-4))
    assert not weight.requires_grad
    # the weighted generator gradient at the last layer has the reconstruction gradient's norm
    torch.testing.assert_close((weight * g_adv).norm(), g_rec.norm(), rtol=1e-3, atol=0)
    # graphs are retained: the total loss can still be back-propagated
    (rec + weight * g).backward()
    assert last.grad is not None


def test_adaptive_weight_clamp_and_errors():
    w = torch.ones(3, requires_grad=True)
    other = torch.ones(3, requires_grad=True)
    tiny = (w * 1e-12).sum()
    assert adaptive_generator_weight((w * 10).sum(), tiny, w, max_weight=100.0).item() == 100.0
    with pytest.raises(ValueError, match="g_loss does not depend"):
        adaptive_generator_weight((w * 2).sum(), (other * 2).sum(), w)
    with pytest.raises(ValueError, match="rec_loss"):
        adaptive_generator_weight(w * 2, (w * 2).sum(), w)


def test_delayed_weight():
    assert [delayed_weight(0.5, s, 3) for s in range(5)] == [0.0, 0.0, 0.0, 0.5, 0.5]
    assert delayed_weight(0.5, 0, 0) == 0.5
    assert delayed_weight(2, 5, 1) == 2.0 and isinstance(delayed_weight(2, 5, 1), float)


def test_delayed_weight_validates_its_arguments():
    with pytest.raises(TypeError, match="weight must be a real number"):
        delayed_weight("0.1", 1, 0)
    with pytest.raises(TypeError, match="weight must be a real number"):
        delayed_weight(True, 1, 0)
    with pytest.raises(ValueError, match="weight must be finite"):
        delayed_weight(float("nan"), 1, 0)
    with pytest.raises(ValueError, match="weight must be finite"):
        delayed_weight(float("inf"), 1, 0)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        delayed_weight(-0.1, 1, 0)
    with pytest.raises(TypeError, match="step must be an int"):
        delayed_weight(0.1, 1.5, 0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        delayed_weight(0.1, -1, 0)
    with pytest.raises(TypeError, match="start_step must be an int"):
        delayed_weight(0.1, 1, None)
    with pytest.raises(ValueError, match="start_step must be >= 0"):
        delayed_weight(0.1, 1, -5)


_BAD_VALUES = [float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("bad", _BAD_VALUES)
def test_gan_losses_reject_non_finite_logits(bad):
    good = torch.randn(4)
    poisoned = good.clone()
    poisoned[2] = bad
    for kind in ("hinge", "non_saturating"):
        with pytest.raises(ValueError, match="logits_real contains NaN or Inf"):
            discriminator_loss(poisoned, good, kind)
        with pytest.raises(ValueError, match="logits_fake contains NaN or Inf"):
            discriminator_loss(good, poisoned, kind)
        with pytest.raises(ValueError, match="logits_fake contains NaN or Inf"):
            generator_loss(poisoned, kind)
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    logits = (x * 2).flatten(1).sum(1)
    with pytest.raises(ValueError, match="logits_real contains NaN"):
        r1_penalty(logits * torch.tensor([1.0, bad]), x)
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="rec_loss contains NaN"):
        adaptive_generator_weight((w * bad).sum(), w.sum(), w)


@pytest.mark.parametrize("bad", _BAD_VALUES)
def test_discriminators_reject_non_finite_images(bad):
    images = torch.rand(2, 3, 32, 32)
    images[1, 0, 5, 7] = bad
    for disc in (StyleGANDiscriminator(image_size=32, channels=4, max_channels=8),
                 PatchGANDiscriminator(channels=4, n_layers=2)):
        with pytest.raises(ValueError, match="images contains NaN or Inf"):
            disc(images)
    real = images.clone().requires_grad_()
    with pytest.raises(ValueError, match="images_real contains NaN"):
        r1_penalty(real.flatten(1).nan_to_num().sum(1), real)


def test_value_checks_follow_the_global_switch():
    logits = torch.tensor([0.0, float("nan")])
    images = torch.full((1, 3, 32, 32), float("nan"))
    disc = PatchGANDiscriminator(channels=4, n_layers=2)
    before = finite_checks_enabled()
    set_finite_checks(False)
    try:  # no checks: NaN flows through (the caller's choice)
        assert torch.isnan(generator_loss(logits))
        assert torch.isnan(discriminator_loss(logits, logits, "non_saturating"))
        assert torch.isnan(disc(images)).all()
    finally:
        set_finite_checks(before)
    with pytest.raises(ValueError, match="logits_fake"):
        generator_loss(logits)


def test_tiny_gan_step_improves_discriminator():
    """A few hinge steps separate two constant image distributions (sanity of signs)."""
    torch.manual_seed(0)
    disc = StyleGANDiscriminator(image_size=8, channels=4, max_channels=8)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    real, fake = torch.full((4, 3, 8, 8), 0.8), torch.full((4, 3, 8, 8), 0.2)
    first = None
    for _ in range(20):
        loss = discriminator_loss(disc(real), disc(fake))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert disc(real).mean() > disc(fake).mean()
