"""A cool-down: one pause that every call of a tool (or of a key) waits out.

When a service pushes back (a 429 with ``Retry-After``), the call that got
it waits before trying again, and so must every other call of the same tool
in the engine: sixty-three siblings that keep sending while one waits only
earn more 429s. A :class:`CoolDown` holds the instant the pause ends, on the
process's monotonic clock (not the event loop's: Trio's clock has an offset
of its own, and one engine may serve several loops). Calls check it before
they are admitted, and wait it out holding no slot.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["CoolDown"]

_now = time.monotonic


class CoolDown:
    """The end of the current pause of one tool or key (0.0: none yet)."""

    __slots__ = ("until",)

    def __init__(self) -> None:
        self.until = 0.0

    def __repr__(self) -> str:
        return f"<CoolDown {max(0.0, self.remaining()):.3f}s>"

    def remaining(self) -> float:
        """Seconds until the pause ends (0 or less: not paused)."""
        return self.until - _now()

    def cooling(self) -> bool:
        """Whether a pause is on now (no clock read before the first one)."""
        until = self.until
        return until != 0.0 and until > _now()

    def cool(self, seconds: float) -> bool:
        """Pause for ``seconds`` from now, unless a longer pause is on.

        Returns True when the pause was made longer.
        """
        until = _now() + seconds
        if until > self.until:
            self.until = until
            return True
        return False

    async def wait(self) -> None:
        """Wait until no pause is on (it may be made longer meanwhile)."""
        while (left := self.until - _now()) > 0:
            await anyio.sleep(left)
