"""plait at its defaults: the agents helpers and ``plait.run`` of a MapReduce."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
from _jobs import TASK, Siblings, StartLog, failing, sibling

import plait
from plait.agents import run_agents_concurrently

PACKAGES = ("plait", "anyio", "trio", "uvloop")
BACKENDS = ("asyncio", "uvloop", "trio")
TUNED_ONLY = False
UNSUPPORTED: dict[str, str] = {}
sleep = anyio.sleep


async def call(*, x: int) -> int:
    """The trivial call: one yield to the event loop, then the answer."""
    await anyio.lowlevel.checkpoint()
    return 2 * x


def blocking(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """``run_agents_concurrently``; ``batch_size`` only when tuned."""
    return run_agents_concurrently(agents, TASK, batch_size=width, backend=backend)


async_agents = blocking  # the same helper awaits async agents


def _summed(over: Any, width: int | None) -> plait.MapReduce:
    """Sum ``call(x=item)`` over ``over``, at most ``width`` in flight."""
    return plait.MapReduce(
        over,
        plait.Call("call", x=plait.Var("item")),
        reduce=operator.add,
        initial=0,
        max_concurrency=width,
    )


def fanout(n: int, width: int | None, backend: str) -> int:
    """A MapReduce over ``range(n)`` calling the tool with a keyword argument."""
    tool = plait.tool(call, name="call")
    return plait.run(
        _summed(plait.Var("xs"), width), {"xs": range(n)}, tools=[tool], backend=backend
    )


def rate(n: int, limit: int, log: StartLog, backend: str) -> int:
    """The same MapReduce, the tool under ``RateLimit(limit)`` (burst = limit)."""

    async def limited(*, x: int) -> int:
        log.record()
        return await call(x=x)

    tool = plait.tool(limited, name="call", rate_limit=plait.RateLimit(limit))
    return plait.run(
        _summed(plait.Var("xs"), None), {"xs": range(n)}, tools=[tool], backend=backend
    )


def failfast(siblings: Siblings, seconds: float, backend: str) -> None:
    """``await engine.run`` of a MapReduce (raise mode) whose last item fails.

    The error is caught inside the event loop, as the floor catches its own.
    """

    async def work(*, x: int) -> int:
        if x == siblings.pending:
            return await failing(siblings, anyio.sleep)
        return await sibling(siblings, seconds, anyio.sleep)

    width = siblings.pending + 1  # the engine's own bound (100) is lifted too
    step = plait.MapReduce(
        plait.Var("xs"), plait.Call("call", x=plait.Var("item")), max_concurrency=width
    )

    async def main() -> None:
        engine = plait.Engine(
            tools=[plait.tool(work, name="call")], max_concurrency=width
        )
        try:
            await engine.run(step, {"xs": range(width)})
        except Exception as error:
            siblings.caught(error)

    if backend == "uvloop":
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, backend=backend)


def memory(items: Iterable[int], width: int | None, backend: str) -> int:
    """A lazy MapReduce over the iterator, folded as results arrive."""
    tool = plait.tool(call, name="call")
    return plait.run(
        _summed(plait.Var("xs"), width), {"xs": items}, tools=[tool], backend=backend
    )
