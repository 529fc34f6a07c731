"""Run many agents at once, safely.

An *agent* is any object with a ``run(task)`` method (sync or async), an
``arun(task)`` coroutine method, or a plain callable; its name comes from
``agent_name``, ``name`` or ``__name__``. Blocking agents run on worker
threads, async ones on the event loop.

* ``run_agents_*`` helpers (sync, each with an async ``arun_agents_*``
  twin): outputs in input order, bounded in flight, a :class:`plait.Failure`
  in place of a failed agent unless ``on_error="raise"``.
* :class:`AgentLoop`: invocations with a concurrency limit, an overall
  timeout, real retry counts, as-completed iteration, streaming and latency
  percentiles.
* :class:`SharedContext`: a dict agents share, with an atomic ``modify``.
* :class:`ResourceMonitor` / :class:`ResourceMetrics`: fewer agents in
  flight while CPU or memory is over a threshold.
"""

from __future__ import annotations

from .._public import publish
from ._adapt import agent_name, agent_tool
from ._context import SharedContext, SyncContext
from ._loop import AgentLoop, AsCompleted, InvocationResult, percentile
from ._resources import ResourceMetrics, ResourceMonitor
from ._run import (
    DEFAULT_BATCH_SIZE,
    arun_agents_concurrently,
    arun_agents_sequentially,
    arun_agents_with_different_tasks,
    arun_agents_with_resource_monitoring,
    arun_agents_with_timeout,
    run_agents_concurrently,
    run_agents_sequentially,
    run_agents_with_different_tasks,
    run_agents_with_resource_monitoring,
    run_agents_with_timeout,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "AgentLoop",
    "AsCompleted",
    "InvocationResult",
    "ResourceMetrics",
    "ResourceMonitor",
    "SharedContext",
    "SyncContext",
    "agent_name",
    "agent_tool",
    "arun_agents_concurrently",
    "arun_agents_sequentially",
    "arun_agents_with_different_tasks",
    "arun_agents_with_resource_monitoring",
    "arun_agents_with_timeout",
    "percentile",
    "run_agents_concurrently",
    "run_agents_sequentially",
    "run_agents_with_different_tasks",
    "run_agents_with_resource_monitoring",
    "run_agents_with_timeout",
]

publish(__name__, globals())
del publish
