"""Shared admission: limits that a server holds for every engine using it.

With ``Engine(shared_limits=...)`` a call's concurrency slots (its tool's,
and those a :class:`plait.KeyedLimit` adds) and its rate-limit tokens (its
tool's, the engine's, a :class:`plait.KeyedRateLimit`'s) are admitted by a
backend that every process shares; the engine's ``max_concurrency`` stays
a local, per-engine slot. This module is the backend-neutral side: the
:class:`SharedLimits` protocol a backend implements (``plait.redis`` is
one), and the admission layer the composer puts in a pipeline that has
shared limits. Without shared limits none of it is composed.

The local limiters stay in front: a call first takes its local slots (so a
process never asks the server for more than its own limits allow), then
waits at its :class:`Door`'s gate, so that one waiter per set of limits and
per process talks to the server while the others queue locally, first come
first served. The backend admits a call under all its shared limits at
once, or says how long to wait.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
import attrs

from .._concurrency._bucket import TokenBucket
from .._concurrency._cancel import canceller
from .._concurrency._limits import Limiter
from .._model._errors import ConfigError, LeaseLost
from .._model._events import EventKind
from .._model._ratelimit import RateLimit
from ._admission import Admission, OnWait, Release
from ._attempt import Call
from ._report import CallReport

__all__ = [
    "Door",
    "Held",
    "Refused",
    "SharedAdmission",
    "SharedLimits",
    "leased",
    "shared_admission",
]

logger = logging.getLogger("plait")


class Held(Protocol):
    """One admitted call's hold on the server: its leases, renewed until released."""

    def release(self) -> None:
        """Give the slots back; from any thread, exactly once, never blocking."""

    def watch(self, on_lost: Callable[[], None]) -> None:
        """Call ``on_lost()`` (from any thread) if a lease is found gone."""


@attrs.frozen
class Refused:
    """Not admitted now: wait up to ``seconds`` (a notice may end it sooner).

    ``for_token``: a bucket was empty (the wait is counted and reported as a
    rate-limit wait), else a slot was busy.
    """

    seconds: float
    for_token: bool


SlotSpec = tuple[str, int]
RateSpec = tuple[str, RateLimit]


class Door(Protocol):
    """Where one process's calls under one set of shared limits are admitted."""

    gate: Limiter
    """One slot: its holder is the process's one waiter at the server."""

    async def admit(
        self,
        slots: Sequence[SlotSpec],
        rates: Sequence[RateSpec],
        on_conflict: Callable[[str], None],
    ) -> Held | Refused:
        """Take every slot and token at once, or none and say how long to wait.

        ``on_conflict(name)``: another process declared limit ``name``
        differently. Raises :class:`plait.LimitBackendUnavailable`.
        """

    async def wait(self, refused: Refused) -> None:
        """Wait as ``refused`` says, or less when a release notice comes."""

    def leave(self) -> None:
        """The waiter gave up (it was cancelled); never blocks."""


@runtime_checkable
class SharedLimits(Protocol):
    """A backend of shared limits (``plait.redis.RedisLimits`` is one)."""

    def door(self, slots: tuple[str, ...], rates: tuple[str, ...]) -> Door:
        """The door of calls under the named slots and buckets (one per set)."""


class SharedRelease:
    """The release of a shared admission: the server's slots, then the local ones."""

    __slots__ = ("held", "local")

    def __init__(self, held: Held, local: Release) -> None:
        self.held = held
        self.local = local

    def __call__(self) -> None:
        try:
            self.held.release()
        finally:
            self.local()


class SharedAdmission(Admission):
    """Local slots in front, then every shared slot and token at once.

    No slot, local or shared, is held while waiting for the server: a
    refused call gives its local slots back before it waits, and takes
    them again before it asks again.
    """

    __slots__ = ("_conflicts", "buckets", "door", "on_conflict", "shared")

    def __init__(
        self,
        limiters: tuple[Limiter, ...],
        shared: tuple[Limiter, ...],
        buckets: tuple[TokenBucket, ...],
        door: Door,
        report: CallReport,
    ) -> None:
        super().__init__(limiters)
        self.shared = shared
        self.buckets = buckets
        self.door = door
        self._conflicts: set[str] = set()
        self.on_conflict = _conflict_reporter(report, self._conflicts)

    def try_enter(self, lease: object = None) -> Release | None:
        return None  # the server is asked only by an awaiting caller

    async def enter(self, on_wait: OnWait) -> Release:
        gate = self.door.gate
        await gate._acquire_queued()
        try:
            return await self._admit(on_wait)
        finally:
            gate.release()

    async def _admit(self, on_wait: OnWait) -> Release:
        door = self.door
        reported = False
        rates = [(b.name, b.spec) for b in self.buckets]
        try:
            while True:
                local = await super().enter(on_wait)
                try:
                    got = await door.admit(
                        _finite(self.shared), rates, self.on_conflict
                    )
                except BaseException:
                    local()
                    raise
                if not isinstance(got, Refused):
                    return SharedRelease(got, local)
                local()
                if got.for_token and not reported:
                    reported = True
                    on_wait(got.seconds)
                await door.wait(got)
        except BaseException:
            door.leave()
            raise


def _finite(limiters: tuple[Limiter, ...]) -> list[SlotSpec]:
    """The shared slots with a limit now (a registry key may have none)."""
    return [(lim.name, int(lim.total)) for lim in limiters if lim.total != math.inf]


def _conflict_reporter(report: CallReport, seen: set[str]) -> Callable[[str], None]:
    def conflict(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        message = (
            f"shared limit {name!r} is declared with another value by another "
            "process; each process admits calls under the value it declares. "
            "Store one value on the server with RedisLimits.set_limit"
        )
        logger.warning("%s (tool %r)", message, report.name)
        report.bus.emit_new(
            EventKind.LIMIT_CONFLICT, "", tool=report.name, error=ConfigError(message)
        )

    return conflict


def shared_admission(
    shared: SharedLimits,
    limiters: tuple[Limiter, ...],
    buckets: tuple[TokenBucket, ...],
    *,
    engine_limiter: Limiter,
    report: CallReport,
    local: Limiter | None = None,
) -> SharedAdmission | None:
    """The admission of a call whose limits ``shared`` holds; None when it has none.

    Every limiter but the engine's (and ``local``, an adaptive limit's own,
    which stays in this process), and every bucket, is shared; the local
    limiters stay in front.
    """
    limiters = tuple(dict.fromkeys(limiters))
    buckets = tuple(dict.fromkeys(buckets))
    slots = tuple(
        lim for lim in limiters if lim is not engine_limiter and lim is not local
    )
    if not slots and not buckets:
        return None
    door = shared.door(tuple(lim.name for lim in slots), tuple(b.name for b in buckets))
    return SharedAdmission(limiters, slots, buckets, door, report)


def leased(call: Call, report: CallReport) -> Call:
    """Run ``call`` cancelled with :class:`plait.LeaseLost` if its lease is lost."""

    async def run(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        release: Release,
        template: str,
        loc: tuple[int, ...],
        number: int,
    ) -> Any:
        if not isinstance(release, SharedRelease):
            return await call(args, kwargs, release, template, loc, number)
        with anyio.CancelScope() as scope:
            release.held.watch(canceller(scope))
            return await call(args, kwargs, release, template, loc, number)
        error = LeaseLost(report.name)
        report.note(EventKind.LEASE_LOST, template, loc, number, error=error)
        raise error

    return run
