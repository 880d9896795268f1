"""The run scaffold shared by stage-1 and stage-2 training.

* :class:`RunConfig` — the fields every training run has (data, optimiser and schedule, precision,
  EMA, intervals, output folder, seed, device, time budget, resume, progress) and their checks;
  :class:`~vq3dlib.train.stage1.Stage1Config` and :class:`~vq3dlib.train.stage2.Stage2Config` extend it.
* :class:`TrainingRun` — the machinery of one run around a stage's own steps: the device and DDP
  under ``torchrun`` (on CPU it tunes the C allocator, :mod:`vq3dlib.cpu_allocator`), seeding,
  AdamW with warmup + cosine, the gradient scaler, EMA, checkpoints and resume, the output folder
  (``train_config.json``) and logger, the progress bar, the step loop with its time budget
  and ``stop_at_step``, and the cleanup.

A stage's trainer builds its model between :meth:`TrainingRun.seed` calls, hands the objects to
checkpoint to :meth:`TrainingRun.resume`, wraps the model with :meth:`TrainingRun.ddp`, then trains
``for step in run.steps():`` inside ``with run:``. Resuming restores every checkpointed object and
the RNG states, and the data order is a function of the step, so a resumed run continues bit-exactly
(on CPU).

Example:
    >>> RunConfig().steps, RunConfig(steps=10).out_dir
    (2000, 'runs/train')
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vq3dlib._validation import check_choice, check_positive
from vq3dlib.cpu_allocator import tune_cpu_allocator
from vq3dlib.train.checkpoint import (
    Checkpoint,
    checkpoint_path,
    latest_intact_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from vq3dlib.train.distributed import cleanup, init_distributed, max_over_ranks, seed_everything
from vq3dlib.train.ema import ModelEMA
from vq3dlib.train.logger import TrainLogger
from vq3dlib.train.loop import AMP_MODES, adamw, autocast, resolve_device, warmup_cosine

CONFIG_FILE = "train_config.json"


@dataclass
class RunConfig:
    """The fields every training run has; every field can be set from the command line (``--set k=v``).

    Attributes:
        data: ``"procedural"`` (:class:`~vq3dlib.data.ProceduralScenes`) or a folder of images
            (:class:`~vq3dlib.data.ImageFolderDataset`).
        train_size: procedural scenes to train on (stage 1) or to encode (stage 2).
        data_seed: seed of the procedural training scenes (and of a folder's held-out choice).
        steps: total optimizer steps; batch_size: items per step and process.
        lr, betas, weight_decay: AdamW.
        warmup_steps, min_lr_ratio: linear warmup then cosine decay to ``min_lr_ratio * lr``.
        schedule_by_time: with a ``time_budget_s``, the cosine decay follows whichever of the steps
            done and the training time spent is further along, so a run that the budget ends early
            still ends at ``min_lr_ratio * lr`` (``False``: by steps only, reproducible step by step).
        grad_clip: max gradient norm (0 disables clipping; the norm is still checked for NaN/Inf).
        amp: ``"none"``, ``"bf16"`` (CPU or GPU) or ``"fp16"`` (GPU, with a gradient scaler).
        ema_decay, ema_warmup: EMA of the weights when ``ema_decay > 0``
            (:class:`~vq3dlib.train.ModelEMA`); the exported weights are then the average.
        log_every, ckpt_every: intervals in steps (0 disables; a checkpoint is also written at the end).
        keep_last: checkpoints kept in ``out_dir/checkpoints``.
        out_dir: output folder (``checkpoints/``, ``logs/``, ``train_config.json``, the exported model).
        seed: seed of the initialisation, the data order and the per-process noise.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        time_budget_s: stop (with a checkpoint) after this many seconds of training (0: no limit).
        stop_at_step: end this invocation (with a checkpoint) once this step is reached, keeping the
            schedule of ``steps`` (0: run to ``steps``); for jobs split into several runs with ``resume``.
        resume: continue from the latest checkpoint in ``out_dir/checkpoints`` (if any).
        progress: show a progress bar.

    Example:
        >>> RunConfig(steps=10, amp="bf16").steps
        10
        >>> RunConfig(ema_decay=1.0)
        Traceback (most recent call last):
        ...
        ValueError: ema_decay must be in [0, 1), got 1.0
    """

    data: str = "procedural"
    train_size: int = 1024
    data_seed: int = 0
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    schedule_by_time: bool = True
    grad_clip: float = 1.0
    amp: str = "none"
    ema_decay: float = 0.0
    ema_warmup: float = 100.0
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    out_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"
    time_budget_s: float = 0.0
    stop_at_step: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name in ("steps", "batch_size", "lr", "keep_last"):
            check_positive(name, getattr(self, name))
        for name in (
            "train_size",
            "data_seed",
            "warmup_steps",
            "grad_clip",
            "weight_decay",
            "ema_decay",
            "ema_warmup",
            "log_every",
            "ckpt_every",
            "seed",
            "time_budget_s",
            "stop_at_step",
        ):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_choice("amp", self.amp, AMP_MODES)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        check_pair("betas", self.betas)


def check_pair(name: str, value: Sequence[float]) -> None:
    """Raises ``ValueError`` unless ``value`` holds two numbers (Adam's ``betas``).

    Example:
        >>> check_pair("betas", (0.9, 0.99))
    """
    if len(value) != 2:
        raise ValueError(f"{name} must be a pair, got {tuple(value)}")


class TrainingRun:
    """The machinery of one training run (see the module docstring).

    Args:
        config: the run's :class:`RunConfig` (or a subclass).
        desc: the progress bar's label (``"stage 1"``).

    Attributes:
        device: where the run trains (the process's GPU under ``torchrun`` on CUDA).
        rank, world_size, is_main: this process in the (possibly one-process) group.
        out_dir, ckpt_dir: the output folder and its ``checkpoints/``.
        step: steps done (the resumed step before the loop, the final step after it).
        train_seconds: wall time of the step loop (after :meth:`steps` has ended).
        logger: the :class:`~vq3dlib.train.logger.TrainLogger` (after :meth:`start`; files on rank 0).

    Example:
        >>> import tempfile, torch
        >>> cfg = RunConfig(steps=3, batch_size=2, out_dir=tempfile.mkdtemp(), progress=False, device="cpu")
        >>> run = TrainingRun(cfg, "demo")
        >>> net = torch.nn.Linear(2, 1)
        >>> opt, sched = run.optimizer(net.parameters(), lr=0.1, betas=(0.9, 0.99), weight_decay=0.0)
        >>> run.resume({"net": net, "opt": opt, "sched": sched}) is None  # nothing to resume from
        True
        >>> with run:
        ...     run.start()
        ...     done = [step for step in run.steps()]
        ...     run.save(run.step)
        >>> done, run.step, (run.ckpt_dir / "step_000000003.safetensors").is_file()
        ([0, 1, 2], 3, True)
    """

    def __init__(self, config: RunConfig, desc: str) -> None:
        if not isinstance(config, RunConfig):
            raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
        self.config = config
        self.desc = desc
        device = resolve_device(config.device)
        info = init_distributed(device="cuda" if device.type == "cuda" else "cpu")
        self.device = info.device if info.world_size > 1 else device
        if self.device.type == "cpu":
            tune_cpu_allocator()  # reuse freed step buffers instead of page-faulting them in again
        self.rank, self.world_size, self.is_main = info.rank, info.world_size, info.is_main
        self.out_dir = Path(config.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.step = 0
        self.train_seconds = 0.0
        self.logger: TrainLogger | None = None
        self._states: dict[str, Any] = {}
        self._bar = None
        self._t0 = 0.0
        self._agreed_seconds = 0.0  # loop seconds at the start of the step, the largest over the ranks

    # ------------------------------------------------------------------------------------ setup
    def seed(self, per_rank: bool) -> None:
        """Seeds every RNG with ``config.seed`` (``+ rank`` when ``per_rank``: per-process noise).

        Without ``per_rank`` every process builds identical initial weights.
        """
        seed_everything(self.config.seed, per_rank=per_rank)

    def optimizer(
        self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW over ``params`` and its warmup + cosine schedule (``config.warmup_steps``, ``steps``,
        ``min_lr_ratio``; with ``time_budget_s`` and ``schedule_by_time`` the decay also follows the
        fraction of the time budget spent)."""
        cfg = self.config
        opt = adamw(params, lr=lr, betas=betas, weight_decay=weight_decay)
        by_steps = warmup_cosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        if not (cfg.time_budget_s and cfg.schedule_by_time):
            return opt, torch.optim.lr_scheduler.LambdaLR(opt, by_steps)

        def schedule(step: int) -> float:  # under DDP, the clock every rank agreed on at this step
            seconds = self._agreed_seconds if self.world_size > 1 else self.elapsed()
            spent = int(seconds / cfg.time_budget_s * cfg.steps)
            return by_steps(max(step, spent) if step >= cfg.warmup_steps else step)

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The gradient scaler of ``amp="fp16"`` (disabled, a pass-through, otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.config.amp == "fp16")

    def ema(self, module: nn.Module) -> ModelEMA | None:
        """:class:`~vq3dlib.train.ModelEMA` of ``module`` when ``config.ema_decay > 0``, else ``None``."""
        cfg = self.config
        return ModelEMA(module, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The ``torch.autocast`` context of ``config.amp`` on the run's device."""
        return autocast(self.device, self.config.amp)

    def resume(self, states: dict[str, Any]) -> Checkpoint | None:
        """Registers the objects every checkpoint holds; with ``config.resume`` restores the latest one.

        ``states`` maps names to objects with ``state_dict``/``load_state_dict`` (model, optimizers,
        schedulers, scaler, EMA). Seeds the per-process RNGs for a fresh run; a resumed run keeps the
        RNG states of its checkpoint (under DDP, where they were saved by rank 0, each rank gets its
        own stream again). Returns the loaded :class:`~vq3dlib.train.checkpoint.Checkpoint` or ``None``.
        """
        cfg = self.config
        self._states = states
        ckpt = None
        if cfg.resume:
            latest = latest_intact_checkpoint(self.ckpt_dir)  # a truncated newest one is skipped
            if latest is not None:
                ckpt = load_checkpoint(latest, states, map_location=self.device)
        self.step = ckpt.step if ckpt is not None else 0
        if self.step == 0:
            self.seed(per_rank=True)  # per-rank noise (novel cameras, ray jitter, dropout)
        elif self.world_size > 1:
            seed_everything(cfg.seed + 7919 * self.step, per_rank=True)
        return ckpt

    def ddp(self, module: nn.Module, ignore: Sequence[str] = ()) -> nn.Module:
        """``module`` wrapped in DistributedDataParallel under ``torchrun`` (as it is otherwise).

        ``ignore`` names parameters DDP's gradient reducer leaves alone (e.g. discriminators whose
        gradients the trainer averages itself).
        """
        if self.world_size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        if ignore:
            DDP._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=device_ids, find_unused_parameters=False)

    def start(self) -> None:
        """Opens the logger (files on rank 0) and writes the config to ``out_dir/train_config.json``.

        A resumed run's logger drops the scalars logged after its checkpoint's step."""
        resumed = self.step if self.step > 0 else None  # drop what the interrupted run logged after it
        self.logger = TrainLogger(self.out_dir / "logs", enabled=self.is_main, resume_step=resumed)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            config = json.dumps(dataclasses.asdict(self.config), indent=2)
            (self.out_dir / CONFIG_FILE).write_text(config)

    # ------------------------------------------------------------------------------------ loop
    def steps(self) -> Iterator[int]:
        """Yields the index of each step to train, from :attr:`step` on; advances :attr:`step` after it.

        Ends at ``config.steps``, at ``config.stop_at_step`` and when ``config.time_budget_s`` has run
        out (checked before each step); then :attr:`train_seconds` holds the loop's wall time. Under
        DDP the time budget is checked on the slowest rank's clock (one all-reduce per step), so every
        rank stops after the same step and follows the same learning-rate schedule.
        """
        from tqdm.auto import tqdm

        cfg = self.config
        self._bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (cfg.progress and self.is_main),
            desc=self.desc,
            unit="step",
            dynamic_ncols=True,
        )
        t0 = self._t0 = time.perf_counter()
        try:
            while self.step < cfg.steps:
                if cfg.time_budget_s:
                    self._agreed_seconds = max_over_ranks(time.perf_counter() - t0, self.device)
                    if self._agreed_seconds > cfg.time_budget_s:
                        break
                if cfg.stop_at_step and self.step >= cfg.stop_at_step:
                    break
                yield self.step
                self.step += 1
                self._bar.update(1)
        finally:
            self.train_seconds = time.perf_counter() - t0
            self._bar.close()

    def elapsed(self) -> float:
        """Seconds since the step loop started (0 before it)."""
        return time.perf_counter() - self._t0 if self._bar is not None else 0.0

    def show(self, **values: Any) -> None:
        """Values next to the progress bar (``loss=...``)."""
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def due(self, every: int, step: int) -> bool:
        """Whether an action repeated ``every`` steps falls on ``step`` steps done (never at the end:
        the end writes its own checkpoint, images and evaluation)."""
        return bool(every) and step % every == 0 and step < self.config.steps

    def save(self, step: int, extra: dict[str, Any] | None = None) -> None:
        """Writes the checkpoint of ``step`` (rank 0; ``config.keep_last`` kept) with ``extra`` data."""
        if self.is_main:
            save_checkpoint(
                checkpoint_path(self.ckpt_dir, step),
                self._states,
                step=step,
                config=self.config,
                extra=extra or {},
                keep_last=self.config.keep_last,
            )

    # ------------------------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Closes the progress bar and the logger and leaves the process group (if any)."""
        if self._bar is not None:
            self._bar.close()
        if self.logger is not None:
            self.logger.close()
        if self.world_size > 1:
            cleanup()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CONFIG_FILE", "RunConfig", "TrainingRun", "check_pair"]
