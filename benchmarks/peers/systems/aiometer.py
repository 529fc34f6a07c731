"""aiometer: ``run_all`` of async callables, ``max_at_once``/``max_per_second``.

It takes async callables only (no lambdas), so blocking agents go through
``anyio.to_thread.run_sync``: at the defaults that is AnyIO's 40 threads;
tuned, a ``CapacityLimiter`` of the same width. At its defaults nothing is
bounded: every call starts at once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiometer
import anyio
import anyio.to_thread
from _jobs import TASK, Siblings, StartLog, failing, sibling

PACKAGES = ("aiometer", "anyio")
BACKENDS = ("asyncio",)
TUNED_ONLY = False
UNSUPPORTED: dict[str, str] = {}
sleep = asyncio.sleep


async def call(*, x: int) -> int:
    """The trivial call: one yield to the event loop, then the answer."""
    await asyncio.sleep(0)
    return 2 * x


def _run_all(fns: Sequence[Callable[[], Awaitable[Any]]], **meters: Any) -> list[Any]:
    return asyncio.run(aiometer.run_all(fns, **meters))


def blocking(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """``run_all`` of ``to_thread.run_sync(agent.run, TASK)``."""
    limiter = anyio.CapacityLimiter(width) if width else None
    fns = [
        functools.partial(anyio.to_thread.run_sync, a.run, TASK, limiter=limiter)
        for a in agents
    ]
    return _run_all(fns, max_at_once=width)


def async_agents(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """``run_all`` of every agent's ``run``."""
    fns = [functools.partial(a.run, TASK) for a in agents]
    return _run_all(fns, max_at_once=width)


def fanout(n: int, width: int | None, backend: str) -> int:
    """``run_all`` of ``partial(call, x=i)``, summed."""
    return sum(
        _run_all([functools.partial(call, x=i) for i in range(n)], max_at_once=width)
    )


def rate(n: int, limit: int, log: StartLog, backend: str) -> int:
    """``run_all(..., max_per_second=limit)``: calls spaced 1/limit apart."""

    async def limited(*, x: int) -> int:
        log.record()
        return await call(x=x)

    fns = [functools.partial(limited, x=i) for i in range(n)]
    return sum(_run_all(fns, max_per_second=limit))


def failfast(siblings: Siblings, seconds: float, backend: str) -> None:
    """``run_all`` of the siblings and the failing call, in a ``try``."""

    async def main() -> None:
        fns: list[Callable[[], Awaitable[int]]] = [
            functools.partial(sibling, siblings, seconds, asyncio.sleep)
            for _ in range(siblings.pending)
        ]
        fns.append(functools.partial(failing, siblings, asyncio.sleep))
        try:
            await aiometer.run_all(fns, max_at_once=siblings.pending + 1)
        except Exception as error:
            siblings.caught(error)

    asyncio.run(main())


def memory(items: Iterable[int], width: int | None, backend: str) -> int:
    """``run_on_each`` over the iterator, summing as calls finish.

    ``run_all`` and ``amap`` need ``len()`` of their input; ``run_on_each``
    walks it lazily but returns nothing, so the sum is kept by the call.
    """
    total = 0

    async def add(x: int) -> None:
        nonlocal total
        value = await call(x=x)
        total += value

    asyncio.run(aiometer.run_on_each(add, items, max_at_once=width))  # type: ignore[arg-type]
    return total
