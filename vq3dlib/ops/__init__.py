"""Functional ops: each a ``torch.autograd``-aware function over the compiled extension, with a
pure-torch ``*_reference`` twin used as the fallback and as the test oracle.

Importing this package declares every built-in op in the registry (:func:`registered_ops`);
:func:`use_extension` and :func:`extension_supports` say whether an op's compiled kernels run on a
device (the choice itself is :func:`vq3dlib.backend.dispatch`).

Example:
    >>> import vq3dlib.ops
    >>> sorted(vq3dlib.ops.registered_ops())
    ['ray_march', 'render_weight_from_alpha', 'render_weight_from_density', 'triplane_sample']
"""

from vq3dlib.ops._library import OpInfo, extension_supports, register_op, registered_ops, use_extension
from vq3dlib.ops.march import march_packed, march_packed_reference
from vq3dlib.ops.triplane import triplane_sample, triplane_sample_reference
from vq3dlib.ops.volrend import weights_from_alpha, weights_from_density

__all__ = [
    "OpInfo",
    "extension_supports",
    "march_packed",
    "march_packed_reference",
    "register_op",
    "registered_ops",
    "triplane_sample",
    "triplane_sample_reference",
    "use_extension",
    "weights_from_alpha",
    "weights_from_density",
]
