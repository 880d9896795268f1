"""Tests for vq3dlib.train.logger: JSONL scalars, PNG grids, optional TensorBoard."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vq3dlib.train.logger import TrainLogger, image_grid, save_image, tensorboard_available


def test_scalars_and_images_go_to_files(tmp_path):
    log = TrainLogger(tmp_path, tensorboard=False)
    assert log.backend == "files"
    log.scalars(1, {"loss": torch.tensor(0.5), "lr": 1e-3})
    log.scalars(2, {"loss": 0.25})
    paths = log.images(2, {"recon": torch.rand(3, 3, 8, 8), "depth": torch.rand(3, 1, 8, 8) * 5}, scale=1)
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 0.5, "lr": 1e-3}, {"step": 2, "loss": 0.25}]
    with Image.open(paths[0]) as img:
        assert img.size == (3 * 9 + 1, 1 * 9 + 1) or img.size == (2 * 9 + 1, 2 * 9 + 1)


def test_disabled_logger_writes_nothing(tmp_path):
    log = TrainLogger(tmp_path / "off", enabled=False)
    log.scalars(1, {"a": 1.0})
    assert log.images(1, {"x": torch.rand(1, 3, 4, 4)}) == []
    log.close()
    assert not (tmp_path / "off").exists()


def test_tensorboard_is_optional(tmp_path):
    if tensorboard_available():
        log = TrainLogger(tmp_path, tensorboard=True)
        assert log.backend == "tensorboard+files"
        log.scalars(3, {"loss": 0.5})
        log.images(3, {"recon": torch.rand(2, 3, 4, 4)})
        log.close()
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "tb"))
        events.Reload()
        assert [e.value for e in events.Scalars("loss")] == [0.5]
        assert events.Tags()["images"]
    else:
        with pytest.raises(ImportError, match="tensorboard"):
            TrainLogger(tmp_path, tensorboard=True)
        assert TrainLogger(tmp_path / "auto").backend == "files"  # default: falls back silently


def test_image_grid_layout_and_normalisation():
    images = torch.zeros(4, 3, 2, 2)
    images[1] = 1.0
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (3, 7, 7)
    assert torch.all(grid[:, 1:3, 4:6] == 1.0) and torch.all(grid[:, 1:3, 1:3] == 0.0)
    depth = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]]])
    g = image_grid(depth, pad=0)
    assert g.shape == (3, 2, 2) and g.min() == 0.0 and g.max() == 1.0  # per-image min/max
    with pytest.raises(ValueError, match="channels"):
        image_grid(torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="images"):
        image_grid(torch.rand(3, 4, 4))


def test_save_image_scales(tmp_path):
    path = save_image(torch.rand(3, 4, 5), tmp_path / "a" / "x.png", scale=3)
    with Image.open(path) as img:
        assert img.size == (15, 12)


def test_a_resumed_logger_drops_the_rows_after_its_step_and_a_torn_line(tmp_path):
    log = TrainLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3, 4):
        log.scalars(step, {"loss": float(step)})
    log.close()
    with (tmp_path / "scalars.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')
    log = TrainLogger(tmp_path, tensorboard=False, resume_step=2)
    log.scalars(3, {"loss": 30.0})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
