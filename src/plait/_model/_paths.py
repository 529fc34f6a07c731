"""The one path format used by errors, failures and events.

A path names a place in a workflow the way the file form of the workflow
spells it: the root step is ``""``; the children of ``Sequential`` and of a
positional ``Parallel`` are ``steps[i]``; named ``Parallel`` branches are
``steps.<name>``; a ``MapReduce`` has ``over``, ``map``, ``reduce`` and
``initial``, and the run of its map step for the element at index ``i`` is
``map[i]``; a ``Call``'s arguments are ``args[i]`` and ``args.<name>``.
Parts are joined with dots: ``steps[1].map[17].steps[0]``.

At run time a step under one or more ``MapReduce`` steps has a *template*
with one ``{}`` slot per element index, filled in only when a path is shown
(an error, a failure, an event), so that the hot path never formats strings.
"""

from __future__ import annotations

__all__ = ["child", "fill", "index", "key", "show_path"]

_ESCAPES = str.maketrans({"{": "{{", "}": "}}"})


def show_path(path: str) -> str:
    """Return ``path`` for a message: the root step reads ``<root>``."""
    return path or "<root>"


def child(path: str, name: str) -> str:
    """Join an attribute-like part: ``child("steps[1]", "map")``."""
    return f"{path}.{name}" if path else name


def key(path: str, name: str) -> str:
    """Join a named branch or keyword argument; braces are escaped."""
    return child(path, name.translate(_ESCAPES))


def index(path: str, i: int) -> str:
    """Join a positional index: ``index("steps", 2) == "steps[2]"``."""
    return f"{path}[{i}]"


def fill(template: str, loc: tuple[int, ...]) -> str:
    """Turn a run-time path template and element indexes into a path."""
    return template.format(*loc)
