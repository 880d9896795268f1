"""Functional ops: each a ``torch.autograd``-aware function over the compiled extension, with a
pure-torch ``*_reference`` twin used as the fallback and as the test oracle.

Example:
    >>> import vq3dlib.ops
    >>> from vq3dlib.backend import registered_ops
    >>> isinstance(registered_ops(), dict)
    True
"""

from vq3dlib.ops.march import march_packed, march_packed_reference
from vq3dlib.ops.triplane import triplane_sample, triplane_sample_reference
from vq3dlib.ops.volrend import pack_info, weights_from_alpha, weights_from_density  # noqa: F401

__all__ = ["march_packed", "march_packed_reference", "triplane_sample", "triplane_sample_reference"]
