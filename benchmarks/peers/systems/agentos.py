"""nexus-agentos: ``AsyncAgentLoop.run_all`` of ``(id, fn, args, kwargs)``.

``run_all`` gathers every invocation under a semaphore of
``max_concurrency`` (10 by default). It takes async callables, so blocking
agents go through ``asyncio.to_thread``: the loop's default executor, of
``min(32, cpu_count + 4)`` threads; tuned, the loop gets an executor of the
same width as the semaphore.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _jobs import TASK
from agentos.core.async_loop import AsyncAgentLoop, AsyncLoopConfig

PACKAGES = ("nexus-agentos", "numpy", "aiofiles")
BACKENDS = ("asyncio",)
TUNED_ONLY = False
UNSUPPORTED = {
    "rate": "AsyncAgentLoop has no rate limit",
    "failfast": "no fail-fast: every exception is retried, then returned as a "
    "failed result once all have finished",
    "memory": "run_all takes a list and gathers all of it: no lazy input",
}
sleep = asyncio.sleep
Task = tuple[str, Any, tuple[Any, ...], dict[str, Any]]


def _run_all(tasks: list[Task], width: int | None, threads: bool = False) -> list[Any]:
    """Outputs of ``run_all``; a failed invocation gives its error string."""

    async def main() -> list[Any]:
        if width is not None and threads:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(width))
        config = AsyncLoopConfig() if width is None else AsyncLoopConfig(width)
        results = await AsyncAgentLoop(config).run_all(tasks)
        return [r.output if r.success else r.error for r in results]

    return asyncio.run(main())


def blocking(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """``run_all`` of ``asyncio.to_thread(agent.run, TASK)``."""
    tasks: list[Task] = [
        (f"agent-{n}", asyncio.to_thread, (a.run, TASK), {})
        for n, a in enumerate(agents)
    ]
    return _run_all(tasks, width, threads=True)


def async_agents(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """``run_all`` of every agent's ``run``."""
    tasks: list[Task] = [
        (f"agent-{n}", a.run, (TASK,), {}) for n, a in enumerate(agents)
    ]
    return _run_all(tasks, width)


async def call(*, x: int) -> int:
    """The trivial call: one yield to the event loop, then the answer."""
    await asyncio.sleep(0)
    return 2 * x


def fanout(n: int, width: int | None, backend: str) -> int:
    """``run_all`` of ``call`` with ``{"x": i}`` as keyword arguments, summed."""
    tasks: list[Task] = [(f"call-{i}", call, (), {"x": i}) for i in range(n)]
    return sum(_run_all(tasks, width))
