"""The op registry (vq3dlib.ops._library): declared ops, their kernels, the dispatch through it."""

from __future__ import annotations

import pytest

from vq3dlib import backend, ops
from vq3dlib.ops._library import register_op


def test_builtin_ops_are_registered_with_their_kernels():
    known = ops.registered_ops()
    builtin = {"ray_march", "render_weight_from_alpha", "render_weight_from_density", "triplane_sample"}
    assert set(known) == builtin
    assert known["ray_march"].kernels == ("march_packed",)
    assert all(info.summary for info in known.values())


def test_unknown_ops_raise():
    with pytest.raises(KeyError, match="unknown op"):
        ops.extension_supports("no_such_op", "cpu")
    with pytest.raises(KeyError, match="unknown op"):
        ops.use_extension("no_such_op", "cpu")


def test_use_extension_follows_the_forced_backend():
    with backend.forced("torch"):
        assert not ops.use_extension("triplane_sample", "cpu")
    with backend.forced("auto"):
        assert ops.use_extension("triplane_sample", "cpu") == ops.extension_supports("triplane_sample", "cpu")


def test_an_op_whose_kernels_are_missing_runs_the_reference():
    info = register_op("test_only_op", ["no_such_kernel"], "a test op")
    try:
        assert not ops.use_extension(info.name, "cpu")
        with backend.forced("ext"), pytest.raises(RuntimeError, match="test_only_op"):
            ops.use_extension(info.name, "cpu")
    finally:
        from vq3dlib.ops import _library

        _library._REGISTRY.pop(info.name)
