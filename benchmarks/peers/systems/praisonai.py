"""praisonaiagents: a ``Workflow`` of one ``parallel([...])`` step.

Every agent or call is a function step taking the workflow context; the
outputs are the ``parallel_outputs`` variable, in input order. ``parallel``
runs its steps on a thread pool of ``max_workers`` threads, 3 by default.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from _jobs import TASK, Siblings, StartLog, blocking_failing, blocking_sibling
from praisonaiagents import Workflow
from praisonaiagents.llm.rate_limiter import RateLimiter
from praisonaiagents.workflows import parallel

PACKAGES = ("praisonaiagents",)
BACKENDS = ("threads",)
TUNED_ONLY = False
UNSUPPORTED = {
    "memory": "parallel() takes a list of steps: no lazy input, no reduce",
}
sleep = asyncio.sleep


def _step(n: int, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` as a step with a name of its own (steps are keyed by name)."""
    fn.__name__ = f"step_{n}"
    return fn


def _run(steps: list[Callable[[Any], Any]], width: int | None, **kw: Any) -> list[Any]:
    workflow = Workflow(steps=[parallel(steps, max_workers=width, **kw)])
    return workflow.run(TASK)["variables"]["parallel_outputs"]


def blocking(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """One step per agent, calling ``agent.run(context.input)``."""
    steps = [_step(n, lambda ctx, a=a: a.run(ctx.input)) for n, a in enumerate(agents)]
    return _run(steps, width)


def async_agents(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """One async step per agent, awaiting ``agent.run(context.input)``."""

    def step_for(n: int, agent: Any) -> Callable[[Any], Any]:
        async def step(ctx: Any) -> Any:
            return await agent.run(ctx.input)

        return _step(n, step)

    return _run([step_for(n, a) for n, a in enumerate(agents)], width)


async def call(*, x: int) -> int:
    """The trivial call: one yield to the event loop, then the answer."""
    await asyncio.sleep(0)
    return 2 * x


def fanout(n: int, width: int | None, backend: str) -> int:
    """One async step per call, summed."""

    def step_for(i: int) -> Callable[[Any], Any]:
        async def step(ctx: Any) -> int:
            return await call(x=i)

        return _step(i, step)

    outputs = _run([step_for(i) for i in range(n)], width)
    if any("coroutine object" in str(o) for o in outputs):
        return outputs  # type: ignore[return-value]  # the check names it
    return sum(int(o) for o in outputs)


def rate(n: int, limit: int, log: StartLog, backend: str) -> int:
    """Blocking steps taking a token of its ``RateLimiter`` (burst = limit)."""
    limiter = RateLimiter(requests_per_minute=limit * 60, burst=limit)

    def step_for(i: int) -> Callable[[Any], Any]:
        def step(ctx: Any) -> int:
            limiter.acquire()
            log.record()
            return 2 * i

        return _step(i, step)

    outputs = _run([step_for(i) for i in range(n)], None)
    return sum(int(o) for o in outputs)  # outputs come back as strings


def failfast(siblings: Siblings, seconds: float, backend: str) -> None:
    """``parallel(..., on_failure="fail_fast")`` of blocking steps."""
    steps = [
        _step(i, lambda ctx: blocking_sibling(siblings, seconds))
        for i in range(siblings.pending)
    ]
    steps.append(_step(siblings.pending, lambda ctx: blocking_failing(siblings)))
    try:
        _run(steps, siblings.pending + 1, on_failure="fail_fast")
    except Exception as error:
        siblings.caught(error)
