"""The floor: hand-written AnyIO worker pools, the least any system can cost.

``width`` workers in one task group pull from a shared iterator and store
results by index (or add them up); blocking agents go through
``anyio.to_thread.run_sync`` with a ``CapacityLimiter`` of the same width.
No limits shared with anything else, no statistics, no error paths: what a
careful user would write for this one job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
from _jobs import TASK, Siblings, StartLog, failing, sibling

PACKAGES = ("anyio", "trio", "uvloop")
BACKENDS = ("asyncio", "uvloop", "trio")
TUNED_ONLY = True
UNSUPPORTED: dict[str, str] = {}
sleep = anyio.sleep
T = TypeVar("T")


def run_on(backend: str, fn: Callable[[], Awaitable[T]]) -> T:
    """``anyio.run`` on ``backend``, uvloop being asyncio with its loop."""
    if backend == "uvloop":
        return anyio.run(fn, backend="asyncio", backend_options={"use_uvloop": True})
    return anyio.run(fn, backend=backend)


async def pool(
    items: Iterable[T], width: int, work: Callable[[int, T], Awaitable[None]]
) -> None:
    """Run ``work(index, item)`` for every item, ``width`` at a time."""
    shared = enumerate(items)

    async def worker() -> None:
        for i, item in shared:
            await work(i, item)

    async with anyio.create_task_group() as tg:
        for _ in range(width):
            tg.start_soon(worker)


async def call(*, x: int) -> int:
    """The trivial call: one yield to the event loop, then the answer."""
    await anyio.lowlevel.checkpoint()
    return 2 * x


def blocking(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """Each agent's ``run`` on a worker thread, ``width`` threads at most."""
    assert width is not None
    limiter = anyio.CapacityLimiter(width)
    out: list[Any] = [None] * len(agents)

    async def work(i: int, agent: Any) -> None:
        out[i] = await anyio.to_thread.run_sync(agent.run, TASK, limiter=limiter)

    run_on(backend, lambda: pool(agents, width, work))
    return out


def async_agents(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """Each agent's ``run`` awaited by one of ``width`` workers."""
    assert width is not None
    out: list[Any] = [None] * len(agents)

    async def work(i: int, agent: Any) -> None:
        out[i] = await agent.run(TASK)

    run_on(backend, lambda: pool(agents, width, work))
    return out


def _sum(
    items: Iterable[int], width: int, before: Callable[[], Awaitable[None]]
) -> Any:
    """A coroutine function summing ``call(x=i)``, ``before`` each call."""
    total = 0

    async def work(_: int, x: int) -> None:
        nonlocal total
        await before()
        value = await call(x=x)
        total += value  # after the await: `total += await ...` loses updates

    async def main() -> int:
        await pool(items, width, work)
        return total

    return main


async def _nothing() -> None:
    return None


def fanout(n: int, width: int | None, backend: str) -> int:
    """``width`` workers summing the calls over ``range(n)``."""
    assert width is not None
    return run_on(backend, _sum(range(n), width, _nothing))


def memory(items: Iterable[int], width: int | None, backend: str) -> int:
    """The same workers pulling from the lazy iterator."""
    assert width is not None
    return run_on(backend, _sum(items, width, _nothing))


class Bucket:
    """A token bucket: ``rate`` tokens a second, ``rate`` at most, FIFO."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.stamp = anyio.current_time()
        self.lock = anyio.Lock()

    async def take(self) -> None:
        """Wait for a token and take it; waiters queue on the lock in order."""
        async with self.lock:
            while True:
                now = anyio.current_time()
                self.tokens = min(
                    self.rate, self.tokens + (now - self.stamp) * self.rate
                )
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await anyio.sleep((1 - self.tokens) / self.rate)


def rate(n: int, limit: int, log: StartLog, backend: str) -> int:
    """100 workers, each taking a token of one shared bucket before a call."""

    async def main() -> int:
        bucket = Bucket(limit)

        async def take() -> None:
            await bucket.take()
            log.record()

        return await _sum(range(n), 100, take)()

    return run_on(backend, main)


def failfast(siblings: Siblings, seconds: float, backend: str) -> None:
    """One task group: the pending siblings and the failing call."""

    async def main() -> None:
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(siblings.pending):
                    tg.start_soon(sibling, siblings, seconds, anyio.sleep)
                tg.start_soon(failing, siblings, anyio.sleep)
        except Exception as error:
            siblings.caught(error)

    run_on(backend, main)
