"""Tests for vq3dlib.data.folder.ImageFolderDataset (images and depth maps generated in tmp_path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vq3dlib.data import ImageFolderDataset
from vq3dlib.data.folder import read_depth, write_depth_png


def _stripes(path, w=40, h=20):
    """Left quarter red, middle half green, right quarter blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 4, 0] = 255
    arr[:, w // 4 : 3 * w // 4, 1] = 255
    arr[:, 3 * w // 4 :, 2] = 255
    Image.fromarray(arr).save(path)


def _column_depth(w=40, h=20):
    return np.broadcast_to(np.arange(w, dtype=np.float32) + 1.0, (h, w)).copy()


def test_center_crop_and_resize(tmp_path):
    _stripes(tmp_path / "a.png")
    item = ImageFolderDataset(tmp_path, resolution=8)[0]
    img = item["image"]
    assert img.shape == (3, 8, 8) and img.dtype == torch.float32
    # the square center crop keeps only the green middle half
    torch.testing.assert_close(
        img, torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 8, 8), atol=1e-6, rtol=0
    )
    wide = ImageFolderDataset(tmp_path, resolution=(4, 8))[0]["image"]  # same aspect: whole image
    assert wide.shape == (3, 4, 8)
    assert (wide[0, :, 0] > 0.9).all() and (wide[2, :, -1] > 0.9).all() and (wide[1, :, 3:5] > 0.9).all()
    assert item["path"] == str(tmp_path / "a.png") and item["index"].item() == 0 and "depth" not in item


def test_16_bit_greyscale_images_are_scaled_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, 8 * 8).reshape(8, 8).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as img:
        assert img.mode.startswith("I")  # how Pillow opens a 16-bit greyscale PNG
    image = ImageFolderDataset(tmp_path, resolution=8)[0]["image"]
    expected = torch.from_numpy(np.round(ramp / 65535.0 * 255.0) / 255.0).float()
    torch.testing.assert_close(image, expected.expand(3, 8, 8), atol=1e-6, rtol=0)
    assert 0.45 < float(image.mean()) < 0.55


def test_npy_depth_gets_the_same_crop(tmp_path):
    _stripes(tmp_path / "a.png")
    np.save(tmp_path / "a.npy", _column_depth())
    ds = ImageFolderDataset(tmp_path, resolution=20)  # crop 20x20 at columns 10..29, no resize
    assert ds.has_depth
    d = ds[0]["depth"]
    assert d.shape == (1, 20, 20) and d.dtype == torch.float32
    torch.testing.assert_close(d[0], torch.arange(11.0, 31.0).expand(20, 20))
    small = ImageFolderDataset(tmp_path, resolution=5)[0]["depth"]
    # nearest-neighbour resize: only values from the crop, increasing left to right
    assert set(small.unique().tolist()) <= set(range(11, 31))
    assert (small[0, :, 1:] > small[0, :, :-1]).all()


@pytest.mark.parametrize("shape", [(1, 20, 40), (20, 40, 1)])
def test_npy_depth_with_channel_dim(tmp_path, shape):
    _stripes(tmp_path / "a.png")
    np.save(tmp_path / "a.npy", _column_depth().reshape(shape).astype(np.float64))
    assert ImageFolderDataset(tmp_path, 20, depth="required")[0]["depth"].shape == (1, 20, 20)


def test_png16_depth_and_scale(tmp_path):
    _stripes(tmp_path / "a.jpg")
    depth = _column_depth() / 7.0
    write_depth_png(tmp_path / "a.depth.png", depth)
    torch.testing.assert_close(
        torch.from_numpy(read_depth(tmp_path / "a.depth.png")),
        torch.from_numpy(np.round(depth * 1000) / 1000),
    )
    ds = ImageFolderDataset(tmp_path, 20)
    assert len(ds) == 1  # the .depth.png is not an image
    torch.testing.assert_close(ds[0]["depth"][0, 0], torch.arange(11.0, 31.0) / 7.0, atol=1e-3, rtol=0)
    ds10 = ImageFolderDataset(tmp_path, 20, depth_png_scale=10.0)
    torch.testing.assert_close(ds10[0]["depth"], 100.0 * ds[0]["depth"])
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(tmp_path / "a.depth.png")  # 8-bit: rejected
    with pytest.raises(ValueError, match="16-bit"):
        ImageFolderDataset(tmp_path, 20)[0]


def test_depth_modes(tmp_path):
    for name in ("a", "b"):
        _stripes(tmp_path / f"{name}.png")
    assert not ImageFolderDataset(tmp_path, 8).has_depth  # auto, no files
    with pytest.raises(FileNotFoundError, match="a.npy") as e:
        ImageFolderDataset(tmp_path, 8, depth="required")
    assert "depth_fn" in str(e.value) and "depth='none'" in str(e.value) and "a.depth.png" in str(e.value)
    np.save(tmp_path / "a.npy", _column_depth())
    with pytest.raises(FileNotFoundError, match="1 of 2 images") as e:
        ImageFolderDataset(tmp_path, 8)  # auto with partial depth
    assert str(tmp_path / "b.png") in str(e.value) and str(tmp_path / "a.png") not in str(e.value)
    none = ImageFolderDataset(tmp_path, 8, depth="none")
    assert not none.has_depth and "depth" not in none[0]
    calls = []

    def fn(image):
        calls.append(image.shape)
        return torch.full(image.shape[1:], 5.0)

    ds = ImageFolderDataset(tmp_path, 20, depth="required", depth_fn=fn)
    torch.testing.assert_close(ds[0]["depth"][0, 0], torch.arange(11.0, 31.0))  # file wins
    assert calls == []
    assert (ds[1]["depth"] == 5.0).all() and calls == [(3, 20, 20)]


def test_dataloader_collates(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (tmp_path / ".hidden").mkdir()
    for p in (tmp_path / "b.png", sub / "a.jpg", tmp_path / ".hidden" / "c.png"):
        _stripes(p)
    Image.new("L", (30, 30), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (30, 30), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    ds = ImageFolderDataset(tmp_path, 8, depth_fn=lambda img: img[:1] + 1.0)
    assert [p.name for p in ds.paths] == ["b.png", "gray.png", "rgba.png", "a.jpg"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 8, 8) and batch["depth"].shape == (4, 1, 8, 8)
    assert len(batch["path"]) == 4 and batch["index"].tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(batch["image"][1], torch.full((3, 8, 8), 128 / 255))
    assert ds[-1]["path"] == str(sub / "a.jpg")
    with pytest.raises(IndexError):
        ds[4]


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path)
    _stripes(tmp_path / "a.png")
    with pytest.raises(ValueError, match="depth"):
        ImageFolderDataset(tmp_path, depth="maybe")
    with pytest.raises(ValueError, match="resolution"):
        ImageFolderDataset(tmp_path, resolution=(8, 8, 8))
    with pytest.raises(ValueError, match="resolution"):
        ImageFolderDataset(tmp_path, resolution=0)
    with pytest.raises(TypeError, match="depth_fn"):
        ImageFolderDataset(tmp_path, depth_fn=3)
    with pytest.raises(ValueError, match=r"depth_fn\(image\) must return shape"):
        ImageFolderDataset(tmp_path, 8, depth_fn=lambda img: torch.ones(4, 4))[0]
    np.save(tmp_path / "a.npy", np.ones((10, 10), np.float32))
    with pytest.raises(ValueError, match="a.npy has shape"):
        ImageFolderDataset(tmp_path, 8)[0]
    np.save(tmp_path / "a.npy", np.ones((2, 20, 40), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        ImageFolderDataset(tmp_path, 8)[0]
    with pytest.raises(ValueError, match="65535"):
        write_depth_png(tmp_path / "x.depth.png", np.full((2, 2), 100.0))
