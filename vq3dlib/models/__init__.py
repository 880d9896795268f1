"""Model blocks of the VQ3D reference model: ViT encoder, triplane decoder, field head, stage-2 prior;
the model (``vq3d``), its losses (``losses``) and its reconstructed scenes (``scene``).

Example:
    >>> from vq3dlib.models import get_config, ViTEncoder
    >>> ViTEncoder.from_config(get_config("tiny")).num_tokens
    64
"""

from vq3dlib.models.configs import VQ3DConfig, get_config, list_configs, param_count, register_config
from vq3dlib.models.decoder import TriplaneDecoder
from vq3dlib.models.field import FieldOutput, TriplaneField, mlp_backend_report
from vq3dlib.models.losses import VQ3DLoss
from vq3dlib.models.prior import CodePrior, KVCache
from vq3dlib.models.scene import Scene, mesh_threshold, render_turntable, turntable_cameras, view_cameras
from vq3dlib.models.vit import ViTEncoder
from vq3dlib.models.vq3d import VQ3DModel

__all__ = [
    "CodePrior",
    "FieldOutput",
    "KVCache",
    "TriplaneDecoder",
    "TriplaneField",
    "VQ3DConfig",
    "ViTEncoder",
    "VQ3DLoss",
    "VQ3DModel",
    "Scene",
    "get_config",
    "list_configs",
    "mesh_threshold",
    "mlp_backend_report",
    "param_count",
    "register_config",
    "render_turntable",
    "turntable_cameras",
    "view_cameras",
]
