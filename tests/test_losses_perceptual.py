"""Tests for vq3dlib.losses.perceptual (LPIPS-style loss), with random weights: nothing is downloaded."""

from __future__ import annotations

import os
import re

import pytest
import torch
from safetensors.torch import save_file

from vq3dlib.losses.perceptual import ENV_VAR, LPIPS, SUGGESTED_PATH, TAPS, _load_file, vgg16_features


@pytest.fixture(scope="module")
def lpips():
    torch.manual_seed(0)
    return LPIPS(pretrained=False, reduction="none")


def test_zero_for_identical_positive_otherwise(lpips, device):
    model = lpips.to(device)
    x = torch.rand(2, 3, 32, 32, device=device) * 2 - 1
    assert (model(x, x) == 0).all()
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    d = model(x, y)
    assert d.shape == (2,) and (d > 0).all()
    # symmetric, and more noise -> larger distance
    torch.testing.assert_close(d, model(y, x))
    z = (x + 1.0 * torch.randn_like(x)).clamp(-1, 1)
    assert (model(x, z) > d).all()
    lpips.to("cpu")


def test_differentiable_and_frozen(lpips):
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    y = torch.rand(2, 3, 16, 16)
    lpips(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in lpips.parameters())
    lpips.train()
    assert not lpips.training


def test_normalize_maps_unit_range_inputs(lpips):
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    unit = LPIPS(pretrained=False, normalize=True, reduction="none")
    unit.load_state_dict(lpips.state_dict())
    torch.testing.assert_close(unit(x, y), lpips(2 * x - 1, 2 * y - 1))


def test_reductions(lpips):
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    per = lpips(x, y)
    mean = LPIPS(pretrained=False)
    mean.load_state_dict(lpips.state_dict())
    torch.testing.assert_close(mean(x, y), per.mean())


def test_distance_is_weighted_sum_over_taps(lpips):
    """Independent check of the formula: sum_k mean_hw(w_k . (f_k(x)/|f_k(x)| - f_k(y)/|f_k(y)|)^2)."""
    x, y = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    feats = {}
    for name, img in (("x", x), ("y", y)):
        h = (img - lpips.shift) / lpips.scale
        out = []
        for i, layer in enumerate(lpips.features):
            h = layer(h.clone())
            if i in TAPS:
                out.append(torch.nn.functional.normalize(h, dim=1, eps=0))
        feats[name] = out
    expected = sum(
        (head.weight.view(1, -1, 1, 1) * (fx - fy) ** 2).sum(1).mean()
        for head, fx, fy in zip(lpips.heads, feats["x"], feats["y"], strict=True)
    )
    torch.testing.assert_close(lpips(x, y)[0], expected, rtol=1e-4, atol=1e-6)


def test_missing_weights_error_says_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    suggested = re.escape(os.path.expanduser(SUGGESTED_PATH))
    with pytest.raises(FileNotFoundError, match=ENV_VAR) as info:
        LPIPS()
    assert re.search(f"e.g. {suggested}", str(info.value)) and f"{ENV_VAR}=" in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LPIPS(tmp_path / "nope.safetensors")


def test_missing_file_named_by_the_env_var(monkeypatch, tmp_path):
    missing = tmp_path / "weights" / "lpips.safetensors"
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(FileNotFoundError) as info:
        LPIPS()
    msg = str(info.value)
    # names the file, that it came from the variable, and where to put the weights
    assert f"{missing} (from the environment variable {ENV_VAR}) does not exist" in msg
    assert os.path.expanduser(SUGGESTED_PATH) in msg and "LPIPS(weights=" in msg
    # several files: the missing one is named
    present = tmp_path / "present.safetensors"
    save_file({"x": torch.zeros(1)}, str(present))
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(present), str(missing)]))
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing} (from the environment variable")):
        LPIPS()


class _NotATensor:  # a pickled custom object, which torch.load(weights_only=True) refuses
    pass


def test_pickle_refused_by_weights_only_gives_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"heads.0.weight": torch.zeros(1), "meta": _NotATensor()}, path)
    with pytest.raises(ValueError, match=r"weights_only=True\) refuses") as info:
        LPIPS(path)
    assert str(path) in str(info.value) and "state_dict" in str(info.value)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint " * 8)
    with pytest.raises(ValueError, match="neither a safetensors nor a torch file"):
        LPIPS(junk)


def test_format_is_recognised_by_content_not_suffix(lpips, tmp_path):
    small = {"heads.0.weight": torch.rand(1, 64, 1, 1), "features.0.bias": torch.rand(64)}
    files = {
        "safetensors content, torch-style name": (tmp_path / "a.pth", save_file),
        "torch content, safetensors name": (tmp_path / "b.safetensors", torch.save),
        "safetensors content, no suffix": (tmp_path / "c", save_file),
        "torch content, no suffix": (tmp_path / "d", torch.save),
    }
    for what, (path, save) in files.items():
        save(small, str(path))
        loaded = _load_file(path)
        assert set(loaded) == set(small), what
        assert all(torch.equal(loaded[k], small[k]) for k in small), what
    # and end to end: a full state dict in safetensors format under a torch-style name
    as_pth = tmp_path / "lpips_weights.pth"
    save_file({k: v.contiguous() for k, v in lpips.state_dict().items()}, str(as_pth))
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(LPIPS(as_pth, reduction="none")(x, y), lpips(x, y))
    broken = tmp_path / "broken.safetensors"  # a valid header whose data is cut short
    broken.write_bytes((tmp_path / "a.pth").read_bytes()[:-100])
    with pytest.raises(ValueError, match="safetensors header but cannot be read"):
        LPIPS(broken)


def test_load_own_safetensors_via_argument_and_env(lpips, monkeypatch, tmp_path):
    path = tmp_path / "lpips.safetensors"
    save_file({k: v.contiguous() for k, v in lpips.state_dict().items()}, str(path))
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    loaded = LPIPS(path, reduction="none")
    torch.testing.assert_close(loaded(x, y), lpips(x, y))
    monkeypatch.setenv(ENV_VAR, str(path))
    torch.testing.assert_close(LPIPS(reduction="none")(x, y), lpips(x, y))


def test_load_torchvision_and_lpips_layouts(lpips, tmp_path):
    state = lpips.state_dict()
    vgg = {k: v for k, v in state.items() if k.startswith("features.")}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    heads = {f"lin{k}.model.1.weight": state[f"heads.{k}.weight"] for k in range(5)}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "vgg.pth")
    loaded = LPIPS([tmp_path / "vgg16.pth", tmp_path / "vgg.pth"], reduction="none")
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded(x, y), lpips(x, y))
    # the lpips package's full-module layout: net.slice<j>.<i>.weight keeps torchvision's indices
    bounds = [0, 4, 9, 16, 23, 30]
    full = dict(heads)
    for key, value in vgg.items():
        if key.startswith("features."):
            idx = int(key.split(".")[1])
            j = next(s for s in range(5) if bounds[s] <= idx < bounds[s + 1]) + 1
            full[f"net.slice{j}.{key.removeprefix('features.')}"] = value
    torch.save(full, tmp_path / "full.pth")
    torch.testing.assert_close(LPIPS(tmp_path / "full.pth", reduction="none")(x, y), lpips(x, y))


def test_incomplete_weights_rejected(lpips, tmp_path):
    heads = {f"lin{k}.model.1.weight": lpips.state_dict()[f"heads.{k}.weight"] for k in range(5)}
    torch.save(heads, tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match="lack"):
        LPIPS(tmp_path / "vgg.pth")


def test_bad_input(lpips):
    with pytest.raises(ValueError, match="y"):
        lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="3 channels"):
        lpips(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="16x16"):
        lpips(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="reduction"):
        LPIPS(pretrained=False, reduction="max")


def test_backbone_matches_torchvision_vgg16():
    from torchvision.models.vgg import cfgs, make_layers  # what torchvision.models.vgg16() builds

    ours = vgg16_features()
    theirs = make_layers(cfgs["D"])[: len(ours)]
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}
    assert shapes(ours) == shapes(theirs)
    for a, b in zip(ours, theirs, strict=True):
        if isinstance(a, torch.nn.Conv2d):
            assert (a.kernel_size, a.padding, a.stride) == (b.kernel_size, b.padding, b.stride)
        if isinstance(a, torch.nn.MaxPool2d):
            assert (a.kernel_size, a.stride) == (b.kernel_size, b.stride)
