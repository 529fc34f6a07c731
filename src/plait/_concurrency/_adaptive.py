"""The live controller of an :class:`plait.Adaptive` limit: AIMD on a Limiter.

The controller changes the ``total`` of an ordinary :class:`Limiter`, the
one a call's admission takes a slot of, as TCP changes its window for the
same reason (back off fast when the other side is overloaded, probe back
slowly):

* a push-back (the call raised :class:`plait.RateLimited`) cuts the limit
  to ``DECREASE`` of itself (at least one less), never below ``min``. The
  calls already in flight when the limit was cut were sent under the old
  one, so their push-backs say nothing new: after a cut, the next push-backs
  of as many calls as were in flight then are not counted again;
* a success counts towards growth, but only while the limit is in use (a
  call waits, or the slots are nearly all taken: a limit nobody reaches
  says nothing about the service). Until the first push-back, one success
  per slot adds one slot (about one more per round trip); after it, the
  limit is near what the service takes, so it probes more gently: one
  slot per ``CAUTION`` round trips. Never above ``max``;
* latency: a service that queues what it cannot serve answers ever later
  before it answers 429, if it ever does. The controller keeps the floor
  of the successful attempts' latencies (the tool's own time, not its wait
  for a slot): the least of the last ``FLOOR_WINDOWS`` windows of
  ``LATENCY_WINDOW`` successes. When a window ends with its median above
  ``LATENCY_FACTOR`` times that floor (and ``LATENCY_SLACK`` above it: a
  sub-millisecond call's latency doubles with the event loop's own load),
  the limit is cut as for a push-back: once per window, never for a single slow call (it moves a
  median of ``LATENCY_WINDOW`` by one place), and never while latencies
  stay within a factor of ``LATENCY_FACTOR`` of each other. A service
  that stays slower raises the floor once its fast windows are older than
  ``FLOOR_WINDOWS``, and the limit grows again. The calls in flight at a
  cut are not timed: they were sent under the old limit.

Lowering the total never interrupts a call: it only keeps new ones from
starting until fewer than the new limit are in flight.
"""

from __future__ import annotations

import math
from collections import deque

from .._model._backpressure import Adaptive
from ._limits import Limiter

__all__ = [
    "DECREASE",
    "FLOOR_WINDOWS",
    "LATENCY_FACTOR",
    "LATENCY_SLACK",
    "LATENCY_WINDOW",
    "AdaptiveLimit",
]

DECREASE = 0.75
"""The factor a push-back cuts the limit by."""

CAUTION = 4
"""Round trips of successes per slot added, once the service pushed back."""

LATENCY_WINDOW = 32
"""Successful attempts per window: the limit is judged by latency once per window."""

LATENCY_FACTOR = 2.0
"""A window whose median latency is above this times the floor cuts the limit."""

LATENCY_SLACK = 0.005
"""Seconds a window's median must also be above the floor to cut the limit."""

FLOOR_WINDOWS = 8
"""Windows the latency floor is the least of."""


class AdaptiveLimit:
    """Drives ``limiter.total`` between ``spec.min`` and ``spec.max``."""

    __slots__ = (
        "_credit",
        "_floors",
        "_latencies",
        "_needed",
        "_slow",
        "_stale",
        "limiter",
        "spec",
    )

    def __init__(self, spec: Adaptive, limiter: Limiter) -> None:
        self.spec = spec
        self.limiter = limiter
        limiter.total = spec.initial
        self._credit = 0
        self._needed = 1  # round trips of successes per slot added
        # Calls in flight at the last cut, not yet ended: sent under the
        # old limit, so their push-backs were answered by that cut.
        self._stale = 0
        # The latencies of the current window's successes, and the least of
        # each of the last FLOOR_WINDOWS windows.
        self._latencies: list[float] = []
        self._floors: deque[float] = deque(maxlen=FLOOR_WINDOWS)
        self._slow = False  # the last full window climbed above the floor

    def __repr__(self) -> str:
        return f"<AdaptiveLimit {self.value} of {self.spec}>"

    @property
    def value(self) -> int:
        """The current limit."""
        return int(self.limiter.total)

    @property
    def floor(self) -> float:
        """The latency floor, in seconds (inf before a window has ended)."""
        return min(self._floors, default=math.inf)

    def observe(self, seconds: float) -> None:
        """A successful attempt took ``seconds`` in the tool.

        Called just before :meth:`succeeded` for the same attempt, which
        cuts the limit if the window this latency ended climbed.
        """
        if self._stale:
            return
        latencies = self._latencies
        latencies.append(seconds)
        if len(latencies) >= LATENCY_WINDOW:
            self._end_window(latencies)

    def _end_window(self, latencies: list[float]) -> None:
        latencies.sort()
        median = latencies[len(latencies) // 2]
        floor = self.floor
        self._slow = median > max(LATENCY_FACTOR * floor, floor + LATENCY_SLACK)
        self._floors.append(latencies[0])
        latencies.clear()

    def succeeded(self) -> int | None:
        """A call succeeded: the new limit if it grew or was cut, else None."""
        if self._stale:
            self._stale -= 1
        if self._slow:
            self._slow = False
            return self._cut()
        limiter = self.limiter
        current = int(limiter.total)
        if current >= self.spec.max:
            return None
        if not limiter.waiting and limiter.borrowed + 1 < current:
            return None  # not in use up to the limit
        self._credit += 1
        if self._credit < current * self._needed:
            return None
        self._credit = 0
        limiter.total = current + 1
        return current + 1

    def pushed_back(self) -> int | None:
        """The service pushed a call back: the new limit if it was cut."""
        if self._stale:
            self._stale -= 1
            return None
        return self._cut()

    def _cut(self) -> int | None:
        """Cut the limit by ``DECREASE``: the new limit, or None at ``min``."""
        limiter = self.limiter
        current = int(limiter.total)
        lowered = max(self.spec.min, min(current - 1, int(current * DECREASE)))
        self._stale = limiter.borrowed
        self._credit = 0
        self._latencies.clear()
        self._needed = CAUTION
        if lowered == current:
            return None
        limiter.total = lowered
        return lowered
