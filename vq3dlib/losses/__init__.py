"""Training losses: depth alignment and pointwise depth, distortion, perceptual, adversarial.

Example:
    >>> import torch
    >>> from vq3dlib.losses import distortion_loss
    >>> float(distortion_loss(torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1)))
    0.3333333432674408
"""

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
from vq3dlib.losses.depth import (
    Alignment,
    align_scale_shift,
    aligned_depth_loss,
    map_disparity_range,
    pointwise_depth_loss,
)
from vq3dlib.losses.distortion import distortion_loss, distortion_loss_reference
from vq3dlib.losses.perceptual import LPIPS, PerceptualLoss

__all__ = [
    "LPIPS",
    "Alignment",
    "PatchGANDiscriminator",
    "PerceptualLoss",
    "StyleGANDiscriminator",
    "adaptive_generator_weight",
    "align_scale_shift",
    "aligned_depth_loss",
    "delayed_weight",
    "discriminator_loss",
    "distortion_loss",
    "distortion_loss_reference",
    "generator_loss",
    "hinge_d_loss",
    "hinge_g_loss",
    "map_disparity_range",
    "nonsaturating_d_loss",
    "nonsaturating_g_loss",
    "pointwise_depth_loss",
    "r1_penalty",
]
