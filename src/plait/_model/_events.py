"""Events: what a run reports to progress displays, metrics and tracing.

Subscribers are plain callables, called synchronously in the task that
emitted the event, so they must be quick and must not block. An exception in
a subscriber never breaks the run: it is logged on the ``plait`` logger and
the subscriber stays subscribed. When nobody is subscribed, emitting costs a
single truth test: a run started with nobody subscribed even compiles its
steps without step-event hooks (call events still reach later subscribers).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["Event", "EventBus", "EventKind", "Subscription"]

logger = logging.getLogger("plait")


class EventKind(enum.StrEnum):
    """What happened."""

    STEP_STARTED = "step.started"
    STEP_FINISHED = "step.finished"
    STEP_FAILED = "step.failed"
    CALL_STARTED = "call.started"
    CALL_FINISHED = "call.finished"
    CALL_FAILED = "call.failed"
    CALL_RETRIED = "call.retried"
    CALL_RATE_LIMITED = "call.rate_limited"
    CALL_TIMED_OUT = "call.timed_out"
    THREAD_ABANDONED = "call.thread_abandoned"

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class Event:
    """One thing that happened in a run.

    Attributes:
        kind: an :class:`EventKind`.
        path: the step's path (see the path format in the docs).
        time: ``time.monotonic()`` when it happened.
        step: the step's kind (``"Call"``, ``"MapReduce"``, ...) for step
            events.
        tool: the tool's name, for call events.
        attempt: the attempt number (1 for the first try), for call events.
        duration: seconds the step, attempt or wait took, when known.
        error: the exception, for failures, retries and timeouts.
        delay: seconds until the next attempt, for ``call.retried``.
    """

    kind: EventKind
    path: str
    time: float = attrs.field(factory=time.monotonic)
    step: str | None = None
    tool: str | None = None
    attempt: int | None = None
    duration: float | None = None
    error: BaseException | None = None
    delay: float | None = None


Subscriber = Callable[[Event], Any]


class Subscription:
    """A handle that unsubscribes: call ``.close()`` or use it as a context."""

    __slots__ = ("_bus", "_fn")

    def __init__(self, bus: EventBus, fn: Subscriber) -> None:
        self._bus = bus
        self._fn = fn

    def close(self) -> None:
        """Stop receiving events (idempotent)."""
        self._bus.unsubscribe(self._fn)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """The subscribers of one engine.

    ``bus.subscribe(fn)`` returns a :class:`Subscription`;
    ``bus.active`` (and ``bool(bus)``) tells whether anyone listens.
    """

    __slots__ = ("_subscribers", "active")

    def __init__(self) -> None:
        self._subscribers: tuple[Subscriber, ...] = ()
        # A plain attribute, not a property: hot paths test it per call.
        self.active = False

    def __bool__(self) -> bool:
        return self.active

    def subscribe(self, fn: Subscriber) -> Subscription:
        """Call ``fn(event)`` for every event from now on."""
        if not callable(fn):
            raise TypeError(f"subscriber must be callable, got {fn!r}")
        self._subscribers = (*self._subscribers, fn)
        self.active = True
        return Subscription(self, fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        """Remove ``fn`` (no error when it is not subscribed)."""
        self._subscribers = tuple(s for s in self._subscribers if s is not fn)
        self.active = bool(self._subscribers)

    def emit(self, event: Event) -> None:
        """Send ``event`` to every subscriber; their errors are logged, not raised."""
        for fn in self._subscribers:
            try:
                fn(event)
            except Exception:
                logger.exception(
                    "plait event subscriber %r failed on %s at %r; the run goes on",
                    fn,
                    event.kind,
                    event.path,
                )

    def emit_new(self, kind: EventKind, path: str, **fields: Any) -> None:
        """Build and emit an event, only when someone listens."""
        if self._subscribers:
            self.emit(Event(kind, path, **fields))
