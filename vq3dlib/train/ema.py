"""Exponential moving average of model weights (:class:`ModelEMA`).

Example:
    >>> import torch
    >>> from vq3dlib.train.ema import ModelEMA
    >>> model = torch.nn.Linear(2, 2)
    >>> ema = ModelEMA(model, decay=0.9)
    >>> with torch.no_grad():
    ...     _ = model.weight.add_(1.0)
    >>> ema.update()
    >>> torch.allclose(ema.module.weight, model.weight - 0.9)
    True
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel``/``torch.compile`` wrappers.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(1, 1)
        >>> unwrap_model(torch.nn.DataParallel(m)) is m
        True
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class ModelEMA(nn.Module):
    """Keeps an exponential moving average of a model's floating-point parameters.

    After the ``t``-th call of :meth:`update` (``t = 1, 2, ...``) every floating parameter is::

        ema = d_t * ema + (1 - d_t) * param,    d_t = decay * (1 - exp(-t / warmup))

    (``d_t = decay`` when ``warmup == 0``). The warmup keeps early averages from being dominated by
    the random initialisation. Buffers (e.g. BatchNorm statistics) and non-floating parameters are
    copied as they are. The average lives in :attr:`module`, a deep copy of the model in eval mode
    without gradients; it is an ``nn.Module`` so ``state_dict``/``load_state_dict`` (weights plus the
    update count) work as for any module.

    Args:
        model: the model to average (``DistributedDataParallel``/compiled wrappers are unwrapped).
        decay: asymptotic decay in ``[0, 1)``, e.g. 0.999.
        warmup: time constant of the decay ramp in updates (0: no ramp).
        device: where to keep the average (default: where the model is).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 4)
        >>> ema = ModelEMA(net, decay=0.999, warmup=100)
        >>> ema.update(); ema.num_updates.item(), round(ema.current_decay(), 4)
        (1, 0.0099)
        >>> ema(torch.zeros(1, 4)).shape                         # forward runs the averaged model
        torch.Size([1, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        warmup: float = 0.0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.decay = float(decay)
        self.warmup = float(warmup)
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)
        if device is not None:
            self.module.to(device)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        object.__setattr__(self, "_source", model)  # a plain reference, not a registered submodule

    def current_decay(self) -> float:
        """``d_t`` for the last update count ``t`` (the decay the last :meth:`update` used)."""
        t = int(self.num_updates)
        if self.warmup == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-t / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        """Moves the average towards ``model``'s current weights (default: the model given at init).

        ``model`` must have the same parameter and buffer names as the averaged model.
        """
        src = unwrap_model(model if model is not None else self._source)
        self.num_updates += 1
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        ema_f: list[Tensor] = []
        src_f: list[Tensor] = []
        for name, p in src.named_parameters():
            if name not in ema_params:
                raise KeyError(f"parameter {name!r} of model is missing from the EMA copy")
            e = ema_params[name]
            if e.is_floating_point():
                ema_f.append(e)
                src_f.append(p.detach().to(e.device, e.dtype))
            else:
                e.copy_(p)
        if ema_f:
            torch._foreach_lerp_(ema_f, src_f, 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in src.named_buffers():
            if name in ema_buffers:
                ema_buffers[name].copy_(b)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Writes the averaged parameters and buffers into ``model`` (e.g. before evaluation/export).

        Example:
            >>> import torch
            >>> net = torch.nn.Linear(2, 2); ema = ModelEMA(net)
            >>> other = torch.nn.Linear(2, 2); ema.copy_to(other)
            >>> torch.equal(other.weight, net.weight)
            True
        """
        target = unwrap_model(model)
        missing, unexpected = target.load_state_dict(self.module.state_dict(), strict=False)
        if missing or unexpected:
            raise KeyError(f"model does not match the EMA copy: missing {missing}, unexpected {unexpected}")

    @staticmethod
    def averaged_state_dict(ema_state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The averaged model's own state dict, taken from a saved ``ModelEMA`` state dict (its
        ``module.*`` entries; the update count is left out), e.g. to load a checkpoint's EMA weights
        into a fresh model without building a ``ModelEMA``.

        Example:
            >>> import torch
            >>> net = torch.nn.Linear(2, 2)
            >>> sorted(ModelEMA.averaged_state_dict(ModelEMA(net).state_dict()))
            ['bias', 'weight']
        """
        prefix = "module."
        return {k.removeprefix(prefix): v for k, v in ema_state.items() if k.startswith(prefix)}

    def forward(self, *args, **kwargs):
        """Runs the averaged model."""
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> ModelEMA:
        """The averaged model stays in eval mode (``ModelEMA.train()`` is a no-op for it)."""
        super().train(mode)
        self.module.eval()
        return self
