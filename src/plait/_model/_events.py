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
from collections.abc import Callable, Iterable
from typing import Any

import attrs

__all__ = [
    "Event",
    "EventBus",
    "EventKind",
    "Subscription",
    "emit_step_end",
    "new_event",
]

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
    CALL_PUSHED_BACK = "call.pushed_back"
    RETRY_AFTER_IGNORED = "call.retry_after_ignored"
    LIMIT_CHANGED = "tool.limit_changed"
    LEASE_LOST = "call.lease_lost"
    LIMIT_CONFLICT = "limits.conflict"
    CALL_NOT_JOURNALED = "call.not_journaled"

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
        delay: seconds until the next attempt, for ``call.retried``; the
            pause of the tool's calls, for ``call.pushed_back``.
        limit: the tool's new concurrency limit, for ``tool.limit_changed``
            (an :class:`plait.Adaptive` limit that moved).
        key: for ``tool.limit_changed`` of a :class:`plait.KeyedLimit`'s
            adaptive limit, the key whose limit moved (``limit`` is then that
            key's); None for the tool's own limit.
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
    limit: int | None = None
    key: str | None = None


Subscriber = Callable[[Event], Any]

_new_object = object.__new__
_monotonic = time.monotonic
(
    _set_kind,
    _set_path,
    _set_time,
    _set_step,
    _set_tool,
    _set_attempt,
    _set_duration,
    _set_error,
    _set_delay,
    _set_limit,
    _set_key,
) = (getattr(Event, f.name).__set__ for f in attrs.fields(Event))


def new_event(
    kind: EventKind,
    path: str,
    step: str | None = None,
    tool: str | None = None,
    attempt: int | None = None,
    duration: float | None = None,
    error: BaseException | None = None,
    delay: float | None = None,
    limit: int | None = None,
    key: str | None = None,
) -> Event:
    """``Event(kind, path, ...)`` stamped now, for the hot paths that emit.

    The same event as the constructor's, made by setting its slots directly:
    a third of the cost of the frozen class's ``__init__`` (which goes through
    ``object.__setattr__`` once per field). Events are made per call when
    someone listens, so it counts.
    """
    event: Event = _new_object(Event)
    _set_kind(event, kind)
    _set_path(event, path)
    _set_time(event, _monotonic())
    _set_step(event, step)
    _set_tool(event, tool)
    _set_attempt(event, attempt)
    _set_duration(event, duration)
    _set_error(event, error)
    _set_delay(event, delay)
    _set_limit(event, limit)
    _set_key(event, key)
    return event


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
    ``bus.active`` (and ``bool(bus)``) tells whether anyone listens, and
    ``bus.wants(kind)`` whether anyone listens to events of that kind: an
    event nobody wants is never built.
    """

    __slots__ = ("_subscribers", "active", "kinds")

    def __init__(self) -> None:
        self._subscribers: tuple[_Entry, ...] = ()
        # The subscribers of each kind someone wants, with the
        # time.perf_counter() of their subscription; read per call.
        self.kinds: dict[EventKind, tuple[tuple[Subscriber, float], ...]] = {}
        # A plain attribute, not a property: hot paths test it per call.
        self.active = False

    def __bool__(self) -> bool:
        return self.active

    def subscribe(
        self, fn: Subscriber, kinds: Iterable[EventKind | str] | None = None
    ) -> Subscription:
        """Call ``fn(event)`` for every event from now on.

        Args:
            fn: called with each :class:`Event`, in the task that emitted it.
            kinds: only events of these kinds (``EventKind`` members or their
                values, such as ``"call.finished"``); None for all. Events
                of other kinds are not even built for ``fn``.
        """
        if not callable(fn):
            raise TypeError(f"subscriber must be callable, got {fn!r}")
        wanted = frozenset(EventKind) if kinds is None else _kinds(kinds)
        self._subscribers = (*self._subscribers, (fn, wanted, time.perf_counter()))
        self._index()
        return Subscription(self, fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        """Remove ``fn`` (no error when it is not subscribed)."""
        self._subscribers = tuple(s for s in self._subscribers if s[0] is not fn)
        self._index()

    def _index(self) -> None:
        by_kind: dict[EventKind, tuple[tuple[Subscriber, float], ...]] = {}
        for fn, kinds, since in self._subscribers:
            for kind in kinds:
                by_kind[kind] = (*by_kind.get(kind, ()), (fn, since))
        self.kinds = by_kind
        self.active = bool(self._subscribers)

    def wants(self, kind: EventKind) -> bool:
        """Whether any subscriber listens to events of ``kind``."""
        return kind in self.kinds

    def emit(self, event: Event) -> None:
        """Send ``event`` to its subscribers; their errors are logged, not raised."""
        for fn, _ in self.kinds.get(event.kind, ()):
            _deliver(fn, event)

    # The fields are spelled out, not taken as ``**fields``: these run per
    # call when someone listens, and a keyword dict built and unpacked twice
    # costs as much as the delivery.
    def emit_new(
        self,
        kind: EventKind,
        path: str,
        step: str | None = None,
        tool: str | None = None,
        attempt: int | None = None,
        duration: float | None = None,
        error: BaseException | None = None,
        delay: float | None = None,
        limit: int | None = None,
        key: str | None = None,
    ) -> None:
        """Build and emit an event, only when someone listens to its kind."""
        subscribers = self.kinds.get(kind)
        if subscribers:
            event = new_event(
                kind, path, step, tool, attempt, duration, error, delay, limit, key
            )
            for fn, _ in subscribers:
                _deliver(fn, event)

    def emit_since(
        self,
        since: float,
        kind: EventKind,
        path: str,
        tool: str | None = None,
        attempt: int | None = None,
        duration: float | None = None,
    ) -> None:
        """Emit to the subscribers of ``kind`` subscribed before ``since``.

        For the end of something that started at ``since``
        (``time.perf_counter()``): a subscriber never sees a call finish
        that it did not see start.
        """
        subscribers = self.kinds.get(kind)
        if not subscribers:
            return
        event = new_event(kind, path, None, tool, attempt, duration)
        for fn, subscribed in subscribers:
            if subscribed <= since:
                _deliver(fn, event)


_Entry = tuple[Subscriber, frozenset[EventKind], float]


def emit_step_end(
    bus: EventBus,
    path: str,
    step: str,
    started: float,
    error: BaseException | None = None,
) -> None:
    """Emit the end of the step at ``path`` that started at ``started``.

    ``step.finished``, or ``step.failed`` with ``error``; the duration is
    from ``started`` (``time.perf_counter()``) to now.
    """
    duration = time.perf_counter() - started
    if error is None:
        bus.emit_new(EventKind.STEP_FINISHED, path, step=step, duration=duration)
    else:
        bus.emit_new(
            EventKind.STEP_FAILED, path, step=step, error=error, duration=duration
        )


def _deliver(fn: Subscriber, event: Event) -> None:
    try:
        fn(event)
    except Exception:
        logger.exception(
            "plait event subscriber %r failed on %s at %r; the run goes on",
            fn,
            event.kind,
            event.path,
        )


def _kinds(kinds: Iterable[EventKind | str]) -> frozenset[EventKind]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    try:
        return frozenset(EventKind(k) for k in kinds)
    except (ValueError, TypeError):
        known = ", ".join(k.value for k in EventKind)
        raise ValueError(
            f"subscribe kinds must be event kinds ({known}), got {kinds!r}"
        ) from None
