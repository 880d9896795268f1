"""Runs every docstring example in the package (each public callable carries one)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import vq3dlib

SKIP_PREFIXES: tuple[str, ...] = ()


def _modules() -> list[str]:
    names = ["vq3dlib"]
    for info in pkgutil.walk_packages(vq3dlib.__path__, prefix="vq3dlib."):
        if not info.name.startswith(SKIP_PREFIXES):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
