"""``RadianceField``: a feature encoder + a density/colour head as the renderer's field.

:class:`~vq3dlib.render.Renderer` renders any *field*, a callable
``field(positions [S, 3], directions [S, 3], scene_index [S]) -> (density [S], rgb [S, C])`` with an
optional cheaper ``field.density(positions [S, 3], scene_index [S]) -> density [S]`` (the renderer's
early-stop pre-pass and :meth:`OccupancyGrid.from_field <vq3dlib.render.OccupancyGrid.from_field>` /
:meth:`~vq3dlib.render.OccupancyGrid.update_every_n_steps` use it). :class:`RadianceField` builds both
from the two parts a triplane NeRF is made of, e.g. :class:`vq3dlib.ContractedTriplane` and
:class:`vq3dlib.TriplaneField`, for one fitted scene or for a batch of generated scenes
(:meth:`RadianceField.with_planes`).

Example:
    >>> import torch
    >>> from vq3dlib import ContractedTriplane, Renderer, TriplaneField
    >>> from vq3dlib.render import RadianceField
    >>> field = RadianceField(ContractedTriplane(16, 8), TriplaneField(8, 16, mlp_backend="torch"))
    >>> out = Renderer(step_size=0.1)(field, (torch.tensor([[0.0, 0, -2]]), torch.tensor([[0.0, 0, 1]])))
    >>> out.rgb.shape, field.density(torch.zeros(5, 3)).shape
    (torch.Size([1, 3]), torch.Size([5]))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vq3dlib._validation import check_tensor


def _density_rgb(out: object) -> tuple[Tensor, Tensor]:
    if hasattr(out, "density") and hasattr(out, "rgb"):
        return out.density, out.rgb  # type: ignore[attr-defined]
    if isinstance(out, (tuple, list)) and len(out) >= 2:
        return out[0], out[1]
    raise TypeError(
        "head must return (density [S], rgb [S, C], ...) or an object with .density and .rgb "
        f"(such as TriplaneField's FieldOutput), got {type(out).__name__}"
    )


class RadianceField(nn.Module):
    """Encoder (points → features) + head (features → density, colour) in the renderer's field protocol.

    Args:
        encoder: ``encoder(positions [S, 3]) -> features [S, F]`` for one scene that the encoder holds
            (e.g. a learnable :class:`vq3dlib.ContractedTriplane`); with ``planes``, called as
            ``encoder(positions, planes=planes, scene_index=scene_index)`` (e.g.
            ``ContractedTriplane(learnable=False)`` sampling generated planes ``[B, 3, C, R, R]``).
        head: ``head(features [S, F][, directions [S, 3]])`` returning ``(density [S], rgb [S, C], ...)``
            or an object with ``.density`` and ``.rgb`` (e.g. :class:`vq3dlib.TriplaneField`); its
            ``head.density(features)``, when present, serves :meth:`density`.
        planes: per-scene inputs of the encoder, ``[B, ...]`` (one entry per scene index); ``None``: the
            encoder holds one scene and scene indices are ignored. Usually set with :meth:`with_planes`.
        use_view_dirs: pass the directions to the head; default ``head.use_view_dirs`` if the head has
            that attribute, else ``False``.

    Shapes:
        ``forward(positions [S, 3], directions [S, 3], scene_index [S] | None)`` →
        ``(density [S], rgb [S, C])``; ``density(positions [S, 3], scene_index [S] | None)`` → ``[S]``.

    Example:
        >>> from vq3dlib import ContractedTriplane, TriplaneField
        >>> nerf = RadianceField(ContractedTriplane(channels=8, learnable=False), TriplaneField(8, 16))
        >>> field = nerf.with_planes(torch.randn(2, 3, 8, 16, 16))   # two generated scenes
        >>> density, rgb = field(torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> density.shape, rgb.shape
        (torch.Size([6]), torch.Size([6, 3]))
    """

    def __init__(
        self,
        encoder: Callable[..., Tensor],
        head: Callable[..., object],
        *,
        planes: Tensor | None = None,
        use_view_dirs: bool | None = None,
    ) -> None:
        super().__init__()
        if not callable(encoder):
            raise TypeError(f"encoder must be callable, got {type(encoder).__name__}")
        if not callable(head):
            raise TypeError(f"head must be callable, got {type(head).__name__}")
        if planes is not None and not isinstance(planes, Tensor):
            raise TypeError(f"planes must be a torch.Tensor or None, got {type(planes).__name__}")
        self.encoder = encoder
        self.head = head
        self.planes = planes
        self.use_view_dirs = bool(
            getattr(head, "use_view_dirs", False) if use_view_dirs is None else use_view_dirs
        )
        if self.use_view_dirs and not callable(getattr(head, "density", None)):
            raise TypeError("a head that uses view directions must have a .density(features) method")

    def with_planes(self, planes: Tensor) -> RadianceField:
        """The same encoder and head (shared parameters) reading per-scene ``planes [B, ...]``.

        Cheap (no copy): build one per generated batch, e.g. ``nerf.with_planes(decoder(z))``.

        Example:
            >>> from vq3dlib import ContractedTriplane, TriplaneField
            >>> nerf = RadianceField(ContractedTriplane(channels=4, learnable=False), TriplaneField(4, 8))
            >>> field = nerf.with_planes(torch.zeros(3, 3, 4, 8, 8))
            >>> field.head is nerf.head, field.planes.shape[0]
            (True, 3)
        """
        check_tensor("planes", planes, floating=True)
        return RadianceField(self.encoder, self.head, planes=planes, use_view_dirs=self.use_view_dirs)

    @property
    def device(self) -> torch.device | None:
        """Where the field evaluates: the planes' device, else its first parameter's or buffer's, or ``None``.

        Example:
            >>> from vq3dlib import ContractedTriplane, TriplaneField
            >>> RadianceField(ContractedTriplane(8, 4), TriplaneField(4, 8)).device
            device(type='cpu')
        """
        if self.planes is not None:
            return self.planes.device
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return None

    def features(self, positions: Tensor, scene_index: Tensor | None = None) -> Tensor:
        """Encoder features ``[S, F]`` at world ``positions [S, 3]`` of scenes ``scene_index [S]``.

        Example:
            >>> from vq3dlib import ContractedTriplane, TriplaneField
            >>> RadianceField(ContractedTriplane(8, 4), TriplaneField(4, 8)).features(torch.zeros(2, 3)).shape
            torch.Size([2, 4])
        """
        check_tensor("positions", positions, shape=(None, 3), floating=True)
        if self.planes is None:
            return self.encoder(positions)
        return self.encoder(positions, planes=self.planes, scene_index=scene_index)

    def density(self, positions: Tensor, scene_index: Tensor | None = None) -> Tensor:
        """Density ``[S]`` at world ``positions [S, 3]`` (the head's cheaper density path when it has one).

        Example:
            >>> from vq3dlib import ContractedTriplane, TriplaneField
            >>> f = RadianceField(ContractedTriplane(8, 4), TriplaneField(4, 8))
            >>> bool((f.density(torch.randn(7, 3)) >= 0).all())
            True
        """
        features = self.features(positions, scene_index)
        head_density = getattr(self.head, "density", None)
        if callable(head_density):
            return head_density(features)
        return _density_rgb(self.head(features))[0]

    def forward(
        self, positions: Tensor, directions: Tensor, scene_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(density [S], rgb [S, C])`` at world ``positions [S, 3]`` seen along ``directions [S, 3]``."""
        check_tensor("directions", directions, shape=(positions.shape[0], 3), floating=True)
        features = self.features(positions, scene_index)
        out = self.head(features, directions) if self.use_view_dirs else self.head(features)
        return _density_rgb(out)

    def extra_repr(self) -> str:
        planes = None if self.planes is None else list(self.planes.shape)
        return f"planes={planes}, use_view_dirs={self.use_view_dirs}"
