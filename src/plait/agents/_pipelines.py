"""Agents on plait's call pipeline: one pipeline per agent name and kind.

An agent is called through the same pipeline as any tool (admission,
per-attempt timeout, retry, worker threads for blocking agents), composed by
:func:`plait._calls._compose.compose`. Composing a pipeline costs more than
a short agent, so agents share them: one per agent name and kind (async or
blocking), which calls the agent it is handed as its first argument. The
agent's name is the pipeline's, so that its timeouts name it; that is the
only place a pipeline's name shows (its events and counters stay private),
so without a timeout every agent of a kind shares one pipeline.

Only the latest few pipelines are kept: with a timeout, agents named each
differently (the usual case) would otherwise keep a pipeline each alive for
the whole run, and that many long-lived objects set off full garbage
collections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .._calls._compose import compose
from .._calls._context import RunContext, ToolRuntime
from .._calls._invoker import Invoker
from .._model._retry import Retry
from .._model._stats import ToolCounters
from .._model._tools import Tool

__all__ = ["AgentPipelines"]


async def _call_async(
    entry: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any
) -> Any:
    return await entry(*args, **kwargs)


def _call_blocking(entry: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return entry(*args, **kwargs)


class AgentPipelines:
    """The call pipelines of the agents of one :class:`RunContext`.

    ``pipelines.get(name, is_async)`` is an invoker called as
    ``invoke((entry, *args), kwargs, path, ())``: it runs
    ``entry(*args, **kwargs)``, the entry point of an agent called ``name``.

    Args:
        run: the limits, threads and events the agents share.
        timeout: seconds per attempt, or None.
        retry: the retry policy of every agent, or None.
        keep: how many pipelines to keep at most; past it they are all
            dropped and built again as needed.
    """

    __slots__ = (
        "_counters",
        "_invokers",
        "_keep",
        "_retry",
        "_run",
        "_runtimes",
        "_timeout",
    )

    def __init__(
        self,
        run: RunContext,
        *,
        timeout: float | None,
        retry: Retry | None,
        keep: int = 64,
    ) -> None:
        self._run = run
        self._timeout = timeout
        self._retry = retry
        self._keep = keep
        self._invokers: dict[tuple[str, bool], Invoker] = {}
        # Every agent counts into these: counters per name (a latency
        # histogram each) would cost more than a short agent, and nobody
        # reads them by name.
        self._counters = ToolCounters()
        self._runtimes = (
            ToolRuntime(Tool(_call_blocking, "agent"), None, None),
            ToolRuntime(Tool(_call_async, "agent"), None, None),
        )

    def get(self, name: str, is_async: bool) -> Invoker:
        """The pipeline of the async or blocking agents called ``name``."""
        if self._timeout is None:
            name = "agent"
        try:
            return self._invokers[name, is_async]
        except KeyError:
            return self._compose(name, is_async)

    def _compose(self, name: str, is_async: bool) -> Invoker:
        invokers = self._invokers
        run = self._run
        if len(invokers) >= self._keep:
            invokers.clear()
            run.counters.clear()
        run.counters[name] = self._counters
        invoker = invokers[name, is_async] = compose(
            self._runtimes[is_async],
            run,
            timeout=self._timeout,
            retry=self._retry,
            name=name,
        )
        return invoker
