"""Tests for vq3dlib.train.loop: overrides, step-derived data order, LR schedule, autocast, caching."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from vq3dlib.data import ProceduralScenes
from vq3dlib.train.loop import (
    MemoryDataset,
    adamw,
    all_finite,
    apply_overrides,
    autocast,
    get_batch,
    parse_value,
    resolve_device,
    step_indices,
    warmup_cosine,
)


@dataclass
class Cfg:
    steps: int = 10
    lr: float = 1e-3
    amp: str = "none"
    ema: bool = False
    betas: tuple = (0.9, 0.99)
    path: str | None = None
    model_overrides: dict = field(default_factory=dict)


def test_overrides_are_typed_like_the_defaults():
    cfg = apply_overrides(Cfg(), ["steps=1e3", "lr=3e-4", "amp=bf16", "ema=true", "betas=(0.5, 0.9)",
                                  "path=/x", "model.image_size=16", "model.fsq_levels=[8, 5]"])  # fmt: skip
    assert cfg == Cfg(1000, 3e-4, "bf16", True, (0.5, 0.9), "/x", {"image_size": 16, "fsq_levels": (8, 5)})
    assert Cfg().model_overrides == {}  # the original is untouched
    assert apply_overrides(Cfg(), {"steps": 3}).steps == 3


@pytest.mark.parametrize(
    "item, match",
    [("steps", "key=value"), ("nope=1", "unknown config key"), ("steps=1.5", "steps"), ("ema=maybe", "ema"),
     ("model.nope=1", "unknown model config field"), ("lr.x=1", "not a dict field"), ("=3", "empty key")],
)  # fmt: skip
def test_override_errors_name_the_key(item, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(Cfg(), [item])


def test_parse_value_without_a_default():
    assert parse_value("[1, 2]") == [1, 2] and parse_value("None") is None and parse_value("abc") == "abc"


def test_step_indices_cover_each_epoch_once_and_split_ranks():
    n, b, world = 20, 2, 2
    seen = torch.cat(
        [step_indices(s, n, b, seed=3, rank=r, world_size=world) for s in range(5) for r in range(2)]
    )
    assert sorted(seen.tolist()) == list(range(n))  # 5 steps x 2 ranks x 2 = one epoch, a permutation
    nxt = torch.cat(
        [step_indices(s, n, b, seed=3, rank=r, world_size=world) for s in range(5, 10) for r in range(2)]
    )
    assert sorted(nxt.tolist()) == list(range(n)) and not torch.equal(seen, nxt)  # reshuffled per epoch
    assert torch.equal(step_indices(7, n, b, 3, 1, 2), step_indices(7, n, b, 3, 1, 2))  # pure function
    assert not torch.equal(step_indices(0, 100, 8, seed=0), step_indices(0, 100, 8, seed=1))
    wrap = step_indices(2, 5, 4, seed=0)  # crosses the epoch boundary mid-batch
    assert wrap.shape == (4,) and wrap.max() < 5
    with pytest.raises(ValueError, match="rank"):
        step_indices(0, 10, 2, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="dataset_size"):
        step_indices(0, 0, 2, 0)


def test_warmup_cosine_shape():
    f = warmup_cosine(4, 20, min_ratio=0.1)
    values = [f(s) for s in range(25)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(values[4:], values[5:]))  # monotone decay after warmup
    assert values[20] == pytest.approx(0.1) and values[24] == pytest.approx(0.1)
    assert warmup_cosine(0, 5)(0) == 1.0
    with pytest.raises(ValueError, match="min_ratio"):
        warmup_cosine(1, 5, min_ratio=2.0)


def test_autocast_modes():
    cpu = torch.device("cpu")
    with autocast(cpu, "none"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        autocast(cpu, "fp16")
    with pytest.raises(ValueError, match="amp"):
        autocast(cpu, "fp8")


def test_memory_dataset_matches_the_source_and_batches():
    src = ProceduralScenes(4, 8, n_novel_views=1)
    mem = MemoryDataset(src, progress=False)
    assert len(mem) == 4
    for key in ("image", "depth", "novel_images", "label"):
        assert torch.equal(mem[2][key], src[2][key])
    batch = get_batch(mem, torch.tensor([3, 1]))
    assert torch.equal(batch["image"], torch.stack([src[3]["image"], src[1]["image"]]))
    assert torch.equal(get_batch(src, torch.tensor([3, 1]))["image"], batch["image"])
    with pytest.raises(IndexError):
        mem[4]
    with pytest.raises(ValueError, match="empty"):
        MemoryDataset(ProceduralScenes(0, 8), progress=False)


def test_all_finite_and_devices():
    assert all_finite(torch.ones(3), torch.tensor(2.0)).item()
    assert not all_finite(torch.tensor([1.0, float("inf")])).item()
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises((ValueError, RuntimeError)):
        resolve_device("tpu")


def test_adamw_is_fused_on_cpu_and_steps_like_the_default():
    torch.manual_seed(0)
    shapes = [(5, 3), (3,), (2, 2, 2)]
    fused = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    plain = [torch.nn.Parameter(p.detach().clone()) for p in fused]
    opt_f = adamw(fused, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05)
    opt_p = torch.optim.AdamW(plain, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05)
    assert opt_f.defaults["fused"] is True and not opt_p.defaults["fused"]
    for _ in range(5):
        for a, b in zip(fused, plain):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt_f.step()
        opt_p.step()
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, torch.zeros_like(a))
    # optimizer states load across the two implementations (checkpoints of either kind resume)
    opt_p.load_state_dict(opt_f.state_dict())


def test_adamw_falls_back_where_torch_has_no_fused_kernel():
    meta = [torch.nn.Parameter(torch.empty(3, device="meta"))]
    assert not adamw(meta, lr=1e-3).defaults["fused"]
    complex_params = [torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))]
    assert not adamw(complex_params, lr=1e-3).defaults["fused"]
