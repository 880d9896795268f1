"""Held-out evaluation of a stage-2 prior: are its samples recognisable, realistic and new?

:func:`evaluate_stage2` draws class-conditional samples from a :class:`~vq3dlib.models.CodePrior`,
decodes them with the stage-1 model and renders them from the input (canonical) view, then reports

* ``class_accuracy``: the fraction of samples that a :class:`~vq3dlib.classifier.SceneClassifier`
  assigns to the class they were sampled for, next to ``classifier_accuracy`` (the classifier on
  held-out images: the best the samples can score), ``classifier_recon_accuracy`` (the classifier on
  stage-1 reconstructions of those images: what the renderer's look alone costs) and
  ``chance_accuracy`` (``1 / classes``);
* ``fid_samples``: the Fréchet distance between the penultimate features of the samples and of the
  held-out images (features of ``fid_classifier``, by default the same classifier; the procedural
  evaluation judges classes with a classifier trained with a blur augmentation and takes the FID
  features from one trained on sharp images, whose class accuracies are reported too), next to
  ``fid_reconstructions`` (the stage-1 reconstructions of the held-out images against the same
  images), their ratio ``fid_ratio`` and ``fid_train_images``
  (as many training images against the held-out ones: the floor a perfect generator reaches with
  these sample sizes);
* ``copy_fraction``: the fraction of samples whose code grid equals a training grid, and
  ``nn_token_distance``: the median over samples of the Hamming distance (in tokens) to the nearest
  training grid, next to ``heldout_copy_fraction`` / ``heldout_nn_token_distance``, the same figures
  for the codes of the held-out images (new scenes that the stage-1 encoder saw for the first time).

:func:`evaluate_stage2_procedural` builds everything from procedural scenes (trains the classifier on
the training scenes, encodes held-out ones); :func:`stage2_table` formats the figures with their
goals and baselines.

Example:
    >>> a = torch.tensor([[0, 1, 2], [3, 3, 3]])
    >>> nearest_code_distance(a, torch.tensor([[0, 1, 2], [3, 0, 0]])).tolist()
    [0, 2]
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq3dlib._validation import check_positive, check_tensor
from vq3dlib.classifier import SceneClassifier, classifier_accuracy, train_classifier
from vq3dlib.metrics import FIDFeatures
from vq3dlib.models.prior import DEFAULT_CFG_SCALE, DEFAULT_TOP_K

#: the goals of issue 14 for the figures of :func:`evaluate_stage2`
GOALS = {"class_accuracy": 0.80, "fid_ratio": 1.5, "copy_fraction": 0.01}


# ---------------------------------------------------------------------------------- codes


def nearest_code_distance(codes: Tensor, reference: Tensor, chunk: int = 256) -> Tensor:
    """Hamming distance (positions that differ) from each row of ``codes`` to its nearest ``reference`` row.

    Args:
        codes: ``[N, L]`` integer code grids (flattened).
        reference: ``[M, L]`` integer code grids, ``M >= 1``.
        chunk: rows of ``codes`` compared at once (memory ``chunk * M * L``).

    Returns:
        ``[N]`` int64 in ``[0, L]``; 0 means that the row equals some reference row.

    Example:
        >>> nearest_code_distance(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 0, 3, 0], [9, 9, 9, 9]]))
        tensor([2])
    """
    check_tensor("codes", codes, ndim=2, integer=True)
    check_tensor("reference", reference, shape=(None, codes.shape[1]), integer=True, device=codes.device)
    if reference.shape[0] == 0:
        raise ValueError("reference must hold at least one code grid")
    check_positive("chunk", chunk)
    out = [
        (codes[i : i + chunk, None] != reference[None]).sum(-1).min(-1).values
        for i in range(0, codes.shape[0], chunk)
    ]
    return torch.cat(out).long() if out else torch.zeros(0, dtype=torch.long, device=codes.device)


def code_copy_stats(codes: Tensor, reference: Tensor) -> dict[str, float]:
    """``{"copy_fraction", "nn_token_distance"}``: the share of ``codes [N, L]`` rows equal to a
    ``reference [M, L]`` row and the median Hamming distance to the nearest one (tokens).

    Example:
        >>> train = torch.randint(0, 512, (10, 64))
        >>> code_copy_stats(train[:4], train)
        {'copy_fraction': 1.0, 'nn_token_distance': 0.0}
    """
    d = nearest_code_distance(codes, reference)
    if d.numel() == 0:
        raise ValueError("codes is empty")
    return {"copy_fraction": float((d == 0).float().mean()), "nn_token_distance": float(d.float().median())}


# ---------------------------------------------------------------------------------- images


@torch.no_grad()
def render_input_view(model: nn.Module, scenes: Any, batch_size: int = 16) -> Tensor:
    """Renders ``scenes`` from the input (canonical) camera at the image size: ``[B, 3, S, S]`` on the CPU.

    ``scenes`` is a :class:`~vq3dlib.models.scene.Scene` batch (e.g. ``model.decode_indices(codes)``);
    the render (at ``render_resolution``) is resized bilinearly to ``image_size``, clamped to
    ``[0, 1]``; the ray jitter runs under a fixed seed (the global RNG is left as it was).

    Example:
        >>> from vq3dlib.models import VQ3DModel
        >>> model = VQ3DModel.from_config("tiny", render_resolution=8, plane_resolution=16)
        >>> codes = torch.zeros(2, model.config.prior_seq_len, dtype=torch.long)
        >>> render_input_view(model, model.decode_indices(codes)).shape
        torch.Size([2, 3, 32, 32])
    """
    check_positive("batch_size", batch_size)
    size = model.config.image_size
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for i in range(0, len(scenes), batch_size):
            part = scenes[i : i + batch_size]
            rgb = part.render(model.canonical_cameras(len(part))).images()["rgb"]
            if tuple(rgb.shape[-2:]) != (size, size):
                rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)
            out.append(rgb.clamp(0, 1).float().cpu())
    return torch.cat(out)


def feature_fid(features: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, batch_size: int = 256) -> float:
    """Fréchet distance between the ``features`` of image sets ``a [N, 3, H, W]`` and ``b [M, 3, H, W]``.

    ``features`` maps images to ``[B, D]`` (e.g. :meth:`SceneClassifier.forward_features`); the
    statistics are :class:`~vq3dlib.metrics.FIDFeatures`'.

    Example:
        >>> x = torch.rand(64, 3, 8, 8)
        >>> mean = lambda im: im.mean((2, 3))
        >>> feature_fid(mean, x, x) < 1e-9, feature_fid(mean, x, x + 0.5) > 0.7   # 3 * 0.5^2 = 0.75
        (True, True)
    """
    check_positive("batch_size", batch_size)
    stats = []
    with torch.no_grad():
        for images in (a, b):
            acc = FIDFeatures(features)
            for i in range(0, images.shape[0], batch_size):
                acc.update(images[i : i + batch_size])
            stats.append(acc)
    return float(stats[0].fid(stats[1]))


# ---------------------------------------------------------------------------------- evaluation


@dataclass
class Stage2EvalConfig:
    """Settings of :func:`evaluate_stage2_procedural` (and of the demo's stage-2 figures).

    Attributes:
        eval_size: held-out procedural scenes (seed ``data_seed + 1``, the stage-1 held-out scenes and
            more): the classifier's test set, the FID reference and the reconstructions' inputs.
        samples_per_class: prior samples per class (``classes * samples_per_class`` in all).
        temperature, top_k, top_p, cfg_scale: sampling (:meth:`~vq3dlib.models.CodePrior.sample`).
        classifier_steps, classifier_time_s: the classifier's training (:func:`train_classifier`).
        classifier_blur: the widest Gaussian blur (pixels) of the judge's training augmentation
            (``train_classifier(blur_sigma=...)``), so that it judges the class a rendering shows and
            not how sharp the rendering is. With ``classifier_blur > 0`` a second classifier, trained
            on sharp images only, gives the FID features (blur-invariant features would hide the
            renderer's blur from the FIDs) and its own class accuracies; 0: one sharp classifier.
        batch_size: scenes rendered at once; seed: the sampling and the classifier's seed.

    Example:
        >>> Stage2EvalConfig().samples_per_class
        16
    """

    eval_size: int = 96
    samples_per_class: int = 16
    temperature: float = 1.0
    top_k: int | None = DEFAULT_TOP_K
    top_p: float | None = None
    cfg_scale: float = DEFAULT_CFG_SCALE
    classifier_steps: int = 300
    classifier_time_s: float = 20.0
    classifier_blur: float = 1.0
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive("eval_size", self.eval_size)
        if self.eval_size < 2:
            raise ValueError(f"eval_size must be >= 2 (FID needs a covariance), got {self.eval_size}")
        check_positive("samples_per_class", self.samples_per_class)
        check_positive("classifier_steps", self.classifier_steps)
        check_positive("classifier_time_s", self.classifier_time_s, allow_zero=True)
        check_positive("classifier_blur", self.classifier_blur, allow_zero=True)
        check_positive("batch_size", self.batch_size)


@torch.no_grad()
def evaluate_stage2(
    model: nn.Module,
    prior: nn.Module,
    classifier: SceneClassifier,
    held_out_images: Tensor,
    held_out_labels: Tensor,
    train_codes: Tensor,
    train_images: Tensor | None = None,
    config: Stage2EvalConfig | None = None,
    fid_classifier: SceneClassifier | None = None,
) -> dict[str, float]:
    """The stage-2 figures of the module docstring.

    Args:
        model: the stage-1 :class:`~vq3dlib.models.VQ3DModel` (decodes and encodes; eval mode).
        prior: its class-conditional :class:`~vq3dlib.models.CodePrior`.
        classifier: a trained :class:`~vq3dlib.classifier.SceneClassifier` (its classes = the prior's).
        held_out_images, held_out_labels: ``[M, 3, S, S]`` in ``[0, 1]`` (``S = image_size``) and ``[M]``.
        train_codes: ``[T, L]`` the code grids of the prior's training images (``L = prior_seq_len``).
        train_images: optional ``[T', 3, S, S]`` training images for ``fid_train_images`` (the first
            ``M`` are used).
        config: sampling and sizes (:class:`Stage2EvalConfig`; ``eval_size`` is not used here).
        fid_classifier: the network whose penultimate features the FIDs use (default:
            ``classifier``). When it is another classifier, its class accuracy of the samples and of
            the reconstructions are reported too (``class_accuracy_fid_classifier``,
            ``classifier_recon_accuracy_fid_classifier``).

    Returns:
        ``{metric: float}`` (see the module docstring) plus ``n_samples``, ``n_held_out``,
        ``seconds``. Leaves the global RNG untouched.
    """
    cfg = config or Stage2EvalConfig()
    k = prior.num_classes
    if k < 2 or classifier.num_classes != k:
        raise ValueError(
            f"the prior must be class-conditional with the classifier's classes; prior num_classes={k}, "
            f"classifier num_classes={classifier.num_classes}"
        )
    check_tensor("held_out_images", held_out_images, shape=(None, 3, None, None), floating=True)
    check_tensor("held_out_labels", held_out_labels, shape=(held_out_images.shape[0],), integer=True)
    check_tensor("train_codes", train_codes, shape=(None, prior.seq_len), integer=True)
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    was_model, was_prior = model.training, prior.training
    model.eval()
    try:
        labels = torch.arange(k).repeat_interleave(cfg.samples_per_class)
        gen = torch.Generator(device=prior.pos_embed.device).manual_seed(cfg.seed)
        codes = torch.cat([
            prior.sample(
                len(part), part.to(prior.pos_embed.device), temperature=cfg.temperature, top_k=cfg.top_k,
                top_p=cfg.top_p, cfg_scale=cfg.cfg_scale, generator=gen,
            ).cpu()
            for part in labels.split(cfg.batch_size * 4)
        ])  # fmt: skip
        samples = render_input_view(model, model.decode_indices(codes.to(device)), cfg.batch_size)
        recon, held_codes = [], []
        for i in range(0, held_out_images.shape[0], cfg.batch_size):
            scene = model.reconstruct(held_out_images[i : i + cfg.batch_size].to(device))
            held_codes.append(scene.indices.reshape(len(scene), -1).cpu())
            recon.append(render_input_view(model, scene, cfg.batch_size))
        recon_images, held_codes_t = torch.cat(recon), torch.cat(held_codes)
    finally:
        model.train(was_model)
        prior.train(was_prior)
    fid_net = classifier if fid_classifier is None else fid_classifier
    feats = fid_net.forward_features
    held = held_out_images.float().cpu()
    out = {
        "class_accuracy": classifier_accuracy(classifier, samples, labels),
        "classifier_accuracy": classifier_accuracy(classifier, held, held_out_labels.cpu()),
        "classifier_recon_accuracy": classifier_accuracy(classifier, recon_images, held_out_labels.cpu()),
        "chance_accuracy": 1.0 / k,
        "fid_samples": feature_fid(feats, samples, held),
        "fid_reconstructions": feature_fid(feats, recon_images, held),
    }
    if fid_net is not classifier:
        out["class_accuracy_fid_classifier"] = classifier_accuracy(fid_net, samples, labels)
        out["classifier_recon_accuracy_fid_classifier"] = classifier_accuracy(
            fid_net, recon_images, held_out_labels.cpu()
        )
    out["fid_ratio"] = (
        out["fid_samples"] / out["fid_reconstructions"] if out["fid_reconstructions"] > 0 else math.inf
    )
    if train_images is not None:
        out["fid_train_images"] = feature_fid(feats, train_images[: held.shape[0]].float().cpu(), held)
    train_codes = train_codes.cpu().long()
    out.update(code_copy_stats(codes.reshape(codes.shape[0], -1), train_codes))
    base = code_copy_stats(held_codes_t, train_codes)
    out["heldout_copy_fraction"], out["heldout_nn_token_distance"] = (
        base["copy_fraction"],
        base["nn_token_distance"],
    )
    out.update(n_samples=float(codes.shape[0]), n_held_out=float(held.shape[0]), seq_len=float(prior.seq_len))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return dict(sorted(out.items()))


def procedural_images(size: int, resolution: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(images [size, 3, r, r], labels [size])`` of :class:`~vq3dlib.data.ProceduralScenes`.

    Example:
        >>> images, labels = procedural_images(3, 8, seed=1)
        >>> images.shape, labels.dtype
        (torch.Size([3, 3, 8, 8]), torch.int64)
    """
    from vq3dlib.data import ProceduralScenes
    from vq3dlib.train.loop import get_batch

    batch = get_batch(ProceduralScenes(size, resolution, n_novel_views=0, seed=seed), torch.arange(size))
    return batch["image"], batch["label"].long()


def evaluate_stage2_procedural(
    model: nn.Module,
    prior: nn.Module,
    train_codes: Tensor,
    train_size: int,
    data_seed: int = 0,
    config: Stage2EvalConfig | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_stage2` on procedural scenes, the classifier trained here.

    The classifier trains on the ``train_size`` training scenes (seed ``data_seed``, the images the
    prior's codes come from) within ``config.classifier_steps`` / ``classifier_time_s``; the held-out
    set is ``config.eval_size`` scenes of seed ``data_seed + 1``.

    Returns:
        ``{"metrics": {...} (evaluate_stage2's, plus classifier_steps / classifier_seconds),
        "classifier": the trained SceneClassifier}``.
    """
    cfg = config or Stage2EvalConfig()
    size = model.config.image_size
    check_positive("train_size", train_size)
    train_x, train_y = procedural_images(train_size, size, data_seed)
    held_x, held_y = procedural_images(cfg.eval_size, size, data_seed + 1)
    def classifier(blur: float) -> Any:
        return train_classifier(
            train_x, train_y, prior.num_classes, held_out=(held_x, held_y), steps=cfg.classifier_steps,
            time_budget_s=cfg.classifier_time_s, blur_sigma=blur, seed=cfg.seed,
        )  # fmt: skip

    result = classifier(cfg.classifier_blur)
    sharp = classifier(0.0).model if cfg.classifier_blur > 0 else None  # the FID features
    metrics = evaluate_stage2(
        model, prior, result.model, held_x, held_y, train_codes, train_x, cfg, fid_classifier=sharp
    )
    metrics.update(classifier_steps=float(result.steps), classifier_seconds=round(result.seconds, 1))
    return {"metrics": dict(sorted(metrics.items())), "classifier": result.model}


def prior_training_codes(
    prior_path: str | os.PathLike, model: nn.Module, train_size: int, data_seed: int = 0
) -> Tensor:
    """The code grids ``[T, L]`` a prior trained on: the ``codes.safetensors`` of its run folder (or the
    folder of its file), else the procedural training scenes (``train_size``, ``data_seed``) encoded
    by ``model`` now.

    Example:
        >>> import tempfile
        >>> from vq3dlib.models import VQ3DModel
        >>> model = VQ3DModel.from_config("tiny", image_size=16, plane_resolution=16, encoder_depth=1)
        >>> prior_training_codes(tempfile.mkdtemp(), model, train_size=3).shape   # no cache: encoded
        torch.Size([3, 16])
    """
    from safetensors.torch import load_file

    from vq3dlib.train.stage2 import CODES_FILE, extract_codes

    p = Path(prior_path)
    cache = (p if p.is_dir() else p.parent) / CODES_FILE
    if cache.is_file():
        return load_file(str(cache))["indices"].long()
    from vq3dlib.data import ProceduralScenes

    data = ProceduralScenes(train_size, model.config.image_size, n_novel_views=0, seed=data_seed)
    return extract_codes(model, data)["indices"]


def stage2_table(metrics: dict[str, float]) -> str:
    """The stage-2 figures as a table: value, goal and baseline of each row.

    Example:
        >>> m = dict(class_accuracy=0.5, classifier_accuracy=0.95, classifier_recon_accuracy=0.6,
        ...          chance_accuracy=1 / 6, fid_samples=30.0, fid_reconstructions=20.0, fid_ratio=1.5,
        ...          fid_train_images=2.0, copy_fraction=0.0, nn_token_distance=40.0,
        ...          heldout_copy_fraction=0.0, heldout_nn_token_distance=42.0, n_samples=96.0,
        ...          n_held_out=96.0, seq_len=64.0)
        >>> print(stage2_table(m).splitlines()[2])
        class accuracy of conditional samples         0.500  >= 0.80    0.950  classifier on held-out images
    """
    m = metrics
    rows = [
        ("class accuracy of conditional samples", "class_accuracy", f">= {GOALS['class_accuracy']:.2f}",
         "classifier_accuracy", "classifier on held-out images"),
        ("", "class_accuracy", "", "classifier_recon_accuracy", "classifier on their reconstructions"),
        ("", "class_accuracy", "", "chance_accuracy", "chance"),
        ("  judged by the sharp-image classifier", "class_accuracy_fid_classifier", "",
         "classifier_recon_accuracy_fid_classifier", "it on the reconstructions"),
        ("FID of samples vs held-out images", "fid_samples",
         f"<= {GOALS['fid_ratio'] * m.get('fid_reconstructions', math.nan):.2f}", "fid_reconstructions",
         "FID of the reconstructions (goal: 1.5x)"),
        ("", "fid_samples", "", "fid_train_images", "FID of training images"),
        ("samples copying a training code grid", "copy_fraction", f"<= {GOALS['copy_fraction']:.2f}",
         "heldout_copy_fraction", "held-out images' codes"),
        (f"median nearest training grid [tokens of {m.get('seq_len', math.nan):.0f}]", "nn_token_distance",
         "", "heldout_nn_token_distance", "held-out images' codes"),
    ]  # fmt: skip
    lines = [
        f"stage 2: {m.get('n_samples', math.nan):.0f} class-conditional samples, "
        f"{m.get('n_held_out', math.nan):.0f} held-out scenes",
        f"{'metric':<44} {'prior':>6} {'goal':>8} {'baseline':>8}  baseline is",
    ]
    for label, key, goal, base, what in rows:
        if key in m and base in m:
            value = f"{m[key]:>6.3f}" if label else ""  # a continuation row: another baseline
            lines.append(f"{label:<44} {value:>6} {goal:>8} {m[base]:>8.3f}  {what}")
    return "\n".join(lines)


__all__ = [
    "GOALS",
    "Stage2EvalConfig",
    "code_copy_stats",
    "evaluate_stage2",
    "evaluate_stage2_procedural",
    "feature_fid",
    "nearest_code_distance",
    "prior_training_codes",
    "procedural_images",
    "render_input_view",
    "stage2_table",
]
