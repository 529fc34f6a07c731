"""Concurrency limits that hold across threads, event loops and backends.

:class:`Limiter` speaks ``anyio.CapacityLimiter``'s dialect (the same names,
the same checkpoints), with three things plait needs on top: it may be used
from several threads and event loops (asyncio, uvloop and Trio) at once;
its total can change while slots are held without ever letting more holders
in than the new total; and a slot can be released from a thread other than
the one that took it (a timed-out sync tool releases its slot from its
worker thread when it really returns). Waiters are served first come, first
served, and are woken, never polled.

:class:`LimiterRegistry` maps string keys to limiters.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from types import TracebackType

import anyio
import anyio.lowlevel

from .._model._errors import ConfigError
from ._wakeup import (
    AsyncioWaiter,
    ThreadWaiter,
    TrioWaiter,
    Waiter,
    running_async_library,
    task_waiter,
)

__all__ = ["Limiter", "LimiterRegistry"]

# The borrower of a slot taken by acquire(), acquire_nowait(), try_acquire()
# or acquire_blocking(): no one in particular, so any thread may give it back.
_ANONYMOUS = object()
_UNSET = object()


def _check_total(total: object, what: str) -> float:
    """``total`` as an int, or ``math.inf`` for None and infinity.

    Raises:
        TypeError: not an int, an integral float, ``math.inf`` or None.
        ConfigError: a negative number.
    """
    if total is None:
        return math.inf
    if isinstance(total, bool) or not isinstance(total, int | float):
        raise TypeError(f"{what} must be an int, math.inf or None, got {total!r}")
    if isinstance(total, float) and not (total.is_integer() or math.isinf(total)):
        raise TypeError(
            f"{what} must be a whole number, math.inf or None, got {total!r}"
        )
    if total < 0:
        raise ConfigError(f"{what} must be >= 0 (0 pauses it), got {total!r}")
    return total if math.isinf(total) else int(total)


class Limiter:
    """A capacity limiter like ``anyio.CapacityLimiter``, for every thread and loop.

    ``total_tokens`` slots are shared by whoever calls :meth:`acquire` (or
    ``async with limiter:``) on any event loop of any backend, and by plain
    threads through :meth:`acquire_blocking`. Waiters are served first come,
    first served. :meth:`acquire` is a checkpoint, as anyio's is: it raises
    if the task is already cancelled and, when a slot is free, takes it and
    lets the other tasks run once, so a task that takes and gives back a
    slot in a loop does not starve its siblings. ``total_tokens`` may change
    at any time: raising it admits waiters at once; lowering it below the
    slots held lets nobody in until the holders are under it; ``0`` pauses
    the limiter.

    Where it differs from ``anyio.CapacityLimiter``:

    - A slot taken with :meth:`acquire`, :meth:`acquire_nowait`,
      :meth:`try_acquire` or :meth:`acquire_blocking` belongs to nobody in
      particular: :meth:`release` may be called from any task or thread, and
      a task may hold several. Only the ``*_on_behalf_of`` methods record a
      borrower (and refuse a borrower that already holds a slot, as anyio's
      do); ``statistics().borrowers`` lists those.
    - ``None`` means no limit (as ``math.inf``), and a whole float such as
      ``3.0`` is taken as ``3``.
    - ``statistics().tasks_waiting`` counts blocked threads too.

    The names of earlier plait versions remain as aliases: :attr:`total`,
    :attr:`borrowed`, :attr:`waiting` and :meth:`try_acquire` (which returns
    a bool instead of raising, and never yields: the engine's fast path).

    Args:
        total_tokens: how many slots; ``None`` or ``math.inf`` for no limit
            (holders are still counted, so that a limit set later accounts
            for them), ``0`` to admit nobody until it is raised.
        name: shown in errors and reprs.
        total: the former name of ``total_tokens``.

    Raises:
        TypeError: ``total_tokens`` is not an int, ``math.inf`` or None.
        ConfigError: ``total_tokens`` is negative.
    """

    __slots__ = (
        "__weakref__",
        "_borrowed",
        "_borrowers",
        "_lock",
        "_pending",
        "_queued",
        "_total",
        "_waiters",
        "name",
    )

    def __init__(
        self,
        total_tokens: float | None = None,
        name: str = "",
        *,
        total: object = _UNSET,
    ) -> None:
        self.name = name
        if total is not _UNSET:
            if total_tokens is not None:
                raise TypeError("give Limiter total_tokens or total, not both")
            total_tokens = total  # type: ignore[assignment]
        self._total = _check_total(total_tokens, f"limit for {name!r}")
        self._borrowed = 0  # slots held, anonymous ones and borrowers' alike
        self._borrowers: dict[object, None] = {}  # in the order they got in
        self._pending: set[object] = set()  # borrowers queued on our behalf
        # Waiters in arrival order. One that leaves (cancelled) is only
        # marked, not searched for, so that cancelling n waiters costs O(n),
        # not O(n^2); marked ones are skipped when they reach the front, and
        # hold no reference to their event loop meanwhile.
        self._waiters: deque[Waiter] = deque()
        self._queued = 0  # waiters in the deque still waiting
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        total = "unlimited" if self._total == math.inf else self._total
        return f"<Limiter {self.name!r} {self._borrowed}/{total}>"

    # -- anyio's names ---------------------------------------------------------
    @property
    def total_tokens(self) -> float:
        """The number of slots (``math.inf`` when unlimited); may be changed.

        Raising it admits waiters at once; lowering it admits nobody until
        the holders are under the new total. ``None`` is taken as
        ``math.inf``.
        """
        return self._total

    @total_tokens.setter
    def total_tokens(self, value: float | None) -> None:
        total = _check_total(value, f"limit for {self.name!r}")
        with self._lock:
            self._total = total
            woken = self._grant_locked()
        self._wake(woken)

    @property
    def borrowed_tokens(self) -> int:
        """Slots held now (may exceed the total for a while after it is lowered)."""
        return self._borrowed

    @property
    def available_tokens(self) -> float:
        """``total_tokens - borrowed_tokens`` (negative while over a lowered total)."""
        return self._total - self._borrowed

    def statistics(self) -> anyio.CapacityLimiterStatistics:
        """The counts, as ``anyio.CapacityLimiter.statistics()`` gives them.

        ``borrowers`` lists the borrowers of ``*_on_behalf_of`` slots only;
        ``tasks_waiting`` counts blocked threads too.
        """
        with self._lock:
            return anyio.CapacityLimiterStatistics(
                borrowed_tokens=self._borrowed,
                total_tokens=self._total,
                borrowers=tuple(self._borrowers),
                tasks_waiting=self._queued,
            )

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.release()

    def acquire_nowait(self) -> None:
        """Take a slot if one is free and nobody is queued.

        Raises:
            anyio.WouldBlock: no slot is free, or others wait for one.
        """
        if not self.try_acquire():
            raise anyio.WouldBlock

    async def acquire(self) -> None:
        """Take a slot, waiting for one; a checkpoint, as anyio's is.

        Raises the cancellation at once if the task is already cancelled;
        when a slot is free, takes it and yields once (shielded, so the
        slot is kept) to let other tasks run.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        waiter = self._take_or_queue(_ANONYMOUS)
        if waiter is None:
            await self._yield_holding(_ANONYMOUS)
            return
        # acquire_on_behalf_of repeats these lines rather than this method
        # calling it: a frame less to unwind for each waiter that a task
        # group cancels.
        try:
            await waiter
        except BaseException:
            self._abandon(waiter)
            raise

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire` and friends; from any thread.

        The longest waiter, if any, gets it.

        Raises:
            RuntimeError: no such slot is held (release more often than
                acquire); slots of ``*_on_behalf_of`` borrowers are given
                back with :meth:`release_on_behalf_of`.
        """
        with self._lock:
            if self._borrowed - len(self._borrowers) <= 0:
                raise RuntimeError(
                    f"{self!r} released more often than acquired (slots taken"
                    " on behalf of a borrower go back with release_on_behalf_of)"
                )
            self._borrowed -= 1
            if not self._queued:
                return
            woken = self._grant_locked()
        self._wake(woken)

    def acquire_on_behalf_of_nowait(self, borrower: object) -> None:
        """Take a slot for ``borrower`` (any hashable) if one is free.

        Raises:
            anyio.WouldBlock: no slot is free, or others wait for one.
            RuntimeError: ``borrower`` already holds a slot of this limiter.
        """
        with self._lock:
            self._check_new_borrower_locked(borrower)
            if not self._take_locked(borrower):
                raise anyio.WouldBlock

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        """Take a slot for ``borrower`` (any hashable), waiting for one.

        A checkpoint, like :meth:`acquire`.

        Raises:
            RuntimeError: ``borrower`` already holds a slot of this limiter,
                or already waits for one.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        waiter = self._take_or_queue(borrower)
        if waiter is None:
            await self._yield_holding(borrower)
            return
        try:
            await waiter
        except BaseException:
            self._abandon(waiter)
            raise

    def release_on_behalf_of(self, borrower: object) -> None:
        """Give back the slot held by ``borrower``; from any thread.

        Raises:
            RuntimeError: ``borrower`` holds no slot of this limiter.
        """
        with self._lock:
            if borrower not in self._borrowers:
                raise RuntimeError(
                    f"{borrower!r} isn't holding any of {self!r}'s slots"
                )
            del self._borrowers[borrower]
            self._borrowed -= 1
            woken = self._grant_locked()
        self._wake(woken)

    # -- plait's names ---------------------------------------------------------
    @property
    def total(self) -> float:
        """Alias of :attr:`total_tokens`."""
        return self._total

    @total.setter
    def total(self, value: float | None) -> None:
        self.total_tokens = value

    @property
    def borrowed(self) -> int:
        """Alias of :attr:`borrowed_tokens`."""
        return self._borrowed

    @property
    def waiting(self) -> int:
        """How many tasks and threads wait for a slot (``tasks_waiting``)."""
        return self._queued

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued; never blocks or yields.

        The non-raising twin of :meth:`acquire_nowait`: True if the slot
        was taken. Release it with :meth:`release`.
        """
        with self._lock:
            if self._borrowed < self._total and not self._queued:
                self._borrowed += 1
                return True
        return False

    async def _acquire_queued(self) -> None:
        """Take a slot, queueing for one; no checkpoint when one is free.

        For the engine's own calls, which usually found the limiter full a
        moment ago: the wait is then the checkpoint, and checking for a
        cancellation first would cost as much as the queueing. A slot freed
        meanwhile is taken at once, so callers need not try first. Tasks
        that loop acquiring and releasing want :meth:`acquire`, which
        yields even when a slot is free. (The waiting lines are repeated in
        :meth:`acquire`, not shared: a frame less to unwind per waiter.)
        """
        waiter = self._take_or_queue(_ANONYMOUS)
        if waiter is None:
            return
        try:
            await waiter
        except BaseException:
            self._abandon(waiter)
            raise

    def acquire_blocking(self) -> None:
        """Block this (plain or worker) thread until a slot is taken.

        Never call it in a thread that runs an event loop: it would freeze
        every task of that loop.
        """
        if self.try_acquire():
            return
        waiter = ThreadWaiter(_ANONYMOUS)
        if not self._enqueue(waiter):
            return
        try:
            waiter.wait()
        except BaseException:
            self._abandon(waiter)
            raise

    # -- the queue ---------------------------------------------------------------
    def _check_new_borrower_locked(self, borrower: object) -> None:
        if borrower in self._borrowers:
            raise RuntimeError(f"{borrower!r} is already holding a slot of {self!r}")
        if borrower in self._pending:
            raise RuntimeError(
                f"{borrower!r} is already waiting for a slot of {self!r}"
            )

    def _take_locked(self, borrower: object) -> bool:
        if self._borrowed < self._total and not self._queued:
            self._borrowed += 1
            if borrower is not _ANONYMOUS:
                self._borrowers[borrower] = None
            return True
        return False

    async def _yield_holding(self, borrower: object) -> None:
        """Let other tasks run once, keeping the slot just taken (as anyio does)."""
        try:
            await anyio.lowlevel.cancel_shielded_checkpoint()
        except BaseException:
            self._give_up(borrower)
            raise

    def _give_up(self, borrower: object) -> None:
        if borrower is _ANONYMOUS:
            self.release()
        else:
            self.release_on_behalf_of(borrower)

    def _take_or_queue(self, borrower: object) -> AsyncioWaiter | TrioWaiter | None:
        """Take a free slot (None), or queue this task and return its waiter."""
        with self._lock:
            if borrower is not _ANONYMOUS:
                self._check_new_borrower_locked(borrower)
            if self._take_locked(borrower):
                return None
        waiter = task_waiter(borrower)
        return waiter if self._enqueue(waiter) else None

    def _enqueue(self, waiter: Waiter) -> bool:
        """Queue ``waiter``; False if it took a free slot instead."""
        with self._lock:
            if self._take_locked(waiter.borrower):
                return False
            waiters = self._waiters
            if len(waiters) > 2 * self._queued + 64:
                # Mostly waiters that left: drop them, in bounded amortized time.
                self._waiters = waiters = deque(w for w in waiters if w.queued)
            waiter.queued = True
            waiters.append(waiter)
            self._queued += 1
            if waiter.borrower is not _ANONYMOUS:
                self._pending.add(waiter.borrower)
        return True

    def _dequeue_locked(self, waiter: Waiter) -> None:
        waiter.queued = False
        self._queued -= 1
        if waiter.borrower is not _ANONYMOUS:
            self._pending.discard(waiter.borrower)

    def _grant_locked(self) -> list[Waiter]:
        woken = []
        while self._queued and self._borrowed < self._total:
            waiter = self._waiters.popleft()
            if not waiter.queued:
                continue  # it left while queued
            self._dequeue_locked(waiter)
            if waiter.leaving():
                # Being cancelled: it could only hand the slot on, one
                # wake-up later. When a task group cancels the whole queue,
                # this lets the slot skip it in one pass.
                continue
            waiter.granted = True
            self._borrowed += 1
            if waiter.borrower is not _ANONYMOUS:
                self._borrowers[waiter.borrower] = None
            woken.append(waiter)
        return woken

    def _wake(self, woken: list[Waiter]) -> None:
        for waiter in woken:
            if not waiter.wake():
                # Its event loop is gone: it will never use the slot.
                self._give_back(waiter)

    def _give_back(self, waiter: Waiter) -> None:
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
            if waiter.borrower is not _ANONYMOUS:
                del self._borrowers[waiter.borrower]
            woken = self._grant_locked()
        self._wake(woken)

    def _abandon(self, waiter: Waiter) -> None:
        """The waiter leaves (cancelled): out of the queue, or its slot back."""
        with self._lock:
            granted = waiter.granted
            if not granted:
                if waiter.queued:
                    self._dequeue_locked(waiter)
                # Nobody will wake it now: let go of its event loop, though
                # the waiter itself may sit in the deque for a while.
                waiter.forget()
        if granted:
            self._give_back(waiter)


class LimiterRegistry:
    """Named concurrency limits, shared by engines, threads and event loops.

    A key with no limit set is unlimited (its holders are still counted).
    Limits can be changed while in use: lowering one lets no new holder in
    until the count is under the new limit; raising one admits waiters at
    once; a limit of 0 pauses the key.

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

    def set_limit(self, key: str, limit: float | None) -> None:
        """Allow at most ``limit`` holders of ``key`` at once.

        ``None`` (or ``math.inf``) for no limit, ``0`` to pause the key.

        Raises:
            TypeError: ``limit`` is not an int, ``math.inf`` or None.
            ConfigError: ``limit`` is negative.
        """
        self.limiter(key).total_tokens = limit

    def get_limit(self, key: str) -> int | None:
        """The limit of ``key``, or None when it is unlimited."""
        total = self.limiter(key).total_tokens
        return None if total == math.inf else int(total)

    def in_use(self, key: str) -> int:
        """How many holders ``key`` has now."""
        return self.limiter(key).borrowed_tokens

    async def acquire(self, key: str) -> None:
        """Wait until ``key`` has a free slot and take it (a checkpoint)."""
        await self.limiter(key).acquire()

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

    def limit(self, key: str) -> AbstractAsyncContextManager[None]:
        """``async with registry.limit(key):`` holds one slot of ``key``."""
        return self.limiter(key)

    @contextmanager
    def limit_sync(self, key: str) -> Iterator[None]:
        """``with registry.limit_sync(key):`` for plain threads."""
        self.acquire_sync(key)
        try:
            yield
        finally:
            self.release(key)
