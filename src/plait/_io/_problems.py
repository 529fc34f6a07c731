"""Collecting the problems of a document and raising them as one error.

A place in a document is a *location*: a tuple of mapping keys and list
indexes, ``("steps", 1, "map", "args", "url")``, shown as the path
``steps[1].map.args.url`` (the format of :mod:`plait._model._paths`). The
reader of YAML or JSON text maps locations to line numbers, so that each
problem can name its line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

from .._model._errors import WorkflowError
from .._model._paths import child, index, show_path

__all__ = ["Loc", "Problems", "describe", "key_part", "show_loc"]

Loc = tuple[str | int, ...]


def key_part(key: object) -> str:
    """The location part of a mapping key (keys that are not str use repr)."""
    return key if isinstance(key, str) else repr(key)


def show_loc(loc: Loc) -> str:
    """The path of a location: ``steps[1].map``; the root is ``""``."""
    path = ""
    for part in loc:
        path = index(path, part) if isinstance(part, int) else child(path, part)
    return path


_SCALAR_NAMES = {None: "null", True: "true", False: "false"}


def describe(value: object) -> str:
    """A short account of a value found in a document, for a message."""
    if value is None or isinstance(value, bool):
        return _SCALAR_NAMES[value]
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, str | int | float):
        try:
            text = repr(value)
        except ValueError:  # an int too long to print
            return f"an int of {value.bit_length()} bits"  # type: ignore[union-attr]
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a {type(value).__name__} ({value!r:.40})"


class Problems:
    """The problems found in one document, with their lines when known.

    Args:
        origin: the file the document came from, for the message.

    Attributes:
        lines: line numbers of locations (of a mapping key, or of a list
            element), filled in by the reader of the text; a location not in
            it takes its nearest ancestor's line.
    """

    def __init__(self, origin: str | None = None) -> None:
        self.lines: dict[Loc, int] = {}
        self.origin = origin
        self.found: list[WorkflowError] = []

    def __bool__(self) -> bool:
        return bool(self.found)

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc`` or of its nearest ancestor with one."""
        for n in range(len(loc), -1, -1):
            line = self.lines.get(loc[:n])
            if line is not None:
                return line
        return None

    def add(self, loc: Loc, message: str, *, line: int | None = None) -> None:
        """Record a problem at ``loc``."""
        if line is None:
            line = self.line_of(loc)
        self.found.append(WorkflowError(message, show_loc(loc), line=line))

    def duplicate_key(self, loc: Loc, key: object, first: int, line: int) -> None:
        """A key given twice in one mapping (the text formats keep the last)."""
        self.add(loc, f"duplicate key {key!r} (first given on line {first})", line=line)

    def error(self) -> WorkflowError:
        """One error listing every problem found, in line order."""
        found = sorted(
            self.found, key=lambda e: e.line if e.line is not None else 1 << 62
        )
        where = f" in {self.origin}" if self.origin else ""
        count = f"{len(found)} error" + ("s" if len(found) > 1 else "")
        lines = [f"invalid workflow{where}: {count}"]
        for e in found:
            place = [f"line {e.line}"] if e.line is not None else []
            place.append(show_path(e.path))
            lines.append(f"  {', '.join(place)}: {e.message}")
        first = found[0]
        return WorkflowError(
            "\n".join(lines), first.path, line=first.line, errors=found
        )

    def check(self) -> None:
        """Raise :meth:`error` if anything was found."""
        if self.found:
            raise self.error()

    def fail(self, loc: Loc, message: str, *, line: int | None = None) -> NoReturn:
        """Record a problem and raise at once: nothing more can be checked."""
        self.add(loc, message, line=line)
        raise self.error()
