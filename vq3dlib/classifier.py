"""A small image classifier of the project: the judge of stage-2 samples and its FID feature network.

:class:`SceneClassifier` is a three-stage convolutional network (each stage a stride-2 convolution,
GroupNorm and SiLU; global average pooling) split timm-style into :meth:`~SceneClassifier.forward_features`
(the penultimate ``[B, D]`` features, used for FID by :mod:`vq3dlib.train.evaluate_stage2`) and
:meth:`~SceneClassifier.forward_head` (class logits). :func:`train_classifier` trains one on labelled
images (e.g. the procedural training scenes, whose labels are :data:`vq3dlib.data.procedural.CLASSES`:
the dominant object's colour family and type) within a step and time budget and reports its accuracy on
held-out images; :func:`classifier_accuracy` scores any labelled images.

Example:
    >>> import torch
    >>> images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 2
    >>> result = train_classifier(images, labels, num_classes=2, steps=2, batch_size=4)
    >>> result.steps, result.model(images).shape, result.model.forward_features(images).shape
    (2, torch.Size([8, 2]), torch.Size([8, 64]))
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq3dlib._validation import check_positive, check_tensor
from vq3dlib.train.loop import adamw


def _block(c_in: int, c_out: int) -> nn.Sequential:
    groups = math.gcd(8, c_out)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
    )


class SceneClassifier(nn.Module):
    """Small CNN: ``images [B, 3, H, W]`` in ``[0, 1]`` → logits ``[B, num_classes]``.

    Args:
        num_classes: classes ``K`` (at least 2).
        widths: channels of the stages; every stage halves the resolution.
        feature_dim: ``D``, width of the penultimate features (a linear layer on the pooled last stage).

    Example:
        >>> net = SceneClassifier(6)
        >>> x = torch.rand(2, 3, 32, 32)
        >>> net.forward_features(x).shape, net.forward_head(net.forward_features(x)).shape
        (torch.Size([2, 64]), torch.Size([2, 6]))
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64), feature_dim: int = 64) -> None:
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
        if len(widths) == 0:
            raise ValueError("widths must name at least one stage")
        for w in widths:
            check_positive("widths", w)
        check_positive("feature_dim", feature_dim)
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)
        stages, c = [], 3
        for w in widths:
            stages.append(_block(c, w))
            c = w
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Linear(c, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward_features(self, images: Tensor) -> Tensor:
        """Penultimate features ``[B, D]`` of ``images [B, 3, H, W]`` in ``[0, 1]`` (the FID features)."""
        check_tensor("images", images, shape=(None, 3, None, None), floating=True)
        x = self.stages(2.0 * images - 1.0).mean((2, 3))
        return F.silu(self.proj(x))

    def forward_head(self, features: Tensor) -> Tensor:
        """Class logits ``[B, K]`` from :meth:`forward_features`' ``[B, D]``."""
        return self.head(features)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``[B, K]`` of ``images [B, 3, H, W]`` in ``[0, 1]``."""
        return self.forward_head(self.forward_features(images))

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Predicted classes ``[B]`` (int64), in eval mode, ``batch_size`` images at a time.

        Example:
            >>> SceneClassifier(3).predict(torch.rand(5, 3, 8, 8)).shape
            torch.Size([5])
        """
        check_positive("batch_size", batch_size)
        was = self.training
        self.eval()
        try:
            dev = self.head.weight.device
            out = [
                self(images[i : i + batch_size].to(dev)).argmax(-1).cpu()
                for i in range(0, len(images), batch_size)
            ]
        finally:
            self.train(was)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Blurs each image of ``images [B, C, H, W]`` with a Gaussian of its own width ``sigma [B]`` (pixels).

    ``kornia.filters.gaussian_blur2d``, reflect-padded, on a window of three widths of the widest blur
    each side (cut to the image: ``2·min(r, H-1) + 1`` rows, the kernel renormalised); ``sigma = 0``
    leaves an image unchanged.

    Example:
        >>> x = torch.zeros(2, 1, 9, 9); x[:, :, 4, 4] = 1
        >>> y = gaussian_blur(x, torch.tensor([0.0, 1.0]))
        >>> bool(torch.equal(y[0], x[0])), round(float(y[1].sum()), 4), float(y[1, 0, 4, 4]) < 0.2
        (True, 1.0, True)
    """
    from kornia.filters import gaussian_blur2d

    check_tensor("images", images, ndim=4, floating=True)
    check_tensor("sigma", sigma, shape=(images.shape[0],), floating=True, finite=True)
    if bool((sigma < 0).any()):
        raise ValueError("sigma must be >= 0")
    _, _, h, w = images.shape
    radius = math.ceil(3.0 * float(sigma.max())) if images.shape[0] else 0
    if radius == 0:
        return images
    blurred = sigma > 0
    window = (2 * min(radius, h - 1) + 1, 2 * min(radius, w - 1) + 1)
    widths = sigma[blurred].to(images.dtype)[:, None].expand(-1, 2)
    out = images.clone()
    out[blurred] = gaussian_blur2d(images[blurred], window, widths, border_type="reflect")
    return out


def _check_labelled(images: Tensor, labels: Tensor, prefix: str = "") -> None:
    check_tensor(prefix + "images", images, shape=(None, 3, None, None), floating=True, finite=True)
    check_tensor(prefix + "labels", labels, shape=(images.shape[0],), integer=True)


def classifier_accuracy(model: SceneClassifier, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images [N, 3, H, W]`` that ``model`` assigns to their ``labels [N]``.

    Example:
        >>> net = SceneClassifier(2)
        >>> x = torch.rand(4, 3, 8, 8)
        >>> classifier_accuracy(net, x, net.predict(x))
        1.0
    """
    _check_labelled(images, labels)
    if images.shape[0] == 0:
        raise ValueError("images is empty")
    return float((model.predict(images) == labels.cpu()).float().mean())


@dataclass
class ClassifierResult:
    """What :func:`train_classifier` returns.

    Attributes:
        model: the trained :class:`SceneClassifier` (eval mode).
        accuracy: accuracy on the held-out images (NaN without them).
        train_accuracy: accuracy on the training images.
        steps: optimizer steps taken; seconds: training time.
    """

    model: SceneClassifier
    accuracy: float
    train_accuracy: float
    steps: int
    seconds: float


def train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    *,
    held_out: tuple[Tensor, Tensor] | None = None,
    steps: int = 400,
    time_budget_s: float = 0.0,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    blur_sigma: float = 0.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ClassifierResult:
    """Trains a :class:`SceneClassifier` on ``images [N, 3, H, W]`` in ``[0, 1]`` with ``labels [N]``.

    AdamW with a cosine learning-rate decay over ``steps``, random horizontal flips (class labels of
    scenes do not change under a mirror), with ``blur_sigma > 0`` a Gaussian blur of random width in
    ``[0, blur_sigma]`` pixels on half of the images (a class does not change with sharpness, so the
    classifier judges what a blurred rendering shows rather than how sharp it is), batches drawn
    with a generator seeded by ``seed`` (the weights' initialisation too, without touching the global
    RNG). Training stops after ``steps`` or, when ``time_budget_s > 0``, once that many seconds have
    passed.

    Args:
        images, labels: the training set; labels in ``[0, num_classes)``.
        num_classes: classes (default ``labels.max() + 1``, at least 2).
        held_out: optional ``(images, labels)`` for :attr:`ClassifierResult.accuracy`.
        steps, time_budget_s, batch_size, lr, weight_decay, seed: the optimisation.
        blur_sigma: the widest blur of the augmentation, in pixels (0: no blur).
        device: where to train.

    Returns:
        a :class:`ClassifierResult`.

    Example:
        >>> x = torch.rand(32, 3, 8, 8)
        >>> y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()   # "more red than green"
        >>> r = train_classifier(x[:24], y[:24], held_out=(x[24:], y[24:]), steps=60, batch_size=8)
        >>> r.train_accuracy > 0.7, 0.0 <= r.accuracy <= 1.0
        (True, True)
    """
    _check_labelled(images, labels)
    if images.shape[0] == 0:
        raise ValueError("images is empty")
    if held_out is not None:
        _check_labelled(*held_out, prefix="held_out ")
    check_positive("steps", steps)
    check_positive("time_budget_s", time_budget_s, allow_zero=True)
    check_positive("batch_size", batch_size)
    check_positive("lr", lr)
    check_positive("blur_sigma", blur_sigma, allow_zero=True)
    k = int(num_classes) if num_classes is not None else max(int(labels.max()) + 1, 2)
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(
            f"labels must be in [0, {k}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SceneClassifier(k).to(device)
    opt = adamw(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = images.to(device), labels.to(device).long()
    n, b = x_all.shape[0], min(batch_size, x_all.shape[0])
    model.train()
    t0, done = time.perf_counter(), 0
    while done < steps and not (time_budget_s and time.perf_counter() - t0 >= time_budget_s):
        idx = torch.randint(n, (b,), generator=gen)
        flip = torch.rand(b, generator=gen) < 0.5
        x = x_all[idx]
        x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
        if blur_sigma > 0:
            sigma = torch.rand(b, generator=gen) * blur_sigma * (torch.rand(b, generator=gen) < 0.5)
            x = gaussian_blur(x, sigma.to(device))
        loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done += 1
    seconds = time.perf_counter() - t0
    model.eval()
    acc = classifier_accuracy(model, *held_out) if held_out is not None and len(held_out[0]) else math.nan
    return ClassifierResult(model, acc, classifier_accuracy(model, images, labels), done, seconds)


__all__ = ["ClassifierResult", "SceneClassifier", "classifier_accuracy", "gaussian_blur", "train_classifier"]
