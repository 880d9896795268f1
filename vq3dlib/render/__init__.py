"""Rendering: ray–box intersection, occupancy grids, packed marching, volume rendering, fields, renderer.

Example:
    >>> import torch
    >>> from vq3dlib.render import OccupancyGrid, render_weight_from_density
    >>> OccupancyGrid(resolution=4).binaries.shape
    torch.Size([1, 1, 4, 4, 4])
    >>> t = torch.linspace(0.0, 1.0, 9).expand(2, 9)
    >>> weights, trans, alphas = render_weight_from_density(t[:, :-1], t[:, 1:], torch.ones(2, 8))
    >>> weights.shape
    torch.Size([2, 8])
"""

from vq3dlib.render.aabb import ray_aabb_intersect
from vq3dlib.render.field import RadianceField
from vq3dlib.render.march import PackedSamples, ray_march
from vq3dlib.render.occupancy import OccupancyGrid
from vq3dlib.render.pdf import importance_sampling, sample_from_pdf
from vq3dlib.render.renderer import Renderer, RenderOutput
from vq3dlib.render.volrend import (
    accumulate_along_rays,
    accumulate_depth,
    accumulate_disparity,
    accumulate_opacity,
    composite_background,
    depth_to_disparity,
    pack_info,
    render_transmittance_from_alpha,
    render_transmittance_from_density,
    render_visibility_from_alpha,
    render_visibility_from_density,
    render_weight_from_alpha,
    render_weight_from_density,
)

__all__ = [
    "OccupancyGrid",
    "PackedSamples",
    "RadianceField",
    "RenderOutput",
    "Renderer",
    "accumulate_along_rays",
    "accumulate_depth",
    "accumulate_disparity",
    "accumulate_opacity",
    "composite_background",
    "depth_to_disparity",
    "importance_sampling",
    "pack_info",
    "ray_aabb_intersect",
    "ray_march",
    "render_transmittance_from_alpha",
    "render_transmittance_from_density",
    "render_visibility_from_alpha",
    "render_visibility_from_density",
    "render_weight_from_alpha",
    "render_weight_from_density",
    "sample_from_pdf",
]
