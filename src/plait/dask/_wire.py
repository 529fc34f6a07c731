"""What travels to the workers for one remote map step: a small frozen spec.

The chunk step travels as its :func:`plait.dump` document (tools and
functions by import path), never as pickled code, so a worker runs exactly
what a document would describe, and a tool that cannot be written as an
import path (a lambda, a nested function) is refused before the run.

This spec is also where the engine's cross-process layers join the
workers' engines: ``shared_limits`` (a ``RedisLimits``, which pickles as
its url, namespace and lease TTL) and the engine's ``rate_limit``; a worker
builds its engine from them (see :func:`plait.dask._worker.worker_engine`).
The engine's ``journal`` (a ``PostgresJournal``, which pickles as its
settings) travels here too; each chunk opens the coordinator's run in it
without claiming it (the run id travels with the chunk, see
:class:`plait._runtime._executor.ChunkPlace`).
"""

from __future__ import annotations

import attrs

from .._calls._shared import SharedLimits
from .._io import dump
from .._journal._protocol import Journal
from .._model._errors import WorkflowError
from .._model._ratelimit import RateLimit
from .._model._steps import Workflow
from .._runtime._executor import RemoteTask

__all__ = ["STALE_AFTER", "WireSpec", "wire_spec"]

# Seconds without a coordinator heartbeat after which a run's chunks stop
# themselves (the coordinator bumps it every second).
STALE_AFTER = 15.0


@attrs.frozen
class WireSpec:
    """A remote map step as workers receive it (picklable, hashable).

    Attributes:
        document: the chunk step, in :func:`plait.dump` YAML form.
        event_kinds: the event kinds the coordinator wants back.
        max_concurrency: the worker engine's ``max_concurrency``.
        stale_after: seconds without a heartbeat of the coordinator after
            which the run's chunks stop themselves.
        rate_limit: the coordinator engine's ``rate_limit``, kept by the
            worker engine.
        shared_limits: the coordinator engine's shared limits (they pickle
            as their configuration and compare by it): the worker engine
            admits every call under them.
        journal: the coordinator engine's journal store (configuration
            only): the chunks journal their calls in the coordinator's run.
        threads: how many sync tool calls a worker process runs at once,
            across its chunks: ``"worker"`` for the worker's own thread
            count, an int, or None for no bound (``DaskExecutor.threads``).
    """

    document: str
    event_kinds: frozenset[str]
    max_concurrency: int
    stale_after: float = STALE_AFTER
    rate_limit: RateLimit | None = None
    shared_limits: SharedLimits | None = None
    journal: Journal | None = None
    threads: int | str | None = "worker"


def wire_spec(task: RemoteTask) -> WireSpec:
    """The :class:`WireSpec` of ``task``.

    Raises:
        WorkflowError: the map step cannot be written as a document (a tool
            or function without an import path), with the step's path.
    """
    try:
        document = dump(Workflow(task.step))
    except WorkflowError as e:
        where = f"{task.path}.{e.path}" if task.path else e.path
        raise WorkflowError(
            f"{e.message}; a remote map's tools and functions travel to the "
            "workers by import path",
            where,
        ) from None
    return WireSpec(
        document=document,
        event_kinds=frozenset(str(k) for k in task.event_kinds),
        max_concurrency=task.step.max_concurrency or 100,
        rate_limit=task.rate_limit,
        shared_limits=task.shared_limits,
        journal=task.journal,
    )
