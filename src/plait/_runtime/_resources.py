"""Resources a run's tool calls share, closed when the run ends.

A tool that needs a pooled client (the ready-made HTTP tool's
``httpx.AsyncClient``) asks the current run for it with
:func:`run_resource`: the first call of the run makes it, the others share
it, and the engine closes it when the run ends, however it ends, in a
shielded scope. A run's resources live in a context variable that its tasks
inherit; outside a run there are none (the tool then makes its own,
for one call).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio

__all__ = ["RunResources", "current_resources", "run_resources"]

T = TypeVar("T")
Close = Callable[[], Awaitable[Any]]

logger = logging.getLogger("plait")


class RunResources:
    """The shared objects of one run, by key, with how to close each."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[object, tuple[Any, Close]] = {}

    def get(self, key: object, make: Callable[[], tuple[T, Close]]) -> T:
        """The object under ``key``; ``make()`` gives it and its closer first."""
        try:
            return self._items[key][0]  # type: ignore[no-any-return]
        except KeyError:
            item = self._items[key] = make()
            return item[0]

    async def aclose(self) -> None:
        """Close every object, the last made first; a failing close is logged."""
        items, self._items = list(self._items.values()), {}
        with anyio.CancelScope(shield=True):
            for _, close in reversed(items):
                try:
                    await close()
                except Exception:
                    logger.exception("plait: closing a run's resource failed")


_current: ContextVar[RunResources | None] = ContextVar(
    "plait_run_resources", default=None
)


def current_resources() -> RunResources | None:
    """The resources of the run this task belongs to, or None outside runs."""
    return _current.get()


@asynccontextmanager
async def run_resources() -> AsyncIterator[RunResources]:
    """``async with run_resources():`` the tasks inside share one run's resources."""
    resources = RunResources()
    token = _current.set(resources)
    try:
        yield resources
    finally:
        _current.reset(token)
        await resources.aclose()
