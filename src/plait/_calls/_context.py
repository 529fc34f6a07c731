"""What a call pipeline is built from: a tool's live limits and a run's shared state."""

from __future__ import annotations

import uuid

import attrs

from .._concurrency._adaptive import AdaptiveLimit
from .._concurrency._bucket import TokenBucket
from .._concurrency._cooldown import CoolDown
from .._concurrency._limits import Limiter
from .._journal._protocol import Journal
from .._model._events import EventBus
from .._model._results import Failure
from .._model._stats import ToolCounters
from .._model._tools import Tool
from ._durable import RunJournal
from ._middleware import Middleware
from ._shared import SharedLimits

__all__ = ["RunContext", "ToolRuntime"]


@attrs.define(eq=False)
class ToolRuntime:
    """The engine-lifetime state of one tool: its limiter and its bucket.

    Also its cool-down (the pause of all its calls after a push-back) and,
    for an :class:`plait.Adaptive` limit, the controller of its limiter.
    """

    tool: Tool
    limiter: Limiter | None
    bucket: TokenBucket | None
    gate: CoolDown = attrs.field(factory=CoolDown)
    adaptive: AdaptiveLimit | None = None


@attrs.define(eq=False)
class RunContext:
    """What one run shares between its steps and pipelines."""

    events: EventBus
    engine_limiter: Limiter
    engine_bucket: TokenBucket | None
    middleware: tuple[Middleware, ...]
    thread_limiter: Limiter
    # Whether a sync call's slots stay held by its thread until it returns
    # (the engine: limits stay true however a tool hangs), or are given back
    # when the call times out or is cancelled, leaving only the thread limit
    # to count the running thread (the agents' batch: agents the run waits on).
    slots_follow_threads: bool = True
    counters: dict[str, ToolCounters] = attrs.field(factory=dict)
    failures: list[Failure] = attrs.field(factory=list)
    abandoned_threads: int = 0
    # Limits held by a server for every engine using it (None: all local).
    shared_limits: SharedLimits | None = None
    #: The run's id: ``RunResult.run_id``, and what ``plait.current_call()``
    #: gives tools; a new one unless the run was given one.
    run_id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    #: The run's journal, when the engine has one: journaled tools' calls
    #: get the journal layer (see :mod:`._journal`).
    journal: RunJournal | None = None
    #: The engine's journal store (configuration only), known before the
    #: run is opened in it: remote maps check it and send it to workers.
    journal_store: Journal | None = None

    def counters_for(self, name: str) -> ToolCounters:
        """The counters of the tool called ``name``, made on first use."""
        try:
            return self.counters[name]
        except KeyError:
            return self.counters.setdefault(name, ToolCounters())
