"""Pieces shared by the stage-1 and stage-2 training loops.

* :func:`apply_overrides` — ``key=value`` strings (command line ``--set``) into a config dataclass.
* :func:`step_indices` — the dataset indices of one step, a pure function of ``(seed, step, rank)``,
  so that resuming from a checkpoint replays exactly the same data order without a sampler state.
* :func:`warmup_cosine` — the learning-rate multiplier used with ``torch.optim.lr_scheduler.LambdaLR``.
* :func:`autocast` — the ``torch.autocast`` context for ``amp in {"none", "bf16", "fp16"}``.
* :class:`MemoryDataset` — materialises a (small) dataset once, e.g. procedural scenes rendered on the fly.
* :func:`resolve_device` — ``"auto"``/``"cpu"``/``"cuda"`` to a ``torch.device``.
* :func:`clip_gradients`, :func:`all_finite` — the gradient clipping and NaN/Inf test of a step.
* :func:`adamw` — AdamW, fused into one kernel per step where torch has it for the parameters.

:mod:`vq3dlib.train.run` assembles these into the run scaffold of both stages.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     steps: int = 10
    ...     lr: float = 1e-3
    >>> apply_overrides(C(), ["steps=20", "lr=5e-4"])
    C(steps=20, lr=0.0005)
    >>> step_indices(0, dataset_size=10, batch_size=4, seed=0).tolist() == step_indices(0, 10, 4, 0).tolist()
    True
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from vq3dlib._validation import check_choice, check_positive

AMP_MODES = ("none", "bf16", "fp16")


# ------------------------------------------------------------------------------- overrides


def parse_value(text: str, like: Any = None) -> Any:
    """Parses a command-line value, typed like the default ``like`` when it is given.

    Booleans accept ``true/false/1/0/yes/no``; ints, floats and strings convert directly; anything else
    (tuples, lists, ``None``) goes through ``ast.literal_eval`` with a fallback to the plain string.

    Example:
        >>> parse_value("3", 1), parse_value("true", False), parse_value("(8, 5)", (1,)), parse_value("x")
        (3, True, (8, 5), 'x')
    """
    if isinstance(like, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            value = float(text)  # accept "1e3"
            if value != int(value):
                raise ValueError(f"expected an integer, got {text!r}") from None
            return int(value)
    if isinstance(like, float):
        return float(text)
    if isinstance(like, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    if isinstance(like, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"overrides must look like key=value, got {item!r}")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {item!r} has an empty key")
    return key, value.strip()


def apply_overrides(config: Any, overrides: Iterable[str] | Mapping[str, Any]) -> Any:
    """A copy of the dataclass ``config`` with ``key=value`` overrides applied.

    Keys are field names. A field holding a dict (e.g. ``model_overrides``) takes dotted keys:
    ``model.image_size=16`` sets ``model_overrides["image_size"]`` when the config has a
    ``model_overrides`` field (``model.`` is an alias of ``model_overrides.``). Unknown keys raise
    ``ValueError`` listing the known ones. Values given as a mapping are used as they are.

    Example:
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class C:
        ...     amp: str = "none"
        ...     model_overrides: dict = field(default_factory=dict)
        >>> apply_overrides(C(), ["amp=bf16", "model.image_size=16"])
        C(amp='bf16', model_overrides={'image_size': 16})
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config must be a dataclass instance, got {type(config).__name__}")
    items = list(overrides.items()) if isinstance(overrides, Mapping) else [_split(s) for s in overrides]
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for key, raw in items:
        parsed_from_text = isinstance(raw, str) and not isinstance(overrides, Mapping)
        if "." in key:
            head, sub = key.split(".", 1)
            if head == "model" and "model_overrides" in fields:
                head = "model_overrides"
            if head not in fields or not isinstance(getattr(config, head), dict):
                raise ValueError(
                    f"unknown config key {key!r}: {head!r} is not a dict field of {type(config).__name__}"
                )
            target = dict(changes.get(head, getattr(config, head)))
            try:
                target[sub] = _parse_model_value(sub, raw) if parsed_from_text else raw
            except ValueError as exc:
                raise ValueError(f"bad value for {key!r}: {exc}") from None
            changes[head] = target
            continue
        if key not in fields:
            raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(sorted(fields))}")
        current = getattr(config, key)
        try:
            changes[key] = parse_value(raw, current) if parsed_from_text else raw
        except ValueError as exc:
            raise ValueError(f"bad value for {key!r}: {exc}") from None
    return dataclasses.replace(config, **changes)


def _parse_model_value(name: str, text: str) -> Any:
    from vq3dlib.models.configs import VQ3DConfig

    defaults = {f.name: f.default for f in dataclasses.fields(VQ3DConfig)}
    if name not in defaults:
        raise ValueError(f"unknown model config field {name!r}; see vq3dlib.models.VQ3DConfig")
    return parse_value(text, defaults[name])


# ------------------------------------------------------------------------------- data order


def step_indices(
    step: int, dataset_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> Tensor:
    """Dataset indices ``[batch_size]`` that process ``rank`` trains on at ``step``.

    The global batch of a step is ``world_size * batch_size`` consecutive entries of an endless
    stream made of per-epoch random permutations (epoch ``e`` is shuffled with seed ``(seed, e)``);
    rank ``r`` takes the ``r``-th slice. The result depends only on the arguments, so a resumed run
    sees exactly the data of an uninterrupted one.

    Example:
        >>> a = step_indices(3, dataset_size=10, batch_size=2, seed=0, rank=0, world_size=2)
        >>> b = step_indices(3, dataset_size=10, batch_size=2, seed=0, rank=1, world_size=2)
        >>> len(set(a.tolist()) | set(b.tolist()))
        4
    """
    check_positive("dataset_size", dataset_size)
    check_positive("batch_size", batch_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    start = (step * world_size + rank) * batch_size
    out = []
    cache: dict[int, Tensor] = {}
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, dataset_size)
        if epoch not in cache:
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
            cache[epoch] = torch.randperm(dataset_size, generator=gen)
        out.append(cache[epoch][offset])
    return torch.stack(out)


class MemoryDataset(Dataset):
    """Materialises every item of ``dataset`` once (with an optional progress bar) and serves copies;
    ``.dataset`` is the source.

    Items are dicts; tensor entries are stacked per key, other entries (e.g. paths) kept in lists.

    Example:
        >>> from vq3dlib.data import ProceduralScenes
        >>> ds = MemoryDataset(ProceduralScenes(size=3, resolution=8), progress=False)
        >>> len(ds), ds[1]["image"].shape
        (3, torch.Size([3, 8, 8]))
    """

    def __init__(self, dataset: Dataset, progress: bool = True, desc: str = "loading data") -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("dataset is empty")
        items = []
        it = range(n)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=desc, unit="item", leave=False)
        for i in it:
            items.append(dataset[i])
        self.columns: dict[str, Any] = {}
        for key in items[0]:
            values = [item[key] for item in items]
            self.columns[key] = torch.stack(values) if isinstance(values[0], Tensor) else values
        self.size = n
        self.dataset = dataset  # the source (what it can do beyond its items, e.g. ``true_depth``)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        return {k: v[index] for k, v in self.columns.items()}

    def batch(self, indices: Tensor | Sequence[int]) -> dict[str, Any]:
        """The collated batch of ``indices`` (faster than collating items one by one)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {
            k: v[idx] if isinstance(v, Tensor) else [v[int(i)] for i in idx] for k, v in self.columns.items()
        }


def get_batch(dataset: Dataset, indices: Tensor) -> dict[str, Any]:
    """Collated batch of ``dataset[i]`` for ``i`` in ``indices`` (uses :meth:`MemoryDataset.batch`).

    Example:
        >>> from vq3dlib.data import ProceduralScenes
        >>> get_batch(ProceduralScenes(size=4, resolution=8), torch.tensor([0, 2]))["image"].shape
        torch.Size([2, 3, 8, 8])
    """
    if isinstance(dataset, MemoryDataset):
        return dataset.batch(indices)
    return default_collate([dataset[int(i)] for i in indices])


# ------------------------------------------------------------------------------- optimisation


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> Callable[[int], float]:
    """LR multiplier: linear warmup over ``warmup_steps``, then cosine decay to ``min_ratio``.

    The decay reaches ``min_ratio`` at ``total_steps`` and stays there.

    Example:
        >>> f = warmup_cosine(10, 100, min_ratio=0.0)
        >>> f(0), f(9), round(f(100), 6)
        (0.1, 1.0, 0.0)
    """
    check_positive("total_steps", total_steps)
    check_positive("warmup_steps", warmup_steps, allow_zero=True)
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        t = min(max(step - warmup_steps, 0) / span, 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp="bf16"``/``"fp16"`` on ``device``; a null context for ``"none"``.

    Example:
        >>> with autocast(torch.device("cpu"), "bf16"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    check_choice("amp", amp, AMP_MODES)
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and amp == "fp16":
        raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a ``torch.device``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


def adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with ``fused=True`` when every parameter is a float tensor on one CPU or
    CUDA device (else torch's default implementation).

    On CPU torch's default is a loop over the parameter tensors: for the ``tiny`` VQ3D model (62
    tensors, 0.57M values) a step takes 3.4-5 ms on two threads against 0.6-0.9 ms fused
    (docs/training.md, "The training step"). Fused and default steps agree to rounding.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)
        >>> opt = adamw([p], lr=0.1, weight_decay=0.0); opt.step()
        >>> opt.defaults["fused"], [round(v, 4) for v in p.tolist()]
        (True, [0.9, 0.9, 0.9])
    """
    params = list(params)
    devices = {p.device for p in params}
    fused = (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) for p in params)
    )
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float) -> Tensor:
    """Clips the gradients of ``params`` to the total norm ``max_norm`` (0: no clipping); returns the norm.

    Parameters without a gradient are left out (a zero norm when none has one). The norm is what the
    NaN/Inf test of a step looks at, so it is computed even without clipping.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> float(clip_gradients([p], 1.0)), round(float(p.grad.norm()), 4)
        (5.0, 1.0)
    """
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return torch.zeros(())
    return torch.nn.utils.clip_grad_norm_(with_grad, max_norm if max_norm > 0 else math.inf)


def all_finite(*values: Tensor) -> Tensor:
    """A bool scalar tensor: whether every value is finite, agreed across processes (min over ranks).

    Example:
        >>> all_finite(torch.tensor(1.0), torch.tensor(float("nan"))).item()
        False
    """
    ok = torch.stack([torch.isfinite(v.detach().float()).all() for v in values]).all()
    from vq3dlib.train.distributed import is_distributed

    if is_distributed():
        import torch.distributed as dist

        flag = ok.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = flag.bool()
    return ok


__all__ = [
    "AMP_MODES",
    "MemoryDataset",
    "adamw",
    "all_finite",
    "apply_overrides",
    "autocast",
    "clip_gradients",
    "get_batch",
    "parse_value",
    "resolve_device",
    "step_indices",
    "warmup_cosine",
]
