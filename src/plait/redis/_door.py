"""A door: one process's gate, notice bell and admission script for one set of limits.

Its :meth:`RedisDoor.admit` is the one place a call meets the server: one
script call that admits it under all its shared limits at once (and sends
the releases waiting to go), or says how long to wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._calls._shared import Held, RateSpec, Refused, SlotSpec
from .._concurrency._limits import Limiter
from .._model._ratelimit import RateLimit
from . import _scripts

if TYPE_CHECKING:
    from ._process import Live

__all__ = ["NO_SLOTS", "RedisDoor", "interval_us", "rate_text"]


def interval_us(spec: RateLimit) -> float:
    return spec.per / spec.rate * 1e6


def rate_text(spec: RateLimit) -> str:
    return f"{interval_us(spec)!r} {spec.capacity!r}"


class _NoSlots:
    """The hold of a call under shared buckets only: nothing to give back."""

    __slots__ = ()

    def release(self) -> None:
        pass

    def watch(self, on_lost: Callable[[], None]) -> None:
        pass


NO_SLOTS = _NoSlots()


class RedisDoor:
    """One process's gate and notice bell for one set of shared limits."""

    __slots__ = ("_hint", "_keys", "bell", "gate", "id", "live", "waiter")

    def __init__(self, live: Live, ident: int) -> None:
        self.live = live
        self.id = ident
        self.waiter = f"{live.client}|{ident}"
        self.gate = Limiter(1, "shared limits gate")
        # Held while nobody rang; a release notice frees it, and a waiter
        # for a slot waits to take it (a notice that comes early is kept).
        self.bell = Limiter(1, "shared limits bell")
        self.bell.try_acquire()
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}
        # (until, refusal): where the last admission queued this door's next
        # call, which waits that out before it asks (see ADMIT's ``more``).
        self._hint: tuple[float, Refused] | None = None

    def ring(self) -> None:
        # Only the daemon thread rings, so checking first cannot race.
        if self.bell.borrowed:
            self.bell.release()

    def _pair(self, kind: str, name: str) -> tuple[str, str]:
        try:
            return self._keys[kind, name]
        except KeyError:
            live = self.live
            pair = (live.key(kind, name), live.key(kind + "q", name))
            self._keys[kind, name] = pair
            return pair

    async def admit(
        self,
        slots: Sequence[SlotSpec],
        rates: Sequence[RateSpec],
        on_conflict: Callable[[str], None],
    ) -> Held | Refused:
        hint = self._hint
        if hint is not None:
            self._hint = None
            left = hint[0] - time.monotonic()
            if left > 0:
                await self.wait(Refused(left, hint[1].for_token))
        live = self.live
        lease = live.new_lease()
        keys = [live.key("limits"), live.key("declared")]
        args: list[Any] = [
            lease,
            self.waiter,
            live.ttl_us,
            len(slots),
            len(rates),
            live.poll_us,
            1 if self.gate.waiting else 0,
        ]
        carried = live.carry()
        args += (len(carried), live.channel)
        for name, limit in slots:
            keys.extend(self._pair("slot", name))
            args += (name, limit)
        for name, spec in rates:
            keys.extend(self._pair("rate", name))
            args += (
                name,
                repr(interval_us(spec)),
                repr(spec.capacity),
                rate_text(spec),
            )
        for held in carried:
            for pair in zip(held.keys, held.queues, strict=True):
                keys += pair
                args.append(held.lease)
        self.bell.try_acquire()  # a notice from before this try is stale
        # Shielded (and bounded by the timeout): a cancelled waiter never
        # leaves an admitted lease behind unreleased.
        try:
            reply = await live.conn.script(_scripts.ADMIT, keys, args)
        except BaseException:
            if carried:
                live.put_back(carried)
            raise
        status, wait_us, then, contended, *conflicts = reply
        for name in conflicts:
            on_conflict(name.decode() if isinstance(name, bytes) else str(name))
        if status == 1:
            if then:
                seconds = wait_us / 1e6
                self._hint = (time.monotonic() + seconds, Refused(seconds, then == 2))
            if not slots:
                return NO_SLOTS
            held = live.hold(
                lease,
                tuple(keys[2 : 2 + 2 * len(slots) : 2]),
                tuple(keys[3 : 3 + 2 * len(slots) : 2]),
            )
            held.contended = contended == 1
            return held
        return Refused(wait_us / 1e6, status == 2)

    async def wait(self, refused: Refused) -> None:
        if refused.for_token:
            await anyio.sleep(refused.seconds)
            return
        with anyio.move_on_after(refused.seconds):
            await self.bell.acquire()

    def leave(self) -> None:
        live = self.live
        queues = [k[1] for k in list(self._keys.values())]
        if queues:
            live.background(_scripts.LEAVE, queues, [self.waiter])
