"""Files in and out (vq3dlib.io): images of every kind, videos, GIFs, PNGs, depth images, meshes, codes."""

from __future__ import annotations

import numpy as np
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


def test_load_image_composites_transparency_on_the_background(tmp_path):
    path = tmp_path / "half.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(path)  # red at alpha 128/255
    a = 128 / 255
    out = io.load_image(path, 4, background="#0000ff")
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([a, 0.0, 1 - a]), atol=1e-5, rtol=0)
    out = io.load_image(path, 4, background=(0.0, 1.0, 0.0))
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([a, 1 - a, 0.0]), atol=1e-5, rtol=0)
    palette = tmp_path / "palette.png"  # a palette image whose colour 0 is transparent
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 255, 0, 255, 255, 255])
    img.paste(1, (0, 0, 2, 4))
    img.save(palette, transparency=0)
    out = io.load_image(palette, 4, background="black")
    assert out[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0] and out[0, :, 0, 3].tolist() == [0.0, 0.0, 0.0]


def test_load_image_greyscale_and_16_bit(tmp_path):
    Image.new("L", (6, 6), 51).save(tmp_path / "grey.png")
    out = io.load_image(tmp_path / "grey.png", 6)
    assert out.shape == (1, 3, 6, 6)
    torch.testing.assert_close(out, torch.full_like(out, 0.2), atol=1e-6, rtol=0)
    deep = Image.new("I;16", (6, 6))
    deep.frombytes(np.full((6, 6), 16384, dtype="<u2").tobytes())  # 16384 / 65535 = 0.25
    deep.save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I")  # stored as 16-bit
    out = io.load_image(tmp_path / "deep.png", 3)
    torch.testing.assert_close(out, torch.full_like(out, 16384 / 65535), atol=1e-5, rtol=0)


def test_load_image_pads_to_a_square(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (30, 10), (255, 0, 0)).save(path)
    out = io.load_image(path, 30, background="black", crop="pad")  # 30 x 30: 10 red rows in the middle
    assert out.shape == (1, 3, 30, 30)
    assert out[0, 0, 15].min() > 0.99 and out[0, :, 2].max() < 0.01 and out[0, :, 27].max() < 0.01
    with pytest.raises(ValueError, match="crop"):
        io.load_image(path, 4, crop="stretch")
    with pytest.raises(ValueError, match="colour"):
        io.load_image(path, 4, background="no-such-colour")


def test_find_images_lists_folders_and_keeps_given_files(tmp_path):
    for name in ("b.PNG", "a.jpg", "depth.npy", "notes.txt"):
        (tmp_path / name).touch()
    (tmp_path / "sub").mkdir()
    found = io.find_images([tmp_path, tmp_path / "notes.txt", tmp_path / "missing.png"])
    assert [p.name for p in found] == ["a.jpg", "b.PNG", "notes.txt", "missing.png"]


def test_mp4_video_holds_the_frames(tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    frames = torch.zeros(5, 3, 8, 8)
    frames[:, 0] = torch.linspace(0, 1, 5)[:, None, None]  # red ramps up over the frames
    path = io.write_video(frames, tmp_path / "t.mp4", size=16, fps=10)
    read = imageio.mimread(path, format="FFMPEG")
    assert len(read) == 5 and read[0].shape == (16, 16, 3)
    red = [float(f[..., 0].mean()) / 255 for f in read]
    assert red == sorted(red) and red[0] < 0.1 and red[-1] > 0.9  # lossy, but the ramp survives


def test_video_falls_back_to_gif_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_ffmpeg_problem", lambda: "imageio-ffmpeg is not installed")
    with pytest.warns(UserWarning, match="imageio-ffmpeg is not installed"):
        path = io.write_video(torch.rand(3, 3, 8, 8), tmp_path / "t.mp4", size=8)
    assert path == tmp_path / "t.gif"
    with Image.open(path) as gif:
        assert gif.n_frames == 3


def test_colorize_depth_maps_near_and_far_to_the_ends_of_the_colour_map():
    from kornia.color import ColorMap

    depth = torch.tensor([[[[1.0, 2.0, 0.0]]]])  # near, middle, nothing
    colours = io.colorize_depth(depth, "viridis")
    ends = ColorMap("viridis", num_colors=256, dtype=torch.float32).colors
    assert colours.shape == (1, 3, 1, 3)
    torch.testing.assert_close(colours[0, :, 0, 0], ends[:, -1])  # near: the bright end
    torch.testing.assert_close(colours[0, :, 0, 2], ends[:, 0])  # empty: the far end
    torch.testing.assert_close(colours[0, :, 0, 1], ends[:, 128])  # disparity 1/2


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_meshes_keep_their_vertex_colours(tmp_path, suffix):
    trimesh = pytest.importorskip("trimesh")
    box = trimesh.creation.box()
    colours = np.random.default_rng(0).integers(0, 256, (len(box.vertices), 4), dtype=np.uint8)
    colours[:, 3] = 255
    box.visual.vertex_colors = colours
    path = io.write_mesh(box, tmp_path / f"box{suffix}")
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == 8 and len(loaded.faces) == 12 and loaded.is_watertight
    order = [int(np.argmin(np.linalg.norm(box.vertices - v, axis=1))) for v in loaded.vertices]
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], colours[order, :3])
    with pytest.raises(ValueError, match="glb"):
        io.write_mesh(box, tmp_path / "box.stl")


def test_scene_codes_round_trip(tmp_path):
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
