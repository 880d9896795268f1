"""Stage-2 training: the autoregressive :class:`~vq3dlib.models.CodePrior` on frozen stage-1 codes.

The stage-1 model encodes every training image once (:func:`extract_codes`); the code indices and
class labels are cached in a safetensors file (reused while the stage-1 weights file — the resolved
``model.safetensors`` or checkpoint, by path, size and modification time — and the data settings are
unchanged), and the prior trains on that cache only — no image is decoded or rendered
during stage 2. Class labels come from the dataset (``label`` of :class:`~vq3dlib.data.ProceduralScenes`);
a dataset without labels trains an unconditional prior (every label is the null label).

The loop shares the stage-1 machinery: step-derived data order, AdamW with warmup + cosine, gradient
clipping, NaN/Inf steps skipped and counted, bf16/fp16 autocast, optional EMA of the weights, a time
budget, DDP under ``torchrun``, atomic checkpoints with bit-exact resume on CPU. The result is
``out_dir/prior.safetensors`` (:func:`load_prior`; the EMA weights when ``ema_decay > 0``).

Example (``train_stage2(cfg)`` runs it; ``vq3d train --stage 2 --stage1 runs/stage1`` from a shell):
    >>> cfg = Stage2Config(stage1="runs/stage1", steps=500, prior_overrides={"prior_width": 64})
    >>> cfg.batch_size, cfg.prior_overrides
    (32, {'prior_width': 64})
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vq3dlib._validation import check_choice, check_positive
from vq3dlib.train.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from vq3dlib.train.distributed import barrier, cleanup, init_distributed, seed_everything
from vq3dlib.train.ema import ModelEMA
from vq3dlib.train.logger import TrainLogger
from vq3dlib.train.loop import AMP_MODES, all_finite, autocast, resolve_device, step_indices, warmup_cosine

PRIOR_FILE = "prior.safetensors"
CODES_FILE = "codes.safetensors"


@dataclass
class Stage2Config:
    """A stage-2 run; every field can be set from the command line (``--set k=v``).

    Attributes:
        stage1: the stage-1 model: a run folder, a checkpoint or a ``model.safetensors``
            (:func:`~vq3dlib.train.stage1.load_stage1_model`).
        prior_overrides: ``prior_*`` / ``num_classes`` fields of the model config to change
            (``--set prior.prior_width=256``).
        data, train_size, data_seed: the images to encode (as in
            :class:`~vq3dlib.train.stage1.Stage1Config`; use the stage-1 values). An image folder is
            encoded whole (stage 1's held-out images included).
        codes_cache: where the extracted codes live (default ``out_dir/codes.safetensors``).
        steps, batch_size, lr, betas, weight_decay, warmup_steps, min_lr_ratio, grad_clip, amp: as in
            stage 1.
        ema_decay, ema_warmup: EMA of the prior's weights when ``ema_decay > 0``
            (:class:`~vq3dlib.train.ModelEMA`); ``prior.safetensors`` then holds the average.
        log_every, ckpt_every, keep_last, out_dir, seed, device, time_budget_s, stop_at_step, resume,
            progress: as in stage 1.
    """

    stage1: str = "runs/stage1"
    prior_overrides: dict[str, Any] = field(default_factory=dict)
    data: str = "procedural"
    train_size: int = 1024
    data_seed: int = 0
    codes_cache: str = ""
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    amp: str = "none"
    ema_decay: float = 0.0
    ema_warmup: float = 100.0
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    out_dir: str = "runs/stage2"
    seed: int = 0
    device: str = "auto"
    time_budget_s: float = 0.0
    stop_at_step: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name in ("steps", "batch_size", "lr", "keep_last", "train_size"):
            check_positive(name, getattr(self, name))
        for name in (
            "warmup_steps",
            "grad_clip",
            "weight_decay",
            "log_every",
            "ckpt_every",
            "seed",
            "data_seed",
            "ema_decay",
            "ema_warmup",
            "time_budget_s",
            "stop_at_step",
        ):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_choice("amp", self.amp, AMP_MODES)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
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
    from safetensors import safe_open
    from safetensors.torch import load_file

    from vq3dlib.models import CodePrior, VQ3DConfig

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
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    if "vq3d_prior_config" in meta:
        cfg = VQ3DConfig.from_dict(json.loads(meta["vq3d_prior_config"]))
        state = load_file(str(p), device=str(torch.device(map_location)))
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


# ---------------------------------------------------------------------------------- loop


def train_stage2(config: Stage2Config) -> dict[str, Any]:
    """Runs (or resumes) a stage-2 run; see the module docstring.

    Returns:
        ``{"step", "skipped_steps", "loss" (last), "out_dir", "prior_path", "train_seconds", "prior" (the
        exported prior: the EMA average when ``ema_decay > 0``), "codes_path", "n_codes",
        "conditional"}``.
    """
    from vq3dlib.models import CodePrior
    from vq3dlib.train.stage1 import Stage1Config, build_datasets, load_stage1_model, stage1_model_file

    if not isinstance(config, Stage2Config):
        raise TypeError(f"config must be a Stage2Config, got {type(config).__name__}")
    cfg = config
    device = resolve_device(cfg.device)
    info = init_distributed(device="cuda" if device.type == "cuda" else "cpu")
    if info.world_size > 1:
        device = info.device
    rank, world, main = info.rank, info.world_size, info.is_main
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / "checkpoints"

    stage1_file = stage1_model_file(cfg.stage1)  # the file load_stage1_model reads
    stage1 = load_stage1_model(stage1_file, map_location=device)
    model_cfg = stage1.config.replace(**cfg.prior_overrides) if cfg.prior_overrides else stage1.config
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
    codes_path = Path(cfg.codes_cache) if cfg.codes_cache else out_dir / CODES_FILE

    def compute() -> dict[str, torch.Tensor]:
        train_set = build_datasets(data_cfg, stage1.config.image_size)[0]
        return extract_codes(stage1, train_set, progress=cfg.progress and main)

    if main:
        codes = cached_codes(codes_path, signature, compute)
    barrier()
    if not main:
        codes = cached_codes(codes_path, signature, None)
    indices, labels = codes["indices"].to(device), codes["labels"].to(device)
    if int(labels.max()) >= model_cfg.num_classes and model_cfg.num_classes > 0:
        raise ValueError(
            f"the dataset has labels up to {int(labels.max())} but the prior has num_classes="
            f"{model_cfg.num_classes}; set prior.num_classes"
        )
    conditional = bool((labels >= 0).all()) and model_cfg.num_classes > 0

    seed_everything(cfg.seed, per_rank=False)
    prior = CodePrior.from_config(model_cfg).to(device).train()
    opt = torch.optim.AdamW(prior.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    objects: dict[str, Any] = {"prior": prior, "opt": opt, "sched": sched, "scaler": scaler}
    ema = ModelEMA(prior, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    if ema is not None:
        objects["ema"] = ema
    start, skipped = 0, 0
    if cfg.resume and latest_checkpoint(ckpt_dir) is not None:
        ckpt = load_checkpoint(ckpt_dir, objects, map_location=device)
        start, skipped = ckpt.step, int(ckpt.extra.get("skipped_steps", 0))
        if world > 1:
            seed_everything(cfg.seed + 7919 * start, per_rank=True)
    else:
        seed_everything(cfg.seed, per_rank=True)
    net: nn.Module = prior
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(prior, device_ids=[device.index] if device.type == "cuda" else None)

    logger = TrainLogger(out_dir / "logs", enabled=main)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    def save(step: int) -> None:
        if main:
            save_checkpoint(
                checkpoint_path(ckpt_dir, step),
                objects,
                step=step,
                config=cfg,
                keep_last=cfg.keep_last,
                extra={"skipped_steps": skipped, "model_config": model_cfg.to_dict()},
            )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.steps,
        initial=start,
        disable=not (cfg.progress and main),
        desc="stage 2",
        unit="step",
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    step, last = start, math.nan
    try:
        while step < cfg.steps and not (cfg.stop_at_step and step >= cfg.stop_at_step):
            if cfg.time_budget_s and time.perf_counter() - t0 > cfg.time_budget_s:
                break
            idx = step_indices(step, indices.shape[0], cfg.batch_size, cfg.seed, rank, world).to(device)
            x = indices[idx]
            y = labels[idx] if conditional else torch.full_like(idx, prior.null_label)
            if conditional and prior.class_dropout > 0:
                drop = torch.rand(y.shape, device=device) < prior.class_dropout
                y = y.masked_fill(drop, prior.null_label)
            with autocast(device, cfg.amp):
                logits = net(x, y)
            loss = F.cross_entropy(logits.reshape(-1, prior.vocab_size).float(), x.reshape(-1))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            gnorm = torch.nn.utils.clip_grad_norm_(
                prior.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            )
            if bool(all_finite(loss, gnorm)):
                scaler.step(opt)
                if ema is not None:
                    ema.update(prior)
            else:
                skipped += 1
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            last = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last:.4f}", skipped=skipped)
            if cfg.log_every and step % cfg.log_every == 0:
                logger.scalars(
                    step,
                    {
                        "loss/prior": last,
                        "lr": sched.get_last_lr()[0],
                        "grad_norm": gnorm,
                        "skipped_steps": skipped,
                    },
                )
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
                save(step)
        train_seconds = time.perf_counter() - t0
        bar.close()
        save(step)
        final = ema.module if ema is not None else prior
        if main:
            save_prior(final, model_cfg, out_dir / PRIOR_FILE)
    finally:
        bar.close()
        logger.close()
        if world > 1:
            cleanup()
    final.vq3d_config = model_cfg
    return {
        "step": step,
        "skipped_steps": skipped,
        "loss": last,
        "out_dir": out_dir,
        "prior_path": out_dir / PRIOR_FILE,
        "train_seconds": train_seconds,
        "prior": final,
        "codes_path": codes_path,
        "n_codes": int(indices.shape[0]),
        "conditional": conditional,
    }


__all__ = ["Stage2Config", "cached_codes", "extract_codes", "load_prior", "save_prior", "train_stage2"]
