"""Training losses: depth alignment and pointwise depth, distortion, perceptual, adversarial.

Example:
    >>> import torch
    >>> from vq3dlib.losses import distortion_loss
    >>> float(distortion_loss(torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1)))
    0.3333333432674408
"""

from vq3dlib.losses.depth import Alignment, align_scale_shift, aligned_depth_loss, pointwise_depth_loss
from vq3dlib.losses.distortion import distortion_loss, distortion_loss_reference

__all__ = [
    "Alignment",
    "align_scale_shift",
    "aligned_depth_loss",
    "distortion_loss",
    "distortion_loss_reference",
    "pointwise_depth_loss",
]
