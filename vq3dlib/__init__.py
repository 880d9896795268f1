"""vq3dlib: composable, fast building blocks for 3D-aware generative models.

Public names are imported lazily so ``import vq3dlib`` stays fast and a missing optional dependency
only matters when the block that needs it is used.

Example:
    >>> import vq3dlib
    >>> vq3dlib.__version__
    '0.1.0'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (one line per export; keep sorted by module)
_EXPORTS: dict[str, str] = {
    "Cameras": "vq3dlib.cameras",
    "NovelViewSampler": "vq3dlib.cameras",
    "Rays": "vq3dlib.cameras",
    "canonical_cameras": "vq3dlib.cameras",
    "look_at": "vq3dlib.cameras",
    "orbit_cameras": "vq3dlib.cameras",
    "contract_l2": "vq3dlib.contraction",
    "contract_linf": "vq3dlib.contraction",
    "contract_axis": "vq3dlib.contraction",
    "uncontract_l2": "vq3dlib.contraction",
    "uncontract_linf": "vq3dlib.contraction",
    "uncontract_axis": "vq3dlib.contraction",
    "ProceduralScenes": "vq3dlib.data.procedural",
    "finite_checks_enabled": "vq3dlib._validation",
    "set_finite_checks": "vq3dlib._validation",
    "triplane_sample": "vq3dlib.ops",
    "OccupancyGrid": "vq3dlib.render",
    "Renderer": "vq3dlib.render",
    "RadianceField": "vq3dlib.render",
    "ray_aabb_intersect": "vq3dlib.render",
    "ray_march": "vq3dlib.render",
    "ContractedTriplane": "vq3dlib.triplane",
    "CodePrior": "vq3dlib.models",
    "TriplaneDecoder": "vq3dlib.models",
    "TriplaneField": "vq3dlib.models",
    "ViTEncoder": "vq3dlib.models",
    "VQ3DConfig": "vq3dlib.models",
    "get_config": "vq3dlib.models",
    "align_scale_shift": "vq3dlib.losses",
    "aligned_depth_loss": "vq3dlib.losses",
    "pointwise_depth_loss": "vq3dlib.losses",
    "map_disparity_range": "vq3dlib.losses",
    "distortion_loss": "vq3dlib.losses",
    "LPIPS": "vq3dlib.losses",
    "StyleGANDiscriminator": "vq3dlib.losses",
    "PatchGANDiscriminator": "vq3dlib.losses",
    "discriminator_loss": "vq3dlib.losses",
    "generator_loss": "vq3dlib.losses",
    "r1_penalty": "vq3dlib.losses",
    "adaptive_generator_weight": "vq3dlib.losses",
    "psnr": "vq3dlib.metrics",
    "ssim": "vq3dlib.metrics",
    "depth_abs_rel": "vq3dlib.metrics",
    "depth_delta": "vq3dlib.metrics",
    "codebook_usage": "vq3dlib.metrics",
    "frechet_distance": "vq3dlib.metrics",
    "FIDFeatures": "vq3dlib.metrics",
    "save_checkpoint": "vq3dlib.train",
    "load_checkpoint": "vq3dlib.train",
    "ModelEMA": "vq3dlib.train",
    "ImageFolderDataset": "vq3dlib.data",
    "VQ3DModel": "vq3dlib.models",
    "FSQ": "vq3dlib.quantize",
    "LFQ": "vq3dlib.quantize",
    "ResidualVQ": "vq3dlib.quantize",
    "VectorQuantizer": "vq3dlib.quantize",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vq3dlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
