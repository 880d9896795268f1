"""The training objective of VQ3D stage 1: every generator loss term, the discriminators and theirs.

:class:`VQ3DLoss` owns the modules only the losses use — the canonical-view and novel-view
discriminators (:class:`~vq3dlib.losses.StyleGANDiscriminator`) and the frozen LPIPS network
(:class:`~vq3dlib.losses.LPIPS`) — and assembles the terms from the public blocks of
:mod:`vq3dlib.losses`:

* generator (:meth:`VQ3DLoss.generator_losses`): L2 and perceptual reconstruction, an L2 on the
  low-resolution render itself (``render_l2_weight``), the quantizer's
  own terms, VQ3D's pointwise depth loss on the rendering weights against the scale/shift-aligned
  pseudo disparity, the distortion loss, and the adversarial terms of both views (with an adaptive
  weight; from ``adversarial_start_step`` on; the discriminators' parameters record no gradient);
* discriminators (:meth:`VQ3DLoss.discriminator_losses`): real images against reconstructions
  (canonical view) and against novel-view renders at render resolution, plus an optional R1 penalty.

:class:`~vq3dlib.models.VQ3DModel` holds one as ``model.loss`` and calls it from its forward pass.

Example:
    >>> import torch
    >>> from vq3dlib.models import get_config
    >>> loss = VQ3DLoss(get_config("tiny", image_size=16, render_resolution=8, perceptual_weight=0.0))
    >>> images, recon = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    >>> sorted(loss.discriminator_losses(images, recon, novel_rgb=torch.rand(2, 3, 8, 8)))
    ['canonical', 'loss', 'novel']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq3dlib.losses import (
    LPIPS,
    StyleGANDiscriminator,
    adaptive_generator_weight,
    discriminator_loss,
    distortion_loss,
    generator_loss,
    map_disparity_range,
    pointwise_depth_loss,
    r1_penalty,
)
from vq3dlib.models.lifting import lifting_depth_loss
from vq3dlib.render import RenderOutput, depth_to_disparity

if TYPE_CHECKING:
    from vq3dlib.models.configs import VQ3DConfig


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` record no gradient for graphs built inside (their flags restored after).

    Example:
        >>> net = nn.Linear(2, 1)
        >>> with frozen(net):
        ...     net.weight.requires_grad
        False
        >>> net.weight.requires_grad
        True
    """
    params = [p for m in modules for p in m.parameters()]
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, state in zip(params, states):
            p.requires_grad_(state)


def behind_surface_opacity(render: RenderOutput, far: float, margin: float = 0.1) -> Tensor:
    """Mean over rays of the summed opacity of the samples behind each ray's rendered surface.

    A single input view sees nothing behind its first surface: density there gets no gradient from
    the image, so whatever the decoder puts there (e.g. an object extruded along the input camera's
    rays) shows in novel views. This sums each such sample's own opacity ``α = 1 - exp(-σ δ)``
    (before transmittance, so hidden samples count fully) over the samples that start beyond
    ``(1 + margin)`` times the ray's rendered depth (detached) and end before ``far`` (the opaque
    background interval is left alone), and averages over rays.

    Args:
        render: a :class:`~vq3dlib.render.RenderOutput` with ``alphas`` (packed samples).
        far: the renderer's far plane; samples ending beyond it are not counted.
        margin: relative distance behind the surface where counting starts.

    Returns:
        a scalar, differentiable w.r.t. the densities.

    Example:
        >>> import torch
        >>> from vq3dlib.render import Renderer
        >>> def slabs(x, d, s):  # opaque at z in [0, 0.2] (seen) and at z in [0.6, 0.8] (hidden behind)
        ...     z = x[:, 2]
        ...     inside = ((z > 0) & (z < 0.2)) | ((z > 0.6) & (z < 0.8))
        ...     return inside.float() * 50, torch.ones(len(x), 3)
        >>> r = Renderer(sampling="stratified", max_samples=64, near=0.5, far=10.0)
        >>> o, d = torch.tensor([[0.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, 1.0]])
        >>> out = r(slabs, (o, d), jitter=False)
        >>> round(float(out.depth), 1), float(behind_surface_opacity(out, far=10.0)) > 3  # the 2nd slab
        (1.0, True)
    """
    if render.alphas is None:
        raise ValueError("render has no alphas (a RenderOutput of vq3dlib.render.Renderer carries them)")
    depth = render.depth.detach().reshape(-1)[render.ray_indices]
    behind = (render.t_starts > depth * (1 + margin)) & (render.t_ends < far) & (depth > 0)
    return (render.alphas * behind).sum() / max(render.n_rays, 1)


class VQ3DLoss(nn.Module):
    """Generator and discriminator losses of VQ3D stage 1 (see the module docstring).

    Args:
        config: the model's :class:`~vq3dlib.models.VQ3DConfig` (weights, start steps, sizes).

    Attributes:
        disc_canonical: discriminator of ``image_size`` images (real vs reconstructed).
        disc_novel: discriminator of ``render_resolution`` images (real vs novel-view renders).
        perceptual: the LPIPS network (``None`` when ``perceptual_weight == 0``); it gets images in
            ``[0, 1]`` (``normalize=True``) and stays frozen.

    Example:
        >>> from vq3dlib.models import get_config
        >>> loss = VQ3DLoss(get_config("tiny", adversarial_weight=0.1, adversarial_start_step=10))
        >>> loss.adversarial_on(9), loss.adversarial_on(10)
        (False, True)
    """

    def __init__(self, config: VQ3DConfig) -> None:
        super().__init__()
        cfg = self.config = config
        disc = {"channels": cfg.disc_channels, "max_channels": cfg.disc_max_channels}
        self.disc_canonical = StyleGANDiscriminator(cfg.image_size, **disc)
        self.disc_novel = StyleGANDiscriminator(cfg.render_resolution, **disc)
        self.perceptual = (  # images and reconstructions are in [0, 1]: normalize=True maps them to [-1, 1]
            LPIPS(weights=cfg.perceptual_weights, pretrained=cfg.perceptual_pretrained, normalize=True)
            if cfg.perceptual_weight > 0
            else None
        )

    def adversarial_on(self, step: int) -> bool:
        """Whether the adversarial terms (and the discriminator step) are on at training ``step``."""
        return self.config.adversarial_weight > 0 and step >= self.config.adversarial_start_step

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the canonical-view and novel-view discriminators."""
        yield from self.disc_canonical.parameters()
        yield from self.disc_novel.parameters()

    def depth_target(self, depth: Tensor, size: int | None = None) -> Tensor:
        """Pseudo ground truth ``[B, 1, h, w]`` → the disparity target ``[B, r, r]`` of the depth loss.

        ``config.depth_target == "depth"`` converts it with :func:`~vq3dlib.render.depth_to_disparity`
        (depth ``<= 0``, no measurement, becomes disparity 0); it is resized (bilinear) to the render
        resolution ``r`` (or ``size``) and, for ``config.depth_align == "range"``, mapped onto
        ``1 / depth_range`` (:func:`~vq3dlib.losses.map_disparity_range`).

        Example:
            >>> from vq3dlib.models import get_config
            >>> cfg = get_config("tiny", render_resolution=4, depth_target="depth", depth_align="none",
            ...                  perceptual_weight=0.0)
            >>> VQ3DLoss(cfg).depth_target(torch.full((1, 1, 8, 8), 2.0)).unique().tolist()
            [0.5]
        """
        cfg = self.config
        if cfg.depth_target == "depth":
            depth = depth_to_disparity(depth)
        r = cfg.render_resolution if size is None else size
        target = F.interpolate(depth, size=(r, r), mode="bilinear", align_corners=False)[:, 0]
        if cfg.depth_align == "range":
            target = map_disparity_range(target, cfg.depth_range)
        return target

    def generator_losses(
        self,
        images: Tensor,
        reconstruction: Tensor,
        render: RenderOutput,
        quantizer_loss: Tensor,
        *,
        step: int = 0,
        depth: Tensor | None = None,
        novel_rgb: Tensor | None = None,
        last_layer: Tensor | None = None,
        lift_depth_logits: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Every weighted generator loss term of one step (their sum is the generator loss).

        Args:
            images: ``[B, 3, H, W]`` inputs in ``[0, 1]``, the reconstruction target.
            reconstruction: ``[B, 3, H, W]`` the model's reconstruction.
            render: the canonical :class:`~vq3dlib.render.RenderOutput` (its packed samples feed the
                depth and distortion losses).
            quantizer_loss: the quantizer's own loss (scalar).
            step: training step (depth loss from ``depth_start_step``, adversarial terms from
                ``adversarial_start_step``).
            depth: optional pseudo ground truth ``[B, 1, h, w]`` (see :meth:`depth_target`).
            novel_rgb: ``[B·k, 3, r, r]`` novel-view renders for the novel-view adversarial term.
            last_layer: the decoder's last weight, for the adaptive adversarial weight (computed
                when given and gradients are recorded; else the weight is 1).
            lift_depth_logits: the decoder lifting's depth-bin logits ``[B, D, R, R]``, for
                ``lifting_depth_weight`` (with ``depth``).

        Returns:
            ``{"l2", "render_l2", "perceptual", "quantizer", "depth", "lifting_depth", "distortion",
            "behind_surface", "adversarial", "adversarial_novel"}``, each present when its weight (and
            input) is non-zero.

        Example:
            >>> from vq3dlib.models import VQ3DModel
            >>> model = VQ3DModel.from_config("tiny", render_resolution=8, adversarial_weight=0.1,
            ...                               novel_adversarial_weight=0.1)
            >>> images, depth = torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32)
            >>> sorted(model(images, step=0)["losses"])  # before adversarial_start_step, without depth
            ['l2', 'quantizer', 'render_l2']
            >>> sorted(model(images, depth=depth, step=model.config.adversarial_start_step)["losses"])
            ['adversarial', 'adversarial_novel', 'depth', 'l2', 'lifting_depth', 'quantizer', 'render_l2']
        """
        cfg = self.config
        losses: dict[str, Tensor] = {}
        rec_loss = F.mse_loss(reconstruction, images)
        losses["l2"] = cfg.l2_weight * rec_loss
        if cfg.render_l2_weight > 0:  # the low-resolution render itself, against the resized input
            low = render.images()["rgb"]
            target = F.interpolate(images, size=tuple(low.shape[-2:]), mode="area")
            losses["render_l2"] = cfg.render_l2_weight * F.mse_loss(low, target)
        if self.perceptual is not None:
            losses["perceptual"] = cfg.perceptual_weight * self.perceptual(reconstruction, images).mean()
        losses["quantizer"] = cfg.quantizer_weight * quantizer_loss
        if depth is not None and cfg.depth_weight > 0 and step >= cfg.depth_start_step:
            losses["depth"] = cfg.depth_weight * pointwise_depth_loss(
                render.weights,
                render.t_starts,
                render.t_ends,
                self.depth_target(depth),
                render.ray_indices,
                target_space="disparity",
                align=cfg.depth_align == "lsq",
            )
        if (
            lift_depth_logits is not None
            and depth is not None
            and cfg.lifting_depth_weight > 0
            and step >= cfg.depth_start_step
        ):
            target = self.depth_target(depth, size=lift_depth_logits.shape[-1])
            losses["lifting_depth"] = cfg.lifting_depth_weight * lifting_depth_loss(
                lift_depth_logits, target, cfg.camera_distance
            )
        if cfg.distortion_weight > 0:
            t0, t1 = render.t_starts, render.t_ends
            if cfg.sampling == "stratified":  # mip-NeRF 360's normalised disparity s = 1 - near / t
                t0, t1 = 1 - cfg.near / t0.clamp(min=cfg.near), 1 - cfg.near / t1.clamp(min=cfg.near)
            losses["distortion"] = cfg.distortion_weight * distortion_loss(
                render.weights, t0, t1, render.ray_indices, n_rays=render.n_rays
            )
        if cfg.behind_surface_weight > 0 and render.alphas is not None:
            losses["behind_surface"] = cfg.behind_surface_weight * behind_surface_opacity(render, cfg.far)
        if self.adversarial_on(step):
            with frozen(self.disc_canonical, self.disc_novel):  # the generator step leaves D's grads alone
                losses.update(self._adversarial(reconstruction, rec_loss, novel_rgb, last_layer))
        return losses

    def _adversarial(
        self, reconstruction: Tensor, rec_loss: Tensor, novel_rgb: Tensor | None, last_layer: Tensor | None
    ) -> dict[str, Tensor]:
        cfg = self.config
        losses = {}
        g_loss = generator_loss(self.disc_canonical(reconstruction * 2 - 1), cfg.adversarial_loss)
        if last_layer is not None and torch.is_grad_enabled():
            weight = adaptive_generator_weight(rec_loss, g_loss, last_layer)
        else:
            weight = torch.ones((), device=reconstruction.device)
        losses["adversarial"] = cfg.adversarial_weight * weight * g_loss
        if novel_rgb is not None and cfg.novel_adversarial_weight > 0:
            g_novel = generator_loss(self.disc_novel(novel_rgb * 2 - 1), cfg.adversarial_loss)
            losses["adversarial_novel"] = cfg.novel_adversarial_weight * weight * g_novel
        return losses

    def discriminator_losses(
        self, images: Tensor, reconstruction: Tensor, novel_rgb: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Discriminator losses of one step from real ``images`` and the generator's outputs.

        The canonical-view discriminator compares real images with reconstructions; the novel-view
        one compares real images (resized to render resolution) with novel-view renders, the only
        signal that unseen views look like real images. The generator outputs are detached.

        Args:
            images: ``[B, 3, H, W]`` real images in ``[0, 1]``.
            reconstruction: ``[B, 3, H, W]`` reconstructions.
            novel_rgb: ``[N, 3, r, r]`` novel-view renders, or ``None`` (no novel-view term).

        Returns:
            ``{"canonical", "novel" (with novel_rgb), "r1" (with r1_weight > 0), "loss" (the sum)}``.
        """
        cfg = self.config
        real = images * 2 - 1
        fake = reconstruction.detach() * 2 - 1
        if cfg.r1_weight > 0:
            real = real.detach().requires_grad_(True)
        logits_real = self.disc_canonical(real)
        losses = {
            "canonical": discriminator_loss(logits_real, self.disc_canonical(fake), cfg.adversarial_loss)
        }
        if cfg.r1_weight > 0:
            losses["r1"] = cfg.r1_weight / 2 * r1_penalty(logits_real, real)
        if novel_rgb is not None:
            r = cfg.render_resolution
            small = F.interpolate(images, size=(r, r), mode="bilinear", align_corners=False) * 2 - 1
            novel = novel_rgb.detach() * 2 - 1
            losses["novel"] = discriminator_loss(
                self.disc_novel(small), self.disc_novel(novel), cfg.adversarial_loss
            )
        losses["loss"] = sum(losses.values())
        return losses


__all__ = ["VQ3DLoss", "frozen"]
