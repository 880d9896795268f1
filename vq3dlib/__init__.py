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
    "uncontract_l2": "vq3dlib.contraction",
    "uncontract_linf": "vq3dlib.contraction",
    "ProceduralScenes": "vq3dlib.data.procedural",
    "triplane_sample": "vq3dlib.ops",
    "ContractedTriplane": "vq3dlib.triplane",
    "CodePrior": "vq3dlib.models",
    "TriplaneDecoder": "vq3dlib.models",
    "TriplaneField": "vq3dlib.models",
    "ViTEncoder": "vq3dlib.models",
    "VQ3DConfig": "vq3dlib.models",
    "get_config": "vq3dlib.models",
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
