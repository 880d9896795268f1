"""Files in and out (vq3dlib.io): images, GIFs, PNGs, disparity images, PLY meshes, scene codes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vq3dlib import io


def test_load_image_crops_the_centre_and_resizes(tmp_path):
    path = tmp_path / "wide.png"
    img = Image.new("RGB", (30, 10), (0, 0, 255))
    img.paste((255, 0, 0), (10, 0, 20, 10))  # the centre square is red, the sides blue
    img.save(path)
    out = io.load_image(path, 5)
    assert out.shape == (1, 3, 5, 5) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert torch.allclose(out[0, :, 2, 2], torch.tensor([1.0, 0.0, 0.0]), atol=0.05)
    with pytest.raises(FileNotFoundError, match="not found"):
        io.load_image(tmp_path / "missing.png", 4)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        io.load_image(tmp_path / "bad.png", 4)


def test_gif_and_png_sizes(tmp_path):
    gif = io.write_gif(torch.rand(3, 3, 8, 16), tmp_path / "a" / "t.gif", size=16)
    with Image.open(gif) as g:
        assert g.n_frames == 3 and g.size == (32, 16)
    with Image.open(io.write_png(torch.rand(1, 4, 4), tmp_path / "d.png")) as p:
        assert p.size == (4, 4) and p.mode == "RGB"
    with pytest.raises(ValueError, match="frames"):
        io.write_gif(torch.rand(3, 8, 8), tmp_path / "x.gif")


def test_disparity_image_is_normalised_with_empty_pixels_far():
    depth = torch.tensor([[[[1.0, 4.0], [0.0, 2.0]]]])
    disp = io.disparity_image(depth)
    assert disp.shape == depth.shape
    assert disp.flatten().tolist() == [1.0, 0.25, 0.0, 0.5]  # 1/d scaled to [0, 1]; depth 0 is far


def test_ply_and_scene_codes_round_trip(tmp_path):
    faces = torch.tensor([[0, 1, 2], [1, 2, 3]])
    text = io.write_ply(torch.rand(4, 3), faces, tmp_path / "m.ply").read_text()
    lines = text.splitlines()
    assert lines[:3] == ["ply", "format ascii 1.0", "element vertex 4"] and lines[-1] == "3 1 2 3"
    codes, labels = torch.randint(0, 9, (2, 4, 4)), torch.tensor([1, 2])
    path = io.save_scene(codes, tmp_path / "s.scene.safetensors", labels=labels)
    assert torch.equal(io.load_scene_indices(path), codes)
    torch.save({"indices": codes}, tmp_path / "s.pt")
    assert torch.equal(io.load_scene_indices(tmp_path / "s.pt"), codes)
    torch.save({"other": codes}, tmp_path / "o.pt")
    with pytest.raises(ValueError, match="indices"):
        io.load_scene_indices(tmp_path / "o.pt")
    with pytest.raises(FileNotFoundError):
        io.load_scene_indices(tmp_path / "missing.safetensors")
