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
  slot per ``CAUTION`` round trips. Never above ``max``.

Lowering the total never interrupts a call: it only keeps new ones from
starting until fewer than the new limit are in flight.
"""

from __future__ import annotations

from .._model._backpressure import Adaptive
from ._limits import Limiter

__all__ = ["DECREASE", "AdaptiveLimit"]

DECREASE = 0.75
"""The factor a push-back cuts the limit by."""

CAUTION = 4
"""Round trips of successes per slot added, once the service pushed back."""


class AdaptiveLimit:
    """Drives ``limiter.total`` between ``spec.min`` and ``spec.max``."""

    __slots__ = ("_credit", "_needed", "_stale", "limiter", "spec")

    def __init__(self, spec: Adaptive, limiter: Limiter) -> None:
        self.spec = spec
        self.limiter = limiter
        limiter.total = spec.initial
        self._credit = 0
        self._needed = 1  # round trips of successes per slot added
        # Calls in flight at the last cut, not yet ended: sent under the
        # old limit, so their push-backs were answered by that cut.
        self._stale = 0

    def __repr__(self) -> str:
        return f"<AdaptiveLimit {self.value} of {self.spec}>"

    @property
    def value(self) -> int:
        """The current limit."""
        return int(self.limiter.total)

    def succeeded(self) -> int | None:
        """A call succeeded: the new limit if it grew, else None."""
        if self._stale:
            self._stale -= 1
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
        limiter = self.limiter
        current = int(limiter.total)
        lowered = max(self.spec.min, min(current - 1, int(current * DECREASE)))
        self._stale = limiter.borrowed
        self._credit = 0
        self._needed = CAUTION
        if lowered == current:
            return None
        limiter.total = lowered
        return lowered
