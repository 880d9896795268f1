"""LPIPS-style perceptual loss: VGG-16 features, unit-normalised per channel, learned linear heads.

The architecture is torchvision's VGG-16 (``torchvision.models.vgg16().features``) up to ``relu5_3``; the five
taps ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3`` feed one non-negative 1x1 linear head each
(Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", 2018).

Nothing is downloaded. Pretrained weights come from local files, given as ``weights=`` or in the
environment variable ``VQ3DLIB_LPIPS_WEIGHTS`` (several files joined with ``os.pathsep``), in
safetensors or torch format (read with ``torch.load(weights_only=True)``); the format is recognised
from the file's content (a safetensors header), whatever its suffix. There is no default location;
the error for missing weights suggests :data:`SUGGESTED_PATH`. Recognised layouts, which may be split
over several files and are merged:

* this module's own ``state_dict()`` (``features.<i>.weight``, ``heads.<k>.weight``);
* torchvision's VGG-16 checkpoint (``vgg16-397923af.pth``; ``features.*`` used, ``classifier.*`` ignored);
* the ``lpips`` package's head file (``weights/v0.1/vgg.pth``; ``lin<k>.model.1.weight``) and its full
  module (``net.slice<j>.<i>.*``, ``lin<k>.*``, ``scaling_layer.*``).

Example:
    >>> import torch
    >>> from vq3dlib.losses.perceptual import LPIPS
    >>> lpips = LPIPS(pretrained=False)
    >>> x = torch.rand(2, 3, 32, 32) * 2 - 1
    >>> lpips(x, x).abs().max().item() == 0.0
    True
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vq3dlib._validation import check_choice, check_tensor

ENV_VAR = "VQ3DLIB_LPIPS_WEIGHTS"
#: where the missing-weights error suggests putting the file (nothing is read from here by default)
SUGGESTED_PATH = "~/.cache/vq3dlib/weights/lpips_vgg16.safetensors"
TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16.features
TAP_CHANNELS = (64, 128, 256, 512, 512)
# input normalisation of LPIPS (inputs in [-1, 1], mapped to ImageNet statistics)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

_MISSING = (
    "LPIPS needs pretrained weights but {what}. Nothing is downloaded at run time: put the weights in a "
    "local file, e.g. {suggested}, and pass LPIPS(weights='{suggested}') or set the environment "
    "variable {env}={suggested} (several files joined with '{sep}'). Accepted: a safetensors or torch "
    "file with this module's state_dict, or torchvision's VGG-16 checkpoint (vgg16-397923af.pth) "
    "together with the lpips package's weights/v0.1/vgg.pth heads (load both once with "
    "LPIPS(weights=[...]) and save its state_dict as one safetensors file). Use LPIPS(pretrained=False) "
    "for random weights (tests only)."
)


def _missing(what: str) -> str:
    return _MISSING.format(
        what=what, env=ENV_VAR, sep=os.pathsep, suggested=os.path.expanduser(SUGGESTED_PATH)
    )


def _is_safetensors(path: Path) -> bool:
    """Whether the file starts with a safetensors header (8-byte little-endian length + JSON object)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return False
        (n,) = struct.unpack("<Q", head)
        if not 2 <= n <= min(path.stat().st_size - 8, 100 * 2**20):
            return False
        try:
            header = json.loads(f.read(n))
        except ValueError:  # includes UnicodeDecodeError
            return False
    return isinstance(header, dict)


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors' own error type
            raise ValueError(f"{path} has a safetensors header but cannot be read: {e}") from e
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # zip (torch.save) or legacy pickle
        raise ValueError(
            f"{path} is neither a safetensors nor a torch file (it starts with {magic!r}, not a safetensors "
            f"header, a zip archive or a pickle)"
        )
    try:
        with open(path, "rb") as f:  # a file object: torch.load would pick safetensors by the suffix
            state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise ValueError(
                f"{path} holds pickled objects other than tensors and plain containers, which "
                f"torch.load(weights_only=True) refuses to load (unpickling them could run arbitrary "
                f"code). Save only the state dict (torch.save(module.state_dict(), path)) or convert it "
                f"to safetensors (safetensors.torch.save_file(state_dict, path))."
            ) from e
        raise ValueError(f"{path} is neither a safetensors nor a torch file: {e}") from e
    except (RuntimeError, KeyError, EOFError) as e:
        raise ValueError(f"{path} is neither a safetensors nor a torch file ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def _rename(key: str) -> str | None:
    """Maps the recognised checkpoint layouts onto this module's keys (``None``: ignore)."""
    key = key.removeprefix("module.")
    if m := re.fullmatch(r"lin(\d)\.model\.1\.weight", key) or re.fullmatch(r"lin(\d)\.model\.weight", key):
        return f"heads.{m.group(1)}.weight"
    if m := re.fullmatch(r"net\.slice\d\.(\d+)\.(weight|bias)", key):
        return f"features.{m.group(1)}.{m.group(2)}"
    if key.startswith(("classifier.", "scaling_layer.")):
        return None
    return key


def vgg16_features() -> nn.Sequential:
    """torchvision's VGG-16 feature extractor (config "D", no batch norm) cut after ``relu5_3``.

    Built here rather than imported because ``import torchvision`` costs seconds; the layer indices
    (and so the checkpoint keys ``features.<i>.*``) are the same as ``torchvision.models.vgg16().features``
    (checked in the tests).

    Example:
        >>> len(vgg16_features())
        30
    """
    layers: list[nn.Module] = []
    in_ch = 3
    for block, (width, convs) in enumerate(zip((64, 128, 256, 512, 512), (2, 2, 3, 3, 3), strict=True)):
        if block:
            layers.append(nn.MaxPool2d(2, 2))
        for _ in range(convs):
            layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = width
    return nn.Sequential(*layers)


def _heads_init(head: nn.Conv2d) -> None:
    nn.init.constant_(head.weight, 1.0 / head.in_channels)


class LPIPS(nn.Module):
    """LPIPS perceptual distance with a VGG-16 backbone (frozen) and learned linear heads.

    Args:
        weights: path(s) to local weight files (see module docs); default from ``VQ3DLIB_LPIPS_WEIGHTS``.
        pretrained: ``False`` skips loading and keeps a random backbone with uniform heads (for tests
            and smoke runs; the distance is then not perceptually meaningful).
        normalize: inputs are in ``[0, 1]`` (mapped to ``[-1, 1]``) instead of ``[-1, 1]``.
        reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` (``[B]``).

    Shapes:
        ``forward(x [B, 3, H, W], y [B, 3, H, W]) -> [] or [B]``; ``H, W >= 16``.

    The backbone and heads are frozen (``requires_grad=False``) and the module stays in eval mode;
    gradients flow to the inputs.

    Example:
        >>> import torch
        >>> lpips = LPIPS(pretrained=False, reduction="none")
        >>> x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
        >>> d = LPIPS(pretrained=False, normalize=True, reduction="none")(x, y)
        >>> d.shape, bool((d > 0).all())
        (torch.Size([2]), True)
    """

    def __init__(
        self,
        weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        *,
        pretrained: bool = True,
        normalize: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, ("mean", "sum", "none"))
        self.features = vgg16_features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        for head in self.heads:
            _heads_init(head)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.normalize = normalize
        self.reduction = reduction
        if pretrained:
            self.load_weights(weights)
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> None:
        """Loads pretrained weights from local file(s); raises ``FileNotFoundError`` saying where to put them.

        ``weights=None`` reads the path(s) from ``VQ3DLIB_LPIPS_WEIGHTS``. A file that is neither
        safetensors nor loadable by ``torch.load(weights_only=True)`` (e.g. a pickled module)
        raises ``ValueError``.

        Example:
            >>> lpips = LPIPS(pretrained=False)
            >>> try:
            ...     lpips.load_weights("/nonexistent/lpips.safetensors")
            ... except FileNotFoundError as e:
            ...     print("does not exist" in str(e), "VQ3DLIB_LPIPS_WEIGHTS" in str(e))
            True True
        """
        source = ""
        if weights is None:
            env = os.environ.get(ENV_VAR, "")
            if not env.strip(os.pathsep):
                raise FileNotFoundError(_missing(f"no file was given and {ENV_VAR} is unset"))
            paths = [Path(p) for p in env.split(os.pathsep) if p]
            source = f" (from the environment variable {ENV_VAR})"
        elif isinstance(weights, (str, os.PathLike)):
            paths = [Path(weights)]
        else:
            paths = [Path(p) for p in weights]
        state: dict[str, torch.Tensor] = {}
        for path in paths:
            if not path.expanduser().is_file():
                raise FileNotFoundError(_missing(f"{path}{source} does not exist"))
            path = path.expanduser()
            for key, value in _load_file(path).items():
                new = _rename(key)
                if new is not None:
                    state[new] = value
        own = self.state_dict()
        state = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(state))
        if missing:
            raise ValueError(
                f"LPIPS weights in {[str(p) for p in paths]} lack {len(missing)} tensors, "
                f"e.g. {missing[:3]}; " + _missing("they are incomplete")
            )
        self.load_state_dict(state)

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode (the backbone is a fixed feature extractor)."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Perceptual distance between image batches ``x, y [B, 3, H, W]`` (``[-1, 1]`` unless ``normalize``).

        Example:
            >>> import torch
            >>> float(LPIPS(pretrained=False)(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)))
            0.0
        """
        check_tensor("x", x, ndim=4, floating=True, finite=True)
        check_tensor("y", y, shape=tuple(x.shape), floating=True, device=x.device, finite=True)
        if x.shape[1] != 3:
            raise ValueError(f"x must have 3 channels (RGB), got shape {list(x.shape)}")
        if min(x.shape[-2:]) < 16:
            raise ValueError(
                f"x must be at least 16x16 pixels (VGG-16 halves it 4 times), got {list(x.shape)}"
            )
        if self.normalize:
            x, y = 2 * x - 1, 2 * y - 1
        n = x.shape[0]
        h = torch.cat([x, y]).to(self.shift.dtype)
        h = (h - self.shift) / self.scale
        dist = h.new_zeros(n)
        taps = iter(zip(TAPS, self.heads, strict=True))
        tap, head = next(taps)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i == tap:
                f = h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10)
                dist = dist + head((f[:n] - f[n:]).square()).mean((1, 2, 3))
                tap, head = next(taps, (None, None))
                if tap is None:
                    break
        if self.reduction == "none":
            return dist
        return dist.sum() if self.reduction == "sum" else dist.mean()


PerceptualLoss = LPIPS
