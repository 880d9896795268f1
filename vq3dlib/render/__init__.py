"""Rendering: ray–box intersection, occupancy grids, packed ray marching, volume rendering, renderer.

Example:
    >>> from vq3dlib.render import OccupancyGrid, ray_march
    >>> OccupancyGrid(resolution=4).binaries.shape
    torch.Size([1, 1, 4, 4, 4])
"""

from vq3dlib.render.aabb import ray_aabb_intersect
from vq3dlib.render.march import PackedSamples, ray_march
from vq3dlib.render.occupancy import OccupancyGrid
from vq3dlib.render.renderer import Renderer, RenderOutput

__all__ = ["OccupancyGrid", "PackedSamples", "RenderOutput", "Renderer", "ray_aabb_intersect", "ray_march"]
