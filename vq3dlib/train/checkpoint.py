"""Training checkpoints in one safetensors file, written atomically, for bit-exact resume.

A checkpoint holds any number of named objects with a ``state_dict()`` (models, :class:`ModelEMA`,
optimizers, LR schedulers, ``GradScaler``...) or plain nested state (dicts/lists/tuples of tensors,
numbers, strings, ``None``), plus the step, a config and the RNG states (torch CPU and CUDA, numpy,
Python ``random``). Tensors are stored as safetensors tensors named ``"<object>/<key path>"`` (so
``safetensors`` tools can read model weights directly); the nesting and all non-tensor values are
one JSON string in the safetensors header metadata (key ``"vq3dlib"``).

The file is written to a temporary file in the same directory, fsynced, then renamed over the
target with ``os.replace``: a crash or kill during a save leaves the previous checkpoint intact (the
killed save's ``.step_*.safetensors.*.tmp`` file is removed by the next :func:`prune_checkpoints`,
which every ``save_checkpoint(..., keep_last=n)`` runs).

Example:
    >>> import tempfile, torch
    >>> from vq3dlib.train.checkpoint import save_checkpoint, load_checkpoint, checkpoint_path
    >>> model = torch.nn.Linear(2, 2); opt = torch.optim.Adam(model.parameters())
    >>> d = tempfile.mkdtemp()
    >>> path = save_checkpoint(checkpoint_path(d, 10), {"model": model, "optimizer": opt}, step=10)
    >>> ckpt = load_checkpoint(d, {"model": model, "optimizer": opt})    # a directory: its latest
    >>> ckpt.step
    10
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

FORMAT = "vq3dlib.checkpoint"
VERSION = 1
_META_KEY = "vq3dlib"
_NAME_RE = re.compile(r"^step_(\d+)\.safetensors$")
_TMP_RE = re.compile(r"^\.step_\d+\.safetensors\..+\.tmp$")  # _atomic_write's temp files


# ------------------------------------------------------------------------------------ RNG


def get_rng_state() -> dict[str, Any]:
    """The RNG states of this process: torch CPU, CUDA (if initialised), numpy and Python ``random``.

    In a multi-process run every rank has its own state; save one per rank if ranks draw different
    random numbers, or reseed per rank on resume.

    Example:
        >>> import torch
        >>> s = get_rng_state(); a = torch.rand(2)
        >>> set_rng_state(s); torch.equal(a, torch.rand(2))
        True
    """
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restores RNG states from :func:`get_rng_state` (entries that are absent are left alone).

    Example:
        >>> import random
        >>> s = get_rng_state(); x = random.random()
        >>> set_rng_state(s); random.random() == x
        True
    """
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda) != n:
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(cuda)} devices, this process sees {n}; "
                f"restoring the first {min(n, len(cuda))}",
                stacklevel=2,
            )
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), i)
    if state.get("numpy") is not None:
        np.random.set_state(tuple(state["numpy"]))
    if state.get("random") is not None:
        version, internal, gauss = state["random"]
        random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------ (de)serialisation


def _child(key: str, sub: Any) -> str:
    return f"{key}{sub}" if key.endswith("/") else f"{key}.{sub}"


class _Encoder:
    """Splits a nested state into a JSON tree and a flat ``{name: tensor}`` dict."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self._storages: set[tuple[str, int]] = set()

    def _add_tensor(self, key: str, t: Tensor) -> str:
        if t.layout != torch.strided or t.is_quantized:
            raise TypeError(f"{key}: only dense tensors can be saved, got layout {t.layout}")
        t = t.detach().cpu()
        storage = t.untyped_storage()
        sid = (str(storage.device), storage.data_ptr())
        whole = storage.nbytes() == t.numel() * t.element_size() and t.is_contiguous()
        if sid in self._storages or not whole or t.storage_offset() != 0:
            t = t.clone(memory_format=torch.contiguous_format)  # safetensors refuses shared/partial storage
        self._storages.add((str(t.untyped_storage().device), t.untyped_storage().data_ptr()))
        name, i = key, 1
        while name in self.tensors:
            name, i = f"{key}#{i}", i + 1
        self.tensors[name] = t
        return name

    def encode(self, value: Any, key: str) -> Any:
        if isinstance(value, Tensor):
            return {"__t__": self._add_tensor(key, value)}
        if isinstance(value, np.ndarray):
            arr = value.astype(np.int64) if value.dtype.kind == "u" else value
            t = torch.from_numpy(np.ascontiguousarray(arr))
            return {"__np__": self._add_tensor(key, t), "dtype": str(value.dtype)}
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, torch.dtype):
            return {"__dtype__": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"__device__": str(value)}
        if isinstance(value, Mapping):
            items = [(k, self.encode(v, _child(key, k))) for k, v in value.items()]
            if all(isinstance(k, str) for k, _ in items):
                return {"__d__": dict(items)}
            for k, _ in items:
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise TypeError(
                        f"{key}: dict keys must be str/int/float/bool/None, got {type(k).__name__}"
                    )
            return {"__dk__": [[k, v] for k, v in items]}
        if isinstance(value, tuple):  # torch.Size included
            return {"__tuple__": [self.encode(v, _child(key, i)) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, _child(key, i)) for i, v in enumerate(value)]
        raise TypeError(
            f"{key}: cannot store a {type(value).__name__} in a checkpoint (tensors, numpy arrays, "
            f"numbers, strings, None and dicts/lists/tuples of them are supported)"
        )


def _decode(node: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "__t__" in node:
        return tensors[node["__t__"]]
    if "__np__" in node:
        return tensors[node["__np__"]].numpy().astype(node["dtype"])
    if "__dtype__" in node:
        return getattr(torch, node["__dtype__"])
    if "__device__" in node:
        return torch.device(node["__device__"])
    if "__d__" in node:
        return {k: _decode(v, tensors) for k, v in node["__d__"].items()}
    if "__dk__" in node:
        return {k: _decode(v, tensors) for k, v in node["__dk__"]}
    if "__tuple__" in node:
        return tuple(_decode(v, tensors) for v in node["__tuple__"])
    raise ValueError(f"corrupt checkpoint metadata node: {sorted(node)}")


def _state_of(name: str, obj: Any) -> Any:
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    if isinstance(obj, (Mapping, list, tuple, Tensor)):
        return obj
    raise TypeError(f"objects[{name!r}] must have a state_dict() method or be a dict/list/tuple/tensor")


def _config_state(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return config


# ---------------------------------------------------------------------------------- files


def _write_safetensors(tensors: dict[str, Tensor], path: str, metadata: dict[str, str]) -> None:
    """Writes the safetensors file (a separate function so tests can simulate a crash mid-write)."""
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=metadata)


#: metadata key of the sha256 over every tensor's name, dtype, shape and bytes (see tensors_sha256)
SHA256_KEY = "vq3d_sha256"


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """sha256 (hex) over the tensors' names, dtypes, shapes and bytes, in name order.

    Stored in the metadata of every file vq3dlib writes and verified on load, so a file whose bytes
    changed (a flipped bit, a partial copy) is refused instead of loading garbage.

    Example:
        >>> import torch
        >>> a = tensors_sha256({"w": torch.ones(2)})
        >>> a == tensors_sha256({"w": torch.ones(2)}), a == tensors_sha256({"w": torch.zeros(2)})
        (True, False)
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def verify_sha256(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> None:
    """Raises ``ValueError`` naming ``path`` when its stored checksum does not match its tensors.

    Files without a checksum (written before it existed) pass.

    Example:
        >>> import torch
        >>> t = {"w": torch.ones(2)}
        >>> verify_sha256("m.safetensors", t, {SHA256_KEY: tensors_sha256(t)})
    """
    want = metadata.get(SHA256_KEY)
    if want is not None and want != tensors_sha256(tensors):
        raise ValueError(
            f"{path} is corrupt: its tensors do not match the sha256 checksum stored in it "
            "(the file changed after it was written); use an intact copy or an earlier checkpoint"
        )


def check_finite_state(tensors: Mapping[str, Tensor], what: str) -> None:
    """Raises ``ValueError`` when a floating tensor holds NaN/Inf, so no file keeps diverged weights.

    Example:
        >>> import torch
        >>> try:
        ...     check_finite_state({"w": torch.tensor([1.0, float("inf")])}, "model")
        ... except ValueError as e:
        ...     print(e)
        refusing to save model: 1 non-finite values (NaN/Inf), first in 'w'; training diverged?
    """
    bad_total, first = 0, None
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                bad_total += bad
                first = first or name
    if bad_total:
        raise ValueError(
            f"refusing to save {what}: {bad_total} non-finite values (NaN/Inf), first in {first!r}; "
            "training diverged?"
        )


def read_safetensors(
    path: str | os.PathLike, device: str = "cpu"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, checksum verified; ``ValueError`` if unreadable.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> p = save_checkpoint(Path(tempfile.mkdtemp()) / "a.safetensors", {"w": {"x": torch.ones(2)}})
        >>> sorted(read_safetensors(p)[1])[:2]
        ['format', 'step']
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path), device=device)
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{path} cannot be read as safetensors (truncated or not one): {exc}") from None
    except Exception as exc:  # safetensors' SafetensorError derives from Exception only
        if type(exc).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{path} cannot be read as safetensors (truncated or not one): {exc}") from None
    verify_sha256(path, tensors, metadata)
    return tensors, metadata


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _write_safetensors(tensors, tmp, metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """The conventional file name for the checkpoint of ``step``: ``directory/step_000000123.safetensors``.

    Example:
        >>> checkpoint_path("runs/a", 123).name
        'step_000000123.safetensors'
    """
    if int(step) != step or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step}")
    return Path(directory) / f"step_{int(step):09d}.safetensors"


def _list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The ``step_*.safetensors`` file with the highest step in ``directory`` (``None`` if there is none).

    Example:
        >>> import tempfile
        >>> latest_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    found = _list_checkpoints(directory)
    return found[-1][1] if found else None


def latest_intact_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest ``step_*.safetensors`` in ``directory`` that reads back whole (checksum included).

    A newer file that is truncated or corrupt (a crash, a full disk, a partial copy) is skipped with a
    warning naming it; ``None`` when no checkpoint is intact.

    Example:
        >>> import tempfile
        >>> latest_intact_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    for _, p in reversed(_list_checkpoints(directory)):
        try:
            _, metadata = read_safetensors(p)
        except ValueError as exc:
            warnings.warn(f"skipping checkpoint {p}: {exc}", stacklevel=2)
            continue
        if _META_KEY in metadata:
            return p
        warnings.warn(f"skipping {p}: not a vq3dlib checkpoint (no '{_META_KEY}' metadata)", stacklevel=2)
    return None


def prune_checkpoints(directory: str | os.PathLike, keep_last: int) -> list[Path]:
    """Deletes all but the ``keep_last`` newest ``step_*.safetensors`` files, and the temporary files
    (``.step_*.safetensors.*.tmp``) that saves killed mid-write left behind; returns the deleted paths.

    Only one process may save checkpoints into ``directory`` (under DDP: rank 0), since another
    process's temporary file would count as a leftover.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / ".step_000000007.safetensors.x1y2.tmp").write_bytes(b"half a checkpoint")
        >>> [p.name for p in prune_checkpoints(d, keep_last=3)]
        ['.step_000000007.safetensors.x1y2.tmp']
    """
    if int(keep_last) != keep_last or keep_last < 1:
        raise ValueError(f"keep_last must be a positive integer, got {keep_last}")
    found = _list_checkpoints(directory)
    doomed = [p for _, p in found[: max(len(found) - int(keep_last), 0)]]
    d = Path(directory)
    if d.is_dir():
        doomed += sorted(p for p in d.iterdir() if _TMP_RE.match(p.name) and p.is_file())
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return doomed


# ------------------------------------------------------------------------------ public API


@dataclasses.dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read.

    Attributes:
        path: the file.
        step: the training step saved with it.
        config: the saved config (a dict; dataclasses are saved as ``dataclasses.asdict``).
        states: ``{name: state}`` of every saved object (state dicts with tensors on ``map_location``).
        rng: the saved RNG states (see :func:`get_rng_state`) or ``None``.
        extra: the saved ``extra`` dict.
    """

    path: Path
    step: int
    config: Any
    states: dict[str, Any]
    rng: dict[str, Any] | None
    extra: dict[str, Any]


def save_checkpoint(
    path: str | os.PathLike,
    objects: Mapping[str, Any] | None = None,
    *,
    step: int = 0,
    config: Any = None,
    extra: Mapping[str, Any] | None = None,
    rng: bool = True,
    keep_last: int | None = None,
) -> Path:
    """Saves training state to one safetensors file, atomically.

    Args:
        path: destination file (parent directories are created); see :func:`checkpoint_path`.
        objects: ``{name: obj}``; each ``obj`` has ``state_dict()`` (``nn.Module``, :class:`ModelEMA`,
            optimizer, LR scheduler, ``GradScaler``...) or is plain nested state (dicts, lists,
            tuples of tensors, numpy arrays, numbers, strings, ``None``). Tensors are moved to CPU.
        step: training step.
        config: a JSON-like dict or a dataclass instance (stored as ``dataclasses.asdict``).
        extra: more JSON-like/tensor state (e.g. counters of skipped steps).
        rng: store this process's RNG states (:func:`get_rng_state`).
        keep_last: afterwards, delete all but this many newest ``step_*.safetensors`` files in the
            directory of ``path`` (:func:`prune_checkpoints`).

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> p = save_checkpoint(Path(tempfile.mkdtemp()) / "a.safetensors", {"w": {"x": torch.ones(2)}})
        >>> load_checkpoint(p).states["w"]["x"]
        tensor([1., 1.])
    """
    if int(step) != step or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step}")
    objects = dict(objects or {})
    for name in objects:
        if not isinstance(name, str) or not name:
            raise TypeError(f"objects keys must be non-empty strings, got {name!r}")
    enc = _Encoder()
    tree = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "objects": {name: enc.encode(_state_of(name, obj), name + "/") for name, obj in objects.items()},
        "config": enc.encode(_config_state(config), "__config__/"),
        "extra": enc.encode(dict(extra or {}), "__extra__/"),
        "rng": enc.encode(get_rng_state(), "__rng__/") if rng else None,
    }
    check_finite_state(enc.tensors, f"checkpoint of step {int(step)}")
    metadata = {
        "format": FORMAT,
        "step": str(int(step)),
        _META_KEY: json.dumps(tree),
        SHA256_KEY: tensors_sha256(enc.tensors),
    }
    path = Path(path)
    _atomic_write(enc.tensors, path, metadata)
    if keep_last is not None:
        prune_checkpoints(path.parent, keep_last)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    objects: Mapping[str, Any] | None = None,
    *,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    restore_rng: bool = True,
) -> Checkpoint:
    """Loads a checkpoint written by :func:`save_checkpoint` and restores state into ``objects``.

    Args:
        path: a checkpoint file, or a directory (its :func:`latest_checkpoint` is loaded).
        objects: ``{name: obj}`` to restore with ``obj.load_state_dict(state)`` (modules with
            ``strict=strict``); build them (and the scheduler on top of the optimizer) before loading.
        map_location: device the tensors are loaded to.
        strict: a name in ``objects`` missing from the file raises ``KeyError``; modules load strictly.
        restore_rng: restore the saved RNG states (:func:`set_rng_state`).

    Returns:
        A :class:`Checkpoint` (``step``, ``config``, ``states`` of all saved objects, ...).

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> net = torch.nn.Linear(3, 1)
        >>> p = Path(tempfile.mkdtemp()) / "c.safetensors"
        >>> _ = save_checkpoint(p, {"net": net}, step=5, config={"lr": 1e-3})
        >>> fresh = torch.nn.Linear(3, 1)
        >>> ckpt = load_checkpoint(p, {"net": fresh})
        >>> ckpt.step, ckpt.config, torch.equal(fresh.weight, net.weight)
        (5, {'lr': 0.001}, True)
    """
    p = Path(path)
    if p.is_dir():
        latest = latest_intact_checkpoint(p)
        if latest is None:
            raise FileNotFoundError(f"no step_*.safetensors checkpoint in directory {p} reads back intact")
        p = latest
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    tensors, metadata = read_safetensors(p, device=str(torch.device(map_location)))
    if _META_KEY not in metadata:
        raise ValueError(
            f"{p} is a safetensors file but not a vq3dlib checkpoint (no '{_META_KEY}' metadata)"
        )
    tree = json.loads(metadata[_META_KEY])
    if tree.get("version", 0) > VERSION:
        raise ValueError(
            f"{p} has checkpoint format version {tree['version']}; this vq3dlib reads <= {VERSION}"
        )
    states = {name: _decode(node, tensors) for name, node in tree["objects"].items()}
    ckpt = Checkpoint(
        path=p,
        step=int(tree["step"]),
        config=_decode(tree["config"], tensors),
        states=states,
        rng=_decode(tree["rng"], tensors) if tree.get("rng") is not None else None,
        extra=_decode(tree["extra"], tensors),
    )
    for name, obj in (objects or {}).items():
        if name not in states:
            if strict:
                raise KeyError(f"{p} has no object {name!r}; it holds {sorted(states)}")
            continue
        if isinstance(obj, nn.Module):
            obj.load_state_dict(states[name], strict=strict)
        elif hasattr(obj, "load_state_dict"):
            obj.load_state_dict(states[name])
        else:
            raise TypeError(f"objects[{name!r}] has no load_state_dict(); read ckpt.states[{name!r}] instead")
    if restore_rng and ckpt.rng is not None:
        set_rng_state(ckpt.rng)
    return ckpt
