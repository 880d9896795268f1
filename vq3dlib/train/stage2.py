"""Stage-2 training: the autoregressive :class:`~vq3dlib.models.CodePrior` on frozen stage-1 codes.

The stage-1 model encodes every training image once (:func:`extract_codes`); the code indices and
class labels are cached in a safetensors file (reused while the stage-1 weights file — the resolved
``model.safetensors`` or checkpoint, by path, size and modification time — and the data settings are
unchanged), and the prior trains on that cache only — no image is decoded or rendered
during stage 2. Class labels come from the dataset (``label`` of :class:`~vq3dlib.data.ProceduralScenes`);
a dataset without labels trains an unconditional prior (every label is the null label).

:class:`Stage2Trainer` runs on the scaffold stage 1 uses (:class:`~vq3dlib.train.run.TrainingRun`):
step-derived data order, AdamW with warmup + cosine, gradient clipping, NaN/Inf steps skipped and
counted, bf16/fp16 autocast, optional EMA of the weights, a time budget, DDP under ``torchrun``,
atomic checkpoints with bit-exact resume on CPU. The result is ``out_dir/prior.safetensors``
(:func:`load_prior`; the EMA weights when ``ema_decay > 0``).

Example (``train_stage2(cfg)`` runs it; ``vq3d train --stage 2 --stage1 runs/stage1`` from a shell):
    >>> cfg = Stage2Config(stage1="runs/stage1", steps=500, prior_overrides={"prior_width": 64})
    >>> cfg.batch_size, cfg.prior_overrides
    (32, {'prior_width': 64})
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vq3dlib._validation import check_positive
from vq3dlib.train.checkpoint import latest_checkpoint, load_checkpoint
from vq3dlib.train.distributed import barrier
from vq3dlib.train.ema import ModelEMA
from vq3dlib.train.loop import all_finite, clip_gradients, step_indices
from vq3dlib.train.run import RunConfig, TrainingRun

PRIOR_FILE = "prior.safetensors"
CODES_FILE = "codes.safetensors"


@dataclass
class Stage2Config(RunConfig):
    """A stage-2 run; every field can be set from the command line (``--set k=v``).

    The fields of :class:`~vq3dlib.train.run.RunConfig` (here with stage 2's defaults: batch 32, lr
    5e-4, betas (0.9, 0.95), weight decay 0.01), and:

    Attributes:
        stage1: the stage-1 model: a run folder, a checkpoint or a ``model.safetensors``
            (:func:`~vq3dlib.train.stage1.load_stage1_model`).
        prior_overrides: ``prior_*`` / ``num_classes`` fields of the model config to change
            (``--set prior.prior_width=256``).
        data, train_size, data_seed: the images to encode (as in
            :class:`~vq3dlib.train.stage1.Stage1Config`; use the stage-1 values). An image folder is
            encoded whole (stage 1's held-out images included); ``train_size`` must be > 0.
        codes_cache: where the extracted codes live (default ``out_dir/codes.safetensors``).
        ema_decay, ema_warmup: EMA of the prior's weights when ``ema_decay > 0``
            (:class:`~vq3dlib.train.ModelEMA`); ``prior.safetensors`` then holds the average.
    """

    stage1: str = "runs/stage1"
    prior_overrides: dict[str, Any] = field(default_factory=dict)
    codes_cache: str = ""
    batch_size: int = 32
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    out_dir: str = "runs/stage2"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("train_size", self.train_size)
        bad = [k for k in self.prior_overrides if not (k.startswith("prior_") or k == "num_classes")]
        if bad:
            raise ValueError(f"prior_overrides may only set prior_* fields and num_classes, got {bad}")


# ---------------------------------------------------------------------------------- codes


def _file_signature(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


@torch.no_grad()
def extract_codes(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Encodes every image of ``dataset`` with a frozen stage-1 ``model``.

    Returns:
        ``{"indices": [N, L] int64, "labels": [N] int64}`` (``L = config.prior_seq_len``; labels are
        -1 for a dataset without ``label``).

    Example:
        >>> from vq3dlib.data import ProceduralScenes
        >>> from vq3dlib.models import VQ3DModel
        >>> model = VQ3DModel.from_config("tiny", image_size=16, plane_resolution=16, encoder_depth=1)
        >>> extract_codes(model, ProceduralScenes(3, 16, n_novel_views=0))["indices"].shape
        torch.Size([3, 16])
    """
    from vq3dlib.train.loop import get_batch

    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("dataset is empty")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    indices, labels = [], []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="extracting codes", unit="batch", leave=False)
    try:
        for start in starts:
            batch = get_batch(dataset, torch.arange(start, min(start + batch_size, n)))
            images = batch["image"].to(device)
            _, idx, _ = model.encode(images)
            indices.append(idx.reshape(images.shape[0], -1).long().cpu())
            lab = batch.get("label")
            labels.append(
                lab.long().reshape(-1).cpu()
                if isinstance(lab, torch.Tensor)
                else torch.full((images.shape[0],), -1, dtype=torch.long)
            )
    finally:
        model.train(was)
    return {"indices": torch.cat(indices), "labels": torch.cat(labels)}


def cached_codes(
    cache: str | os.PathLike, signature: dict[str, Any], compute, rebuild: bool = False
) -> dict[str, torch.Tensor]:
    """Loads codes from the safetensors file ``cache`` if its stored ``signature`` matches, else
    runs ``compute()`` and writes them (atomically) with the signature.

    Example:
        >>> import tempfile
        >>> p = tempfile.mkdtemp() + "/codes.safetensors"
        >>> make = lambda: {"indices": torch.zeros(2, 3, dtype=torch.long), "labels": torch.zeros(2)}
        >>> first = cached_codes(p, {"a": 1}, make)            # computed and written
        >>> again = cached_codes(p, {"a": 1}, None)            # read back, compute not needed
        >>> torch.equal(first["indices"], again["indices"])
        True
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = Path(cache)
    key = json.dumps(signature, sort_keys=True)
    if path.is_file() and not rebuild:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("signature") == key:
            return load_file(str(path))
    if compute is None:
        raise FileNotFoundError(f"no matching code cache at {path}")
    codes = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in codes.items()}, str(tmp), metadata={"signature": key})
    os.replace(tmp, path)
    return codes


# ---------------------------------------------------------------------------------- prior I/O


def save_prior(prior: nn.Module, model_config, path: str | os.PathLike) -> Path:
    """Writes prior weights + the (stage-1) model config it belongs to (safetensors header).

    Example:
        >>> import tempfile
        >>> from vq3dlib.models import CodePrior, get_config
        >>> cfg = get_config("tiny", prior_width=16, prior_depth=1)
        >>> p = save_prior(CodePrior.from_config(cfg), cfg, tempfile.mkdtemp() + "/p.safetensors")
        >>> load_prior(p).width
        16
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in prior.state_dict().items()}
    save_file(state, str(path), metadata={"vq3d_prior_config": json.dumps(model_config.to_dict())})
    return path


def load_prior(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", ema: bool = True
) -> nn.Module:
    """A :class:`~vq3dlib.models.CodePrior` from :func:`save_prior`'s file, a stage-2 run or checkpoint.

    A checkpoint gives its EMA weights when it has them and ``ema`` is true, else the raw weights.

    The model config it was built from is available as ``prior.vq3d_config``.
    """
    from vq3dlib.models import CodePrior, VQ3DConfig
    from vq3dlib.train.checkpoint import read_safetensors

    p = Path(path)
    if p.is_dir():
        if (p / PRIOR_FILE).is_file():
            p = p / PRIOR_FILE
        else:
            latest = latest_checkpoint(p / "checkpoints") or latest_checkpoint(p)
            if latest is None:
                raise FileNotFoundError(f"{p} holds neither {PRIOR_FILE} nor checkpoints")
            p = latest
    if not p.is_file():
        raise FileNotFoundError(f"prior file not found: {p}")
    state, meta = read_safetensors(p, device=str(torch.device(map_location)))  # ValueError if unreadable
    if "vq3d_prior_config" in meta:
        cfg = VQ3DConfig.from_dict(json.loads(meta["vq3d_prior_config"]))
    else:
        ckpt = load_checkpoint(p, restore_rng=False, map_location=map_location)
        if "prior" not in ckpt.states or "model_config" not in ckpt.extra:
            raise ValueError(f"{p} is neither a prior file nor a stage-2 checkpoint")
        cfg = VQ3DConfig.from_dict(ckpt.extra["model_config"])
        state = ckpt.states["prior"]
        if ema and "ema" in ckpt.states:
            state = ModelEMA.averaged_state_dict(ckpt.states["ema"])
    prior = CodePrior.from_config(cfg)
    prior.load_state_dict(state)
    prior.vq3d_config = cfg
    return prior.to(map_location).eval()


# ---------------------------------------------------------------------------------- trainer


class Stage2Trainer:
    """One stage-2 training run: codes extracted (or read from their cache) and the prior built by the
    constructor, trained by :meth:`train` (see the module docstring; :func:`train_stage2` runs both).

    The step's parts are methods: :meth:`batch`, :meth:`train_step`, :meth:`log`.

    Example:
        >>> import tempfile
        >>> from vq3dlib.models import VQ3DModel
        >>> run = tempfile.mkdtemp()
        >>> VQ3DModel.from_config("tiny", image_size=16, plane_resolution=16, encoder_depth=1, prior_width=16,
        ...                       prior_depth=1, prior_heads=2).save(f"{run}/model.safetensors")
        >>> cfg = Stage2Config(stage1=run, steps=2, batch_size=2, train_size=4, out_dir=f"{run}/prior",
        ...                    progress=False, device="cpu")
        >>> trainer = Stage2Trainer(cfg)
        >>> trainer.indices.shape, trainer.train()["step"]
        (torch.Size([4, 16]), 2)
    """

    def __init__(self, config: Stage2Config) -> None:
        from vq3dlib.models import CodePrior
        from vq3dlib.train.stage1 import Stage1Config, build_datasets, load_stage1_model, stage1_model_file

        if not isinstance(config, Stage2Config):
            raise TypeError(f"config must be a Stage2Config, got {type(config).__name__}")
        self.config = cfg = config
        self.run = run = TrainingRun(cfg, "stage 2")
        device = run.device

        stage1_file = stage1_model_file(cfg.stage1)  # the file load_stage1_model reads
        stage1 = load_stage1_model(stage1_file, map_location=device)
        model_cfg = stage1.config.replace(**cfg.prior_overrides) if cfg.prior_overrides else stage1.config
        self.model_config = model_cfg
        data_cfg = Stage1Config(
            data=cfg.data,
            train_size=cfg.train_size,
            eval_size=0,
            data_seed=cfg.data_seed,
            cache_data=False,
            depth="none",
        )
        signature = {
            "stage1": _file_signature(stage1_file),
            "data": cfg.data,
            "train_size": cfg.train_size,
            "data_seed": cfg.data_seed,
            "image_size": stage1.config.image_size,
        }
        self.codes_path = Path(cfg.codes_cache) if cfg.codes_cache else run.out_dir / CODES_FILE

        def compute() -> dict[str, torch.Tensor]:
            train_set = build_datasets(data_cfg, stage1.config.image_size)[0]
            return extract_codes(stage1, train_set, progress=cfg.progress and run.is_main)

        if run.is_main:
            codes = cached_codes(self.codes_path, signature, compute)
        barrier()
        if not run.is_main:
            codes = cached_codes(self.codes_path, signature, None)
        self.indices, self.labels = codes["indices"].to(device), codes["labels"].to(device)
        if int(self.labels.max()) >= model_cfg.num_classes and model_cfg.num_classes > 0:
            raise ValueError(
                f"the dataset has labels up to {int(self.labels.max())} but the prior has num_classes="
                f"{model_cfg.num_classes}; set prior.num_classes"
            )
        self.conditional = bool((self.labels >= 0).all()) and model_cfg.num_classes > 0

        run.seed(per_rank=False)  # identical initial weights on every rank
        self.prior = prior = CodePrior.from_config(model_cfg).to(device).train()
        self.opt, self.sched = run.optimizer(prior.parameters(), cfg.lr, cfg.betas, cfg.weight_decay)
        self.scaler = run.grad_scaler()
        states: dict[str, Any] = {"prior": prior, "opt": self.opt, "sched": self.sched, "scaler": self.scaler}
        self.ema = run.ema(prior)
        if self.ema is not None:
            states["ema"] = self.ema
        ckpt = run.resume(states)
        self.skipped = int(ckpt.extra.get("skipped_steps", 0)) if ckpt is not None else 0
        self.net = run.ddp(prior)
        run.start()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's ``(codes [B, L], labels [B])`` of ``step`` (labels dropped to the null label
        with the prior's class-dropout rate; all null for an unconditional prior)."""
        run, prior = self.run, self.prior
        idx = step_indices(step, self.indices.shape[0], self.config.batch_size, self.config.seed, run.rank,
                           run.world_size).to(run.device)  # fmt: skip
        x = self.indices[idx]
        y = self.labels[idx] if self.conditional else torch.full_like(idx, prior.null_label)
        if self.conditional and prior.class_dropout > 0:
            drop = torch.rand(y.shape, device=run.device) < prior.class_dropout
            y = y.masked_fill(drop, prior.null_label)
        return x, y

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``step``: next-code cross-entropy, backward, clipping, the optimizer step (skipped and
        counted when not finite), the scaler and the LR schedule. Returns ``(loss, grad_norm)``."""
        prior, scaler, opt = self.prior, self.scaler, self.opt
        x, y = self.batch(step)
        with self.run.autocast():
            logits = self.net(x, y)
        loss = F.cross_entropy(logits.reshape(-1, prior.vocab_size).float(), x.reshape(-1))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grad_norm = clip_gradients(prior.parameters(), self.config.grad_clip)
        if bool(all_finite(loss, grad_norm)):
            scaler.step(opt)
            if self.ema is not None:
                self.ema.update(prior)
        else:
            self.skipped += 1
        scaler.update()
        opt.zero_grad(set_to_none=True)
        self.sched.step()
        return loss, grad_norm

    def log(self, step: int, loss: float, grad_norm: torch.Tensor) -> None:
        """Writes the scalars of ``step`` (loss, LR, gradient norm, skipped steps)."""
        self.run.logger.scalars(
            step,
            {"loss/prior": loss, "lr": self.sched.get_last_lr()[0], "grad_norm": grad_norm,
             "skipped_steps": self.skipped},
        )  # fmt: skip

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a checkpoint stores besides the states: the skip count and the model config."""
        return {"skipped_steps": self.skipped, "model_config": self.model_config.to_dict()}

    def train(self) -> dict[str, Any]:
        """Trains to ``config.steps`` (or the time budget / ``stop_at_step``) and writes the prior;
        returns what :func:`train_stage2` returns."""
        cfg, run = self.config, self.run
        last = math.nan
        with run:
            for step in run.steps():
                loss, grad_norm = self.train_step(step)
                done = step + 1
                last = float(loss.detach())
                run.show(loss=f"{last:.4f}", skipped=self.skipped)
                if cfg.log_every and done % cfg.log_every == 0:
                    self.log(done, last, grad_norm)
                if run.due(cfg.ckpt_every, done):
                    run.save(done, self.checkpoint_extra())
            run.save(run.step, self.checkpoint_extra())
            final = self.ema.module if self.ema is not None else self.prior
            if run.is_main:
                save_prior(final, self.model_config, run.out_dir / PRIOR_FILE)
        final.vq3d_config = self.model_config
        return {
            "step": run.step,
            "skipped_steps": self.skipped,
            "loss": last,
            "out_dir": run.out_dir,
            "prior_path": run.out_dir / PRIOR_FILE,
            "train_seconds": run.train_seconds,
            "prior": final,
            "codes_path": self.codes_path,
            "n_codes": int(self.indices.shape[0]),
            "conditional": self.conditional,
        }


def train_stage2(config: Stage2Config) -> dict[str, Any]:
    """Runs (or resumes) a stage-2 run (a :class:`Stage2Trainer`); see the module docstring.

    Returns:
        ``{"step", "skipped_steps", "loss" (last), "out_dir", "prior_path", "train_seconds", "prior" (the
        exported prior: the EMA average when ``ema_decay > 0``), "codes_path", "n_codes",
        "conditional"}``.
    """
    return Stage2Trainer(config).train()


__all__ = [
    "Stage2Config",
    "Stage2Trainer",
    "cached_codes",
    "extract_codes",
    "load_prior",
    "save_prior",
    "train_stage2",
]
