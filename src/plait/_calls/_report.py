"""What a call tells the run: its counters, and events for those who listen.

Events are built only when someone subscribed to their kind, and a path is
formatted only for an event or an error, never on the hot path.
"""

from __future__ import annotations

from typing import Any

from .._model._events import EventBus, EventKind
from .._model._paths import fill
from .._model._stats import ToolCounters

__all__ = ["CallReport"]


class CallReport:
    """The counters and events of one tool's calls in one run."""

    __slots__ = ("bus", "counters", "name")

    def __init__(self, name: str, counters: ToolCounters, bus: EventBus) -> None:
        self.name = name
        self.counters = counters
        self.bus = bus

    def note(
        self,
        kind: EventKind,
        template: str,
        loc: tuple[int, ...],
        number: int,
        **fields: Any,
    ) -> None:
        """Emit a call event of ``kind`` if anyone wants it."""
        bus = self.bus
        if bus.wants(kind):
            bus.emit_new(
                kind, fill(template, loc), tool=self.name, attempt=number, **fields
            )

    def started(self, template: str, loc: tuple[int, ...], number: int) -> None:
        """Report an attempt that took its slots and starts now."""
        self.bus.emit_new(
            EventKind.CALL_STARTED, fill(template, loc), None, self.name, number
        )

    def finished(
        self,
        template: str,
        loc: tuple[int, ...],
        number: int,
        started: float,
        duration: float,
    ) -> None:
        """Report a finished attempt to those subscribed when it started."""
        self.bus.emit_since(
            started,
            EventKind.CALL_FINISHED,
            fill(template, loc),
            tool=self.name,
            attempt=number,
            duration=duration,
        )

    def failed(
        self, template: str, loc: tuple[int, ...], number: int, error: Exception
    ) -> None:
        """Count a call that failed after its last attempt, and report it."""
        self.counters.failures += 1
        self.note(EventKind.CALL_FAILED, template, loc, number, error=error)

    def retried(
        self,
        template: str,
        loc: tuple[int, ...],
        number: int,
        error: Exception,
        delay: float,
    ) -> None:
        """Count a retry and report it."""
        self.counters.retries += 1
        self.note(
            EventKind.CALL_RETRIED, template, loc, number, error=error, delay=delay
        )

    def rate_limited(
        self, template: str, loc: tuple[int, ...], number: int, seconds: float
    ) -> None:
        """Count an attempt that waited for a token, and report it."""
        self.counters.rate_limited += 1
        self.note(EventKind.CALL_RATE_LIMITED, template, loc, number, duration=seconds)

    def timed_out(
        self,
        template: str,
        loc: tuple[int, ...],
        number: int,
        seconds: float,
        error: Exception,
    ) -> None:
        """Count an attempt cut by its timeout, and report it."""
        self.counters.timeouts += 1
        self.note(
            EventKind.CALL_TIMED_OUT,
            template,
            loc,
            number,
            duration=seconds,
            error=error,
        )
