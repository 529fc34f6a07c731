"""A run's output as JSON, whatever Python values it holds.

Outputs are usually plain data, but a workflow may return anything its
tools return. Values JSON has no form for are written as the nearest plain
data: tuples and sets as lists, attrs classes and dataclasses as objects,
:class:`plait.Failure` as ``{"failure": {"path": ..., "error": ...}}``, and
anything else as its ``repr``. Non-finite floats are written as strings, so
the text is always valid JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import attrs

from .._model._results import Failure

__all__ = ["to_json"]


def to_json(value: Any) -> str:
    """``value`` as indented JSON text."""
    return json.dumps(_plain(value), indent=2, ensure_ascii=False, allow_nan=False)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_plain(v) for v in items]
    if isinstance(value, Failure):
        error = value.error
        return {
            "failure": {
                "path": value.path,
                "error": f"{type(error).__name__}: {error}",
            }
        }
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if attrs.has(type(value)):
        return _plain(attrs.asdict(value, recurse=False))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(
            {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        )
    return repr(value)


def _key(key: object) -> str | int | float | bool | None:
    if key is None or isinstance(key, str | int | bool):
        return key
    if isinstance(key, float) and math.isfinite(key):
        return key
    return str(key)
