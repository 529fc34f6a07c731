"""Admission: the rate-limit tokens and concurrency slots a call needs to start.

An admission is built once per pipeline from the limits the call is under,
and hands out, per attempt, the function that gives its slots back: the
task calls it when the attempt ends, or a sync tool's worker thread does
when it really returns. Two promises hold:

* no slot is held while waiting for a token, unless the call first had to
  wait for its slot;
* calls never *start* faster than a bucket allows: tokens are taken only at
  the instant the call starts, never earlier and never handed back.

A task running many calls one after another (a map worker) may keep its
engine slot between them in a :class:`Lease`, saving two lock operations
per call while nobody else waits for a slot. The lease lives in a context
variable of that task; any admission that might wait, and any step that
waits on child tasks, lets an idle lease go first, so a kept slot always
means a call in flight or about to start.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from .._concurrency._bucket import TokenBucket, commit, pace, release_gates
from .._concurrency._cooldown import CoolDown
from .._concurrency._limits import Limiter

__all__ = [
    "Admission",
    "Gated",
    "Lease",
    "Release",
    "admission",
    "drop_idle_lease",
    "lease_slots",
]

Release = Callable[[], None]
OnWait = Callable[[float], None]


class Lease:
    """One engine slot a task keeps between its calls."""

    __slots__ = ("busy", "give_back", "held", "limiter")

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.held = False
        self.busy = False
        # Bound once: handed out as the release of every call on the lease.
        self.give_back: Release = self._give_back

    def _give_back(self) -> None:
        """A call using the lease ended: keep the slot unless someone waits."""
        self.busy = False
        if self.limiter._queued:
            self.held = False
            self.limiter.release()

    def drop(self) -> None:
        """Let the slot go, when it is not in use."""
        if self.held and not self.busy:
            self.held = False
            self.limiter.release()


_lease: ContextVar[Lease | None] = ContextVar("plait_lease", default=None)


class lease_slots:
    """``with lease_slots(limiter) as lease:`` the current task keeps a slot.

    Calls of the task may run on the kept slot (see :class:`Lease`); on
    leaving, the slot is given back and the task's previous lease, if any,
    is in force again.
    """

    __slots__ = ("_token", "lease")

    def __init__(self, limiter: Limiter) -> None:
        self.lease = Lease(limiter)

    def __enter__(self) -> Lease:
        self._token = _lease.set(self.lease)
        return self.lease

    def __exit__(self, *exc: object) -> None:
        _lease.reset(self._token)
        self.lease.busy = False
        self.lease.drop()


def drop_idle_lease() -> None:
    """Let the current task's kept slot go before it waits on anything else."""
    lease = _lease.get()
    if lease is not None:
        lease.drop()


class Admission:
    """Slots of every limiter in ``limiters``, in order, under no bucket."""

    __slots__ = ("_release", "limiters")

    def __init__(self, limiters: tuple[Limiter, ...]) -> None:
        self.limiters = limiters
        self._release = _release_all(limiters)

    def try_enter(self, lease: Lease | None = None) -> Release | None:
        """Take everything now, never yielding; None when something is busy.

        ``lease``: the calling task's lease, when the caller knows it.
        """
        drop_idle_lease()
        limiters = self.limiters
        for i, lim in enumerate(limiters):
            if not lim.try_acquire():
                for held in limiters[:i]:
                    held.release()
                return None
        return self._release

    async def enter(self, on_wait: OnWait) -> Release:
        """Wait for every slot, in order, holding no kept slot meanwhile."""
        drop_idle_lease()
        limiters = self.limiters
        if len(limiters) == 1:
            # One frame fewer for each waiter a task group cancels.
            await limiters[0]._acquire_queued()
        else:
            await _take_slots(limiters)
        return self._release


class _Leased(Admission):
    """An async tool's slots, the engine's last: that one may be the lease.

    The other limiters (a tool's own limit, say) are taken as usual; the
    engine's slot is the calling task's kept one when it has it.
    """

    __slots__ = ("engine", "others")

    def __init__(self, limiters: tuple[Limiter, ...]) -> None:
        super().__init__(limiters)
        self.others = limiters[:-1]
        self.engine = limiters[-1]

    def try_enter(self, lease: Lease | None = None) -> Release | None:
        if lease is None:
            lease = _lease.get()
        if lease is None or lease.busy or lease.limiter is not self.engine:
            return super().try_enter()
        others = self.others
        if others:
            for i, lim in enumerate(others):
                if not lim.try_acquire():
                    _release_each(others[:i])
                    return None
        if not lease.held:
            if not self.engine.try_acquire():
                _release_each(others)
                return None
            lease.held = True
        lease.busy = True
        if not others:
            return lease.give_back
        give_back = lease.give_back

        def release() -> None:
            _release_each(others)
            give_back()

        return release

    async def enter(self, on_wait: OnWait) -> Release:
        lease = _lease.get()
        if (
            lease is None
            or lease.busy
            or lease.limiter is not self.engine
            # Waiting for a tool's slot holds no engine slot meanwhile.
            or self.others
        ):
            drop_idle_lease()
            await _take_slots(self.limiters)
            return self._release
        await self.engine._acquire_queued()
        lease.held = lease.busy = True
        return lease.give_back


def _release_each(limiters: tuple[Limiter, ...]) -> None:
    for lim in limiters:
        lim.release()


class _Paced(Admission):
    """Slots and tokens: tokens are waited for first, holding no slot."""

    __slots__ = ("buckets",)

    def __init__(
        self, limiters: tuple[Limiter, ...], buckets: tuple[TokenBucket, ...]
    ) -> None:
        super().__init__(limiters)
        self.buckets = buckets

    def try_enter(self, lease: Lease | None = None) -> Release | None:
        return None

    async def enter(self, on_wait: OnWait) -> Release:
        """Wait for a token of every bucket and a slot of every limiter.

        When the slots are busy once the tokens are there, the call gives up
        its place at the buckets, waits for the slots, then waits for tokens
        again while holding them (only when both limits are saturated).
        """
        drop_idle_lease()
        buckets, limiters = self.buckets, self.limiters
        await pace(buckets, on_wait)
        if super().try_enter() is None:
            release_gates(buckets)
            await _take_slots(limiters)
            try:
                await pace(buckets, on_wait)
            except BaseException:
                self._release()
                raise
        commit(buckets)
        return self._release


class Gated(Admission):
    """An admission that waits out a tool's :class:`CoolDown` first.

    A call queued for a slot when the pause began may be given one during
    the pause: it gives the slot back and waits again, so no call of the
    tool starts while the pause is on, and none holds a slot while waiting.
    """

    __slots__ = ("gate", "inner")

    def __init__(self, inner: Admission, gate: CoolDown) -> None:
        super().__init__(inner.limiters)
        self.inner = inner
        self.gate = gate

    def try_enter(self, lease: Lease | None = None) -> Release | None:
        if self.gate.cooling():
            return None
        return self.inner.try_enter(lease)

    async def enter(self, on_wait: OnWait) -> Release:
        gate = self.gate
        while True:
            if gate.cooling():
                drop_idle_lease()
                await gate.wait()
            release = await self.inner.enter(on_wait)
            if not gate.cooling():
                return release
            release()


def admission(
    limiters: tuple[Limiter, ...],
    buckets: tuple[TokenBucket, ...],
    *,
    lease: Limiter | None = None,
) -> Admission:
    """The admission for a call under ``limiters`` and ``buckets``.

    The same limiter or bucket listed twice (a middleware listed twice, a
    key equal to a tool's own) is taken once. ``lease``: the engine limiter,
    when the call may run on a slot its task keeps (an async tool, whose
    slots the task gives back).
    """
    limiters = tuple(dict.fromkeys(limiters))
    buckets = tuple(dict.fromkeys(buckets))
    if buckets:
        return _Paced(limiters, buckets)
    if lease is not None and limiters and limiters[-1] is lease:
        return _Leased(limiters)
    return Admission(limiters)


async def _take_slots(limiters: tuple[Limiter, ...]) -> None:
    """Take a slot of every limiter, in order, waiting as needed."""
    held = 0
    try:
        for lim in limiters:
            if not lim.try_acquire():
                await lim._acquire_queued()
            held += 1
    except BaseException:
        for lim in limiters[:held]:
            lim.release()
        raise


def _release_all(limiters: tuple[Limiter, ...]) -> Release:
    if len(limiters) == 1:
        return limiters[0].release

    def release() -> None:
        for lim in limiters:
            lim.release()

    return release
