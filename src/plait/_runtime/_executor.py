"""The executor protocol: where the elements of a remote map step run.

``MapReduce(..., remote=True)`` on an engine with an ``executor`` hands its
elements, in chunks, to the executor; everything else of the step stays on
the coordinator (pulling ``over``, the fold, the order of outputs, failures
and events, see :mod:`plait._runtime._remote`). An executor implements two
small objects:

- :class:`Executor`: ``prepare(task)`` once per compiled remote map, before
  the run starts (it checks that the map step can run there, e.g. that its
  tools import, and raises :class:`plait.WorkflowError` when not), and
  ``session(prepared, scope)``, an async context for one run of the step.
- :class:`ChunkSession`: ``submit(number, elements)`` and ``await
  completed()``. Leaving the context normally releases what the session
  holds; leaving it with an exception or a cancellation stops every running
  chunk and returns only when no chunk runs any more (bounded).

Every chunk runs :attr:`RemoteTask.step` (a ``MapReduce`` over the chunk's
elements) under a plait engine, and reports a :class:`ChunkOutcome` whose
paths are relative to that chunk step (``map[j]...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import attrs

from .._calls._shared import SharedLimits
from .._journal._protocol import Journal
from .._model._events import Event, EventKind
from .._model._ratelimit import RateLimit
from .._model._stats import ToolCounters
from .._model._steps import MapReduce
from .._model._tools import Tool

__all__ = [
    "CHUNK_VAR",
    "ChunkOutcome",
    "ChunkPlace",
    "ChunkSession",
    "Executor",
    "RemoteTask",
]

# The variable a chunk step maps over: the chunk's elements.
CHUNK_VAR = "plait_chunk_"


@attrs.frozen
class RemoteTask:
    """A remote map step, as an executor receives it.

    Attributes:
        step: the step each chunk runs: a ``MapReduce`` over
            ``Var(CHUNK_VAR)`` whose map step names its tools and functions
            by the objects themselves (so that it can be written with
            :func:`plait.dump`), in the coordinator step's error mode.
        names: the variables of the coordinator's scope the map step may
            read; their values are sent once per run of the step.
        path: the remote ``MapReduce``'s path (``[*]`` for outer elements),
            for errors found before the run.
        tools: the tools the map step calls.
        event_kinds: the kinds of events the coordinator's subscribers want;
            a chunk reports those of its events.
        rate_limit: the coordinator engine's ``rate_limit``, which the
            workers' engines keep (per worker process, or held on the
            server with ``shared_limits``).
        shared_limits: the coordinator engine's shared limits (picklable
            configuration, e.g. a ``RedisLimits``): with them every limit of
            the map step holds across the whole cluster.
    """

    step: MapReduce
    names: tuple[str, ...]
    path: str
    tools: tuple[Tool, ...]
    event_kinds: frozenset[EventKind]
    rate_limit: RateLimit | None = None
    shared_limits: SharedLimits | None = None
    journal: Journal | None = None


@attrs.frozen
class ChunkPlace:
    """Where one run of a remote map step sits in its coordinator's run.

    A worker runs each chunk under the coordinator's run id, and gives its
    calls their coordinator paths for journal records and idempotency keys
    (see :func:`plait._calls._current.placed`).

    Attributes:
        run_id: the coordinator's run id.
        item_template: the remote map's item path template
            (``steps[1].map[{}]``).
        loc: the outer element indexes the step runs under.
        journal: the store to journal the chunks' calls in (the
            coordinator's run is open in it), or None.
    """

    run_id: str
    item_template: str
    loc: tuple[int, ...]
    journal: Journal | None = None


@attrs.frozen
class ChunkOutcome:
    """What one chunk gives back; paths are relative to the chunk step.

    Attributes:
        values: one per element in collect mode or on success: the value or
            a :class:`plait.Failure`; None when the chunk raised.
        error: what the chunk step raised in raise mode.
        events: the chunk's events of the wanted kinds, in order.
        stopped: the run's cancellation stopped the chunk.
        counters: the chunk's tool counters by tool name, for the
            coordinator's :class:`plait.RunStats`.
    """

    values: list[Any] | None = None
    error: BaseException | None = None
    events: tuple[Event, ...] = ()
    stopped: bool = False
    counters: Mapping[str, ToolCounters] = attrs.field(factory=dict)


class ChunkSession(Protocol):
    """One run of one remote map step on an executor."""

    @property
    def chunk_size(self) -> int:
        """Elements per chunk."""

    @property
    def window(self) -> int:
        """Chunks in flight at most."""

    def submit(self, number: int, elements: list[Any]) -> None:
        """Start chunk ``number`` of ``elements``.

        Chunks are submitted in order of their numbers, each right after
        the one before in the input: chunk ``number``'s first element is
        the count of elements submitted before it.
        """

    async def completed(self) -> list[tuple[int, ChunkOutcome]]:
        """Wait for one or more submitted chunks; their numbers and outcomes."""


class Executor(Protocol):
    """Runs chunks of a remote map's elements elsewhere (see the module doc)."""

    @property
    def limits(self) -> str:
        """How tool limits hold on the executor: ``"shared"`` or ``"per-worker"``."""

    def prepare(self, task: RemoteTask) -> object:
        """Check that ``task`` can run on the executor; its prepared form.

        Raises:
            WorkflowError: it cannot (a tool does not import there...).
        """

    def session(
        self, prepared: Any, scope: dict[str, Any], place: ChunkPlace | None = None
    ) -> AbstractAsyncContextManager[ChunkSession]:
        """One run of the prepared step; ``scope`` holds ``RemoteTask.names``.

        ``place`` says where the run sits in the coordinator's run; chunks
        run under its run id and journal (None: a run of its own).
        """
