"""``concurrent.futures.ThreadPoolExecutor``: threads, no event loop.

At its defaults the pool has ``min(32, cpu_count + 4)`` threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from _jobs import TASK, Siblings, blocking_failing, blocking_sibling

PACKAGES: tuple[str, ...] = ()
BACKENDS = ("threads",)
TUNED_ONLY = False
NO_LOOP = "runs callables on threads: an async call needs an event loop of its own"
UNSUPPORTED = {
    "async": NO_LOOP,
    "fanout": NO_LOOP,
    "rate": "no rate limiting",
}


async def sleep(seconds: float) -> None:  # pragma: no cover - no async agents
    raise NotImplementedError


def double(x: int) -> int:
    """The trivial call, blocking flavour."""
    return 2 * x


def blocking(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """``pool.map`` of every agent's ``run``."""
    with ThreadPoolExecutor(width) as pool:
        return list(pool.map(lambda a: a.run(TASK), agents))


def memory(items: Iterable[int], width: int | None, backend: str) -> int:
    """``sum(pool.map(...))``: ``map`` submits every item up front."""
    with ThreadPoolExecutor(width) as pool:
        return sum(pool.map(double, items))


def failfast(siblings: Siblings, seconds: float, backend: str) -> None:
    """Submit all, raise the first failure, cancel what has not started."""
    pool = ThreadPoolExecutor(siblings.pending + 1)
    try:
        futures = [
            pool.submit(blocking_sibling, siblings, seconds)
            for _ in range(siblings.pending)
        ]
        futures.append(pool.submit(blocking_failing, siblings))
        for future in as_completed(futures):
            future.result()
    except Exception as error:
        siblings.caught(error)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
