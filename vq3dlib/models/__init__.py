"""Model blocks of the VQ3D reference model: ViT encoder, triplane decoder, field head, stage-2 prior.

Example:
    >>> from vq3dlib.models import get_config, ViTEncoder
    >>> ViTEncoder.from_config(get_config("tiny")).num_tokens
    64
"""

from vq3dlib.models.configs import VQ3DConfig, get_config, list_configs, param_count, register_config
from vq3dlib.models.decoder import TriplaneDecoder
from vq3dlib.models.field import FieldOutput, TriplaneField, mlp_backend_report
from vq3dlib.models.prior import CodePrior, KVCache
from vq3dlib.models.vit import ViTEncoder

__all__ = [
    "CodePrior",
    "FieldOutput",
    "KVCache",
    "TriplaneDecoder",
    "TriplaneField",
    "VQ3DConfig",
    "ViTEncoder",
    "get_config",
    "list_configs",
    "mlp_backend_report",
    "param_count",
    "register_config",
]
