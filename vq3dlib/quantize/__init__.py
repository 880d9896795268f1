"""Quantizers with one interface: ``z_q, indices, aux = quantizer(z)`` and ``indices_to_codes(indices)``.

- :class:`VectorQuantizer`: ViT-VQGAN style (projection to a low code dim, l2-normalised codes,
  EMA or loss-trained codebook, dead-code restart, DDP-synced).
- :class:`FSQ`: finite scalar quantization. :class:`LFQ`: lookup-free quantization.
- :class:`ResidualVQ`: a residual stack of any of them.
- :func:`straight_through`: the straight-through estimator and the VQ losses in one autograd node.

Example:
    >>> import torch
    >>> from vq3dlib.quantize import VectorQuantizer
    >>> z_q, indices, aux = VectorQuantizer(16, 128, code_dim=4)(torch.randn(8, 16))
    >>> sorted(aux.stats)
    ['perplexity', 'restarted', 'used_fraction']
"""

from vq3dlib.quantize.base import Quantizer, QuantizerAux, usage_stats
from vq3dlib.quantize.fsq import FSQ
from vq3dlib.quantize.lfq import LFQ
from vq3dlib.quantize.residual import ResidualVQ
from vq3dlib.quantize.straight_through import straight_through, straight_through_reference, unit_rows
from vq3dlib.quantize.vq import VectorQuantizer, nearest_code, nearest_code_reference

__all__ = [
    "FSQ",
    "LFQ",
    "Quantizer",
    "QuantizerAux",
    "ResidualVQ",
    "VectorQuantizer",
    "nearest_code",
    "nearest_code_reference",
    "straight_through",
    "straight_through_reference",
    "unit_rows",
    "usage_stats",
]
