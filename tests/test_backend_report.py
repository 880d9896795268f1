"""The backend report (vq3dlib.backend.report) and its entry point, ``python -m vq3dlib.backend``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vq3dlib.backend.report import backend_report
from vq3dlib.ops import registered_ops

ROOT = Path(__file__).resolve().parents[1]


def test_report_names_every_op_and_the_extension_state():
    text = backend_report(build=False)
    for op in registered_ops():
        assert op in text
    assert "cpu_parallel=" in text and "nerfacc importable" in text
    assert "field MLP (mlp_backend='auto')" in text


def test_python_dash_m_prints_the_report():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-m", "vq3dlib.backend"], capture_output=True, text=True, env=env, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("vq3dlib backend report")
    for op in registered_ops():
        assert op in res.stdout
