"""Stage-1 training of :class:`~vq3dlib.models.VQ3DModel`: autoencoder + two discriminators.

One loop runs as a single process or under ``torchrun`` (DDP: gloo on CPU, NCCL on GPU). Per step:

1. the generator forward (``model(images, depth, step)``: reconstruction, novel views, every loss
   term; the adversarial terms start at ``config.adversarial_start_step``, the model handles that),
   backward, gradient clipping, and an optimizer step — unless the loss or the gradient norm is
   NaN/Inf on any process: then the gradients are zeroed, the model's buffers (e.g. the quantizer's
   EMA codebook statistics, updated during the forward) are restored, and the step is counted in
   ``skipped_steps`` instead of being written into the weights;
2. once the adversarial terms are on, a discriminator step (``model.discriminator_loss``, its own
   optimizer; canonical-view and novel-view discriminators), skipped the same way but counted in
   ``skipped_disc_steps``;
3. optional EMA of the weights (:class:`~vq3dlib.train.ModelEMA`), logging, checkpoints.

Depth for the pointwise depth loss comes from the data: procedural scenes have exact depth; an image
folder has depth maps next to its images or gets them from a user callable
(``train_stage1(cfg, depth_fn=...)``); any other data can be passed as ``datasets=(train, held_out)``.
``config.depth`` says whether depth is optional (``"auto"``: a warning when there is none),
``"required"`` (an error naming the images without depth) or unused (``"none"``).

Data order is a pure function of ``(seed, step, rank)`` (:func:`~vq3dlib.train.loop.step_indices`)
and checkpoints hold the model, EMA, optimizers, LR schedulers, grad scaler and RNG states, so
``resume=True`` continues bit-exactly on CPU (an uninterrupted run of N steps equals N/2 steps, a
resume, and N/2 more). Under DDP the discriminators are kept out of DDP's gradient reducer (their
gradients are averaged explicitly in the discriminator step) and the quantizer synchronises its own
EMA statistics across processes.

Example (``train_stage1(cfg)`` runs it; ``vq3d train --set steps=100`` from a shell):
    >>> from vq3dlib.train.loop import apply_overrides
    >>> cfg = apply_overrides(Stage1Config(), ["steps=100", "amp=bf16", "model.image_size=16"])
    >>> cfg.steps, cfg.amp, cfg.model_config().image_size
    (100, 'bf16', 16)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vq3dlib._validation import check_choice, check_positive
from vq3dlib.data.folder import DEPTH_MODES
from vq3dlib.train.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from vq3dlib.train.distributed import (
    cleanup,
    init_distributed,
    is_distributed,
    seed_everything,
)
from vq3dlib.train.ema import ModelEMA, unwrap_model
from vq3dlib.train.logger import TrainLogger
from vq3dlib.train.loop import (
    AMP_MODES,
    MemoryDataset,
    all_finite,
    autocast,
    get_batch,
    resolve_device,
    step_indices,
    warmup_cosine,
)

MODEL_FILE = "model.safetensors"


@dataclass
class Stage1Config:
    """Everything a stage-1 run needs; every field can be set from the command line (``--set k=v``).

    Attributes:
        model: registered model config name (``"tiny"``, ``"imagenet256"``, see
            :func:`vq3dlib.models.get_config`).
        model_overrides: fields of :class:`~vq3dlib.models.VQ3DConfig` to change
            (``--set model.image_size=16``).
        data: ``"procedural"`` (:class:`~vq3dlib.data.ProceduralScenes`) or a folder of images
            (:class:`~vq3dlib.data.ImageFolderDataset`; depth maps next to the images, or computed by
            ``train_stage1(..., depth_fn=...)``, are the disparity targets of the depth loss).
            Ignored when ``train_stage1`` gets ``datasets``.
        train_size, eval_size: procedural scenes for training / held-out evaluation. A folder holds
            ``eval_size`` of its images out of training for the evaluation (a random choice fixed by
            ``data_seed``; ``train_size`` does not apply).
        data_seed: seed of the procedural training scenes (held-out scenes use ``data_seed + 1``) and
            of a folder's held-out choice.
        cache_data: render/load the whole training set into memory once (fast steps afterwards).
        depth: depth targets for the pointwise depth loss: ``"auto"`` uses the data's depth when it has
            any and warns once when it has none (the depth loss is then off); ``"required"`` raises an
            error naming the images without depth; ``"none"`` trains without depth.
        steps: total optimizer steps; batch_size: images per step and process.
        lr, betas, weight_decay: AdamW for the generator; disc_lr, disc_betas: AdamW for the
            discriminators.
        warmup_steps, min_lr_ratio: linear warmup then cosine decay to ``min_lr_ratio * lr``.
        grad_clip: max gradient norm (0 disables clipping; the norm is still checked for NaN/Inf).
        amp: ``"none"``, ``"bf16"`` (CPU or GPU) or ``"fp16"`` (GPU, with a gradient scaler).
        ema_decay, ema_warmup: EMA of the weights when ``ema_decay > 0``; the exported model then holds
            the EMA weights.
        log_every, image_every, eval_every, ckpt_every: intervals in steps (0 disables; a checkpoint,
            images and an evaluation are also written at the end).
        keep_last: checkpoints kept in ``out_dir/checkpoints``.
        out_dir: output folder: ``checkpoints/``, ``logs/`` (JSONL scalars, PNG images, TensorBoard if
            installed), ``model.safetensors`` (final weights, :meth:`VQ3DModel.load`), ``metrics.json``.
        seed: seed of the model initialisation and of the data order.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        time_budget_s: stop (with a checkpoint) after this many seconds of training (0: no limit); the
            run then ends before ``steps``.
        stop_at_step: end this invocation (with a checkpoint) once this step is reached, keeping the
            schedule of ``steps`` (0: run to ``steps``); for jobs split into several runs with ``resume``.
        resume: continue from the latest checkpoint in ``out_dir/checkpoints`` (if any).
        progress: show a progress bar.
    """

    model: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: str = "procedural"
    train_size: int = 1024
    eval_size: int = 16
    data_seed: int = 0
    cache_data: bool = True
    depth: str = "auto"
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    disc_lr: float = 2e-4
    disc_betas: tuple[float, float] = (0.5, 0.9)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    amp: str = "none"
    ema_decay: float = 0.0
    ema_warmup: float = 100.0
    log_every: int = 10
    image_every: int = 500
    eval_every: int = 0
    ckpt_every: int = 500
    keep_last: int = 3
    out_dir: str = "runs/stage1"
    seed: int = 0
    device: str = "auto"
    time_budget_s: float = 0.0
    stop_at_step: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.disc_betas = tuple(float(b) for b in self.disc_betas)  # type: ignore[assignment]
        for name in ("steps", "batch_size", "lr", "disc_lr", "keep_last"):
            check_positive(name, getattr(self, name))
        for name in (
            "train_size",
            "eval_size",
            "warmup_steps",
            "grad_clip",
            "weight_decay",
            "ema_decay",
            "ema_warmup",
            "log_every",
            "image_every",
            "eval_every",
            "ckpt_every",
            "seed",
            "time_budget_s",
            "data_seed",
            "stop_at_step",
        ):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_choice("amp", self.amp, AMP_MODES)
        check_choice("depth", self.depth, DEPTH_MODES)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if len(self.betas) != 2 or len(self.disc_betas) != 2:
            raise ValueError(f"betas and disc_betas must be pairs, got {self.betas}, {self.disc_betas}")
        if not isinstance(self.model_overrides, dict):
            raise TypeError(f"model_overrides must be a dict, got {type(self.model_overrides).__name__}")

    def model_config(self):
        """The :class:`~vq3dlib.models.VQ3DConfig` of this run (validated).

        Example:
            >>> cfg = Stage1Config(model_overrides={"image_size": 16, "plane_resolution": 16})
            >>> cfg.model_config().num_tokens
            16
        """
        from vq3dlib.models.configs import get_config

        try:
            return get_config(self.model, **self.model_overrides)
        except TypeError as exc:  # dataclasses.replace with an unknown field
            raise ValueError(f"bad model_overrides {self.model_overrides}: {exc}") from None


# ------------------------------------------------------------------------------------ data


def build_datasets(
    cfg: Stage1Config,
    image_size: int,
    depth_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[Dataset, Dataset | None]:
    """``(train, held_out)`` datasets of a run (held-out is ``None`` when ``eval_size == 0``).

    Procedural data: ``train_size`` scenes (seed ``data_seed``) and ``eval_size`` other scenes (seed
    ``data_seed + 1``). An image folder: ``eval_size`` of its images, chosen at random with seed
    ``data_seed``, are held out; the others train. ``depth_fn`` (folder only) computes depth for images
    without a depth file (see :class:`~vq3dlib.data.ImageFolderDataset`); ``cfg.depth`` is the folder's
    depth mode, so ``"required"`` raises ``FileNotFoundError`` naming the images without depth.

    Example:
        >>> train, held = build_datasets(Stage1Config(train_size=3, eval_size=2, cache_data=False), 8)
        >>> len(train), len(held)
        (3, 2)
    """
    from vq3dlib.data import ImageFolderDataset, ProceduralScenes

    if cfg.data == "procedural":
        if depth_fn is not None:
            raise ValueError("depth_fn applies to image-folder data; procedural scenes have exact depth")
        if cfg.train_size == 0:
            raise ValueError("train_size must be > 0 for procedural data")
        train: Dataset = ProceduralScenes(cfg.train_size, image_size, n_novel_views=1, seed=cfg.data_seed)
        held = (
            ProceduralScenes(cfg.eval_size, image_size, n_novel_views=1, seed=cfg.data_seed + 1)
            if cfg.eval_size
            else None
        )
        return train, held
    root = Path(cfg.data)
    if not root.is_dir():
        raise FileNotFoundError(f"data must be 'procedural' or an existing image folder, got {cfg.data!r}")
    try:
        folder = ImageFolderDataset(root, image_size, depth=cfg.depth, depth_fn=depth_fn)
    except FileNotFoundError as exc:  # images without depth: say how to fix it from training
        raise FileNotFoundError(
            f"{exc} (When training: train_stage1(config, depth_fn=...), or --set depth=none.)"
        ) from None
    n = len(folder)
    if cfg.eval_size >= n:
        raise ValueError(
            f"the image folder {root} has {n} images; eval_size={cfg.eval_size} held-out images would leave "
            f"none for training: lower eval_size (--set eval_size=...; 0 disables the evaluation)"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.data_seed)).tolist()
    held_idx, train_idx = sorted(order[: cfg.eval_size]), sorted(order[cfg.eval_size :])
    train = torch.utils.data.Subset(folder, train_idx)
    return train, (torch.utils.data.Subset(folder, held_idx) if held_idx else None)


def dataset_has_depth(dataset: Dataset) -> bool:
    """Whether the items of ``dataset`` carry depth (a ``depth`` or ``disparity`` entry).

    Uses the dataset's ``has_depth`` attribute when it has one (also through ``Subset``), else looks
    at the first item.

    Example:
        >>> from vq3dlib.data import ProceduralScenes
        >>> dataset_has_depth(ProceduralScenes(1, 8)), dataset_has_depth([{"image": torch.zeros(3, 8, 8)}])
        (True, False)
    """
    base = dataset
    while isinstance(base, torch.utils.data.Subset):
        base = base.dataset
    flag = getattr(base, "has_depth", None)
    if isinstance(flag, bool):
        return flag
    if len(dataset) == 0:  # type: ignore[arg-type]
        return False
    item = dataset[0]
    return isinstance(item, dict) and ("depth" in item or "disparity" in item)


def _depth_in_use(mode: str, train: Dataset, source: str) -> bool:
    """Applies ``Stage1Config.depth`` to the training data: whether the loop feeds depth to the model."""
    if mode == "none":
        return False
    if dataset_has_depth(train):
        return True
    if mode == "required":
        raise ValueError(
            f"depth='required' but the training data ({source}) has no depth: its items have no 'depth' or "
            f"'disparity' entry. Give datasets whose items carry depth, or use depth='none'."
        )
    warnings.warn(
        f"the training data ({source}) has no depth, so the pointwise depth loss is off. Add depth maps "
        f"next to the images (x.npy or x.depth.png), pass train_stage1(..., depth_fn=...), or set "
        f"depth='none' (--set depth=none) to train without depth and silence this warning.",
        UserWarning,
        stacklevel=3,
    )
    return False


def depth_target(batch: dict[str, Any]) -> torch.Tensor | None:
    """The disparity target of a batch: ``batch["disparity"]`` or ``1 / batch["depth"]`` (``None`` without).

    Example:
        >>> depth_target({"depth": torch.full((1, 1, 2, 2), 4.0)}).flatten().tolist()
        [0.25, 0.25, 0.25, 0.25]
    """
    if "disparity" in batch:
        return batch["disparity"]
    if "depth" in batch:
        d = batch["depth"]
        return torch.where(d > 0, 1.0 / d.clamp_min(1e-6), torch.zeros_like(d))
    return None


# ------------------------------------------------------------------------------- model I/O


def stage1_model_file(path: str | os.PathLike) -> Path:
    """The file :func:`load_stage1_model` reads for ``path``: a folder's ``model.safetensors`` if present,
    else its latest checkpoint (``checkpoints/`` or the folder itself); a file as it is.

    Example:
        >>> import tempfile
        >>> from vq3dlib.train.checkpoint import checkpoint_path, save_checkpoint
        >>> run = tempfile.mkdtemp()
        >>> _ = save_checkpoint(checkpoint_path(f"{run}/checkpoints", 7), {}, step=7)
        >>> stage1_model_file(run).name
        'step_000000007.safetensors'
    """
    p = Path(path)
    if p.is_dir():
        if (p / MODEL_FILE).is_file():
            return p / MODEL_FILE
        latest = latest_checkpoint(p / "checkpoints") or latest_checkpoint(p)
        if latest is None:
            raise FileNotFoundError(f"{p} holds neither {MODEL_FILE} nor checkpoints")
        return latest
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    return p


def load_stage1_model(
    path: str | Path, map_location: str | torch.device = "cpu", ema: bool = True
) -> nn.Module:
    """A :class:`~vq3dlib.models.VQ3DModel` from a run folder, a checkpoint or a ``model.safetensors``.

    A folder: its ``model.safetensors`` if present, else its latest checkpoint (``checkpoints/``).
    A checkpoint: the EMA weights when it has them and ``ema`` is true, else the raw weights.

    Example:
        >>> import tempfile, os
        >>> from vq3dlib.models import VQ3DModel
        >>> d = tempfile.mkdtemp(); VQ3DModel.from_config("tiny", image_size=16, plane_resolution=16).save(
        ...     os.path.join(d, "model.safetensors"))
        >>> load_stage1_model(d).config.image_size
        16
    """
    from safetensors import safe_open

    from vq3dlib.models import VQ3DConfig, VQ3DModel

    p = stage1_model_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ValueError(f"{p} is not a safetensors file: {exc}") from None
    if "vq3d_config" in meta:
        return VQ3DModel.load(p, map_location=map_location)
    ckpt = load_checkpoint(p, restore_rng=False, map_location=map_location)
    model_cfg = ckpt.extra.get("model_config")
    if model_cfg is None or "model" not in ckpt.states:
        raise ValueError(f"{p} is not a stage-1 checkpoint (no model / model_config)")
    model = VQ3DModel(VQ3DConfig.from_dict(model_cfg))
    if ema and "ema" in ckpt.states:
        state = ModelEMA.averaged_state_dict(ckpt.states["ema"])
    else:
        state = ckpt.states["model"]
    model.load_state_dict(state)
    return model.to(map_location).eval()


# ------------------------------------------------------------------------------------ loop


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step", dynamic_ncols=True)


def _snapshot_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for b in module.buffers()]


@torch.no_grad()
def _restore_buffers(module: nn.Module, saved: list[torch.Tensor]) -> None:
    for b, s in zip(module.buffers(), saved):
        b.copy_(s)


def _average_grads(params: list[nn.Parameter]) -> None:
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def _clip(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return torch.zeros(())
    return torch.nn.utils.clip_grad_norm_(with_grad, max_norm if max_norm > 0 else math.inf)


@torch.no_grad()
def _preview(model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """Images for the logs: inputs, reconstructions, depth, a novel view (global RNG untouched)."""
    was = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            out = model(batch["image"].to(device), step=0)
    finally:
        model.train(was)
    views = {
        "input": batch["image"],
        "reconstruction": out["reconstruction"].clamp(0, 1),
        "depth": out["depth"],
        "opacity": out["opacity"],
    }
    if out.get("novel_rgb") is not None:
        views["novel_view"] = out["novel_rgb"].clamp(0, 1)
    return views


def train_stage1(
    config: Stage1Config,
    model: nn.Module | None = None,
    depth_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    datasets: tuple[Dataset, Dataset | None] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) a stage-1 training run; see the module docstring.

    Args:
        config: the run's :class:`Stage1Config`.
        model: optionally a prebuilt :class:`~vq3dlib.models.VQ3DModel` (default: built from
            ``config.model`` + ``config.model_overrides`` after seeding with ``config.seed``).
        depth_fn: for image-folder data: a callable ``image [3, H, W] in [0, 1] -> depth [H, W]`` (or
            ``[1, H, W]``) that computes depth for the images without a depth file, e.g. a monocular
            depth network loaded from local weights (:class:`~vq3dlib.data.ImageFolderDataset`).
        datasets: optionally ``(train, held_out)`` datasets to use instead of ``config.data``
            (``held_out`` may be ``None``); items are dicts with ``image [3, S, S]`` in ``[0, 1]``
            (``S = image_size`` of the model) and optionally ``depth [1, S, S]`` or ``disparity``.

    Returns:
        ``{"step", "skipped_steps" (generator steps skipped), "skipped_disc_steps" (discriminator
        steps skipped), "losses" (last step), "metrics" (final held-out evaluation, if any),
        "out_dir", "model_path", "train_seconds", "images_per_second", "model", "uses_depth"}`` (rank
        0; the other ranks get the same keys with ``metrics`` empty).

    Raises:
        FileNotFoundError: ``config.depth == "required"`` and images of a folder have no depth file
            (the message names them) or a missing data folder.
        ValueError: ``config.depth == "required"`` and ``datasets`` without depth; bad arguments.
    """
    from vq3dlib.models import VQ3DModel

    if not isinstance(config, Stage1Config):
        raise TypeError(f"config must be a Stage1Config, got {type(config).__name__}")
    if depth_fn is not None and not callable(depth_fn):
        raise TypeError(f"depth_fn must be callable or None, got {type(depth_fn).__name__}")
    if datasets is not None:
        if not isinstance(datasets, (tuple, list)) or len(datasets) != 2:
            raise TypeError("datasets must be a pair (train, held_out); held_out may be None")
        if depth_fn is not None:
            raise ValueError("give depth_fn for an image folder (config.data) or depth in datasets, not both")
        if len(datasets[0]) == 0:
            raise ValueError("datasets[0] (the training set) is empty")
    cfg = config
    device = resolve_device(cfg.device)
    dist_info = init_distributed(device="cuda" if device.type == "cuda" else "cpu")
    if dist_info.world_size > 1:
        device = dist_info.device
    rank, world, main = dist_info.rank, dist_info.world_size, dist_info.is_main
    model_cfg = cfg.model_config()
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / "checkpoints"

    seed_everything(cfg.seed, per_rank=False)  # identical initial weights on every rank
    if model is None:
        model = VQ3DModel(model_cfg)
    elif not isinstance(model, VQ3DModel):
        raise TypeError(f"model must be a VQ3DModel, got {type(model).__name__}")
    model_cfg = model.config
    model.to(device).train()
    gen_params = list(model.generator_parameters())
    disc_params = list(model.discriminator_parameters())
    opt_g = torch.optim.AdamW(gen_params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.AdamW(disc_params, lr=cfg.disc_lr, betas=cfg.disc_betas, weight_decay=0.0)
    lr_fn = warmup_cosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lr_fn)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lr_fn)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None

    if datasets is None:
        train_set, held_out = build_datasets(cfg, model_cfg.image_size, depth_fn=depth_fn)
        source = repr(cfg.data)
    else:
        train_set, held_out = datasets
        source = "datasets[0]"
        size = model_cfg.image_size
        first = train_set[0]
        image = first.get("image") if isinstance(first, dict) else None
        if not isinstance(image, torch.Tensor) or tuple(image.shape) != (3, size, size):
            got = list(image.shape) if isinstance(image, torch.Tensor) else type(first).__name__
            raise ValueError(f"datasets items must be dicts with 'image' [3, {size}, {size}], got {got}")
    use_depth = _depth_in_use(cfg.depth, train_set, source)
    if main:
        counts = model.param_counts()
        parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items() if v)
        total = sum(counts.values()) / 1e6
        print(f"VQ3D '{model_cfg.name}' parameters: {parts} (total {total:.2f}M)", flush=True)
    if cfg.cache_data:
        train_set = MemoryDataset(train_set, progress=cfg.progress and main, desc="rendering training data")
        if held_out is not None:
            held_out = MemoryDataset(held_out, progress=False)

    state_objects: dict[str, Any] = {
        "model": model,
        "opt_g": opt_g,
        "opt_d": opt_d,
        "sched_g": sched_g,
        "sched_d": sched_d,
        "scaler": scaler,
    }
    if ema is not None:
        state_objects["ema"] = ema
    start_step, skipped, skipped_disc = 0, 0, 0
    if cfg.resume:
        latest = latest_checkpoint(ckpt_dir)
        if latest is not None:
            ckpt = load_checkpoint(latest, state_objects, map_location=device)
            start_step, skipped = ckpt.step, int(ckpt.extra.get("skipped_steps", 0))
            skipped_disc = int(ckpt.extra.get("skipped_disc_steps", 0))
            if world > 1:  # RNG states are saved from rank 0; give each rank its own stream again
                seed_everything(cfg.seed + 7919 * start_step, per_rank=True)
    if start_step == 0:
        seed_everything(cfg.seed, per_rank=True)  # per-rank noise (novel cameras, ray jitter)

    ddp_model: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ignore = [f"loss.disc_canonical.{n}" for n, _ in model.loss.disc_canonical.named_parameters()]
        ignore += [f"loss.disc_novel.{n}" for n, _ in model.loss.disc_novel.named_parameters()]
        DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
        ddp_model = DDP(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
        )

    logger = TrainLogger(out_dir / "logs", enabled=main)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    preview_batch = get_batch(
        held_out if held_out is not None else train_set,
        torch.arange(min(8, len(held_out if held_out is not None else train_set))),
    )

    def save(step: int) -> None:
        if main:
            save_checkpoint(
                checkpoint_path(ckpt_dir, step),
                state_objects,
                step=step,
                config=cfg,
                extra={
                    "skipped_steps": skipped,
                    "skipped_disc_steps": skipped_disc,
                    "model_config": model_cfg.to_dict(),
                },
                keep_last=cfg.keep_last,
            )

    def evaluate(step: int) -> dict[str, Any]:
        from vq3dlib.train.evaluate import evaluate_stage1

        if not main or held_out is None:
            return {}
        net = ema.module if ema is not None else model
        metrics = evaluate_stage1(net, held_out, batch_size=cfg.batch_size, device=device)
        logger.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        return metrics

    adv_on = lambda s: model_cfg.adversarial_weight > 0 and s >= model_cfg.adversarial_start_step  # noqa: E731
    bar = _progress(cfg.steps, start_step, cfg.progress and main, "stage 1")
    t0 = time.perf_counter()
    images_seen = 0
    losses: dict[str, float] = {}
    step = start_step
    metrics: dict[str, Any] = {}
    try:
        while step < cfg.steps:
            if cfg.time_budget_s and time.perf_counter() - t0 > cfg.time_budget_s:
                break
            if cfg.stop_at_step and step >= cfg.stop_at_step:
                break
            idx = step_indices(step, len(train_set), cfg.batch_size, cfg.seed, rank, world)
            batch = get_batch(train_set, idx)
            images = batch["image"].to(device, non_blocking=True)
            depth = depth_target(batch) if use_depth else None
            depth = depth.to(device) if depth is not None else None

            # ---- generator
            saved = _snapshot_buffers(model)
            with autocast(device, cfg.amp):
                out = ddp_model(images, depth=depth, step=step)
            loss = out["loss"].float()
            opt_g.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt_g)
            gnorm = _clip(gen_params, cfg.grad_clip)
            ok = bool(all_finite(loss, gnorm))
            if ok:
                scaler.step(opt_g)
                if ema is not None:
                    ema.update(model)
            else:
                opt_g.zero_grad(set_to_none=True)
                _restore_buffers(model, saved)
                skipped += 1
                if scaler.is_enabled():
                    scaler.update()
            # ---- discriminators
            d_losses: dict[str, torch.Tensor] = {}
            if ok and adv_on(step):
                opt_d.zero_grad(set_to_none=True)
                with autocast(device, cfg.amp):
                    d_losses = model.discriminator_loss(images, out)
                d_loss = d_losses["loss"].float()
                scaler.scale(d_loss).backward()
                if is_distributed():
                    _average_grads(disc_params)
                scaler.unscale_(opt_d)
                d_norm = _clip(disc_params, cfg.grad_clip)
                if bool(all_finite(d_loss, d_norm)):
                    scaler.step(opt_d)
                else:
                    opt_d.zero_grad(set_to_none=True)
                    skipped_disc += 1
            if ok and scaler.is_enabled():
                scaler.update()
            opt_g.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # the discriminator optimizer idles until the adversarial start
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                sched_g.step()
                sched_d.step()
            step += 1
            images_seen += images.shape[0] * world

            # ---- logging, checkpoints
            losses = {f"loss/{k}": float(v.detach()) for k, v in out["losses"].items()}
            losses["loss/total"] = float(loss.detach())
            losses.update({f"disc/{k}": float(v.detach()) for k, v in d_losses.items()})
            elapsed = time.perf_counter() - t0
            ips = images_seen / max(elapsed, 1e-9)
            bar.update(1)
            bar.set_postfix(
                loss=f"{losses['loss/total']:.4f}", img_s=f"{ips:.1f}", skipped=skipped + skipped_disc
            )
            if cfg.log_every and step % cfg.log_every == 0:
                stats = {
                    f"quantizer/{k}": float(v.float().mean())
                    for k, v in out["quantizer_stats"].items()
                    if v.numel() >= 1
                }
                logger.scalars(
                    step,
                    {
                        **losses,
                        **stats,
                        "lr": sched_g.get_last_lr()[0],
                        "grad_norm": gnorm,
                        "skipped_steps": skipped,
                        "skipped_disc_steps": skipped_disc,
                        "images_per_second": ips,
                    },
                )
            del out
            if cfg.image_every and step % cfg.image_every == 0 and main and step < cfg.steps:
                logger.images(step, _preview(model, preview_batch, device))
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                evaluate(step)
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
                save(step)
        train_seconds = time.perf_counter() - t0
        bar.close()
        save(step)
        final_model = ema.module if ema is not None else model
        if main:
            final_model.save(out_dir / MODEL_FILE)
            logger.images(step, _preview(final_model, preview_batch, device))
            metrics = evaluate(step)
            summary = {
                "step": step,
                "skipped_steps": skipped,
                "skipped_disc_steps": skipped_disc,
                "uses_depth": use_depth,
                "train_seconds": train_seconds,
                "images_per_second": images_seen / max(train_seconds, 1e-9),
                "losses": losses,
                "held_out": metrics,
            }
            (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    finally:
        bar.close()
        logger.close()
        if world > 1:
            cleanup()
    return {
        "step": step,
        "skipped_steps": skipped,
        "skipped_disc_steps": skipped_disc,
        "uses_depth": use_depth,
        "losses": losses,
        "metrics": metrics,
        "out_dir": out_dir,
        "model_path": out_dir / MODEL_FILE,
        "train_seconds": train_seconds,
        "images_per_second": images_seen / max(train_seconds, 1e-9),
        "model": unwrap_model(model),
    }


__all__ = [
    "Stage1Config",
    "build_datasets",
    "dataset_has_depth",
    "depth_target",
    "load_stage1_model",
    "stage1_model_file",
    "train_stage1",
]
