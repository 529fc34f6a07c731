"""Read JSON text with the standard library, keeping the line of every key.

``json.loads`` parses the text (and reports syntax errors with their line);
a small scanner then walks the same text to record the line of each mapping
key and list element and to catch duplicate keys, which ``json.loads`` would
let the last one win.
"""

from __future__ import annotations

import bisect
import json
import re
from typing import Any

from ._form import MAX_DEPTH
from ._problems import Loc, Problems

__all__ = ["parse_json"]

_SPACE = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
# What json.loads takes as a number or a constant (NaN, Infinity, -Infinity).
_ATOM = re.compile(
    r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null|NaN|-?Infinity"
)


def parse_json(text: str, problems: Problems) -> Any:
    """Parse JSON text into plain data; note the line of each location.

    Lines go to ``problems.lines``; repeated keys are added to ``problems``.

    Raises:
        WorkflowError: the text is not JSON or nests too deeply, with the
            line of the problem.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        problems.fail((), f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno)
    except ValueError as e:  # such as an int with too many digits
        problems.fail((), f"invalid JSON: {e}")
    except RecursionError:
        problems.fail((), f"the document nests more than {MAX_DEPTH} levels deep")
    _Scanner(text, problems).value(0, (), 0)
    return data


class _Scanner:
    """Walks JSON text that ``json.loads`` accepted; records key positions."""

    def __init__(self, text: str, problems: Problems) -> None:
        self.text = text
        self.problems = problems
        self.lines = problems.lines
        self.newlines = [m.start() for m in re.finditer("\n", text)]

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def skip(self, pos: int) -> int:
        match = _SPACE.match(self.text, pos)
        assert match is not None  # the pattern matches the empty string
        return match.end()

    def string(self, pos: int) -> tuple[str, int]:
        """The string starting at ``pos`` and the position after it."""
        match = _STRING.match(self.text, pos)
        assert match is not None  # json.loads accepted the text
        text: str = json.loads(match.group())
        return text, match.end()

    def value(self, pos: int, loc: Loc, depth: int) -> int:
        """Scan the value at ``pos``; return the position after it."""
        pos = self.skip(pos)
        if depth > MAX_DEPTH:
            self.problems.fail(
                loc,
                f"the document nests more than {MAX_DEPTH} levels deep",
                line=self.line(pos),
            )
        char = self.text[pos]
        if char == "{":
            return self.mapping(pos + 1, loc, depth)
        if char == "[":
            return self.sequence(pos + 1, loc, depth)
        if char == '"':
            return self.string(pos)[1]
        match = _ATOM.match(self.text, pos)
        assert match is not None  # json.loads accepted the text
        return match.end()

    def mapping(self, pos: int, loc: Loc, depth: int) -> int:
        pos = self.skip(pos)
        if self.text[pos] == "}":
            return pos + 1
        seen: dict[str, int] = {}
        while True:
            pos = self.skip(pos)
            key, end = self.string(pos)
            line = self.line(pos)
            sub = (*loc, key)
            if key in seen:
                self.problems.duplicate_key(sub, key, seen[key], line)
            else:
                seen[key] = line
                self.lines.setdefault(sub, line)
            pos = self.skip(end) + 1  # the ':'
            pos = self.skip(self.value(pos, sub, depth + 1))
            if self.text[pos] == "}":
                return pos + 1
            pos += 1  # the ','

    def sequence(self, pos: int, loc: Loc, depth: int) -> int:
        pos = self.skip(pos)
        if self.text[pos] == "]":
            return pos + 1
        i = 0
        while True:
            pos = self.skip(pos)
            self.lines.setdefault((*loc, i), self.line(pos))
            pos = self.skip(self.value(pos, (*loc, i), depth + 1))
            if self.text[pos] == "]":
                return pos + 1
            pos += 1
            i += 1
