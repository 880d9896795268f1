"""Renderer(threads=...): concurrent interleaved chunks on CPU render what one chunk at a time does."""

from __future__ import annotations

import threading

import pytest
import torch

from vq3dlib.cpu_threads import extension_available
from vq3dlib.render.occupancy import OccupancyGrid
from vq3dlib.render.renderer import MIN_CONCURRENT_RAYS, Renderer

needs_ext = pytest.mark.skipif(not extension_available(), reason="needs the C++ extension")
FIELDS = ("rgb", "depth", "disparity", "opacity", "ray_indices", "t_starts", "t_ends", "weights", "alphas")


def _scene_field(calls: list[str] | None = None):
    """Spheres of a different radius and colour per scene (a lumpy density, so rays differ in cost)."""

    def field(x, d, s):
        if calls is not None:
            calls.append(threading.current_thread().name)
        radius = 0.3 + 0.2 * s.to(x.dtype)
        lumps = 0.1 * torch.sin(7 * x).prod(-1)
        sigma = 40.0 * ((x.norm(dim=-1) + lumps) < radius).to(x.dtype)
        rgb = torch.stack([torch.sigmoid(x[:, 0] + s), torch.sigmoid(x[:, 1]), 0.5 + 0 * x[:, 2]], -1)
        return sigma, rgb

    return field


def _rays(n: int, n_scenes: int = 2):
    g = torch.Generator().manual_seed(0)
    o = torch.randn(n, 3, generator=g) * 0.4 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(
        torch.tensor([0.0, 0.0, 1.0]) + 0.15 * torch.randn(n, 3, generator=g), dim=-1
    )
    return o, d, torch.randint(0, n_scenes, (n,), generator=g)


def _renderers(**kwargs):
    grid = OccupancyGrid([-1.0] * 3 + [1.0] * 3, 16, contraction="none", n_scenes=2)
    return Renderer(grid, threads=1, **kwargs), Renderer(grid, threads=2, **kwargs)


@needs_ext
@pytest.mark.parametrize(
    "kwargs",
    [
        {"step_size": 0.02, "spacing": "t", "early_stop_eps": 1e-4},  # one march, then the pre-pass
        {"step_size": 0.02, "spacing": "contracted"},  # marching in rounds until opaque
        {"step_size": 0.02, "spacing": "t", "early_stop_eps": 0.0, "chunk_size": 1500},  # > 2 chunks
        {"sampling": "stratified", "max_samples": 24, "background": 0.5},
    ],
)
def test_concurrent_render_equals_one_chunk_at_a_time(kwargs):
    one, two = _renderers(**kwargs)
    calls: list[str] = []
    o, d, s = _rays(3 * MIN_CONCURRENT_RAYS + 5)  # not a multiple of the chunk count
    with torch.no_grad():
        a = one(_scene_field(), (o, d), scene_index=s)
        b = two(_scene_field(calls), (o, d), scene_index=s)
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.ray_indices.numel() > 0 and bool((a.ray_indices.diff() >= 0).all())  # packed in ray order
    assert calls and all(name.startswith("vq3dlib-cpu") for name in calls)  # the pool rendered them


@needs_ext
@pytest.mark.parametrize("backend_name", ["torch", "cuda-emu"])
def test_concurrent_render_is_the_same_on_every_cpu_backend(backend_name):
    from vq3dlib import _emu, backend

    if backend_name == "cuda-emu" and not _emu.load_emulation():
        pytest.skip("the emulated CUDA kernels did not build")
    one, two = _renderers(step_size=0.02, spacing="contracted")
    o, d, s = _rays(2 * MIN_CONCURRENT_RAYS + 3)
    with torch.no_grad(), backend.forced(backend_name):  # the pool threads run the forced backend too
        a = one(_scene_field(), (o, d), scene_index=s)
        b = two(_scene_field(), (o, d), scene_index=s)
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), (backend_name, name)


@needs_ext
def test_autograd_jitter_and_small_renders_render_in_the_callers_thread():
    one, two = _renderers(step_size=0.02, spacing="t")
    o, d, s = _rays(2 * MIN_CONCURRENT_RAYS)
    main = threading.current_thread().name
    for grad, jitter, n in (
        (True, False, len(o)),
        (False, True, len(o)),
        (False, False, MIN_CONCURRENT_RAYS),
    ):
        calls: list[str] = []
        with torch.set_grad_enabled(grad):
            two(_scene_field(calls), (o[:n], d[:n]), scene_index=s[:n], jitter=jitter)
        assert calls and set(calls) == {main}, (grad, jitter, n)


def test_threads_is_checked():
    with pytest.raises(ValueError, match="threads"):
        Renderer(threads=0)
    with pytest.raises(TypeError, match="threads"):
        Renderer(threads=1.5)
    assert Renderer().threads is None  # default: torch's thread count


@pytest.mark.parametrize("threads", [1, 2])
def test_render_checks_the_field_planes_once_and_every_render(monkeypatch, threads):
    """A render calls the field once per round of each chunk; its planes' values are read once per
    render (values_checked_once), and NaN written into them is caught by the next render."""
    import vq3dlib._validation as validation
    from vq3dlib import ContractedTriplane, TriplaneField
    from vq3dlib.render.field import RadianceField

    torch.manual_seed(0)
    nerf = RadianceField(ContractedTriplane(64, 8), TriplaneField(8, 16))
    planes = nerf.encoder.planes
    assert planes.numel() >= validation.CHECKED_ONCE_MIN_ELEMENTS
    reads, calls = [], []
    original = validation.value_bounds

    def counting(x):
        reads.append(x.data_ptr() == planes.data_ptr() and x.numel() == planes.numel())
        return original(x)

    def field(x, d, s):
        calls.append(1)
        return nerf(x, d, s)

    monkeypatch.setattr(validation, "value_bounds", counting)
    renderer = Renderer(step_size=0.05, spacing="contracted", threads=threads, far=8.0)
    o, d, _ = _rays(2 * MIN_CONCURRENT_RAYS)
    with torch.no_grad():
        renderer(field, (o, d))
        assert len(calls) >= 2 * threads and sum(reads) == 1  # two rounds or more per chunk, one read
        planes.data[0, 1, 2, 3, 4] = float("nan")  # a new render checks again
        with pytest.raises(ValueError, match="planes contains NaN or Inf"):
            renderer(field, (o, d))
