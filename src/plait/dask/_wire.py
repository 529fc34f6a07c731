"""What travels to the workers for one remote map step: a small frozen spec.

The chunk step travels as its :func:`plait.dump` document (tools and
functions by import path), never as pickled code, so a worker runs exactly
what a document would describe, and a tool that cannot be written as an
import path (a lambda, a nested function) is refused before the run.

This spec is also where the engine's cross-process layers join the
workers' engines: ``shared_limits`` (a ``RedisLimits`` url, namespace and
lease TTL) and ``journal`` (a ``PostgresJournal`` dsn with the coordinator's
run id and the element's path) are fields to add here; a worker builds its
engine from them (see :func:`plait.dask._worker.worker_engine`).
"""

from __future__ import annotations

import attrs

from .._io import dump
from .._model._errors import WorkflowError
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
    """

    document: str
    event_kinds: frozenset[str]
    max_concurrency: int
    stale_after: float = STALE_AFTER


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
    )
