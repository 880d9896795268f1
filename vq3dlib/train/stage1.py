"""Stage-1 training of :class:`~vq3dlib.models.VQ3DModel`: autoencoder + two discriminators.

:class:`Stage1Trainer` runs one training run on the shared scaffold (:class:`~vq3dlib.train.run.TrainingRun`:
a single process or ``torchrun`` DDP — gloo on CPU, NCCL on GPU —, seeding, checkpoints and resume,
logs, progress, time budget); :func:`train_stage1` builds one and trains it. Per step
(:meth:`Stage1Trainer.train_step`):

0. :meth:`~Stage1Trainer.batch`: the step's items; an item whose image or depth holds NaN/Inf is
   left out of the batch (its dataset index is named in a warning the first time, and every
   occurrence is counted in ``skipped_items``); a step with no usable item left on some process is
   skipped on all of them and counted in ``skipped_steps``;
1. :meth:`~Stage1Trainer.generator_step`: the generator forward (``model(images, depth, step)``:
   reconstruction, novel views, every loss term; the adversarial terms start at
   ``config.adversarial_start_step``, the model handles that), backward, gradient clipping, and an
   optimizer step — unless the loss or the gradient norm is NaN/Inf on any process: then the
   gradients are zeroed, the model's buffers (e.g. the quantizer's EMA codebook statistics, updated
   during the forward) are restored, and the step is counted in ``skipped_steps`` instead of being
   written into the weights;
2. once the adversarial terms are on, :meth:`~Stage1Trainer.discriminator_step`
   (``model.discriminator_loss``, its own optimizer; canonical-view and novel-view discriminators),
   skipped the same way but counted in ``skipped_disc_steps``;
3. optional EMA of the weights (:class:`~vq3dlib.train.ModelEMA`), :meth:`~Stage1Trainer.log`,
   preview images, :meth:`~Stage1Trainer.evaluate` on held-out data, checkpoints.

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

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset

from vq3dlib._validation import check_choice, check_positive
from vq3dlib.data.folder import DEPTH_MODES
from vq3dlib.render.volrend import depth_to_disparity
from vq3dlib.train.checkpoint import _list_checkpoints, latest_checkpoint, load_checkpoint
from vq3dlib.train.distributed import is_distributed
from vq3dlib.train.ema import ModelEMA, unwrap_model
from vq3dlib.train.loop import MemoryDataset, all_finite, clip_gradients, get_batch, step_indices
from vq3dlib.train.run import RunConfig, TrainingRun, check_pair

MODEL_FILE = "model.safetensors"


@dataclass
class Stage1Config(RunConfig):
    """Everything a stage-1 run needs; every field can be set from the command line (``--set k=v``).

    The fields of :class:`~vq3dlib.train.run.RunConfig` (data, steps, optimiser, precision, EMA,
    intervals, output, seed, device, time budget, resume, progress; here with stage 1's defaults),
    and:

    Attributes:
        model: registered model config name (``"tiny"``, ``"imagenet256"``, see
            :func:`vq3dlib.models.get_config`).
        model_overrides: fields of :class:`~vq3dlib.models.VQ3DConfig` to change
            (``--set model.image_size=16``).
        data: ``"procedural"`` or a folder of images (depth maps next to the images, or computed by
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
        lr, betas, weight_decay: AdamW for the generator; disc_lr, disc_betas: AdamW for the
            discriminators.
        ema_decay, ema_warmup: EMA of the weights when ``ema_decay > 0``; the exported model then holds
            the EMA weights.
        image_every, eval_every: intervals in steps of the preview images and of the held-out
            evaluation (0 disables; both also run at the end).
        out_dir: output folder: ``checkpoints/``, ``logs/`` (JSONL scalars, PNG images, TensorBoard if
            installed), ``model.safetensors`` (final weights, :meth:`VQ3DModel.load`), ``metrics.json``.
    """

    model: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    eval_size: int = 16
    cache_data: bool = True
    depth: str = "auto"
    disc_lr: float = 2e-4
    disc_betas: tuple[float, float] = (0.5, 0.9)
    image_every: int = 500
    eval_every: int = 0
    out_dir: str = "runs/stage1"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.disc_betas = tuple(float(b) for b in self.disc_betas)  # type: ignore[assignment]
        check_positive("disc_lr", self.disc_lr)
        for name in ("eval_size", "image_every", "eval_every"):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_choice("depth", self.depth, DEPTH_MODES)
        check_pair("disc_betas", self.disc_betas)
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

    Depth is converted by :func:`~vq3dlib.render.depth_to_disparity` (depth ``<= 0``: disparity 0).

    Example:
        >>> depth_target({"depth": torch.full((1, 1, 2, 2), 4.0)}).flatten().tolist()
        [0.25, 0.25, 0.25, 0.25]
    """
    if "disparity" in batch:
        return batch["disparity"]
    if "depth" in batch:
        return depth_to_disparity(batch["depth"])
    return None


# ------------------------------------------------------------------------------- model I/O


def stage1_model_file(path: str | os.PathLike) -> Path:
    """The file :func:`load_stage1_model` reads for ``path``: a folder's ``model.safetensors`` if present,
    else its latest checkpoint (``checkpoints/`` or the folder itself); a file as it is. A folder
    without either whose ``train/`` subfolder is a run (what ``vq3d demo --out DIR`` writes: the
    model in ``DIR/train``) gives that run's file. A plain name that is no path names a bundled
    model (:func:`~vq3dlib.models.pretrained.pretrained_path`; ``ValueError`` listing them if unknown).

    Example:
        >>> import tempfile
        >>> from vq3dlib.train.checkpoint import checkpoint_path, save_checkpoint
        >>> run = tempfile.mkdtemp()
        >>> _ = save_checkpoint(checkpoint_path(f"{run}/checkpoints", 7), {}, step=7)
        >>> stage1_model_file(run).name
        'step_000000007.safetensors'
        >>> demo = tempfile.mkdtemp()
        >>> _ = save_checkpoint(checkpoint_path(f"{demo}/train/checkpoints", 3), {}, step=3)
        >>> stage1_model_file(demo).relative_to(demo).as_posix()
        'train/checkpoints/step_000000003.safetensors'
    """
    p = Path(path)
    if p.is_dir():
        for run in (p, p / "train"):
            if (run / MODEL_FILE).is_file():
                return run / MODEL_FILE
            latest = latest_checkpoint(run / "checkpoints") or latest_checkpoint(run)
            if latest is not None:
                return latest
        raise FileNotFoundError(
            f"{p} holds neither {MODEL_FILE} nor checkpoints (nor does {p / 'train'}); give a run folder "
            f"(vq3d train --out / vq3d demo --out), a checkpoint or a {MODEL_FILE}"
        )
    if not p.exists() and p.name == str(path) and not p.suffix:  # "tiny-procedural": a bundled model
        from vq3dlib.models.pretrained import pretrained_path

        return pretrained_path(str(path))
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    return p


def load_stage1_model(
    path: str | Path, map_location: str | torch.device = "cpu", ema: bool = True
) -> nn.Module:
    """A :class:`~vq3dlib.models.VQ3DModel` (eval mode) from a run folder, a checkpoint, a
    ``model.safetensors`` or the name of a bundled model (:meth:`VQ3DModel.pretrained
    <vq3dlib.models.VQ3DModel.pretrained>`).

    A folder: its ``model.safetensors`` if present, else its latest checkpoint (``checkpoints/``;
    the same in its ``train/`` subfolder, as :func:`stage1_model_file` says); a truncated or corrupt
    file there (failed checksum) is skipped with a warning for the next newest.
    A checkpoint: the EMA weights when it has them and ``ema`` is true, else the raw weights.

    Example:
        >>> import tempfile, os
        >>> from vq3dlib.models import VQ3DModel
        >>> d = tempfile.mkdtemp(); VQ3DModel.from_config("tiny", image_size=16, plane_resolution=16).save(
        ...     os.path.join(d, "model.safetensors"))
        >>> load_stage1_model(d).config.image_size
        16
    """
    p = Path(path)
    if not p.is_dir():
        return _load_stage1_file(stage1_model_file(p), map_location, ema).eval()
    candidates = []
    for run in (p, p / "train"):  # a run folder, or what `vq3d demo --out DIR` writes (DIR/train)
        candidates += [run / MODEL_FILE] if (run / MODEL_FILE).is_file() else []
        for d in (run / "checkpoints", run):
            candidates += [c for _, c in reversed(_list_checkpoints(d))] if d.is_dir() else []
    if not candidates:
        stage1_model_file(p)  # raises the FileNotFoundError that says what a model folder holds
    problems = []
    for c in candidates:  # newest first: a truncated or corrupt file falls back to the next one
        try:
            return _load_stage1_file(c, map_location, ema).eval()
        except ValueError as exc:
            warnings.warn(f"skipping {c}: {exc}", stacklevel=2)
            problems.append(str(exc))
    raise ValueError(f"{p} holds no intact model: " + "; ".join(problems))


def _load_stage1_file(p: Path, map_location: str | torch.device, ema: bool) -> nn.Module:
    from vq3dlib.models import VQ3DConfig, VQ3DModel
    from vq3dlib.train.checkpoint import read_safetensors

    _, meta = read_safetensors(p)
    if "vq3d_config" in meta:
        return VQ3DModel.load(p, map_location=map_location).eval()
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


# ------------------------------------------------------------------------------------ trainer


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


def _finite_items(values: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: the items of ``values [B, ...]`` that hold no NaN/Inf."""
    return torch.isfinite(values.float()).flatten(1).all(1)


class GeneratorStep(NamedTuple):
    """What :meth:`Stage1Trainer.generator_step` returns.

    Example:
        >>> GeneratorStep._fields
        ('outputs', 'loss', 'grad_norm', 'ok')
    """

    outputs: dict[str, Any]  # the model's forward outputs
    loss: torch.Tensor  # the generator loss (float32 scalar)
    grad_norm: torch.Tensor  # gradient norm before clipping
    ok: bool  # finite on every process: written into the weights (else skipped)


class Stage1Trainer:
    """One stage-1 training run: set up by the constructor, trained by :meth:`train` (see the module
    docstring; :func:`train_stage1` documents the arguments).

    The step's parts are separate methods — :meth:`generator_step`, :meth:`discriminator_step`,
    :meth:`log`, :meth:`preview`, :meth:`evaluate` — composed by :meth:`train_step` and :meth:`train`.

    Example:
        >>> import tempfile
        >>> micro = dict(image_size=16, render_resolution=8, plane_resolution=16, samples_per_ray=8,
        ...              occupancy_resolution=16, encoder_width=32, encoder_heads=2, decoder_width=32,
        ...              decoder_heads=2, disc_channels=8, disc_max_channels=16)
        >>> cfg = Stage1Config(model_overrides=micro, steps=1, batch_size=2, train_size=2, eval_size=0,
        ...                    out_dir=tempfile.mkdtemp(), progress=False, device="cpu")
        >>> trainer = Stage1Trainer(cfg)  # doctest: +ELLIPSIS
        VQ3D 'tiny' parameters: ...
        >>> trainer.train()["step"]
        1
    """

    def __init__(
        self,
        config: Stage1Config,
        model: nn.Module | None = None,
        depth_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        datasets: tuple[Dataset, Dataset | None] | None = None,
    ) -> None:
        from vq3dlib.models import VQ3DModel

        if not isinstance(config, Stage1Config):
            raise TypeError(f"config must be a Stage1Config, got {type(config).__name__}")
        if depth_fn is not None and not callable(depth_fn):
            raise TypeError(f"depth_fn must be callable or None, got {type(depth_fn).__name__}")
        if datasets is not None:
            if not isinstance(datasets, (tuple, list)) or len(datasets) != 2:
                raise TypeError("datasets must be a pair (train, held_out); held_out may be None")
            if depth_fn is not None:
                raise ValueError(
                    "give depth_fn for an image folder (config.data) or depth in datasets, not both"
                )
            if len(datasets[0]) == 0:
                raise ValueError("datasets[0] (the training set) is empty")
        self.config = cfg = config
        self.run = run = TrainingRun(cfg, "stage 1")
        device = run.device
        model_cfg = cfg.model_config()

        run.seed(per_rank=False)  # identical initial weights on every rank
        if model is None:
            model = VQ3DModel(model_cfg)
        elif not isinstance(model, VQ3DModel):
            raise TypeError(f"model must be a VQ3DModel, got {type(model).__name__}")
        self.model = model.to(device).train()
        self.model_config = model_cfg = model.config
        self.gen_params = list(model.generator_parameters())
        self.disc_params = list(model.discriminator_parameters())
        self.opt_g, self.sched_g = run.optimizer(self.gen_params, cfg.lr, cfg.betas, cfg.weight_decay)
        self.opt_d, self.sched_d = run.optimizer(self.disc_params, cfg.disc_lr, cfg.disc_betas, 0.0)
        self.scaler = run.grad_scaler()
        self.ema = run.ema(model)

        train_set, held_out = self._datasets(depth_fn, datasets)
        if run.is_main:
            counts = model.param_counts()
            parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items() if v)
            total = sum(counts.values()) / 1e6
            print(f"VQ3D '{model_cfg.name}' parameters: {parts} (total {total:.2f}M)", flush=True)
        if cfg.cache_data:
            progress = cfg.progress and run.is_main
            train_set = MemoryDataset(train_set, progress=progress, desc="rendering training data")
            if held_out is not None:
                held_out = MemoryDataset(held_out, progress=False)
        self.train_set, self.held_out = train_set, held_out

        states: dict[str, Any] = {
            "model": model,
            "opt_g": self.opt_g,
            "opt_d": self.opt_d,
            "sched_g": self.sched_g,
            "sched_d": self.sched_d,
            "scaler": self.scaler,
        }
        if self.ema is not None:
            states["ema"] = self.ema
        ckpt = run.resume(states)
        extra = ckpt.extra if ckpt is not None else {}
        self.skipped = int(extra.get("skipped_steps", 0))
        self.skipped_disc = int(extra.get("skipped_disc_steps", 0))
        self.skipped_items = int(extra.get("skipped_items", 0))
        self.bad_items: set[int] = set()  # dataset indices already named in a warning
        # the discriminators' gradients are averaged in the discriminator step, not by DDP
        disc = [f"loss.{n}" for n, _ in model.loss.named_parameters() if n.startswith("disc_")]
        self.ddp_model = run.ddp(model, ignore=disc)
        run.start()
        shown = held_out if held_out is not None else train_set
        preview = get_batch(shown, torch.arange(min(8, len(shown))))
        usable = _finite_items(preview["image"])  # an item with NaN/Inf pixels is not previewed
        self.preview_batch = {k: v[usable] if isinstance(v, torch.Tensor) else v for k, v in preview.items()}
        self.images_seen = 0

    def _datasets(
        self,
        depth_fn: Callable[[torch.Tensor], torch.Tensor] | None,
        datasets: tuple[Dataset, Dataset | None] | None,
    ) -> tuple[Dataset, Dataset | None]:
        """The run's (train, held-out) data; sets ``use_depth`` (``config.depth`` applied to it)."""
        cfg, size = self.config, self.model_config.image_size
        if datasets is None:
            train_set, held_out = build_datasets(cfg, size, depth_fn=depth_fn)
            source = repr(cfg.data)
        else:
            train_set, held_out = datasets
            source = "datasets[0]"
            first = train_set[0]
            image = first.get("image") if isinstance(first, dict) else None
            if not isinstance(image, torch.Tensor) or tuple(image.shape) != (3, size, size):
                got = list(image.shape) if isinstance(image, torch.Tensor) else type(first).__name__
                raise ValueError(f"datasets items must be dicts with 'image' [3, {size}, {size}], got {got}")
        self.use_depth = _depth_in_use(cfg.depth, train_set, source)
        return train_set, held_out

    # ------------------------------------------------------------------------------- one step
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's ``(images [B', 3, S, S], disparity target | None)`` of ``step`` on the device.

        Items whose image or depth target holds NaN/Inf are left out (``B' <= batch_size``), counted in
        :attr:`skipped_items` and named in a warning the first time (see the module docstring).
        """
        run = self.run
        idx = step_indices(step, len(self.train_set), self.config.batch_size, self.config.seed, run.rank,
                           run.world_size)  # fmt: skip
        batch = get_batch(self.train_set, idx)
        images = batch["image"]
        depth = depth_target(batch) if self.use_depth else None
        good = _finite_items(images)
        for key in ("depth", "disparity") if self.use_depth else ():  # raw: conversion maps NaN to 0
            if isinstance(batch.get(key), torch.Tensor):
                good &= _finite_items(batch[key])
        if not bool(good.all()):
            bad = [int(i) for i in idx[~good]]
            self.skipped_items += len(bad)
            new = sorted(set(bad) - self.bad_items)
            self.bad_items.update(new)
            if new:
                what = "image or depth" if depth is not None else "image"
                warnings.warn(
                    f"training items {new} have NaN/Inf {what} values: left out of their batches "
                    f"(step {step}; {self.skipped_items} item(s) skipped so far)",
                    stacklevel=2,
                )
            images = images[good]
            depth = depth[good] if depth is not None else None
        images = images.to(run.device, non_blocking=True)
        return images, depth.to(run.device) if depth is not None else None

    def generator_step(self, images: torch.Tensor, depth: torch.Tensor | None, step: int) -> GeneratorStep:
        """Forward, backward, clipping and the generator's optimizer step (skipped when not finite)."""
        model, scaler, opt = self.model, self.scaler, self.opt_g
        saved = _snapshot_buffers(model)
        with self.run.autocast():
            out = self.ddp_model(images, depth=depth, step=step)
        loss = out["loss"].float()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grad_norm = clip_gradients(self.gen_params, self.config.grad_clip)
        ok = bool(all_finite(loss, grad_norm))
        if ok:
            scaler.step(opt)
            if self.ema is not None:
                self.ema.update(model)
        else:
            opt.zero_grad(set_to_none=True)
            _restore_buffers(model, saved)
            self.skipped += 1
            if scaler.is_enabled():
                scaler.update()
        return GeneratorStep(out, loss, grad_norm, ok)

    def discriminator_step(self, images: torch.Tensor, outputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The discriminators' losses, backward and optimizer step (skipped when not finite)."""
        scaler, opt = self.scaler, self.opt_d
        opt.zero_grad(set_to_none=True)
        with self.run.autocast():
            d_losses = self.model.discriminator_loss(images, outputs)
        d_loss = d_losses["loss"].float()
        scaler.scale(d_loss).backward()
        if is_distributed():
            _average_grads(self.disc_params)
        scaler.unscale_(opt)
        d_norm = clip_gradients(self.disc_params, self.config.grad_clip)
        if bool(all_finite(d_loss, d_norm)):
            scaler.step(opt)
        else:
            opt.zero_grad(set_to_none=True)
            self.skipped_disc += 1
        return d_losses

    def train_step(self, step: int) -> tuple[GeneratorStep, dict[str, torch.Tensor]]:
        """Step ``step``: its batch, the generator step, the discriminator step (once the adversarial
        terms are on), the scaler and the LR schedules."""
        images, depth = self.batch(step)
        empty = torch.tensor(float("nan") if images.shape[0] == 0 else 0.0, device=images.device)
        if not bool(all_finite(empty)):  # no usable item on some process: the step is skipped on all
            self.skipped += 1
            nan = torch.tensor(float("nan"))
            gen = GeneratorStep({"losses": {}, "quantizer_stats": {}}, nan, nan, False)
        else:
            gen = self.generator_step(images, depth, step)
        d_losses: dict[str, torch.Tensor] = {}
        if gen.ok and self.model.loss.adversarial_on(step):
            d_losses = self.discriminator_step(images, gen.outputs)
        if gen.ok and self.scaler.is_enabled():
            self.scaler.update()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the discriminator optimizer idles until the adversarial start
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
            self.sched_g.step()
            self.sched_d.step()
        self.images_seen += images.shape[0] * self.run.world_size
        return gen, d_losses

    # ------------------------------------------------------------------------------- reporting
    def images_per_second(self, seconds: float) -> float:
        """Training throughput over ``seconds`` (all processes together)."""
        return self.images_seen / max(seconds, 1e-9)

    def step_losses(self, gen: GeneratorStep, d_losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's loss terms as logged: ``loss/<term>``, ``loss/total``, ``disc/<term>``."""
        losses = {f"loss/{k}": float(v.detach()) for k, v in gen.outputs["losses"].items()}
        losses["loss/total"] = float(gen.loss.detach())
        losses.update({f"disc/{k}": float(v.detach()) for k, v in d_losses.items()})
        return losses

    def log(self, step: int, gen: GeneratorStep, losses: dict[str, float], ips: float) -> None:
        """Writes the scalars of ``step`` (losses, quantizer statistics, LR, gradient norm, skips)."""
        stats = {
            f"quantizer/{k}": float(v.float().mean())
            for k, v in gen.outputs["quantizer_stats"].items()
            if v.numel() >= 1
        }
        self.run.logger.scalars(
            step,
            {
                **losses,
                **stats,
                "lr": self.sched_g.get_last_lr()[0],
                "grad_norm": gen.grad_norm,
                **self.skip_counts(),
                "images_per_second": ips,
            },
        )

    @torch.no_grad()
    def preview(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Images for the logs: inputs, reconstructions, depth, a novel view (global RNG untouched)."""
        device, batch = self.run.device, self.preview_batch
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

    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out metrics of the (EMA) model at ``step``, logged as ``eval/*`` (rank 0; ``{}`` without
        held-out data)."""
        from vq3dlib.train.evaluate import evaluate_stage1

        if not self.run.is_main or self.held_out is None:
            return {}
        net = self.ema.module if self.ema is not None else self.model
        batch_size, device = self.config.batch_size, self.run.device
        metrics = evaluate_stage1(net, self.held_out, batch_size=batch_size, device=device)
        self.run.logger.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        return metrics

    def skip_counts(self) -> dict[str, int]:
        """The skip counts so far (logs, checkpoints, results): steps, discriminator steps, items."""
        return {
            "skipped_steps": self.skipped,
            "skipped_disc_steps": self.skipped_disc,
            "skipped_items": self.skipped_items,
        }

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a checkpoint stores besides the states: the skip counts and the model config."""
        return {
            **self.skip_counts(),
            "model_config": self.model_config.to_dict(),
        }

    # ------------------------------------------------------------------------------- the run
    def train(self) -> dict[str, Any]:
        """Trains to ``config.steps`` (or the time budget / ``stop_at_step``) and writes the results;
        returns what :func:`train_stage1` returns."""
        cfg, run = self.config, self.run
        losses: dict[str, float] = {}
        metrics: dict[str, Any] = {}
        with run:
            for step in run.steps():
                gen, d_losses = self.train_step(step)
                done = step + 1
                losses = self.step_losses(gen, d_losses)
                ips = self.images_per_second(run.elapsed())
                run.show(loss=f"{losses['loss/total']:.4f}", img_s=f"{ips:.1f}",
                         skipped=self.skipped + self.skipped_disc)  # fmt: skip
                if cfg.log_every and done % cfg.log_every == 0:
                    self.log(done, gen, losses, ips)
                del gen
                if run.due(cfg.image_every, done) and run.is_main:
                    run.logger.images(done, self.preview(self.model))
                if run.due(cfg.eval_every, done):
                    self.evaluate(done)
                if run.due(cfg.ckpt_every, done):
                    run.save(done, self.checkpoint_extra())
            step = run.step
            run.save(step, self.checkpoint_extra())
            final_model = self.ema.module if self.ema is not None else self.model
            if run.is_main:
                final_model.save(run.out_dir / MODEL_FILE)
                run.logger.images(step, self.preview(final_model))
                metrics = self.evaluate(step)
                summary = {
                    "step": step,
                    **self.skip_counts(),
                    "uses_depth": self.use_depth,
                    "train_seconds": run.train_seconds,
                    "images_per_second": self.images_per_second(run.train_seconds),
                    "losses": losses,
                    "held_out": metrics,
                }
                (run.out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        return {
            "step": step,
            **self.skip_counts(),
            "uses_depth": self.use_depth,
            "losses": losses,
            "metrics": metrics,
            "out_dir": run.out_dir,
            "model_path": run.out_dir / MODEL_FILE,
            "train_seconds": run.train_seconds,
            "images_per_second": self.images_per_second(run.train_seconds),
            "model": unwrap_model(self.model),
        }


def train_stage1(
    config: Stage1Config,
    model: nn.Module | None = None,
    depth_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    datasets: tuple[Dataset, Dataset | None] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) a stage-1 training run (a :class:`Stage1Trainer`); see the module docstring.

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
        steps skipped), "skipped_items" (training items left out for NaN/Inf values), "losses" (last
        step), "metrics" (final held-out evaluation, if any), "out_dir", "model_path",
        "train_seconds", "images_per_second", "model", "uses_depth"}`` (rank
        0; the other ranks get the same keys with ``metrics`` empty).

    Raises:
        FileNotFoundError: ``config.depth == "required"`` and images of a folder have no depth file
            (the message names them) or a missing data folder.
        ValueError: ``config.depth == "required"`` and ``datasets`` without depth; bad arguments.
    """
    return Stage1Trainer(config, model=model, depth_fn=depth_fn, datasets=datasets).train()


__all__ = [
    "GeneratorStep",
    "Stage1Config",
    "Stage1Trainer",
    "build_datasets",
    "dataset_has_depth",
    "depth_target",
    "load_stage1_model",
    "stage1_model_file",
    "train_stage1",
]
