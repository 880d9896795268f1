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


LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", [DOCS.parent / "README.md", *_guides()], ids=lambda p: p.name)
def test_relative_links_point_into_the_repository(page: Path):
    repo = DOCS.parent
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.exists(), f"{page.name}: broken link {target}"
        assert resolved.is_relative_to(repo), f"{page.name}: {target} points outside the repository"
    assert "../shared/" not in page.read_text()


def test_readme_quick_start_points_to_the_guide():
    readme = (DOCS.parent / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "(docs/quickstart.md)" in quick
    assert 'pip install -e ".[test]" && vq3d demo\npytest\n' in quick
