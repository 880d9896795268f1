"""Training: the run scaffold both stages share (:mod:`~vq3dlib.train.run`: :class:`RunConfig`,
:class:`TrainingRun`), the stages' trainers (:mod:`~vq3dlib.train.stage1`, :mod:`~vq3dlib.train.stage2`),
held-out evaluation (:mod:`~vq3dlib.train.evaluate`), and the pieces under them: checkpoints
(:mod:`~vq3dlib.train.checkpoint`), distributed helpers (:mod:`~vq3dlib.train.distributed`), weight
averaging (:mod:`~vq3dlib.train.ema`), logs (:mod:`~vq3dlib.train.logger`) and step helpers
(:mod:`~vq3dlib.train.loop`).

Example:
    >>> import torch
    >>> from vq3dlib.train import ModelEMA
    >>> ModelEMA(torch.nn.Linear(2, 2), decay=0.99).decay
    0.99
"""

from vq3dlib.train.checkpoint import (
    Checkpoint,
    checkpoint_path,
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from vq3dlib.train.distributed import (
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    is_distributed,
    is_main_process,
    local_rank,
    rank,
    seed_everything,
    world_size,
)
from vq3dlib.train.ema import ModelEMA, unwrap_model
from vq3dlib.train.run import RunConfig, TrainingRun

__all__ = [
    "Checkpoint",
    "ModelEMA",
    "RunConfig",
    "TrainingRun",
    "all_reduce_mean",
    "barrier",
    "checkpoint_path",
    "cleanup",
    "get_rng_state",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "latest_checkpoint",
    "load_checkpoint",
    "local_rank",
    "prune_checkpoints",
    "rank",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "unwrap_model",
    "world_size",
]
