"""A workflow's fingerprint: what must not change between a run and its resume.

The fingerprint covers what decides which calls a run makes and with what:
the steps, their expressions, tools (by name) and functions (by import
name). It leaves out what only decides how (timeouts, retries, widths,
descriptions), so that a run that crashed on a timeout can be resumed with
a longer one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs

from ._tools import Tool

__all__ = ["fingerprint"]

_HOW = frozenset({"timeout", "retry", "max_concurrency", "description"})


def fingerprint(step: Any, inputs: bytes | None = None) -> str:
    """``"<hash of step>:<inputs>"``, the same in every process.

    ``step`` is a workflow or a step; ``inputs`` a digest of the run's inputs,
    or None when they cannot be encoded (shown as ``-``).
    """
    text = _canonical(step)
    steps = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return f"{steps}:{'-' if inputs is None else inputs.hex()}"


def _canonical(value: Any) -> str:
    if isinstance(value, Tool):
        return f"Tool({value.name!r})"
    if attrs.has(type(value)):
        parts = [
            f"{f.name}={_canonical(getattr(value, f.name))}"
            for f in attrs.fields(type(value))
            if f.name not in _HOW and f.init
        ]
        return f"{type(value).__name__}({','.join(parts)})"
    if isinstance(value, dict):
        items = sorted((repr(k), _canonical(v)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if value is None or isinstance(value, str | int | float | bool):
        return repr(value)
    if callable(value):
        module = getattr(value, "__module__", None)
        qualname = getattr(value, "__qualname__", type(value).__qualname__)
        return f"<{module}:{qualname}>"
    return f"<{type(value).__module__}:{type(value).__qualname__}>"
