"""The C++ enum codes mirrored in vq3dlib/ops/_codes.py agree with csrc/include/vq3dlib/*.h."""

from __future__ import annotations

import re
from pathlib import Path

from vq3dlib.ops._codes import HEADERS

INCLUDE = Path(__file__).resolve().parents[1] / "csrc" / "include" / "vq3dlib"


def test_codes_match_the_header_enums():
    for kind, (header, enum, codes) in HEADERS.items():
        text = (INCLUDE / header).read_text()
        body = re.search(rf"enum {enum}\s*:\s*int\s*\{{([^}}]*)\}}", text)
        assert body, f"enum {enum} not found in {header}"
        values = [int(v) for v in re.findall(r"=\s*(\d+)", body.group(1))]
        assert values == list(codes.values()), (kind, values, codes)
        assert len(set(codes.values())) == len(codes)
