"""The shape of a composed call pipeline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Invoker"]

# (args, kwargs, path template, element indexes) -> result
Invoker = Callable[
    [tuple[Any, ...], dict[str, Any], str, tuple[int, ...]], Awaitable[Any]
]
