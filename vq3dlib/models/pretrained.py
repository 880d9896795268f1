"""Bundled pretrained weights: the safetensors files shipped inside the package, found by name.

A bundled model is a file ``<name>.safetensors`` in :data:`WEIGHTS_DIR` (``vq3dlib/weights/``),
written by :meth:`VQ3DModel.save(path, inference=True) <vq3dlib.models.VQ3DModel.save>` (the
config in the file's metadata, float16 parameters, no discriminator weights).
:meth:`VQ3DModel.pretrained <vq3dlib.models.VQ3DModel.pretrained>` loads one;
:func:`list_pretrained` names them and :func:`pretrained_path` finds one, raising a ``ValueError``
that lists the available names for any other. ``vq3d reconstruct`` and ``vq3d export-mesh`` use
:data:`DEFAULT_PRETRAINED` when no ``--model`` is given.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp()); (folder / "mine.safetensors").write_bytes(b"")
    0
    >>> list_pretrained(folder), pretrained_path("mine", folder).name
    (['mine'], 'mine.safetensors')
"""

from __future__ import annotations

import os
from pathlib import Path

#: the folder of the bundled weights files (package data of vq3dlib)
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

#: the bundled model the command line uses when no ``--model`` is given
DEFAULT_PRETRAINED = "tiny-procedural"

_SUFFIX = ".safetensors"


def _folder(weights_dir: str | os.PathLike | None) -> Path:
    return Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR


def list_pretrained(weights_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the bundled models (the ``*.safetensors`` files of ``weights_dir``, default
    :data:`WEIGHTS_DIR`), sorted.

    Example:
        >>> import tempfile
        >>> list_pretrained(tempfile.mkdtemp())  # a folder without weights files
        []
    """
    folder = _folder(weights_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(_SUFFIX)] for p in folder.glob(f"*{_SUFFIX}") if p.is_file())


def pretrained_path(name: str = DEFAULT_PRETRAINED, weights_dir: str | os.PathLike | None = None) -> Path:
    """The weights file of the bundled model ``name``.

    Raises ``ValueError`` naming the available models when there is no such file.

    Example:
        >>> import tempfile
        >>> try:
        ...     pretrained_path("nope", tempfile.mkdtemp())
        ... except ValueError as e:
        ...     print(str(e)[:38])
        no bundled model named 'nope' (bundled
    """
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ValueError(f"name must be the name of a bundled model, got {name!r}")
    path = _folder(weights_dir) / f"{name}{_SUFFIX}"
    if path.is_file():
        return path
    names = list_pretrained(weights_dir)
    available = ", ".join(names) if names else f"none: {_folder(weights_dir)} holds no weights file"
    raise ValueError(f"no bundled model named {name!r} (bundled models: {available})")


__all__ = ["DEFAULT_PRETRAINED", "WEIGHTS_DIR", "list_pretrained", "pretrained_path"]
