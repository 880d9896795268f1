"""Tests for vq3dlib.cameras: rays, projection, conventions, kornia agreement, samplers, validation."""

from __future__ import annotations

import math

import pytest
import torch

from vq3dlib.cameras import (
    Cameras,
    NovelViewSampler,
    Rays,
    canonical_cameras,
    intrinsics_from_fov,
    look_at,
    orbit_cameras,
    perturb_cameras,
)


def random_rotations(b: int, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(b, 3, 3, generator=gen, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    det = torch.linalg.det(q)
    q[:, :, 0] *= det[:, None]  # proper rotations
    return q


def random_cameras(b: int = 3, size=(5, 7), dtype=torch.float64, seed: int = 0) -> Cameras:
    gen = torch.Generator().manual_seed(seed)
    k = torch.zeros(b, 3, 3, dtype=dtype)
    k[:, 0, 0] = 5 + 10 * torch.rand(b, generator=gen, dtype=dtype)
    k[:, 1, 1] = 5 + 10 * torch.rand(b, generator=gen, dtype=dtype)
    k[:, 0, 1] = 0.3 * torch.randn(b, generator=gen, dtype=dtype)  # skew
    k[:, 0, 2] = size[1] * torch.rand(b, generator=gen, dtype=dtype)
    k[:, 1, 2] = size[0] * torch.rand(b, generator=gen, dtype=dtype)
    k[:, 2, 2] = 1
    c2w = torch.eye(4, dtype=dtype).repeat(b, 1, 1)
    c2w[:, :3, :3] = random_rotations(b, gen, dtype)
    c2w[:, :3, 3] = torch.randn(b, 3, generator=gen, dtype=dtype)
    return Cameras(k, c2w, size)


# ---- rays ----------------------------------------------------------------------------------------
def test_rays_unit_and_through_pixel_centres(device):
    cams = random_cameras(3, (5, 7)).to(device)
    rays = cams.generate_rays()
    assert isinstance(rays, Rays)
    assert rays.origins.shape == (3, 5, 7, 3) and rays.directions.shape == (3, 5, 7, 3)
    assert rays.scene_index.dtype == torch.int64 and rays.scene_index.shape == (3, 5, 7)
    torch.testing.assert_close(
        rays.directions.norm(dim=-1), torch.ones(3, 5, 7, dtype=torch.float64, device=device)
    )
    # a point along each ray projects back to its pixel centre with z-depth t * z_scale
    t = torch.rand(3, 5, 7, dtype=torch.float64, device=device) * 4 + 0.5
    pts = rays.origins + t[..., None] * rays.directions
    uv, depth = cams.project(pts)
    v, u = torch.meshgrid(torch.arange(5.0) + 0.5, torch.arange(7.0) + 0.5, indexing="ij")
    expect = torch.stack([u, v], -1).to(device=device, dtype=torch.float64).expand(3, 5, 7, 2)
    torch.testing.assert_close(uv, expect)
    torch.testing.assert_close(depth, t * rays.z_scale)
    for b in range(3):
        assert (rays.scene_index[b] == b).all()
        torch.testing.assert_close(rays.origins[b], cams.centers[b].expand(5, 7, 3))


def test_z_scale_is_cosine_with_forward_axis():
    cams = random_cameras(2)
    rays = cams.generate_rays()
    forward = cams.cam_to_world[:, :3, 2]
    cos = (rays.directions * forward[:, None, None]).sum(-1)
    torch.testing.assert_close(rays.z_scale, cos)
    assert (rays.z_scale > 0).all() and (rays.z_scale <= 1).all()


def test_rays_flatten_unflatten():
    cams = canonical_cameras(2, 2.0, 50.0, (3, 4))
    rays = cams.generate_rays()
    o, d, idx, shape = rays.flatten()
    assert o.shape == (24, 3) and d.shape == (24, 3) and idx.shape == (24,) and shape == (2, 3, 4)
    assert idx.tolist() == [0] * 12 + [1] * 12
    torch.testing.assert_close(rays.unflatten(d), rays.directions)
    torch.testing.assert_close(rays.unflatten(idx), rays.scene_index)
    with pytest.raises(ValueError, match="values"):
        rays.unflatten(torch.zeros(23, 3))


def test_empty_batch():
    cams = canonical_cameras(0, 2.0, 50.0, (3, 4))
    assert len(cams) == 0
    rays = cams.generate_rays()
    assert rays.origins.shape == (0, 3, 4, 3) and rays.flatten()[0].shape == (0, 3)
    uv, z = cams.project(torch.zeros(0, 5, 3))
    assert uv.shape == (0, 5, 2) and z.shape == (0, 5)


def test_canonical_centre_ray_hits_origin():
    cams = canonical_cameras(1, 3.0, 40.0, (5, 5))
    rays = cams.generate_rays()
    torch.testing.assert_close(rays.directions[0, 2, 2], torch.tensor([0.0, 0.0, -1.0]))
    # the vertical field of view: top-row centre ray half-angle is within the fov
    top = rays.directions[0, 0, 2]
    angle = math.degrees(math.acos(-top[2].item()))
    half = math.degrees(math.atan(math.tan(math.radians(20.0)) * 4.0 / 5.0))  # pixel centre at 0.5 of 5
    assert abs(angle - half) < 1e-3
    assert top[1] > 0  # top of the image is world +y (y-up world)


def test_project_against_manual_formula():
    cams = random_cameras(2)
    pts = torch.randn(2, 10, 3, dtype=torch.float64)
    uv, z = cams.project(pts)
    for b in range(2):
        w2c = torch.linalg.inv(cams.cam_to_world[b])
        pc = (w2c[:3, :3] @ pts[b].T + w2c[:3, 3:]).T
        pix = (cams.intrinsics[b] @ pc.T).T
        torch.testing.assert_close(uv[b], pix[:, :2] / pix[:, 2:])
        torch.testing.assert_close(z[b], pc[:, 2])


def test_indexing_to_resize_cat():
    cams = random_cameras(4)
    assert len(cams[1]) == 1 and len(cams[1:3]) == 2 and len(cams[torch.tensor([0, 3])]) == 2
    torch.testing.assert_close(cams[-1].cam_to_world[0], cams.cam_to_world[3])
    with pytest.raises(IndexError):
        cams[4]
    assert cams.to(dtype=torch.float32).dtype == torch.float32
    assert len(Cameras.cat([cams, cams[0]])) == 5
    with pytest.raises(ValueError, match="image_size"):
        Cameras.cat([cams, cams.resize((2, 2))])
    # resizing keeps the rays' directions at the same relative image positions
    c = canonical_cameras(1, 2.0, 50.0, (4, 4))
    big = c.resize((8, 8))
    small_d = c.generate_rays().directions
    big_d = big.generate_rays().directions
    torch.testing.assert_close(
        small_d[0, 1, 1],
        big_d[0, 2:4, 2:4].mean((0, 1)) / big_d[0, 2:4, 2:4].mean((0, 1)).norm(),
        atol=1e-3,
        rtol=0,
    )


# ---- conventions ---------------------------------------------------------------------------------
def test_opengl_round_trip_and_axes():
    cams = random_cameras(3)
    gl = cams.to_opengl()
    back = Cameras.from_opengl(cams.intrinsics, gl, cams.image_size)
    torch.testing.assert_close(back.cam_to_world, cams.cam_to_world)
    back34 = Cameras.from_opengl(cams.intrinsics, gl[:, :3], cams.image_size)
    torch.testing.assert_close(back34.cam_to_world, cams.cam_to_world)
    # OpenGL looks along its -z axis: -gl_z equals the OpenCV forward axis, gl_y is OpenCV -y
    torch.testing.assert_close(-gl[:, :3, 2], cams.cam_to_world[:, :3, 2])
    torch.testing.assert_close(-gl[:, :3, 1], cams.cam_to_world[:, :3, 1])
    torch.testing.assert_close(gl[:, :3, 3], cams.centers)
    with pytest.raises(ValueError, match="cam_to_world_gl"):
        Cameras.from_opengl(cams.intrinsics, gl[:, :2], cams.image_size)


def test_kornia_round_trip_and_projection_agree():
    cams = random_cameras(3, (6, 9))
    kcam = cams.to_kornia()
    assert kcam.batch_size == 3
    back = Cameras.from_kornia(kcam)
    torch.testing.assert_close(back.cam_to_world, cams.cam_to_world)
    torch.testing.assert_close(back.intrinsics, cams.intrinsics)
    assert back.image_size == cams.image_size
    pts = (
        torch.randn(3, 11, 3, dtype=torch.float64)
        + cams.centers[:, None]
        + 3 * cams.cam_to_world[:, None, :3, 2]
    )
    uv, _ = cams.project(pts)
    torch.testing.assert_close(uv, kcam.project(pts))
    # kornia unprojects our ray points back to the same world points
    rays = cams.generate_rays()
    t = torch.full((3, 6, 9), 2.5, dtype=torch.float64)
    world = rays.origins + t[..., None] * rays.directions
    uv_pix, depth = cams.project(world)
    torch.testing.assert_close(
        kcam.unproject(uv_pix.reshape(3, -1, 2), depth.reshape(3, -1, 1)), world.reshape(3, -1, 3)
    )
    with pytest.raises(TypeError, match="PinholeCamera"):
        Cameras.from_kornia(cams)


# ---- construction helpers and samplers -----------------------------------------------------------
def test_intrinsics_from_fov():
    k = intrinsics_from_fov(60.0, (32, 48))[0]
    assert k[0, 2] == 24 and k[1, 2] == 16 and k[0, 0] == k[1, 1]
    assert math.isclose(2 * math.degrees(math.atan(16 / k[1, 1].item())), 60.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="fov_degrees"):
        intrinsics_from_fov(180.0, (8, 8))


def test_look_at_properties():
    gen = torch.Generator().manual_seed(1)
    eye = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 3
    target = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 0.1
    c2w = look_at(eye, target)
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(6, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(6, dtype=torch.float64))
    fwd = (target - eye) / (target - eye).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(rot[:, :, 2], fwd)
    assert (rot[:, 1, 1] < 0).all()  # camera y (down) points against world +y
    assert rot[:, 1, 0].abs().max() < 1e-12  # right axis is horizontal
    cams = Cameras(intrinsics_from_fov(50.0, (9, 9), dtype=torch.float64).expand(6, 3, 3), c2w, (9, 9))
    uv, z = cams.project(target[:, None])
    torch.testing.assert_close(uv[:, 0], torch.full((6, 2), 4.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([[0.0, 2.0, 0.0]]))
    with pytest.raises(ValueError, match="differ"):
        look_at(torch.zeros(1, 3))


def test_canonical_cameras():
    cams = canonical_cameras(3, 2.5, 45.0, (16, 12))
    assert len(cams) == 3 and cams.image_size == (16, 12)
    torch.testing.assert_close(cams.centers, torch.tensor([[0.0, 0.0, 2.5]]).expand(3, 3))
    torch.testing.assert_close(
        cams.cam_to_world[:, :3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])).expand(3, 3, 3)
    )
    with pytest.raises(ValueError, match="distance"):
        canonical_cameras(1, 0.0, 45.0, (8, 8))
    with pytest.raises(ValueError, match="batch"):
        canonical_cameras(-1, 1.0, 45.0, (8, 8))


def test_orbit_cameras():
    cams = orbit_cameras(8, 3.0, 20.0, 40.0, (8, 8), dtype=torch.float64)
    c = cams.centers
    torch.testing.assert_close(c.norm(dim=-1), torch.full((8,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(
        c[:, 1], torch.full((8,), 3.0 * math.sin(math.radians(20.0)), dtype=torch.float64)
    )
    az = torch.atan2(c[:, 0], c[:, 2])
    steps = torch.remainder(az.roll(-1) - az, 2 * math.pi)
    torch.testing.assert_close(steps, torch.full((8,), 2 * math.pi / 8, dtype=torch.float64))
    uv, z = cams.project(torch.zeros(8, 1, 3, dtype=torch.float64))
    torch.testing.assert_close(uv[:, 0], torch.full((8, 2), 4.0, dtype=torch.float64))
    frame0 = orbit_cameras(1, 3.0, 0.0, 40.0, (8, 8))
    torch.testing.assert_close(frame0.cam_to_world, canonical_cameras(1, 3.0, 40.0, (8, 8)).cam_to_world)
    with pytest.raises(ValueError, match="n_frames"):
        orbit_cameras(0, 3.0, 0.0, 40.0, (8, 8))


def test_orbit_cameras_sweep_swings_around_the_start_azimuth():
    cams = orbit_cameras(12, 3.0, 10.0, 40.0, (8, 8), dtype=torch.float64, sweep_degrees=60.0)
    c = cams.centers
    torch.testing.assert_close(c.norm(dim=-1), torch.full((12,), 3.0, dtype=torch.float64))
    az = torch.rad2deg(torch.atan2(c[:, 0], c[:, 2]))
    torch.testing.assert_close(az.max(), torch.tensor(30.0, dtype=torch.float64))  # frame 3: +sweep/2
    torch.testing.assert_close(az.min(), torch.tensor(-30.0, dtype=torch.float64))  # frame 9: -sweep/2
    assert abs(float(az[0])) < 1e-9 and az[1] > 0 and az[4] < az[3]  # starts at the input view
    uv, _ = cams.project(torch.zeros(12, 1, 3, dtype=torch.float64))
    torch.testing.assert_close(uv[:, 0], torch.full((12, 2), 4.0, dtype=torch.float64))  # looks at 0
    full = orbit_cameras(5, 3.0, 0.0, 40.0, (8, 8), sweep_degrees=360.0)
    torch.testing.assert_close(full.centers, orbit_cameras(5, 3.0, 0.0, 40.0, (8, 8)).centers)
    for bad in (0.0, -10.0, 400.0):
        with pytest.raises(ValueError, match="sweep_degrees"):
            orbit_cameras(4, 3.0, 0.0, 40.0, (8, 8), sweep_degrees=bad)


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_novel_view_sampler_seeded_and_in_range(distribution):
    kw = dict(yaw=(-30.0, 10.0), pitch=(5.0, 20.0), roll=4.0, translation=0.0, distribution=distribution)
    a = NovelViewSampler(2.7, 40.0, (16, 16), seed=3, **kw)
    b = NovelViewSampler(2.7, 40.0, (16, 16), seed=3, **kw)
    c = NovelViewSampler(2.7, 40.0, (16, 16), seed=4, **kw)
    ca, cb, cc = a.sample(64), b.sample(64), c.sample(64)
    assert torch.equal(ca.cam_to_world, cb.cam_to_world)
    assert not torch.allclose(ca.cam_to_world, cc.cam_to_world)
    p = NovelViewSampler(2.7, 40.0, (16, 16), **kw).sample_parameters(2000, torch.Generator().manual_seed(0))
    assert p["yaw"].min() >= -30 and p["yaw"].max() <= 10
    assert p["pitch"].min() >= 5 and p["pitch"].max() <= 20
    assert p["roll"].abs().max() <= 4
    assert (p["translation"] == 0).all()
    if distribution == "uniform":
        assert abs(p["yaw"].mean().item() + 10) < 1.0 and p["yaw"].std().item() > 10
    else:  # truncated normal centred at the midpoint, std = range / 4 before truncation
        assert abs(p["yaw"].mean().item() + 10) < 1.0 and 7.0 < p["yaw"].std().item() < 10.0
    # no translation: cameras keep distance and still look at the origin (centre pixel)
    torch.testing.assert_close(ca.centers.norm(dim=-1), torch.full((64,), 2.7), rtol=0, atol=1e-5)
    uv, z = ca.project(torch.zeros(64, 1, 3))
    torch.testing.assert_close(uv[:, 0], torch.full((64, 2), 8.0), rtol=0, atol=1e-4)


def test_perturbation_semantics():
    base = canonical_cameras(1, 2.0, 40.0, (8, 8), dtype=torch.float64)
    z1, z3 = torch.zeros(1, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)
    deg = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    yawed = perturb_cameras(base, deg(30.0), z1, z1, z3).centers[0]
    torch.testing.assert_close(
        yawed,
        torch.tensor(
            [2 * math.sin(math.radians(30)), 0, 2 * math.cos(math.radians(30))], dtype=torch.float64
        ),
    )
    pitched = perturb_cameras(base, z1, deg(30.0), z1, z3).centers[0]
    torch.testing.assert_close(
        pitched,
        torch.tensor(
            [0, 2 * math.sin(math.radians(30)), 2 * math.cos(math.radians(30))], dtype=torch.float64
        ),
    )
    rolled = perturb_cameras(base, z1, z1, deg(90.0), z3)
    torch.testing.assert_close(rolled.centers, base.centers)
    torch.testing.assert_close(rolled.cam_to_world[0, :3, 2], base.cam_to_world[0, :3, 2])
    # roll moves the right axis to the image's down axis direction (rotation about forward)
    torch.testing.assert_close(rolled.cam_to_world[0, :3, 0], base.cam_to_world[0, :3, 1])
    moved = perturb_cameras(base, z1, z1, z1, torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64))
    torch.testing.assert_close(moved.centers[0], torch.tensor([0.1, -0.2, 1.7], dtype=torch.float64))
    # translation range per axis is respected
    s = NovelViewSampler(
        2.0, 40.0, (8, 8), yaw=0.0, pitch=0.0, translation=[(0.0, 0.1), 0.0, (-0.2, -0.1)], seed=0
    )
    t = s.sample_parameters(500)["translation"]
    assert t[:, 0].min() >= 0 and t[:, 0].max() <= 0.1 and (t[:, 1] == 0).all()
    assert t[:, 2].min() >= -0.2 and t[:, 2].max() <= -0.1
    # a base camera batch is perturbed in place of the canonical pose
    orbit = orbit_cameras(4, 2.0, 10.0, 40.0, (8, 8))
    same = NovelViewSampler(2.0, 40.0, (8, 8), yaw=0.0, pitch=0.0).sample(4, base=orbit)
    torch.testing.assert_close(same.cam_to_world, orbit.cam_to_world)


# ---- validation ----------------------------------------------------------------------------------
def test_bad_inputs():
    k = intrinsics_from_fov(50.0, (8, 8))
    c2w = torch.eye(4)[None]
    with pytest.raises(ValueError, match="intrinsics must have shape"):
        Cameras(k[:, :2], c2w, (8, 8))
    with pytest.raises(ValueError, match="cam_to_world must have shape"):
        Cameras(k, c2w[0], (8, 8))
    with pytest.raises(ValueError, match="batch size"):
        Cameras(k.expand(2, 3, 3), c2w, (8, 8))
    with pytest.raises(TypeError, match="intrinsics must have dtype"):
        Cameras(k.half(), c2w, (8, 8))
    with pytest.raises(TypeError, match="one dtype"):
        Cameras(k.double(), c2w, (8, 8))
    with pytest.raises(TypeError, match="intrinsics must be a torch.Tensor"):
        Cameras(k.numpy(), c2w, (8, 8))
    with pytest.raises(ValueError, match="NaN"):
        Cameras(k * float("nan"), c2w, (8, 8))
    with pytest.raises(ValueError, match="last row"):
        Cameras(k * 2, c2w, (8, 8))
    with pytest.raises(ValueError, match="last row"):
        Cameras(k, c2w * 2, (8, 8))
    with pytest.raises(ValueError, match="image_size"):
        Cameras(k, c2w, (8,))
    with pytest.raises(ValueError, match="height"):
        Cameras(k, c2w, (0, 8))
    with pytest.raises(TypeError, match="width"):
        Cameras(k, c2w, (8, 8.0))
    cams = Cameras(k, c2w, [8, 8])
    with pytest.raises(ValueError, match="points_world"):
        cams.project(torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="points_world"):
        cams.project(torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="pitch"):
        NovelViewSampler(2.0, 40.0, (8, 8), pitch=(-10.0, 95.0))
    with pytest.raises(ValueError, match="yaw"):
        NovelViewSampler(2.0, 40.0, (8, 8), yaw=(10.0, -10.0))
    with pytest.raises(ValueError, match="distribution"):
        NovelViewSampler(2.0, 40.0, (8, 8), distribution="cauchy")
    with pytest.raises(ValueError, match="base"):
        NovelViewSampler(2.0, 40.0, (8, 8)).sample(2, base=cams)


@pytest.mark.cuda
def test_cuda_cameras_match_cpu():
    cams = random_cameras(2)
    r_cpu = cams.generate_rays()
    r_gpu = cams.to("cuda").generate_rays()
    assert r_gpu.origins.device.type == "cuda"
    torch.testing.assert_close(r_gpu.directions.cpu(), r_cpu.directions)
    with pytest.raises(ValueError, match="device"):
        cams.to("cuda").project(torch.zeros(2, 1, 3, dtype=torch.float64))


def test_zero_rotation_is_refused_and_meta_cameras_infer_shapes():
    from vq3dlib.cameras import Cameras, canonical_cameras

    k = torch.tensor([[[10.0, 0, 4], [0, 10, 4], [0, 0, 1]]])
    c2w = torch.eye(4)[None].clone()
    c2w[0, :3, :3] = 0
    with pytest.raises(ValueError, match=r"invertible rotation block .*camera 0 has determinant 0"):
        Cameras(k, c2w, (8, 8))
    rays = Cameras(k.to("meta"), torch.eye(4)[None].to("meta"), (8, 6)).generate_rays()
    assert rays.origins.shape == (1, 8, 6, 3) and rays.directions.device.type == "meta"
    with pytest.raises(ValueError, match="distance must be > 0 \\(a finite number\\), got nan"):
        canonical_cameras(1, float("nan"), 40.0, (8, 8))
