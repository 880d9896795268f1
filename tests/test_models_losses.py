"""The loss assembly of VQ3D stage 1 (vq3dlib.models.losses): which terms, when, on what inputs."""

from __future__ import annotations

import pytest
import torch

from conftest import fast_vq3d, micro_vq3d


def test_depth_loss_starts_at_its_step():
    model = micro_vq3d(depth_start_step=5, adversarial_weight=0.0)
    images, depth = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    assert "depth" not in model(images, depth=depth, step=4)["losses"]
    assert model(images, depth=depth, step=5)["losses"]["depth"] > 0
    with pytest.raises(ValueError, match="depth_start_step"):
        micro_vq3d(depth_start_step=-1)


def test_adversarial_terms_start_late_and_discriminator_step():
    model = micro_vq3d()
    images = torch.rand(2, 3, 16, 16)
    early = model(images, step=0)
    assert "adversarial" not in early["losses"]
    late = model(images, step=model.config.adversarial_start_step)
    assert "adversarial" in late["losses"]
    d = model.discriminator_loss(images, late)
    assert set(d) == {"canonical", "novel", "loss"} and torch.isfinite(d["loss"])
    d["loss"].backward()
    assert all(p.grad is not None for p in model.loss.disc_canonical.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())


def test_perceptual_term_sees_inputs_in_lpips_range_and_is_differentiable():
    import copy

    model = fast_vq3d(
        perceptual_weight=0.5, perceptual_pretrained=False, novel_views=0, adversarial_weight=0.0
    )
    images = torch.rand(2, 3, 16, 16)
    out = model(images)
    assert "perceptual" in out["losses"]
    assert model.loss.perceptual.normalize  # it gets [0, 1] images and maps them to LPIPS's [-1, 1]
    ref = copy.deepcopy(model.loss.perceptual)  # same (random) weights, in LPIPS's native [-1, 1] convention
    ref.normalize = False
    recon = out["reconstruction"].detach()
    expected = 0.5 * ref(recon * 2 - 1, images * 2 - 1)
    torch.testing.assert_close(out["losses"]["perceptual"].detach(), expected)
    wrong_range = 0.5 * ref(recon, images)  # [0, 1] fed as if it were [-1, 1] (the old bug)
    assert not torch.isclose(expected, wrong_range, rtol=1e-2)
    out["losses"]["perceptual"].backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in model.loss.perceptual.parameters())  # frozen


def test_depth_target_depth_gives_the_same_loss_as_its_disparity():
    model = fast_vq3d(novel_views=0, adversarial_weight=0.0).eval()  # eval: no ray jitter, no EMA update
    images, disparity = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16) + 0.1
    for align in ("lsq", "range"):
        model.config.depth_align = align
        model.config.depth_target = "disparity"
        a = model(images, depth=disparity)["losses"]["depth"]
        model.config.depth_target = "depth"
        b = model(images, depth=1 / disparity)["losses"]["depth"]
        assert a > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with_holes = (1 / disparity).masked_fill(disparity > 0.9, 0.0)  # depth 0: no measurement
    assert torch.isfinite(model(images, depth=with_holes)["loss"])
    assert fast_vq3d(depth_target="depth").config.depth_target == "depth"
    with pytest.raises(ValueError, match="depth_target"):
        fast_vq3d(depth_target="inverse")


def test_the_loss_module_owns_the_discriminators_and_older_weight_names_load():
    model = micro_vq3d(perceptual_weight=0.0)
    loss_params = {id(p) for p in model.loss.parameters()}
    assert {id(p) for p in model.discriminator_parameters()} == loss_params
    assert not loss_params & {id(p) for p in model.generator_parameters()}
    state = model.state_dict()
    legacy = {k.removeprefix("loss."): v for k, v in state.items()}  # the names before model.loss
    assert any(k.startswith("disc_canonical.") for k in legacy)
    other = micro_vq3d(perceptual_weight=0.0)
    other.load_state_dict(legacy)
    for key, value in other.state_dict().items():
        torch.testing.assert_close(value, state[key])


def _two_slab_render(density_behind: float, jitter: bool = False):
    # one ray along +z from z = -1: a thin visible slab at z in [0, 0.05], a hidden one at z in [0.6, 0.8]
    from vq3dlib.render import Renderer

    hidden = torch.tensor(density_behind, requires_grad=True)

    def field(x, d, s):
        z = x[:, 2]
        seen = ((z > 0) & (z < 0.05)).float() * 200
        behind = ((z > 0.6) & (z < 0.8)).float() * hidden
        return seen + behind, torch.ones(len(x), 3)

    r = Renderer(sampling="stratified", max_samples=64, near=0.5, far=10.0)
    rays = (torch.tensor([[0.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, 1.0]]))
    return r(field, rays, jitter=jitter), hidden


def test_behind_surface_opacity_counts_only_hidden_samples_before_the_background():
    from vq3dlib.models.losses import behind_surface_opacity

    out, hidden = _two_slab_render(5.0)
    ts, te = out.t_starts, out.t_ends
    mid = (ts + te) / 2
    in_hidden_slab = (mid > 1.6) & (mid < 1.8)
    expected = (1 - torch.exp(-5.0 * (te - ts)))[in_hidden_slab].sum()
    torch.testing.assert_close(behind_surface_opacity(out, far=10.0), expected)
    assert float(out.weights[in_hidden_slab].sum()) < 1e-4  # the render itself barely sees it
    behind_surface_opacity(out, far=10.0).backward()
    assert float(hidden.grad) > 0  # the penalty reaches the hidden density
    empty, _ = _two_slab_render(0.0)
    assert float(behind_surface_opacity(empty, far=10.0)) == 0.0  # the visible slab is not penalised
    # the opaque background interval [far, 1e10] (any density) is never counted
    assert bool((empty.t_ends >= 10.0).any()) and float(behind_surface_opacity(empty, far=10.0)) == 0.0


def test_behind_surface_term_is_in_the_losses_when_weighted():
    model = micro_vq3d(adversarial_weight=0.0, sampling="stratified", behind_surface_weight=0.5)
    losses = model(torch.rand(2, 3, 16, 16), step=0)["losses"]
    assert "behind_surface" in losses and float(losses["behind_surface"]) >= 0
    assert "behind_surface" not in micro_vq3d(adversarial_weight=0.0, sampling="stratified")(
        torch.rand(2, 3, 16, 16), step=0
    )["losses"]
    with pytest.raises(ValueError, match="behind_surface_weight"):
        micro_vq3d(behind_surface_weight=-1.0)
