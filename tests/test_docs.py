"""Every ``python`` code block in the README and docs/ runs without error.

The blocks of one page run in order in one namespace, as one script, so that
a page can define its example agents or tools once and use them below.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(page: Path) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if _blocks(p)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_code_blocks_run(page: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    where = page.relative_to(ROOT)
    for n, code in enumerate(_blocks(page)):
        exec(compile(code, f"{where}#{n}", "exec"), namespace)
    capsys.readouterr()


def test_docs_have_code_blocks() -> None:
    assert sum(len(_blocks(p)) for p in PAGES) >= 6
