"""Plain asyncio: ``asyncio.gather``, bounded by a ``Semaphore`` when tuned.

Blocking agents go through ``asyncio.to_thread``, whose default executor has
``min(32, cpu_count + 4)`` threads; tuned, the loop gets an executor of the
same width as the semaphore.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from _jobs import TASK, Siblings, failing, sibling

PACKAGES: tuple[str, ...] = ()
BACKENDS = ("asyncio",)
TUNED_ONLY = False
UNSUPPORTED = {
    "rate": "no rate limiting in asyncio; a hand-written token bucket is the floor",
}
sleep = asyncio.sleep
T = TypeVar("T")


async def call(*, x: int) -> int:
    """The trivial call: one yield to the event loop, then the answer."""
    await asyncio.sleep(0)
    return 2 * x


def _bounded(
    width: int | None,
) -> Callable[[Awaitable[T]], Awaitable[T]]:
    """Wrap an awaitable in the semaphore of ``width`` (none for defaults)."""
    if width is None:
        return lambda aw: aw
    semaphore = asyncio.Semaphore(width)

    async def bounded(aw: Awaitable[T]) -> T:
        async with semaphore:
            return await aw

    return bounded


def blocking(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """``gather`` of ``asyncio.to_thread(agent.run, TASK)``."""

    async def main() -> list[Any]:
        if width is not None:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(width))
        bound = _bounded(width)
        return await asyncio.gather(
            *(bound(asyncio.to_thread(a.run, TASK)) for a in agents)
        )

    return asyncio.run(main())


def async_agents(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """``gather`` of every agent's ``run`` coroutine."""

    async def main() -> list[Any]:
        bound = _bounded(width)
        return await asyncio.gather(*(bound(a.run(TASK)) for a in agents))

    return asyncio.run(main())


def _gather_sum(items: Iterable[int], width: int | None) -> int:
    async def main() -> int:
        bound = _bounded(width)
        return sum(await asyncio.gather(*(bound(call(x=x)) for x in items)))

    return asyncio.run(main())


def fanout(n: int, width: int | None, backend: str) -> int:
    """``gather`` of one coroutine per call, a semaphore around each."""
    return _gather_sum(range(n), width)


def memory(items: Iterable[int], width: int | None, backend: str) -> int:
    """The same over the iterator: ``gather`` makes every task up front."""
    return _gather_sum(items, width)


def failfast(siblings: Siblings, seconds: float, backend: str) -> None:
    """``gather`` of the siblings and the failing call, in a ``try``."""

    async def main() -> None:
        bound = _bounded(siblings.pending + 1)
        calls = [
            bound(sibling(siblings, seconds, asyncio.sleep))
            for _ in range(siblings.pending)
        ]
        try:
            await asyncio.gather(*calls, bound(failing(siblings, asyncio.sleep)))
        except Exception as error:
            siblings.caught(error)

    asyncio.run(main())
