"""Images → scenes → files (vq3dlib.reconstruction): render sizes, the written pictures, unreadable inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import micro_vq3d
from vq3dlib.metrics import psnr
from vq3dlib.models import get_config, render_turntable, view_cameras
from vq3dlib.reconstruction import (
    ReconstructOptions,
    reconstruct_images,
    render_size_of,
    write_reconstruction,
)


def _png(path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("bad", [0, 33, -4])
def test_render_size_outside_one_to_size_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=rf"render_size must be in \[1, size=32\], got {bad}"):
        ReconstructOptions(size=32, render_size=bad)


@pytest.mark.parametrize(("name", "overrides"), [("tiny", {}), ("tiny", {"render_resolution": 32})])
@pytest.mark.parametrize("size", [128, 96, 64])
def test_the_default_render_size_keeps_the_models_render_to_image_ratio(name, overrides, size):
    cfg = get_config(name, **overrides)
    default = render_size_of(cfg, ReconstructOptions(size=size))
    assert default * cfg.image_size == size * cfg.render_resolution  # 16 -> 32: half; 32 -> 32: all
    assert render_size_of(cfg, ReconstructOptions(size=size, render_size=size)) == size
    assert render_size_of(cfg, ReconstructOptions(size=1)) == 1  # never 0


def test_pictures_rendered_smaller_are_the_models_upsampled_output_and_full_size_ones_the_field(tmp_path):
    torch.manual_seed(0)
    model = micro_vq3d().eval()  # render 8 -> image 16; an untrained head adds nothing to bilinear
    with torch.no_grad():
        model.super_resolution.net[-1].bias.fill_(0.1)  # a head that does something: +0.1 everywhere
    image = torch.rand(1, 3, 16, 16)
    scene = model.reconstruct(image)
    front = lambda r: scene.render(view_cameras(model.config, resolution=r)).images()
    options = ReconstructOptions(frames=2, size=32)  # renders 16 (the model's ratio), head to 32
    write_reconstruction(scene, image, tmp_path / "half", options)
    small = front(16)
    expected = F.interpolate(small["rgb"], size=(32, 32), mode="bilinear", align_corners=False) + 0.1
    png = 1 / 255 + 1e-4  # 8-bit rounding
    half, full = tmp_path / "half", tmp_path / "full"
    torch.testing.assert_close(_png(half / "reconstruction.png"), expected[0].clamp(0, 1), atol=png, rtol=0)
    with Image.open(half / "depth.png") as depth, Image.open(half / "turntable.gif") as gif:
        assert depth.size == (32, 32) and gif.size == (32, 32)
    write_reconstruction(scene, image, full, ReconstructOptions(frames=2, size=32, render_size=32))
    every_pixel = front(32)["rgb"][0].clamp(0, 1)  # from the field, no head
    torch.testing.assert_close(_png(full / "reconstruction.png"), every_pixel, atol=png, rtol=0)


def test_the_bundled_models_default_frames_match_its_full_resolution_frames():
    """The default (render at half the side, the head super-resolves) against every pixel rendered."""
    from vq3dlib.data import ProceduralScenes
    from vq3dlib.models import VQ3DModel

    model = VQ3DModel.pretrained("tiny-procedural")
    scene = model.reconstruct(ProceduralScenes(1, 32, seed=1)[0]["image"][None])
    fast = render_turntable(scene, 3, resolution=32, image_size=64)["image"]
    full = render_turntable(scene, 3, resolution=64)["rgb"]
    coarse = F.interpolate(render_turntable(scene, 3, resolution=16)["rgb"], size=(64, 64), mode="bilinear")
    assert fast.shape == full.shape == (3, 3, 64, 64)
    close, blurred = float(psnr(fast, full).mean()), float(psnr(coarse.clamp(0, 1), full).mean())
    # measured at 64² (the bundled model of 2026-12-03): 30.50 against 30.24 dB
    assert close > 30.0 and close > blurred + 0.1, (close, blurred)


def test_unreadable_files_are_reported_in_one_line_each_and_the_others_written(tmp_path):
    Image.new("RGB", (20, 14), "orange").save(tmp_path / "cat.png")
    Image.new("I;16", (12, 12), 30000).save(tmp_path / "deep.png")
    (tmp_path / "broken.jpg").write_text("not an image")
    seen = []
    paths = [tmp_path / "cat.png", tmp_path / "broken.jpg", tmp_path / "gone.png", tmp_path / "deep.png"]
    options = ReconstructOptions(frames=1, size=8)
    report = reconstruct_images(micro_vq3d().eval(), paths, tmp_path / "out", options, progress=False,
                                on_error=lambda path, message: seen.append((path, message)))  # fmt: skip
    assert sorted(report.written) == ["cat", "deep"]
    assert [p for p, _ in seen] == [tmp_path / "broken.jpg", tmp_path / "gone.png"] == list(report.failed)
    assert all("\n" not in m and str(p) in m for p, m in seen), seen
    assert (tmp_path / "out" / "deep" / "turntable.mp4").is_file()
    assert not (tmp_path / "out" / "broken").exists()
