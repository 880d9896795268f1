"""Executes every ```python block of the guides in docs/ (one namespace per file, in order)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _guides() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md"))


def test_docs_have_examples():
    assert any(BLOCK.search(p.read_text()) for p in _guides())


@pytest.mark.parametrize("guide", _guides(), ids=lambda p: str(p.relative_to(DOCS)))
def test_guide_examples_run(guide: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{guide.stem}"}
    for i, block in enumerate(BLOCK.findall(guide.read_text())):
        code = compile(block, f"{guide.name}[block {i}]", "exec")
        exec(code, namespace)
