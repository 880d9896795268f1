"""Adversarial training: discriminators, GAN losses, R1 penalty, VQGAN's adaptive weight.

* :class:`StyleGANDiscriminator` — StyleGAN2-like residual discriminator (blurred downsampling,
  minibatch standard deviation, one logit per image).
* :class:`PatchGANDiscriminator` — pix2pix/VQGAN PatchGAN (one logit per overlapping patch).
* :func:`discriminator_loss` / :func:`generator_loss` — ``"hinge"`` or ``"non_saturating"``.
* :func:`r1_penalty`, :func:`adaptive_generator_weight`, :func:`delayed_weight`.

Use one discriminator instance per image distribution (VQ3D: one for the canonical view, a separate
one for novel views).

Example:
    >>> import torch
    >>> from vq3dlib.losses.adversarial import PatchGANDiscriminator, discriminator_loss, generator_loss
    >>> disc = PatchGANDiscriminator(channels=8)
    >>> real, fake = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    >>> d_loss = discriminator_loss(disc(real), disc(fake.detach()))
    >>> g_loss = generator_loss(disc(fake))
    >>> d_loss.shape, g_loss.shape
    (torch.Size([]), torch.Size([]))
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from vq3dlib._validation import check_choice, check_positive, check_tensor

GAN_LOSSES = ("hinge", "non_saturating")

# ----------------------------------------------------------------------------- discriminators


class _BlurDown(nn.Module):
    """Depthwise ``[1, 3, 3, 1]`` binomial blur with stride 2 (anti-aliased 2x downsampling)."""

    def __init__(self) -> None:
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 64.0)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        kernel = self.kernel.to(x.dtype).expand(c, 1, 4, 4)
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), kernel, stride=2, groups=c)


class _ResBlock(nn.Module):
    """conv3x3 -> lrelu -> conv3x3 -> blur-down -> lrelu, plus a blur-down + 1x1 skip; sum / sqrt(2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(c_in, c_in, 3, padding=1)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.down = _BlurDown()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv0(x), 0.2)
        y = F.leaky_relu(self.down(self.conv1(y)), 0.2)
        return (y + self.skip(self.down(x))) / math.sqrt(2.0)


def _minibatch_std(x: torch.Tensor, group: int) -> torch.Tensor:
    """Appends the per-group standard deviation of features as one extra channel (StyleGAN)."""
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
    y = x.reshape(g, b // g, c, h, w)
    std = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean((1, 2, 3))  # [b // g]
    std = std.reshape(1, b // g, 1, 1, 1).expand(g, b // g, 1, h, w).reshape(b, 1, h, w)
    return torch.cat([x, std], 1)


class StyleGANDiscriminator(nn.Module):
    """StyleGAN2-like residual discriminator: one real/fake logit per image.

    From RGB (1x1 conv) at ``image_size``, residual blocks halve the resolution down to 4x4 (channels
    ``min(channels * 2**k, max_channels)``), then minibatch std, a 3x3 conv and two linear layers.
    Uses standard initialisation (no equalised learning rate).

    Args:
        image_size: input height and width, a power of two ``>= 4`` (e.g. 32 for tiny CPU runs, 256).
        in_channels: image channels.
        channels: width at full resolution.
        max_channels: width cap.
        mbstd_group: minibatch-std group size (the largest divisor of the batch up to this is used).

    Shapes:
        ``forward(images [B, in_channels, image_size, image_size]) -> logits [B]``.

    Example:
        >>> import torch
        >>> disc = StyleGANDiscriminator(image_size=32, channels=8, max_channels=32)
        >>> disc(torch.rand(3, 3, 32, 32)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        image_size: int = 256,
        in_channels: int = 3,
        channels: int = 64,
        max_channels: int = 512,
        mbstd_group: int = 4,
    ) -> None:
        super().__init__()
        if not isinstance(image_size, int) or image_size < 4 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 4, got {image_size}")
        for name, value in (("in_channels", in_channels), ("channels", channels),
                            ("max_channels", max_channels), ("mbstd_group", mbstd_group)):
            check_positive(name, value)
        self.image_size, self.in_channels, self.mbstd_group = image_size, in_channels, mbstd_group
        n_blocks = int(math.log2(image_size)) - 2
        widths = [min(channels * 2**k, max_channels) for k in range(n_blocks + 1)]
        self.from_rgb = nn.Conv2d(in_channels, widths[0], 1)
        self.blocks = nn.ModuleList(_ResBlock(widths[k], widths[k + 1]) for k in range(n_blocks))
        c = widths[-1]
        self.conv = nn.Conv2d(c + 1, c, 3, padding=1)
        self.fc = nn.Linear(c * 16, c)
        self.out = nn.Linear(c, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` for ``images [B, C, S, S]``.

        Raises ``ValueError`` naming ``images`` for a wrong shape or NaN/Inf values (the value check
        follows :func:`vq3dlib._validation.set_finite_checks`), ``TypeError`` for a non-float dtype.

        Example:
            >>> import torch
            >>> disc = StyleGANDiscriminator(image_size=8, channels=4, max_channels=8)
            >>> logits = disc(torch.rand(2, 3, 8, 8))
            >>> logits.shape, logits.dtype
            (torch.Size([2]), torch.float32)
        """
        check_tensor("images", images, shape=(None, self.in_channels, self.image_size, self.image_size),
                     floating=True, finite=True)
        x = F.leaky_relu(self.from_rgb(images), 0.2)
        for block in self.blocks:
            x = block(x)
        x = F.leaky_relu(self.conv(_minibatch_std(x, self.mbstd_group)), 0.2)
        x = F.leaky_relu(self.fc(x.flatten(1)), 0.2)
        return self.out(x).squeeze(1)


class PatchGANDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix, as used by VQGAN): a map of real/fake logits, one per patch.

    ``n_layers`` stride-2 4x4 convolutions (channels doubling up to ``8 * channels``), one stride-1
    4x4 conv, and a 4x4 conv to one channel. Fully convolutional: works at any input size large
    enough for the receptive field (``n_layers=3``: inputs from 32x32 up; 70x70 patches).

    Args:
        in_channels: image channels.
        channels: width of the first layer.
        n_layers: number of downsampling layers.
        norm: ``"batch"`` (VQGAN), ``"instance"`` or ``"none"``.

    Shapes:
        ``forward(images [B, in_channels, H, W]) -> logits [B, 1, H', W']`` (``H' = H / 2**n_layers - 2``).

    Example:
        >>> import torch
        >>> PatchGANDiscriminator(channels=8)(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 1, 6, 6])
    """

    def __init__(
        self, in_channels: int = 3, channels: int = 64, n_layers: int = 3, norm: str = "batch"
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("channels", channels), ("n_layers", n_layers)):
            check_positive(name, value)
        check_choice("norm", norm, ("batch", "instance", "none"))
        self.in_channels, self.n_layers = in_channels, n_layers

        def norm_layer(c: int) -> nn.Module:
            if norm == "batch":
                return nn.BatchNorm2d(c)
            if norm == "instance":
                return nn.InstanceNorm2d(c, affine=True)
            return nn.Identity()

        bias = norm != "batch"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = channels
        for k in range(1, n_layers + 1):
            c_out = channels * min(2**k, 8)
            stride = 2 if k < n_layers else 1
            conv = nn.Conv2d(c, c_out, 4, stride, 1, bias=bias)
            layers += [conv, norm_layer(c_out), nn.LeakyReLU(0.2, True)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def output_size(self, size: int) -> int:
        """Logit map size for an input of ``size`` pixels (``<= 0``: too small).

        Example:
            >>> PatchGANDiscriminator(channels=8).output_size(256)
            30
        """
        for _ in range(self.n_layers):
            size = (size + 2 - 4) // 2 + 1
        return size - 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logit map ``[B, 1, H', W']`` for ``images [B, C, H, W]`` (see :meth:`output_size`).

        Raises ``ValueError`` naming ``images`` for a wrong channel count, too small an image or
        NaN/Inf values (the value check follows :func:`vq3dlib._validation.set_finite_checks`).

        Example:
            >>> import torch
            >>> disc = PatchGANDiscriminator(channels=8, n_layers=2)
            >>> disc(torch.rand(2, 3, 32, 32)).shape, disc.output_size(32)
            (torch.Size([2, 1, 6, 6]), 6)
        """
        check_tensor("images", images, shape=(None, self.in_channels, None, None), floating=True, finite=True)
        if min(self.output_size(s) for s in images.shape[-2:]) < 1:
            raise ValueError(f"images are too small for a PatchGAN with n_layers={self.n_layers}: "
                             f"got {list(images.shape)}")
        return self.net(images)


# ----------------------------------------------------------------------------- losses


def _check_logits(name: str, logits: torch.Tensor) -> None:
    """Float tensor without NaN/Inf (the value check follows ``set_finite_checks``)."""
    check_tensor(name, logits, floating=True, finite=True)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``.

    Logits of any shape (per image or per patch).

    Example:
        >>> import torch
        >>> hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5]))
        tensor(1.2500)
    """
    _check_logits("logits_real", logits_real)
    _check_logits("logits_fake", logits_fake)
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss ``-mean(D(fake))``.

    Example:
        >>> import torch
        >>> hinge_g_loss(torch.tensor([1.0, 3.0]))
        tensor(-2.)
    """
    _check_logits("logits_fake", logits_fake)
    return -logits_fake.mean()


def nonsaturating_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss ``mean(softplus(-D(real))) + mean(softplus(D(fake)))``.

    Example:
        >>> import torch
        >>> nonsaturating_d_loss(torch.zeros(3), torch.zeros(3))  # 2 log 2
        tensor(1.3863)
    """
    _check_logits("logits_real", logits_real)
    _check_logits("logits_fake", logits_fake)
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def nonsaturating_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``mean(softplus(-D(fake))) = -mean(log sigmoid(D(fake)))``.

    Example:
        >>> import torch
        >>> nonsaturating_g_loss(torch.zeros(2))
        tensor(0.6931)
    """
    _check_logits("logits_fake", logits_fake)
    return F.softplus(-logits_fake).mean()


def discriminator_loss(
    logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge"
) -> torch.Tensor:
    """Discriminator loss of the given ``kind`` (``"hinge"`` or ``"non_saturating"``).

    Example:
        >>> import torch
        >>> discriminator_loss(torch.ones(2), -torch.ones(2), kind="hinge")
        tensor(0.)
    """
    check_choice("kind", kind, GAN_LOSSES)
    fn = hinge_d_loss if kind == "hinge" else nonsaturating_d_loss
    return fn(logits_real, logits_fake)


def generator_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Generator loss of the given ``kind`` (``"hinge"`` or ``"non_saturating"``).

    Example:
        >>> import torch
        >>> generator_loss(torch.zeros(2), kind="non_saturating")
        tensor(0.6931)
    """
    check_choice("kind", kind, GAN_LOSSES)
    return hinge_g_loss(logits_fake) if kind == "hinge" else nonsaturating_g_loss(logits_fake)


def r1_penalty(logits_real: torch.Tensor, images_real: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty ``E_x ||grad_x D(x)||^2`` on real images (Mescheder et al., 2018).

    Multiply by ``gamma / 2`` in the discriminator loss. ``images_real`` must require grad and
    ``logits_real`` must be computed from it; the result keeps the graph (``create_graph``) so it can
    be back-propagated into the discriminator. Patch logits are summed per image.

    Args:
        logits_real: ``[B]`` or ``[B, ...]`` discriminator output on ``images_real``.
        images_real: ``[B, C, H, W]`` real images with ``requires_grad=True``.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 3, 8, 8, requires_grad=True)
        >>> logits = (3.0 * x).sum((1, 2, 3))          # gradient 3 everywhere
        >>> float(r1_penalty(logits, x))               # 9 * 3 * 8 * 8
        1728.0
    """
    _check_logits("logits_real", logits_real)
    check_tensor("images_real", images_real, floating=True, finite=True)
    if not images_real.requires_grad:
        raise ValueError("images_real must require grad (call images_real.requires_grad_() before the "
                         "discriminator forward)")
    if logits_real.grad_fn is None:
        raise ValueError("logits_real must be computed from images_real (it has no autograd graph)")
    (grad,) = torch.autograd.grad(logits_real.sum(), images_real, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


def adaptive_generator_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    *,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VQGAN's adaptive weight of the generator loss: ``||grad rec|| / (||grad g|| + eps)``.

    Both gradients are taken w.r.t. ``last_layer`` (the weight of the decoder's last layer), so the
    adversarial term gets roughly the gradient magnitude of the reconstruction term there. The
    result is clamped to ``[0, max_weight]`` and detached. Both graphs are retained.

    Args:
        rec_loss: scalar reconstruction (e.g. L2 + perceptual) loss.
        g_loss: scalar generator loss.
        last_layer: the parameter both losses depend on.
        max_weight: upper clamp.
        eps: added to the denominator.

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> adaptive_generator_weight((w * 3).sum(), (w * 0.5).sum(), w, eps=0.0)   # |(3,3)| / |(.5,.5)|
        tensor(6.)
    """
    check_tensor("rec_loss", rec_loss, shape=(), floating=True, finite=True)
    check_tensor("g_loss", g_loss, shape=(), floating=True, finite=True)
    check_tensor("last_layer", last_layer, floating=True)
    check_positive("max_weight", max_weight)
    check_positive("eps", eps, allow_zero=True)
    grads = []
    for name, loss in (("rec_loss", rec_loss), ("g_loss", g_loss)):
        (g,) = torch.autograd.grad(loss, last_layer, retain_graph=True, allow_unused=True)
        if g is None:
            raise ValueError(f"{name} does not depend on last_layer; pass the decoder's last weight")
        grads.append(g)
    weight = grads[0].norm() / (grads[1].norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


def delayed_weight(weight: float, step: int, start_step: int) -> float:
    """``weight`` from ``start_step`` on, ``0`` before (delayed start of the adversarial loss).

    Args:
        weight: the loss weight, a finite real number ``>= 0``.
        step: current training step, an int ``>= 0``.
        start_step: first step with the weight on, an int ``>= 0``.

    Raises ``TypeError``/``ValueError`` naming the argument otherwise.

    Example:
        >>> delayed_weight(0.1, step=99, start_step=100), delayed_weight(0.1, step=100, start_step=100)
        (0.0, 0.1)
    """
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise TypeError(f"weight must be a real number, got {type(weight).__name__}")
    if not math.isfinite(weight):
        raise ValueError(f"weight must be finite, got {weight}")
    check_positive("weight", weight, allow_zero=True)
    for name, value in (("step", step), ("start_step", start_step)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        check_positive(name, value, allow_zero=True)
    return float(weight) if step >= start_step else 0.0
