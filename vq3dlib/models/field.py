"""Density/colour head over sampled triplane features (the "NeRF MLP" of a triplane model).

:class:`TriplaneField` maps features ``[S, F]`` sampled from a triplane (e.g. by
``ContractedTriplane``) and optional view directions ``[S, 3]`` to density ``[S]`` and rgb
``[S, 3]`` (plus optional extra features). The MLPs run in PyTorch or, with
``mlp_backend="tcnn"`` (or ``"auto"`` when ``tinycudann`` is importable and CUDA is available),
as tiny-cuda-nn fully fused MLPs.

Example:
    >>> import torch
    >>> from vq3dlib.models.field import TriplaneField
    >>> field = TriplaneField(in_features=16, mlp_backend="torch")
    >>> out = field(torch.rand(100, 16))
    >>> out.density.shape, out.rgb.shape
    (torch.Size([100]), torch.Size([100, 3]))
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from vq3dlib._validation import check_choice, check_positive, check_tensor

if TYPE_CHECKING:
    from vq3dlib.models.configs import VQ3DConfig

MLP_BACKENDS = ("auto", "torch", "tcnn")
DENSITY_ACTIVATIONS = ("trunc_exp", "softplus")
TCNN_WIDTHS = (16, 32, 64, 128)


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(-15.0, 15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` whose gradient uses ``exp(clamp(x, -15, 15))`` (stable density activation).

    Example:
        >>> x = torch.tensor([0.0, 30.0], requires_grad=True)
        >>> trunc_exp(x).sum().backward()
        >>> bool(x.grad[1] == torch.exp(torch.tensor(15.0)))
        True
    """
    return _TruncExp.apply(x)


def frequency_encoding(dirs: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """``[..., 3]`` -> ``[..., 3 + 6 * n_frequencies]``: ``x, sin(2^k pi x), cos(2^k pi x)``.

    Example:
        >>> frequency_encoding(torch.zeros(5, 3), 2).shape
        torch.Size([5, 15])
    """
    if n_frequencies == 0:
        return dirs
    scales = torch.pi * 2.0 ** torch.arange(n_frequencies, device=dirs.device, dtype=dirs.dtype)
    angles = (dirs[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([dirs, torch.sin(angles), torch.cos(angles)], dim=-1)


def _tcnn_module() -> ModuleType | None:
    try:
        return importlib.import_module("tinycudann")
    except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA install failing at import
        return None


def tcnn_available() -> bool:
    """Whether ``tinycudann`` can be imported.

    Example:
        >>> tcnn_available() in (True, False)
        True
    """
    return _tcnn_module() is not None


def resolve_mlp_backend(backend: str) -> str:
    """``"auto"`` -> ``"tcnn"`` if tinycudann is importable and CUDA is available, else ``"torch"``.

    ``"tcnn"`` without tinycudann raises ``RuntimeError`` with install instructions.

    Example:
        >>> resolve_mlp_backend("torch")
        'torch'
    """
    check_choice("mlp_backend", backend, MLP_BACKENDS)
    if backend == "auto":
        return "tcnn" if tcnn_available() and torch.cuda.is_available() else "torch"
    if backend == "tcnn" and not tcnn_available():
        raise RuntimeError(
            "mlp_backend='tcnn' needs tiny-cuda-nn's torch bindings, which cannot be imported; install "
            "them (pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch) "
            "or use mlp_backend='auto' or 'torch'"
        )
    return backend


def mlp_backend_report() -> str:
    """One line for ``python -m vq3dlib.backend``: which MLP backend ``"auto"`` picks and why.

    Example:
        >>> mlp_backend_report().startswith("field MLP (mlp_backend='auto'):")
        True
    """
    have_tcnn, have_cuda = tcnn_available(), torch.cuda.is_available()
    chosen = resolve_mlp_backend("auto")
    detail = "tiny-cuda-nn FullyFusedMLP" if chosen == "tcnn" else "torch nn.Linear"
    return (
        f"field MLP (mlp_backend='auto'): {chosen} ({detail}; tinycudann importable: {have_tcnn}, "
        f"CUDA available: {have_cuda})"
    )


class _TcnnMLP(nn.Module):
    """tiny-cuda-nn FullyFusedMLP (ReLU, linear output); runs on CUDA only, returns float32."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, hidden_layers: int) -> None:
        super().__init__()
        if hidden_dim not in TCNN_WIDTHS:
            raise ValueError(
                f"hidden_dim must be one of {TCNN_WIDTHS} for the tcnn backend, got {hidden_dim}"
            )
        tcnn = _tcnn_module()
        if tcnn is None:
            raise RuntimeError("tinycudann cannot be imported")
        self.out_dim = out_dim
        self.net = tcnn.Network(
            n_input_dims=in_dim,
            n_output_dims=out_dim,
            network_config={
                "otype": "FullyFusedMLP",
                "activation": "ReLU",
                "output_activation": "None",
                "n_neurons": hidden_dim,
                "n_hidden_layers": hidden_layers,
            },
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":
            raise ValueError(
                f"the tcnn MLP runs on CUDA only, got input on {x.device}; build the field with "
                "mlp_backend='torch' to run on this device"
            )
        out = self.net(x.reshape(-1, x.shape[-1]).contiguous())
        return out.float().reshape(*x.shape[:-1], self.out_dim)


def make_mlp(
    in_dim: int, out_dim: int, hidden_dim: int, hidden_layers: int, backend: str = "torch"
) -> nn.Module:
    """A ReLU MLP with ``hidden_layers`` hidden layers of ``hidden_dim`` and a linear output.

    ``backend`` is ``"torch"``, ``"tcnn"`` (FullyFusedMLP, CUDA only, ``hidden_dim`` in
    16/32/64/128) or ``"auto"`` (see :func:`resolve_mlp_backend`).

    Example:
        >>> mlp = make_mlp(4, 2, hidden_dim=8, hidden_layers=2)
        >>> mlp(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """
    check_positive("in_dim", in_dim)
    check_positive("out_dim", out_dim)
    check_positive("hidden_dim", hidden_dim)
    check_positive("hidden_layers", hidden_layers, allow_zero=True)
    backend = resolve_mlp_backend(backend)
    if backend == "tcnn":
        return _TcnnMLP(in_dim, out_dim, hidden_dim, hidden_layers)
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class FieldOutput(NamedTuple):
    """What :class:`TriplaneField` returns: ``density [S]``, ``rgb [S, 3]``, ``features [S, E]``
    (``None`` when the field has no extra output features)."""

    density: torch.Tensor
    rgb: torch.Tensor
    features: torch.Tensor | None


class TriplaneField(nn.Module):
    """Small MLP head: triplane features (+ view direction) -> density, rgb (+ features).

    Without view directions one MLP maps features to ``1 + 3 + out_features`` values. With
    ``use_view_dirs=True`` a density MLP gives ``1 + geo_features`` values and a colour MLP maps
    the geometry features and the frequency-encoded direction to ``3 + out_features``, so density
    does not depend on the view.

    Activations: density ``act(raw + density_bias)`` with ``act`` = ``trunc_exp`` or ``softplus``
    (a negative bias starts the scene mostly empty); rgb ``sigmoid``; extra features linear.

    Args:
        in_features: ``F``, width of the sampled triplane features.
        hidden_dim: MLP width (16/32/64/128 for tcnn).
        hidden_layers: hidden layers per MLP.
        use_view_dirs: condition colour on the view direction.
        geo_features: width of the density-to-colour features (with view directions).
        dir_frequencies: frequencies of the view-direction encoding.
        out_features: extra output features (e.g. for a super-resolution head); 0 for none.
        density_activation: ``"trunc_exp"`` or ``"softplus"``.
        density_bias: added to the raw density before the activation.
        mlp_backend: ``"auto"``, ``"torch"`` or ``"tcnn"``; resolved once at construction
            (``self.mlp_backend`` holds the result). A tcnn field runs on CUDA only and its
            state dict is not interchangeable with a torch field's.

    Example:
        >>> field = TriplaneField(16, use_view_dirs=True, out_features=4, mlp_backend="torch")
        >>> dirs = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
        >>> out = field(torch.rand(10, 16), dirs)
        >>> out.features.shape, bool((out.density >= 0).all()), bool(((out.rgb > 0) & (out.rgb < 1)).all())
        (torch.Size([10, 4]), True, True)
    """

    def __init__(
        self,
        in_features: int,
        hidden_dim: int = 64,
        hidden_layers: int = 1,
        *,
        use_view_dirs: bool = False,
        geo_features: int = 15,
        dir_frequencies: int = 4,
        out_features: int = 0,
        density_activation: str = "trunc_exp",
        density_bias: float = -1.0,
        mlp_backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive("in_features", in_features)
        check_positive("out_features", out_features, allow_zero=True)
        check_positive("dir_frequencies", dir_frequencies, allow_zero=True)
        check_choice("density_activation", density_activation, DENSITY_ACTIVATIONS)
        self.mlp_backend = resolve_mlp_backend(mlp_backend)
        self.in_features = in_features
        self.use_view_dirs = use_view_dirs
        self.out_features = out_features
        self.dir_frequencies = dir_frequencies
        self.density_activation = density_activation
        self.density_bias = float(density_bias)
        args = (hidden_dim, hidden_layers, self.mlp_backend)
        if use_view_dirs:
            check_positive("geo_features", geo_features)
            self.geo_features = geo_features
            self.density_net = make_mlp(in_features, 1 + geo_features, *args)
            dir_dim = 3 + 6 * dir_frequencies
            self.color_net: nn.Module | None = make_mlp(geo_features + dir_dim, 3 + out_features, *args)
        else:
            self.geo_features = 0
            self.density_net = make_mlp(in_features, 1 + 3 + out_features, *args)
            self.color_net = None

    @classmethod
    def from_config(cls, cfg: VQ3DConfig) -> TriplaneField:
        """The field head described by a config (input width ``cfg.field_in_features``).

        Example:
            >>> from vq3dlib.models.configs import get_config
            >>> TriplaneField.from_config(get_config("tiny", mlp_backend="torch")).in_features
            16
        """
        return cls(
            cfg.field_in_features,
            cfg.field_hidden_dim,
            cfg.field_hidden_layers,
            use_view_dirs=cfg.use_view_dirs,
            geo_features=cfg.field_geo_features,
            dir_frequencies=cfg.field_dir_frequencies,
            out_features=cfg.field_out_features,
            density_activation=cfg.density_activation,
            density_bias=cfg.density_bias,
            mlp_backend=cfg.mlp_backend,
        )

    def _activate_density(self, raw: torch.Tensor) -> torch.Tensor:
        raw = raw + self.density_bias
        if self.density_activation == "softplus":
            return nn.functional.softplus(raw)
        return trunc_exp(raw)

    def _check_features(self, features: torch.Tensor) -> None:
        check_tensor("features", features, ndim=2, last_dim=self.in_features, floating=True)

    def density(self, features: torch.Tensor) -> torch.Tensor:
        """Density only (cheaper; e.g. for building an occupancy grid): ``[S, F]`` -> ``[S]``.

        Example:
            >>> field = TriplaneField(8, mlp_backend="torch")
            >>> field.density(torch.rand(4, 8)).shape
            torch.Size([4])
        """
        self._check_features(features)
        return self._activate_density(self.density_net(features)[:, 0])

    def forward(self, features: torch.Tensor, view_dirs: torch.Tensor | None = None) -> FieldOutput:
        """Density, rgb and extra features at ``S`` samples.

        Args:
            features: ``[S, F]`` sampled triplane features.
            view_dirs: ``[S, 3]`` unit view directions; required when ``use_view_dirs``,
                ignored otherwise.

        Returns:
            :class:`FieldOutput` ``(density [S] >= 0, rgb [S, 3] in (0, 1), features [S, E] | None)``.

        Example:
            >>> field = TriplaneField(8, density_activation="softplus", mlp_backend="torch")
            >>> density, rgb, extra = field(torch.rand(0, 8))
            >>> density.shape, rgb.shape, extra
            (torch.Size([0]), torch.Size([0, 3]), None)
        """
        self._check_features(features)
        raw = self.density_net(features)
        density = self._activate_density(raw[:, 0])
        if self.color_net is None:
            color_raw = raw[:, 1:]
        else:
            if view_dirs is None:
                raise ValueError("view_dirs [S, 3] is required: this field was built with use_view_dirs=True")
            check_tensor("view_dirs", view_dirs, shape=(features.shape[0], 3), floating=True)
            encoded = frequency_encoding(view_dirs.to(raw.dtype), self.dir_frequencies)
            color_raw = self.color_net(torch.cat([raw[:, 1:], encoded], dim=-1))
        rgb = torch.sigmoid(color_raw[:, :3])
        extra = color_raw[:, 3:] if self.out_features else None
        return FieldOutput(density, rgb, extra)
