"""Datasets: procedural 3D scenes with exact depth and novel views (:mod:`vq3dlib.data.procedural`).

Example:
    >>> from vq3dlib.data import ProceduralScenes
    >>> ProceduralScenes(size=2, resolution=8)[0]["image"].shape
    torch.Size([3, 8, 8])
"""

from vq3dlib.data.procedural import CLASSES, ProceduralScene, ProceduralScenes, batch_cameras, sample_scene

__all__ = ["CLASSES", "ProceduralScene", "ProceduralScenes", "batch_cameras", "sample_scene"]
