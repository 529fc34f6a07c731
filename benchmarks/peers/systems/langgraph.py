"""LangGraph: a ``Send`` per item from the start node, reducers for the results.

The graph has one worker node, reached by one ``Send`` per agent or call;
its outputs are gathered by a reducer on the state (a list for the agents,
a sum for the calls). ``max_concurrency`` goes in the run config when tuned
(at the top level: under ``configurable`` it would be silently ignored).
Blocking nodes run on LangGraph's thread pool in ``invoke``; async ones on
the event loop in ``ainvoke``.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypedDict

from _jobs import TASK, Siblings, StartLog, failing, sibling
from langchain_core.rate_limiters import InMemoryRateLimiter
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

PACKAGES = ("langgraph", "langchain-core")
BACKENDS = ("asyncio",)
TUNED_ONLY = False
UNSUPPORTED = {
    "fanout": "a superstep's cost grows faster than its Sends: on a 2-core "
    "machine 10,000 calls took 8 s and 20,000 took 24 s, so 100,000 is out "
    "of reach (fanout() below runs it at smaller sizes)",
    "memory": "Send fan-out takes its items from the state, a list built up "
    "front: no lazy input",
}
sleep = asyncio.sleep


class State(TypedDict, total=False):
    """The graph state: the inputs, and the reducers that collect results."""

    n: int
    outputs: Annotated[list[Any], operator.add]
    total: Annotated[int, operator.add]


def _graph(work: Callable[..., Any]) -> Any:
    """START -> one ``Send("work", {"i": i})`` per item -> ``work`` -> END."""

    def fan(state: State) -> list[Send]:
        return [Send("work", {"i": i}) for i in range(state["n"])]

    graph = StateGraph(State)
    graph.add_node("work", work)
    graph.add_conditional_edges(START, fan, ["work"])
    graph.add_edge("work", END)
    return graph.compile()


def _config(width: int | None) -> dict[str, Any] | None:
    return None if width is None else {"max_concurrency": width}


async def call(*, x: int) -> int:
    """The trivial call: one yield to the event loop, then the answer."""
    await asyncio.sleep(0)
    return 2 * x


def blocking(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """A sync node calling ``agents[i].run``, run by ``invoke``."""

    def work(state: dict[str, int]) -> dict[str, Any]:
        return {"outputs": [agents[state["i"]].run(TASK)]}

    out = _graph(work).invoke({"n": len(agents)}, _config(width))
    return out["outputs"]


def async_agents(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """An async node awaiting ``agents[i].run``, run by ``ainvoke``."""

    async def work(state: dict[str, int]) -> dict[str, Any]:
        return {"outputs": [await agents[state["i"]].run(TASK)]}

    graph = _graph(work)
    out = asyncio.run(graph.ainvoke({"n": len(agents)}, _config(width)))
    return out["outputs"]


def _summed(n: int, width: int | None, before: Callable[[], Any]) -> int:
    async def work(state: dict[str, int]) -> dict[str, int]:
        await before()
        return {"total": await call(x=state["i"])}

    graph = _graph(work)
    return asyncio.run(graph.ainvoke({"n": n, "total": 0}, _config(width)))["total"]


async def _nothing() -> None:
    return None


def fanout(n: int, width: int | None, backend: str) -> int:
    """``n`` Sends to an async node, summed by the state's reducer."""
    return _summed(n, width, _nothing)


def rate(n: int, limit: int, log: StartLog, backend: str) -> int:
    """Nodes wait on langchain-core's ``InMemoryRateLimiter`` (burst = limit).

    LangGraph has no rate limit for nodes; this limiter, made for chat-model
    calls, is the one its users have at hand.
    """
    limiter = InMemoryRateLimiter(requests_per_second=limit, max_bucket_size=limit)

    async def take() -> None:
        await limiter.aacquire()
        log.record()

    return _summed(n, None, take)


def failfast(siblings: Siblings, seconds: float, backend: str) -> None:
    """Sends to async siblings and one failing node, in a ``try``."""

    async def work(state: dict[str, int]) -> dict[str, int]:
        if state["i"] == siblings.pending:
            return {"total": await failing(siblings, asyncio.sleep)}
        return {"total": await sibling(siblings, seconds, asyncio.sleep)}

    async def main() -> None:
        graph = _graph(work)
        try:
            await graph.ainvoke({"n": siblings.pending + 1, "total": 0})
        except Exception as error:
            siblings.caught(error)

    asyncio.run(main())
