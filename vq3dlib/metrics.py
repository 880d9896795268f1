"""Evaluation metrics: image quality, aligned depth error, codebook usage and FID.

* :func:`psnr`, :func:`ssim` — per-image reconstruction quality (SSIM from ``kornia.metrics``).
* :func:`depth_abs_rel`, :func:`depth_delta`, :func:`depth_pearson` — depth error after a per-image
  scale/shift alignment of the prediction to the target (monocular-depth protocol).
* :func:`codebook_usage` — perplexity and used fraction of quantizer codes.
* :func:`frechet_distance`, :class:`FIDFeatures`, :func:`load_inception_features` — FID from the
  features of any extractor (Inception weights only from a local file, never downloaded).

Every per-image metric returns a ``[B]`` tensor; average it yourself (``.mean()``) so that batches of
different sizes combine correctly.

Example:
    >>> import torch
    >>> from vq3dlib.metrics import psnr
    >>> x = torch.rand(2, 3, 8, 8)
    >>> psnr(x, x.clamp(0.0, 0.9)).shape
    torch.Size([2])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from vq3dlib._validation import check_choice, check_positive, check_tensor

INCEPTION_ENV = "VQ3DLIB_INCEPTION_WEIGHTS"


# ----------------------------------------------------------------------------------- images


def _check_pair(pred: Tensor, target: Tensor, mask: Tensor | None, min_ndim: int = 2) -> None:
    check_tensor("pred", pred, ndim=tuple(range(min_ndim, 9)), floating=True)
    check_tensor("target", target, shape=tuple(pred.shape), floating=True, device=pred.device)
    if mask is not None:
        check_tensor("mask", mask, ndim=pred.dim(), dtypes=(torch.bool,), device=pred.device)
        ok = all(m in (1, p) for m, p in zip(mask.shape, pred.shape)) and mask.shape[0] == pred.shape[0]
        if not ok:
            raise ValueError(
                f"mask must have shape {list(pred.shape)} or broadcast to it (size-1 dims other than "
                f"the batch), got {list(mask.shape)}"
            )


def _per_image_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over all but the first dim, over ``mask`` (broadcast) when given; NaN where empty."""
    flat = values.flatten(1)
    if mask is None:
        return flat.mean(1) if flat.shape[1] else flat.new_full((flat.shape[0],), float("nan"))
    m = mask.expand_as(values).flatten(1)
    total = torch.where(m, flat, torch.zeros_like(flat)).sum(1)
    return total / m.sum(1).to(flat.dtype)


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB: ``10 log10(data_range^2 / MSE)``.

    Args:
        pred: ``[B, ...]`` images (e.g. ``[B, 3, H, W]``).
        target: ``[B, ...]`` reference images, same shape.
        data_range: value range of the images (1 for ``[0, 1]``, 255 for 8-bit values).
        mask: optional bool ``[B, ...]`` (size-1 dims broadcast, e.g. ``[B, 1, H, W]``): the pixels
            that count. An image with an empty mask gets NaN.

    Returns:
        ``[B]`` PSNR; ``inf`` for identical images.

    Example:
        >>> import torch
        >>> target = torch.zeros(1, 3, 4, 4)
        >>> psnr(target + 0.1, target).round(decimals=3)      # MSE 0.01 -> 20 dB
        tensor([20.])
    """
    _check_pair(pred, target, mask)
    check_tensor("pred", pred, finite=True)
    check_tensor("target", target, finite=True)
    check_positive("data_range", data_range)
    mse = _per_image_mean((pred - target).square(), mask)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim(
    pred: Tensor,
    target: Tensor,
    data_range: float = 1.0,
    *,
    window_size: int = 11,
    padding: str = "valid",
) -> Tensor:
    """Structural similarity per image (mean of ``kornia.metrics.ssim``'s map over channels and pixels).

    Gaussian window (sigma 1.5), ``c1 = (0.01 L)^2``, ``c2 = (0.03 L)^2``; with ``padding="valid"``
    the borders are dropped as in the original MATLAB code, scikit-image and torchmetrics.

    Args:
        pred: ``[B, C, H, W]`` images.
        target: ``[B, C, H, W]`` reference images.
        data_range: value range ``L`` of the images.
        window_size: odd Gaussian window size; ``H`` and ``W`` must be at least this large.
        padding: ``"valid"`` (drop borders) or ``"same"`` (reflect padding).

    Returns:
        ``[B]`` SSIM in ``[-1, 1]``, 1 for identical images.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 3, 16, 16)
        >>> ssim(x, x).round(decimals=4)
        tensor([1., 1.])
    """
    import kornia.metrics

    check_tensor("pred", pred, ndim=4, floating=True)
    check_tensor("target", target, shape=tuple(pred.shape), floating=True, device=pred.device)
    check_positive("data_range", data_range)
    check_choice("padding", padding, ("valid", "same"))
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer, got {window_size}")
    if min(pred.shape[-2:]) < window_size:
        raise ValueError(
            f"pred and target must be at least window_size={window_size} pixels high and wide, "
            f"got {list(pred.shape[-2:])}; pass a smaller window_size"
        )
    if pred.shape[0] == 0:
        return pred.new_zeros(0)
    smap = kornia.metrics.ssim(pred, target, window_size, max_val=float(data_range), eps=0.0, padding=padding)
    return smap.flatten(1).mean(1)


# ------------------------------------------------------------------------------------ depth


def _aligned_depths(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None,
    space: str | None,
    eps: float,
    max_depth: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(aligned pred depth, target with invalid pixels replaced, valid mask)``, all ``[B, ...]``;
    an aligned depth is clamped to ``eps`` from below, and any depth to ``max_depth`` from above."""
    if max_depth is not None:
        check_positive("max_depth", max_depth)
    from vq3dlib.losses.depth import align_scale_shift

    _check_pair(pred, target, mask)
    if mask is not None and tuple(mask.shape) != tuple(pred.shape):
        mask = mask.expand_as(pred)
    valid = torch.isfinite(target) & (target > eps) & torch.isfinite(pred)
    if mask is not None:
        valid = valid & mask
    one = torch.ones_like(target)
    target = torch.where(valid, target, one)
    pred = torch.where(valid, pred, one)
    if space is None:
        aligned = pred
    else:
        aligned = align_scale_shift(pred, target, valid, space=space, eps=eps).aligned
        if space == "disparity":
            aligned = 1.0 / aligned.clamp_min(eps)
        aligned = aligned.clamp_min(eps)
    if max_depth is not None:
        aligned = aligned.clamp(max=max_depth)
    return aligned, target, valid


def depth_abs_rel(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    space: str | None = "disparity",
    eps: float = 1e-6,
    max_depth: float | None = None,
) -> Tensor:
    """Absolute relative depth error per image, ``mean(|d - d*| / d*)``, after scale/shift alignment.

    ``pred`` is fitted to ``target`` per image with :func:`vq3dlib.losses.align_scale_shift` (least
    squares over the valid pixels) in disparity space (the usual protocol for monocular/relative
    depth) or in depth space; ``space=None`` compares as given (metric depth).

    Args:
        pred: ``[B, ...]`` predicted depth (e.g. ``[B, 1, H, W]``).
        target: ``[B, ...]`` ground-truth depth; pixels that are ``<= eps`` or non-finite are invalid.
        mask: optional bool ``[B, ...]`` (size-1 dims broadcast) restricting the valid pixels.
        space: ``"disparity"``, ``"depth"`` or ``None`` (no alignment).
        eps: depth clamp (aligned depths are clamped to it, so no division by zero).
        max_depth: cap of the aligned depth (as in the MiDaS evaluation protocol: an aligned disparity
            near 0 would otherwise give a huge depth that dominates the mean); ``None``: no cap.

    Returns:
        ``[B]``; NaN for an image without valid pixels.

    Example:
        >>> import torch
        >>> depth = torch.rand(2, 1, 8, 8) + 1.0
        >>> depth_abs_rel(1.0 / (3.0 / depth + 0.5), depth) < 1e-4   # affine in disparity: no error
        tensor([True, True])
    """
    if space is not None:
        check_choice("space", space, ("disparity", "depth"))
    check_positive("eps", eps)
    aligned, target, valid = _aligned_depths(pred, target, mask, space, eps, max_depth)
    return _per_image_mean((aligned - target).abs() / target, valid)


def depth_delta(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    threshold: float = 1.25,
    *,
    space: str | None = "disparity",
    eps: float = 1e-6,
    max_depth: float | None = None,
) -> Tensor:
    """Fraction of pixels with ``max(d / d*, d* / d) < threshold`` per image (δ<1.25), after alignment.

    Alignment, validity and arguments as in :func:`depth_abs_rel`; ``threshold`` is usually 1.25,
    1.25² or 1.25³.

    Returns:
        ``[B]`` in ``[0, 1]`` (higher is better); NaN for an image without valid pixels.

    Example:
        >>> import torch
        >>> depth = torch.rand(1, 1, 8, 8) + 1.0
        >>> depth_delta(2.0 * depth, depth, space="depth")
        tensor([1.])
    """
    if space is not None:
        check_choice("space", space, ("disparity", "depth"))
    check_positive("eps", eps)
    if threshold <= 1.0:
        raise ValueError(f"threshold must be > 1, got {threshold}")
    aligned, target, valid = _aligned_depths(pred, target, mask, space, eps, max_depth)
    ratio = torch.maximum(aligned / target, target / aligned)
    return _per_image_mean((ratio < threshold).to(pred.dtype), valid)


def depth_pearson(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pearson correlation between predicted and target depth per image (invariant to scale/shift).

    Args:
        pred: ``[B, ...]`` predicted depth.
        target: ``[B, ...]`` target depth; non-finite or ``<= 0`` pixels are invalid.
        mask: optional bool ``[B, ...]`` restricting the valid pixels.

    Returns:
        ``[B]`` in ``[-1, 1]``; NaN if an image has fewer than two valid pixels or a constant map.

    Example:
        >>> import torch
        >>> depth = torch.rand(2, 1, 8, 8) + 1.0
        >>> depth_pearson(-depth + 5.0, depth).round(decimals=4)
        tensor([-1., -1.])
    """
    pred, target, valid = _aligned_depths(pred, target, mask, None, 0.0)
    m = valid.flatten(1).to(pred.dtype)
    x, y = pred.flatten(1), target.flatten(1)
    n = m.sum(1)
    mx = (x * m).sum(1) / n
    my = (y * m).sum(1) / n
    dx, dy = (x - mx[:, None]) * m, (y - my[:, None]) * m
    r = (dx * dy).sum(1) / (dx.square().sum(1) * dy.square().sum(1)).sqrt()
    return torch.where(n >= 2, r, torch.full_like(r, float("nan"))).clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------- codebook


def codebook_usage(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Perplexity and used fraction of a codebook from the code indices a quantizer produced.

    Perplexity is ``exp(entropy)`` of the code histogram (``codebook_size`` for perfectly uniform
    use, 1 if one code is used); used fraction is the share of codes used at least once.

    Args:
        indices: integer tensor of any shape with values in ``[0, codebook_size)``.
        codebook_size: number of codes ``K``.

    Returns:
        ``{"perplexity": [], "used_fraction": [], "counts": [K]}`` (float32 scalars, int64 counts);
        perplexity and used fraction are 0 for empty ``indices``.

    Example:
        >>> import torch
        >>> u = codebook_usage(torch.tensor([[0, 1], [2, 3]]), codebook_size=8)
        >>> float(u["perplexity"]), float(u["used_fraction"])
        (4.0, 0.5)
    """
    check_tensor("indices", indices, integer=True)
    if int(codebook_size) != codebook_size or codebook_size < 1:
        raise ValueError(f"codebook_size must be a positive integer, got {codebook_size}")
    flat = indices.detach().reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= codebook_size):
        raise ValueError(
            f"indices must be in [0, {codebook_size}), got values in [{int(flat.min())}, {int(flat.max())}]"
        )
    counts = torch.bincount(flat.long(), minlength=int(codebook_size))
    total = counts.sum()
    probs = counts.float() / total.clamp_min(1).float()
    entropy = -torch.special.xlogy(probs, probs).sum()
    perplexity = torch.where(total > 0, entropy.exp(), torch.zeros_like(entropy))
    used = (counts > 0).float().mean()
    return {"perplexity": perplexity, "used_fraction": used, "counts": counts}


# --------------------------------------------------------------------------------------- FID


def _sqrtm_psd(a: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigendecomposition, negatives clipped)."""
    evals, evecs = torch.linalg.eigh(0.5 * (a + a.T))
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Fréchet distance between two Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (FID's formula).

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``, computed in float64.
    ``tr((sigma1 sigma2)^(1/2))`` is taken as ``tr((s sigma2 s)^(1/2))`` with ``s = sigma1^(1/2)`` (a
    similar, symmetric PSD matrix), so only symmetric eigendecompositions are needed (no scipy,
    no complex parts).

    Args:
        mu1, mu2: ``[D]`` means.
        sigma1, sigma2: ``[D, D]`` symmetric PSD covariances.

    Returns:
        float64 scalar tensor, ``>= 0`` up to rounding.

    Example:
        >>> import torch
        >>> mu, sigma = torch.zeros(3), torch.eye(3)
        >>> float(frechet_distance(mu, sigma, mu + 1.0, 4.0 * sigma))   # 3 + (1 + 4 - 2*2) * 3
        6.0
    """
    check_tensor("mu1", mu1, ndim=1, floating=True, finite=True)
    d = mu1.shape[0]
    check_tensor("mu2", mu2, shape=(d,), floating=True, finite=True)
    check_tensor("sigma1", sigma1, shape=(d, d), floating=True, finite=True)
    check_tensor("sigma2", sigma2, shape=(d, d), floating=True, finite=True)
    dev = mu1.device
    mu1, mu2, sigma1, sigma2 = (t.to(device=dev, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    s = _sqrtm_psd(sigma1)
    m = s @ sigma2 @ s
    tr_covmean = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0.0).sqrt().sum()
    return (mu1 - mu2).square().sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2.0 * tr_covmean


class FIDFeatures:
    """Running mean and covariance of features (float64 sums), for FID between two image sets.

    Args:
        extractor: callable ``images [B, 3, H, W] -> features [B, D]`` (e.g. the module from
            :func:`load_inception_features`, or any encoder); optional if you pass features to
            :meth:`update_features` directly.

    Use one accumulator per image set, then ``real.fid(fake)``. Accumulators from several processes
    can be combined with :meth:`merge` (or by all-reducing :attr:`n`, ``sum`` and ``sum_outer``).

    Example:
        >>> import torch
        >>> real, fake = FIDFeatures(), FIDFeatures()
        >>> real.update_features(torch.randn(500, 4)); fake.update_features(torch.randn(500, 4) + 1.0)
        >>> 3.0 < float(real.fid(fake)) < 5.0                       # about ||1||^2 = 4
        True
    """

    def __init__(self, extractor: Callable[[Tensor], Tensor] | None = None) -> None:
        if extractor is not None and not callable(extractor):
            raise TypeError(f"extractor must be callable or None, got {type(extractor).__name__}")
        self.extractor = extractor
        self.reset()

    def reset(self) -> None:
        """Forgets all features seen so far."""
        self.n = 0
        self.sum: Tensor | None = None
        self.sum_outer: Tensor | None = None

    @torch.no_grad()
    def update(self, images: Tensor) -> None:
        """Extracts features from ``images`` with the extractor and accumulates them.

        Args:
            images: whatever the extractor takes, typically ``[B, 3, H, W]`` in ``[0, 1]``.
        """
        if self.extractor is None:
            raise ValueError(
                "FIDFeatures has no extractor; pass one to the constructor or use update_features"
            )
        self.update_features(self.extractor(images))

    @torch.no_grad()
    def update_features(self, features: Tensor) -> None:
        """Accumulates ``features [B, D]`` (any float dtype; summed in float64 on their device)."""
        check_tensor("features", features, ndim=2, floating=True, finite=True)
        if self.sum is not None and features.shape[1] != self.sum.shape[0]:
            raise ValueError(f"features must have {self.sum.shape[0]} columns, got {features.shape[1]}")
        f = features.detach().to(torch.float64)
        if self.sum is None:
            self.sum = f.new_zeros(f.shape[1])
            self.sum_outer = f.new_zeros(f.shape[1], f.shape[1])
        self.sum += f.sum(0)
        self.sum_outer += f.T @ f
        self.n += f.shape[0]

    def merge(self, other: FIDFeatures) -> None:
        """Adds the statistics of ``other`` (e.g. from another process) to this accumulator."""
        if other.sum is None:
            return
        if self.sum is None:
            self.sum, self.sum_outer = other.sum.clone(), other.sum_outer.clone()
        else:
            if other.sum.shape != self.sum.shape:
                raise ValueError(f"other has {other.sum.shape[0]} features, expected {self.sum.shape[0]}")
            self.sum += other.sum.to(self.sum.device)
            self.sum_outer += other.sum_outer.to(self.sum.device)
        self.n += other.n

    def compute(self) -> tuple[Tensor, Tensor]:
        """``(mean [D], covariance [D, D])`` in float64; the covariance is unbiased (``n - 1``)."""
        if self.sum is None or self.n < 2:
            raise ValueError(f"FIDFeatures needs at least 2 samples to estimate a covariance, got {self.n}")
        mu = self.sum / self.n
        cov = (self.sum_outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu, 0.5 * (cov + cov.T)

    def fid(self, other: FIDFeatures) -> Tensor:
        """:func:`frechet_distance` between this feature set and ``other``."""
        mu1, s1 = self.compute()
        mu2, s2 = other.compute()
        return frechet_distance(mu1, s1, mu2.to(mu1.device), s2.to(mu1.device))


class InceptionFeatures(nn.Module):
    """torchvision's Inception-v3 as a feature extractor: ``images [B, 3, H, W]`` in ``[0, 1]`` →
    ``[B, 2048]`` pool features (images are resized to 299x299 bilinearly and scaled to ``[-1, 1]``).

    Built by :func:`load_inception_features`; the weights decide which FID you get (torchvision's
    ImageNet weights do not give numbers comparable to the TF-Inception FID of papers).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        check_tensor("images", images, shape=(None, 3, None, None), floating=True)
        x = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(2.0 * x - 1.0)


def load_inception_features(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Builds an Inception-v3 feature extractor from a local weights file (nothing is downloaded).

    The architecture is ``torchvision.models.inception_v3(weights=None, aux_logits=False,
    init_weights=False)``; the state dict comes from ``path`` or, if ``path`` is ``None``, from the file
    named by the environment variable ``VQ3DLIB_INCEPTION_WEIGHTS``. ``.safetensors`` files are read
    with safetensors, anything else with ``torch.load(weights_only=True)``. The keys must be
    torchvision's ``Inception3`` keys (``AuxLogits.*`` and ``fc.*`` are ignored if present), e.g. the
    file ``torch.save(inception_v3(weights="DEFAULT").state_dict(), path)`` writes on a machine with
    internet access.

    Args:
        path: weights file, or ``None`` to use ``$VQ3DLIB_INCEPTION_WEIGHTS``.
        device: where to put the model.

    Returns:
        An eval-mode :class:`InceptionFeatures` module, ``[B, 3, H, W]`` in ``[0, 1]`` → ``[B, 2048]``.

    Raises:
        FileNotFoundError: no path given and the variable unset, or the file does not exist.

    Example:
        >>> try:
        ...     load_inception_features("/nonexistent/inception.pt")
        ... except FileNotFoundError as e:
        ...     print(str(e).splitlines()[0])
        Inception weights not found at /nonexistent/inception.pt
    """
    how = (
        f"Save torchvision's Inception-v3 state dict there (on a machine with internet access: "
        f"torch.save(torchvision.models.inception_v3(weights='DEFAULT').state_dict(), 'inception_v3.pt')), "
        f"then pass its path as `path` or set {INCEPTION_ENV}=/path/to/inception_v3.pt. "
        f"vq3dlib never downloads weights."
    )
    if path is None:
        env = os.environ.get(INCEPTION_ENV)
        if not env:
            raise FileNotFoundError(
                f"Inception weights: no path given and {INCEPTION_ENV} is not set.\n{how}"
            )
        path = env
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found at {path}\n{how}")
    try:
        from torchvision.models import inception_v3
    except ImportError as e:  # pragma: no cover - torchvision is an optional dependency
        raise ImportError("load_inception_features needs torchvision: pip install torchvision") from e

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} must hold a state dict (a dict of tensors), got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "fc."))}
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
    net.fc = nn.Identity()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{path} does not hold torchvision Inception-v3 weights ({str(e).splitlines()[0]})"
        ) from e
    return InceptionFeatures(net).to(device).eval()
