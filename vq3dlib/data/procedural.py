"""Procedural 3D scenes of simple primitives, rendered exactly by analytic ray casting.

The embedded default dataset: every scene is drawn deterministically from ``(seed, index)`` and
holds one dominant object (a sphere or a box, whose type and colour family give the class label),
up to a few smaller distractor spheres/boxes, an optional checkered ground plane and a far sky
sphere (radius ``sky_radius``, default 20, so that scene contraction matters). The content lies
inside the ball of radius ~1 around the origin (world +y up, see :mod:`vq3dlib.cameras`).

Rendering is analytic (ray-sphere, ray-box, ray-plane intersections, Lambertian shading with a fixed
directional light; the sky is unlit), not by a NeRF renderer, so depth is exact. Colours depend on
the 3D point only, so views are multi-view consistent.

Example:
    >>> from vq3dlib.cameras import canonical_cameras
    >>> scene = sample_scene(torch.Generator().manual_seed(0))
    >>> out = scene.render(canonical_cameras(1, 2.7, 40.0, (16, 16)))
    >>> out["rgb"].shape, out["depth"].shape, int(scene.label) in range(len(CLASSES))
    (torch.Size([1, 3, 16, 16]), torch.Size([1, 1, 16, 16]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vq3dlib._validation import check_positive
from vq3dlib.cameras import Cameras, NovelViewSampler, canonical_cameras

__all__ = ["CLASSES", "ProceduralScene", "ProceduralScenes", "batch_cameras", "sample_scene"]

#: class labels: the dominant object's colour family and type
CLASSES: tuple[str, ...] = ("red sphere", "green sphere", "blue sphere", "red box", "green box", "blue box")
_HUES = (0.0, 0.33, 0.62)
_LIGHT_DIR = (0.35, 0.85, 0.4)  # towards the light (normalised at use)
_AMBIENT = 0.35
_EPS = 1e-6
MAX_DISTRACTORS = 3
_SLOTS = 1 + MAX_DISTRACTORS  # sphere / box slots per scene


@dataclass
class ProceduralScene:
    """A batch of ``B`` procedural scenes as padded parameter tensors (``S = K = 4`` object slots).

    Attributes:
        sphere_center, sphere_radius, sphere_color, sphere_valid: ``[B, S, 3]``, ``[B, S]``,
            ``[B, S, 3]``, ``[B, S]`` (bool, which slots hold a sphere).
        box_center, box_half, box_yaw, box_color, box_valid: ``[B, K, 3]``, ``[B, K, 3]`` half
            extents, ``[B, K]`` rotation about +y (radians), ``[B, K, 3]``, ``[B, K]`` (bool).
        ground_height, ground_enabled, ground_color: ``[B]`` plane ``y = ground_height``, ``[B]``
            bool, ``[B, 2, 3]`` the two checker colours.
        sky_color: ``[B, 2, 3]`` horizon and zenith colours of the sky sphere.
        sky_radius: ``[B]`` radius of the sky sphere centred at the origin (cameras must be inside).
        checker_size: ``[B]`` side of the ground checker squares.
        label: ``[B]`` int64 class index into :data:`CLASSES`.

    Example:
        >>> s = ProceduralScene.single_sphere(radius=1.0)
        >>> len(s), s.sphere_valid.sum().item()
        (1, 1)
    """

    sphere_center: Tensor
    sphere_radius: Tensor
    sphere_color: Tensor
    sphere_valid: Tensor
    box_center: Tensor
    box_half: Tensor
    box_yaw: Tensor
    box_color: Tensor
    box_valid: Tensor
    ground_height: Tensor
    ground_enabled: Tensor
    ground_color: Tensor
    sky_color: Tensor
    sky_radius: Tensor
    checker_size: Tensor
    label: Tensor

    def __len__(self) -> int:
        return self.label.shape[0]

    def _map(self, fn) -> ProceduralScene:
        return ProceduralScene(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __getitem__(self, index: int | slice | Tensor) -> ProceduralScene:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def to(self, device: torch.device | str) -> ProceduralScene:
        """Moves the scene parameters to ``device``.

        Example:
            >>> ProceduralScene.single_sphere().to("cpu").label.device.type
            'cpu'
        """
        return self._map(lambda t: t.to(device))

    @staticmethod
    def cat(scenes: Sequence[ProceduralScene]) -> ProceduralScene:
        """Concatenates scene batches.

        Example:
            >>> s = ProceduralScene.single_sphere()
            >>> len(ProceduralScene.cat([s, s]))
            2
        """
        if len(scenes) == 0:
            raise ValueError("scenes must contain at least one ProceduralScene")
        return ProceduralScene(
            **{f.name: torch.cat([getattr(s, f.name) for s in scenes]) for f in fields(scenes[0])}
        )

    @staticmethod
    def single_sphere(
        center: Sequence[float] = (0.0, 0.0, 0.0),
        radius: float = 1.0,
        color: Sequence[float] = (0.8, 0.2, 0.2),
        ground_height: float | None = None,
        sky_radius: float = 20.0,
    ) -> ProceduralScene:
        """A scene with one sphere (and a ground plane if ``ground_height`` is given), for tests/demos.

        Example:
            >>> ProceduralScene.single_sphere(radius=0.5).sphere_radius[0, 0].item()
            0.5
        """
        s = _empty_scene(1)
        s.sphere_center[0, 0] = torch.tensor(center, dtype=torch.float32)
        s.sphere_radius[0, 0] = float(radius)
        s.sphere_color[0, 0] = torch.tensor(color, dtype=torch.float32)
        s.sphere_valid[0, 0] = True
        if ground_height is not None:
            s.ground_height[0], s.ground_enabled[0] = float(ground_height), True
        s.sky_radius[0] = float(sky_radius)
        return s

    def render(self, cameras: Cameras) -> dict[str, Tensor]:
        """Ray casts the scenes: scene ``b`` seen by camera ``b`` (a single scene broadcasts).

        Args:
            cameras: ``Cameras`` with ``len(cameras) == len(self)`` (or a 1-scene batch with any
                number of cameras); camera centres must lie inside the sky sphere.

        Returns:
            dict with ``rgb [B, 3, H, W]`` in ``[0, 1]``, ``depth [B, 1, H, W]`` exact z-depth
            (camera-space z of the first hit), ``disparity [B, 1, H, W]`` (``1 / depth``), ``mask
            [B, 1, H, W]`` (1 where a sphere or box is hit, 0 on ground and sky) and ``opacity
            [B, 1, H, W]`` (all ones: every ray ends on a surface, at the latest the sky sphere).

        Example:
            >>> from vq3dlib.cameras import canonical_cameras
            >>> out = ProceduralScene.single_sphere().render(canonical_cameras(1, 3.0, 40.0, (5, 5)))
            >>> round(out["depth"][0, 0, 2, 2].item(), 4)  # camera at 3, unit sphere: depth 2
            2.0
        """
        if not isinstance(cameras, Cameras):
            raise TypeError(f"cameras must be vq3dlib.cameras.Cameras, got {type(cameras).__name__}")
        scene = self
        if len(scene) == 1 and len(cameras) != 1:
            scene = scene._map(lambda t: t.expand(len(cameras), *t.shape[1:]))
        if len(scene) != len(cameras):
            raise ValueError(f"cameras must have {len(scene)} cameras (one per scene), got {len(cameras)}")
        scene = scene.to(cameras.device)
        if bool((cameras.centers.norm(dim=-1) >= scene.sky_radius.to(cameras.dtype)).any()):
            raise ValueError("cameras must lie inside the sky sphere (|centre| < sky_radius)")
        return _render(scene, cameras)


def _empty_scene(b: int) -> ProceduralScene:
    z = lambda *s: torch.zeros(b, *s)  # noqa: E731
    return ProceduralScene(
        sphere_center=z(_SLOTS, 3),
        sphere_radius=torch.ones(b, _SLOTS),
        sphere_color=z(_SLOTS, 3),
        sphere_valid=torch.zeros(b, _SLOTS, dtype=torch.bool),
        box_center=z(_SLOTS, 3),
        box_half=torch.ones(b, _SLOTS, 3),
        box_yaw=z(_SLOTS),
        box_color=z(_SLOTS, 3),
        box_valid=torch.zeros(b, _SLOTS, dtype=torch.bool),
        ground_height=torch.full((b,), -1.0),
        ground_enabled=torch.zeros(b, dtype=torch.bool),
        ground_color=torch.tensor([[0.55, 0.5, 0.45], [0.4, 0.37, 0.33]]).repeat(b, 1, 1),
        sky_color=torch.tensor([[0.85, 0.88, 0.92], [0.35, 0.55, 0.9]]).repeat(b, 1, 1),
        sky_radius=torch.full((b,), 20.0),
        checker_size=torch.full((b,), 0.25),
        label=torch.zeros(b, dtype=torch.int64),
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> list[float]:
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + h * 6.0) % 6.0
        out.append(v - v * s * max(0.0, min(k, 4.0 - k, 1.0)))
    return out


def sample_scene(
    generator: torch.Generator,
    label: int | None = None,
    *,
    max_distractors: int = MAX_DISTRACTORS,
    ground: bool = True,
    sky_radius: float = 20.0,
) -> ProceduralScene:
    """Draws one random scene (batch of 1) from ``generator``; ``label`` picks the class (else random).

    The dominant object (radius 0.3-0.45 sphere or 0.2-0.35 half-extent box, rotated about +y) sits
    near the origin on the ground plane ``y in [-0.6, -0.45]``; up to ``max_distractors`` smaller
    objects (size 0.08-0.18) of any type/colour stand around it within ``|x|, |z| < 0.85``.

    Example:
        >>> s = sample_scene(torch.Generator().manual_seed(0), label=4)
        >>> CLASSES[int(s.label)], bool(s.box_valid[0, 0])
        ('green box', True)
    """
    if not 0 <= max_distractors <= MAX_DISTRACTORS:
        raise ValueError(f"max_distractors must be in [0, {MAX_DISTRACTORS}], got {max_distractors}")
    check_positive("sky_radius", sky_radius)
    g = generator
    u = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))  # noqa: E731
    s = _empty_scene(1)
    if label is None:
        label = int(torch.randint(len(CLASSES), (), generator=g))
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    s.label[0] = label
    ground_y = u(-0.6, -0.45)
    s.ground_height[0], s.ground_enabled[0] = ground_y, bool(ground)
    base = [u(0.35, 0.65), u(0.3, 0.55), u(0.25, 0.45)]
    s.ground_color[0] = torch.tensor([base, [0.72 * c for c in base]])
    s.sky_color[0] = torch.tensor([[u(0.8, 0.95)] * 3, [u(0.25, 0.5), u(0.45, 0.7), u(0.8, 1.0)]])
    s.sky_radius[0] = float(sky_radius)
    s.checker_size[0] = u(0.15, 0.35)

    def place(kind: str, slot: int, size: float, x: float, z: float, color: list[float]) -> None:
        if kind == "sphere":
            s.sphere_center[0, slot] = torch.tensor([x, ground_y + size, z])
            s.sphere_radius[0, slot] = size
            s.sphere_color[0, slot] = torch.tensor(color)
            s.sphere_valid[0, slot] = True
        else:
            half_y = size * u(0.7, 1.3)
            s.box_center[0, slot] = torch.tensor([x, ground_y + half_y, z])
            s.box_half[0, slot] = torch.tensor([size * u(0.8, 1.2), half_y, size * u(0.8, 1.2)])
            s.box_yaw[0, slot] = u(0.0, math.pi / 2)
            s.box_color[0, slot] = torch.tensor(color)
            s.box_valid[0, slot] = True

    kind = "sphere" if label < 3 else "box"
    main_size = u(0.3, 0.45) if kind == "sphere" else u(0.2, 0.35)
    main_xz = (u(-0.15, 0.15), u(-0.15, 0.15))
    main_rgb = _hsv_to_rgb((_HUES[label % 3] + u(-0.04, 0.04)) % 1.0, u(0.6, 0.9), u(0.65, 1.0))
    place(kind, 0, main_size, *main_xz, main_rgb)
    # bounding circles in the xz-plane of placed objects, to avoid overlaps
    placed = [(main_xz[0], main_xz[1], main_size * (1.0 if kind == "sphere" else 1.75))]
    n_sphere, n_box = (1, 0) if kind == "sphere" else (0, 1)
    n_distractors = int(torch.randint(max_distractors + 1, (), generator=g))
    for _ in range(n_distractors):
        d_kind = "sphere" if u(0.0, 1.0) < 0.5 else "box"
        size = u(0.08, 0.18)
        reach = size * (1.0 if d_kind == "sphere" else 1.75)
        rgb = _hsv_to_rgb(u(0.0, 1.0), u(0.2, 0.8), u(0.5, 1.0))
        for _try in range(20):
            x, z = u(-0.85 + reach, 0.85 - reach), u(-0.85 + reach, 0.85 - reach)
            if all(math.hypot(x - px, z - pz) > reach + pr + 0.03 for px, pz, pr in placed):
                break
        else:
            continue
        placed.append((x, z, reach))
        if d_kind == "sphere":
            place("sphere", n_sphere, size, x, z, rgb)
            n_sphere += 1
        else:
            place("box", n_box, size, x, z, rgb)
            n_box += 1
    return s


def _render(scene: ProceduralScene, cameras: Cameras) -> dict[str, Tensor]:
    rays = cameras.generate_rays()
    b, h, w = rays.shape
    dt, dev = cameras.dtype, cameras.device
    sc = scene._map(lambda t: t.to(dt) if t.is_floating_point() else t)
    # only intersect object slots used by some scene of the batch (slot 0 kept so shapes stay non-empty)
    keep_s, keep_b = sc.sphere_valid.any(0), sc.box_valid.any(0)
    keep_s[0], keep_b[0] = True, True
    sph = [sc.sphere_center[:, keep_s], sc.sphere_radius[:, keep_s], sc.sphere_color[:, keep_s]]
    sph_valid = sc.sphere_valid[:, keep_s]
    box = [sc.box_center[:, keep_b], sc.box_half[:, keep_b], sc.box_yaw[:, keep_b], sc.box_color[:, keep_b]]
    box_valid = sc.box_valid[:, keep_b]
    o = rays.origins.reshape(b, -1, 3)
    d = rays.directions.reshape(b, -1, 3)
    inf = torch.tensor(float("inf"), dtype=dt, device=dev)

    # spheres: nearest positive root of |o + t d - c|^2 = r^2 ([B, P, S])
    oc = o[:, :, None] - sph[0][:, None]
    bb = (d[:, :, None] * oc).sum(-1)
    disc = bb * bb - ((oc * oc).sum(-1) - sph[1][:, None] ** 2)
    sq = disc.clamp_min(0).sqrt()
    t_near, t_far = -bb - sq, -bb + sq
    t_s = torch.where(t_near > _EPS, t_near, torch.where(t_far > _EPS, t_far, inf))
    t_s = torch.where((disc >= 0) & sph_valid[:, None], t_s, inf)
    t_sphere, i_sphere = t_s.min(-1)

    # boxes rotated about +y: slab test in the box frame ([B, P, K])
    cos, sin = torch.cos(box[2])[:, None], torch.sin(box[2])[:, None]
    rel = o[:, :, None] - box[0][:, None]

    def to_local(v: Tensor) -> Tensor:  # world -> box frame, R_y(yaw)^T v
        return torch.stack(
            [cos * v[..., 0] - sin * v[..., 2], v[..., 1], sin * v[..., 0] + cos * v[..., 2]], -1
        )

    o_l = to_local(rel)
    d_l = to_local(d[:, :, None].expand_as(rel))
    d_safe = torch.where(d_l.abs() < 1e-12, torch.full_like(d_l, 1e-12), d_l)
    half = box[1][:, None]
    t1, t2 = (-half - o_l) / d_safe, (half - o_l) / d_safe
    t_lo, t_hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
    t_enter, axis = t_lo.max(-1)
    t_exit = t_hi.min(-1).values
    hit_box = (t_exit >= t_enter) & (t_enter > _EPS) & box_valid[:, None]
    t_b = torch.where(hit_box, t_enter, inf)
    t_box, i_box = t_b.min(-1)

    # ground plane y = ground_height, seen from above
    dy = d[..., 1]
    t_g = (sc.ground_height[:, None] - o[..., 1]) / torch.where(
        dy.abs() < 1e-12, torch.full_like(dy, 1e-12), dy
    )
    above = o[..., 1] > sc.ground_height[:, None]
    t_ground = torch.where((t_g > _EPS) & above & sc.ground_enabled[:, None], t_g, inf)

    # sky sphere (camera inside): far root
    bs = (d * o).sum(-1)
    t_sky = -bs + (bs * bs - ((o * o).sum(-1) - sc.sky_radius[:, None] ** 2)).clamp_min(0).sqrt()

    t_all = torch.stack([t_sphere, t_box, t_ground, t_sky], -1)
    t_hit, kind = t_all.min(-1)
    p = o + t_hit[..., None] * d

    # albedo and normals per kind
    gather = lambda x, i: torch.gather(x, 1, i[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
    s_center = gather(sph[0], i_sphere)
    n_sphere = (p - s_center) / gather(sph[1][..., None], i_sphere)
    c_sphere = gather(sph[2], i_sphere)
    ax = torch.gather(axis, 2, i_box[..., None])[..., 0]
    d_l_hit = torch.gather(d_l, 2, i_box[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]
    n_local = -torch.sign(torch.gather(d_l_hit, 2, ax[..., None])) * torch.nn.functional.one_hot(ax, 3).to(dt)
    yaw_c, yaw_s = (
        gather(torch.cos(box[2])[..., None], i_box),
        gather(torch.sin(box[2])[..., None], i_box),
    )
    n_box = torch.cat(
        [
            yaw_c * n_local[..., :1] + yaw_s * n_local[..., 2:],
            n_local[..., 1:2],
            -yaw_s * n_local[..., :1] + yaw_c * n_local[..., 2:],
        ],
        -1,
    )
    c_box = gather(box[3], i_box)
    cell = torch.floor(p[..., 0] / sc.checker_size[:, None]) + torch.floor(
        p[..., 2] / sc.checker_size[:, None]
    )
    odd = torch.remainder(cell, 2.0)[..., None]
    c_ground = sc.ground_color[:, None, 0] * (1 - odd) + sc.ground_color[:, None, 1] * odd
    n_ground = torch.zeros_like(p)
    n_ground[..., 1] = 1.0
    elev = (p[..., 1] / p.norm(dim=-1).clamp_min(1e-12)).clamp(0, 1)[..., None] ** 0.6
    c_sky = sc.sky_color[:, None, 0] * (1 - elev) + sc.sky_color[:, None, 1] * elev

    k = kind[..., None]
    normal = torch.where(k == 0, n_sphere, torch.where(k == 1, n_box, n_ground))
    albedo = torch.where(k == 0, c_sphere, torch.where(k == 1, c_box, c_ground))
    light = torch.tensor(_LIGHT_DIR, dtype=dt, device=dev)
    light = light / light.norm()
    shade = _AMBIENT + (1 - _AMBIENT) * (normal * light).sum(-1, keepdim=True).clamp_min(0)
    rgb = torch.where(k == 3, c_sky, albedo * shade).clamp(0, 1)

    depth = t_hit * rays.z_scale.reshape(b, -1)
    img = lambda x: x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    mask = (kind <= 1).to(dt)
    return {
        "rgb": img(rgb),
        "depth": img(depth[..., None]),
        "disparity": img(1.0 / depth[..., None]),
        "mask": img(mask[..., None]),
        "opacity": torch.ones(b, 1, h, w, dtype=dt, device=dev),
    }


def _item_seed(seed: int, index: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (2**63 - 1)


def batch_cameras(batch: dict[str, Tensor], novel: bool = False) -> Cameras:
    """``Cameras`` from a (collated) :class:`ProceduralScenes` item/batch.

    ``novel=False`` gives the canonical cameras ``[B]``; ``novel=True`` the novel views flattened to
    ``[B * V]`` (scene-major, matching ``batch["novel_images"].flatten(0, 1)``).

    Example:
        >>> ds = ProceduralScenes(size=2, resolution=8, n_novel_views=3)
        >>> batch = torch.utils.data.default_collate([ds[0], ds[1]])
        >>> len(batch_cameras(batch)), len(batch_cameras(batch, novel=True))
        (2, 6)
    """
    prefix = "novel_" if novel else ""
    k, c2w = batch[prefix + "intrinsics"], batch[prefix + "cam_to_world"]
    image = batch[prefix + "images"] if novel else batch["image"]
    k, c2w = k.reshape(-1, 3, 3), c2w.reshape(-1, 4, 4)
    return Cameras(k, c2w, tuple(image.shape[-2:]))


class ProceduralScenes(Dataset):
    """A deterministic dataset of procedural scenes rendered on the fly (CPU friendly).

    Item ``i`` depends only on ``(seed, i)``: the scene (see :func:`sample_scene`), its canonical
    view (:func:`~vq3dlib.cameras.canonical_cameras` at ``camera_distance``) and ``n_novel_views``
    views from ``novel_view_sampler`` (default: yaw within +-35 degrees, pitch within [-5, 20]).

    Args:
        size: number of items.
        resolution: image size, an int (square) or ``(height, width)``.
        n_novel_views: novel views per item (``V``, may be 0).
        seed: dataset seed.
        camera_distance, fov_degrees: canonical camera (distance to the origin, vertical fov).
        novel_view_sampler: a :class:`~vq3dlib.cameras.NovelViewSampler` (its image size is
            replaced by ``resolution``); its own seed is ignored, draws come from ``(seed, i)``.
        max_distractors, ground, sky_radius: scene options, see :func:`sample_scene`.

    Item (a dict of tensors, float32): ``image [3, H, W]`` in [0, 1], ``depth [1, H, W]`` (z-depth),
    ``disparity [1, H, W]``, ``mask [1, H, W]`` (objects), ``intrinsics [3, 3]``, ``cam_to_world
    [4, 4]`` (OpenCV), ``novel_images [V, 3, H, W]``, ``novel_depths [V, 1, H, W]``,
    ``novel_disparities [V, 1, H, W]``, ``novel_masks [V, 1, H, W]``, ``novel_intrinsics [V, 3, 3]``,
    ``novel_cam_to_world [V, 4, 4]``, ``label`` (int64 scalar, index into :data:`CLASSES`),
    ``index`` (int64 scalar). :func:`batch_cameras` turns a batch back into ``Cameras``.

    Example:
        >>> ds = ProceduralScenes(size=10, resolution=16, n_novel_views=2, seed=0)
        >>> item = ds[3]
        >>> item["image"].shape, item["novel_images"].shape, 0 <= int(item["label"]) < len(ds.classes)
        (torch.Size([3, 16, 16]), torch.Size([2, 3, 16, 16]), True)
    """

    classes = CLASSES

    def __init__(
        self,
        size: int,
        resolution: int | Sequence[int] = 64,
        n_novel_views: int = 1,
        seed: int = 0,
        *,
        camera_distance: float = 2.7,
        fov_degrees: float = 40.0,
        novel_view_sampler: NovelViewSampler | None = None,
        max_distractors: int = MAX_DISTRACTORS,
        ground: bool = True,
        sky_radius: float = 20.0,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be an int >= 0, got {size!r}")
        if isinstance(n_novel_views, bool) or not isinstance(n_novel_views, int) or n_novel_views < 0:
            raise ValueError(f"n_novel_views must be an int >= 0, got {n_novel_views!r}")
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        image_size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        check_positive("camera_distance", camera_distance)
        if camera_distance >= sky_radius:
            raise ValueError(f"camera_distance must be < sky_radius ({sky_radius}), got {camera_distance}")
        if not 0 <= max_distractors <= MAX_DISTRACTORS:
            raise ValueError(f"max_distractors must be in [0, {MAX_DISTRACTORS}], got {max_distractors}")
        self.size, self.n_novel_views, self.seed = size, n_novel_views, seed
        self.canonical = canonical_cameras(1, camera_distance, fov_degrees, image_size)  # validates size/fov
        self.image_size = self.canonical.image_size
        if novel_view_sampler is None:
            novel_view_sampler = NovelViewSampler(
                camera_distance, fov_degrees, self.image_size, yaw=35.0, pitch=(-5.0, 20.0)
            )
        elif not isinstance(novel_view_sampler, NovelViewSampler):
            raise TypeError(
                f"novel_view_sampler must be a NovelViewSampler, got {type(novel_view_sampler).__name__}"
            )
        self.novel_view_sampler = novel_view_sampler
        self.scene_kwargs = dict(max_distractors=max_distractors, ground=ground, sky_radius=sky_radius)

    def __len__(self) -> int:
        return self.size

    def _check_index(self, index: int) -> int:
        if isinstance(index, torch.Tensor):
            index = int(index)
        if not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index out of range for {self.size} items")
        return index

    def scene(self, index: int) -> ProceduralScene:
        """The scene of item ``index`` (render it with any cameras, e.g. an orbit for a video).

        Example:
            >>> from vq3dlib.cameras import orbit_cameras
            >>> ds = ProceduralScenes(size=4, resolution=8)
            >>> ds.scene(2).render(orbit_cameras(3, 2.7, 15.0, 40.0, (8, 8)))["rgb"].shape
            torch.Size([3, 3, 8, 8])
        """
        index = self._check_index(index)
        return sample_scene(torch.Generator().manual_seed(_item_seed(self.seed, index)), **self.scene_kwargs)

    def novel_cameras(self, index: int) -> Cameras:
        """The ``n_novel_views`` novel cameras of item ``index``.

        Example:
            >>> len(ProceduralScenes(size=4, resolution=8, n_novel_views=3).novel_cameras(0))
            3
        """
        index = self._check_index(index)
        gen = torch.Generator().manual_seed(_item_seed(self.seed, index) ^ 0x5DEECE66D)
        v = self.n_novel_views
        base = Cameras(
            self.canonical.intrinsics.expand(v, 3, 3),
            self.canonical.cam_to_world.expand(v, 4, 4),
            self.image_size,
        )
        return self.novel_view_sampler.sample(self.n_novel_views, generator=gen, base=base)

    def true_depth(self, index: int, cameras: Cameras) -> Tensor:
        """Exact z-depth ``[V, 1, h, w]`` of item ``index``'s scene seen by ``cameras`` (``V`` cameras of
        any resolution ``(h, w)``, on any device): the truth at the very pixel centres of a render,
        where resizing the item's ``depth`` would move each truth sample off its pixel's ray. On the
        CPU, like the items.

        Example:
            >>> from vq3dlib.cameras import canonical_cameras
            >>> ds = ProceduralScenes(size=2, resolution=16)
            >>> ds.true_depth(1, canonical_cameras(1, 2.7, 40.0, (16, 16))).equal(ds[1]["depth"][None])
            True
        """
        if not isinstance(cameras, Cameras):
            raise TypeError(f"cameras must be Cameras, got {type(cameras).__name__}")
        return self.scene(index).render(cameras.to("cpu"))["depth"]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = self._check_index(index)
        scene = self.scene(index)
        cams = Cameras.cat([self.canonical, self.novel_cameras(index)])
        out = scene.render(cams)
        return {
            "image": out["rgb"][0],
            "depth": out["depth"][0],
            "disparity": out["disparity"][0],
            "mask": out["mask"][0],
            "intrinsics": cams.intrinsics[0],
            "cam_to_world": cams.cam_to_world[0],
            "novel_images": out["rgb"][1:],
            "novel_depths": out["depth"][1:],
            "novel_disparities": out["disparity"][1:],
            "novel_masks": out["mask"][1:],
            "novel_intrinsics": cams.intrinsics[1:],
            "novel_cam_to_world": cams.cam_to_world[1:],
            "label": scene.label[0],
            "index": torch.tensor(index, dtype=torch.int64),
        }
