"""Every ``python`` code block in the README and docs/ runs without error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks() -> list[tuple[str, str]]:
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for n, match in enumerate(FENCE.finditer(doc.read_text(encoding="utf-8"))):
            out.append((f"{doc.relative_to(ROOT)}#{n}", match.group(1)))
    return out


@pytest.mark.parametrize(("where", "code"), _blocks(), ids=[w for w, _ in _blocks()])
def test_code_block_runs(
    where: str, code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})
    capsys.readouterr()


def test_docs_have_code_blocks() -> None:
    assert len(_blocks()) >= 6
