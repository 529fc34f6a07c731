"""Concurrency limits that hold across threads, event loops and backends.

:class:`Limiter` is a capacity limiter like ``anyio.CapacityLimiter``, with
three differences that plait needs: it may be used from several threads and
event loops (asyncio, uvloop and Trio) at once; its total can change while
slots are held without ever letting more holders in than the new total; and a
slot can be released from a thread other than the one that took it (a
timed-out sync tool releases its slot from its worker thread when it really
returns). Waiters are served first come, first served, and are woken, never
polled.

:class:`LimiterRegistry` maps string keys to limiters.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio

from .._model._errors import ConfigError
from ._wakeup import AsyncWaiter, ThreadWaiter, running_async_library

__all__ = ["Limiter", "LimiterRegistry"]

_Waiter = AsyncWaiter | ThreadWaiter


def _check_total(total: float | None, what: str) -> float:
    if total is None:
        return math.inf
    if (
        not isinstance(total, int | float)
        or isinstance(total, bool)
        or math.isnan(total)
        or total < 1
        or (isinstance(total, float) and not total.is_integer() and total != math.inf)
    ):
        raise ConfigError(f"{what} must be an int >= 1 or None, got {total!r}")
    return float(total)


class Limiter:
    """A thread-safe, loop-agnostic capacity limiter.

    Args:
        total: how many slots; ``None`` or ``math.inf`` for no limit (holders
            are still counted, so that a limit set later accounts for them).
        name: shown in errors and reprs.
    """

    __slots__ = ("_borrowed", "_lock", "_queued", "_total", "_waiters", "name")

    def __init__(self, total: float | None = None, name: str = "") -> None:
        self.name = name
        self._total = _check_total(total, f"limit for {name!r}")
        self._borrowed = 0
        # Waiters in arrival order. One that leaves (cancelled) is only
        # marked, not searched for, so that cancelling n waiters costs O(n),
        # not O(n^2); marked ones are skipped when they reach the front.
        self._waiters: deque[_Waiter] = deque()
        self._queued = 0  # waiters in the deque still waiting
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        total = "unlimited" if self._total == math.inf else int(self._total)
        return f"<Limiter {self.name!r} {self._borrowed}/{total}>"

    @property
    def total(self) -> float:
        """The number of slots (``math.inf`` when unlimited)."""
        return self._total

    @total.setter
    def total(self, value: float | None) -> None:
        total = _check_total(value, f"limit for {self.name!r}")
        with self._lock:
            self._total = total
            woken = self._grant_locked()
        self._wake(woken)

    @property
    def borrowed(self) -> int:
        """Slots held now (may exceed ``total`` for a while after it is lowered)."""
        return self._borrowed

    @property
    def waiting(self) -> int:
        """How many callers wait for a slot."""
        return self._queued

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued; never blocks."""
        with self._lock:
            if self._borrowed < self._total and not self._queued:
                self._borrowed += 1
                return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot and take it (no checkpoint when one is free)."""
        with self._lock:
            if self._borrowed < self._total and not self._queued:
                self._borrowed += 1
                return
            waiter = AsyncWaiter()
            self._enqueue(waiter)
        try:
            await waiter.wait()
        except BaseException:
            self._abandon(waiter)
            raise

    def acquire_blocking(self) -> None:
        """Block this (plain or worker) thread until a slot is taken."""
        with self._lock:
            if self._borrowed < self._total and not self._queued:
                self._borrowed += 1
                return
            waiter = ThreadWaiter()
            self._enqueue(waiter)
        try:
            waiter.wait()
        except BaseException:
            self._abandon(waiter)
            raise

    def release(self) -> None:
        """Give a slot back; the longest waiter, if any, gets it.

        May be called from any thread.
        """
        with self._lock:
            if self._borrowed <= 0:
                raise RuntimeError(f"{self!r} released more often than acquired")
            self._borrowed -= 1
            if not self._queued:
                return
            woken = self._grant_locked()
        self._wake(woken)

    def _enqueue(self, waiter: _Waiter) -> None:
        waiters = self._waiters
        if len(waiters) > 2 * self._queued + 64:
            # Mostly waiters that left: drop them, in bounded amortized time.
            self._waiters = waiters = deque(w for w in waiters if w.queued)
        waiter.queued = True
        waiters.append(waiter)
        self._queued += 1

    def _grant_locked(self) -> list[_Waiter]:
        woken = []
        while self._queued and self._borrowed < self._total:
            waiter = self._waiters.popleft()
            if not waiter.queued:
                continue  # it left while queued
            waiter.queued = False
            self._queued -= 1
            waiter.granted = True
            self._borrowed += 1
            woken.append(waiter)
        return woken

    def _wake(self, woken: list[_Waiter]) -> None:
        for waiter in woken:
            if not waiter.wake():
                # Its event loop is gone: it will never use the slot.
                self._give_back(waiter)

    def _give_back(self, waiter: _Waiter) -> None:
        """Return the slot granted to ``waiter``, once, whoever asks first.

        Both the waiter (cancelled after the grant) and the granting thread
        (whose wake-up found the waiter's loop closed) may try; the
        ``granted`` flag, changed only under the lock, lets one of them.
        """
        with self._lock:
            if not waiter.granted:
                return
            waiter.granted = False
            self._borrowed -= 1
            woken = self._grant_locked()
        self._wake(woken)

    def _abandon(self, waiter: _Waiter) -> None:
        with self._lock:
            if not waiter.granted:
                if waiter.queued:  # else granted, then given back already
                    waiter.queued = False
                    self._queued -= 1
                # A waiter leaving the head of the queue may unblock others
                # (after the total was raised, say).
                woken = self._grant_locked()
                granted = False
            else:
                granted = True
        if granted:
            self._give_back(waiter)
        else:
            self._wake(woken)


class LimiterRegistry:
    """Named concurrency limits, shared by engines, threads and event loops.

    A key with no limit set is unlimited (its holders are still counted).
    Limits can be changed while in use: lowering one lets no new holder in
    until the count is under the new limit; raising one admits waiters at once.

    Example::

        limits = plait.LimiterRegistry()
        limits.set_limit("researcher", 2)
        async with limits.limit("researcher"):
            ...
        with limits.limit_sync("researcher"):  # from a plain thread
            ...
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limiters: dict[str, Limiter] = {}

    def __repr__(self) -> str:
        return f"<LimiterRegistry {sorted(self._limiters)}>"

    def limiter(self, key: str) -> Limiter:
        """The :class:`Limiter` behind ``key`` (created unlimited on first use)."""
        try:
            return self._limiters[key]
        except KeyError:
            pass
        if not isinstance(key, str):
            raise ConfigError(f"limiter key must be a str, got {key!r}")
        with self._lock:
            return self._limiters.setdefault(key, Limiter(None, key))

    def set_limit(self, key: str, limit: int | None) -> None:
        """Allow at most ``limit`` holders of ``key`` at once (None: unlimited)."""
        self.limiter(key).total = limit

    def get_limit(self, key: str) -> int | None:
        """The limit of ``key``, or None when it is unlimited."""
        total = self.limiter(key).total
        return None if total == math.inf else int(total)

    def in_use(self, key: str) -> int:
        """How many holders ``key`` has now."""
        return self.limiter(key).borrowed

    async def acquire(self, key: str) -> None:
        """Wait until ``key`` has a free slot and take it."""
        limiter = self.limiter(key)
        await anyio.lowlevel.checkpoint_if_cancelled()
        await limiter.acquire()

    def acquire_sync(self, key: str) -> None:
        """Blocking :meth:`acquire`, for plain threads and worker threads.

        Raises:
            RuntimeError: when called in a thread that runs an event loop,
                where blocking would freeze every other task.
        """
        library = running_async_library()
        if library is not None:
            raise RuntimeError(
                f"acquire_sync({key!r}) cannot be called with a running {library} "
                f"event loop in this thread; use `await registry.acquire({key!r})`"
                " (or `async with registry.limit(...)`) instead"
            )
        self.limiter(key).acquire_blocking()

    def release(self, key: str) -> None:
        """Give back a slot of ``key``; from any thread."""
        self.limiter(key).release()

    @asynccontextmanager
    async def limit(self, key: str) -> AsyncIterator[None]:
        """``async with registry.limit(key):`` holds one slot of ``key``."""
        await self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    @contextmanager
    def limit_sync(self, key: str) -> Iterator[None]:
        """``with registry.limit_sync(key):`` for plain threads."""
        self.acquire_sync(key)
        try:
            yield
        finally:
            self.release(key)
