"""Waking a waiter that may live on another thread or another event loop.

A limiter shared between threads and loops must wake a waiting task from
whatever thread releases the slot, without blocking that thread and without
polling. anyio has no non-blocking "run soon on that loop" call, so this
module holds the backend-specific ways to do it: a task on asyncio (uvloop
included) waits on a future of its loop, resolved directly or through
``call_soon_threadsafe``; a Trio task parks with ``wait_task_rescheduled``
and is rescheduled directly or through its run's token; a plain thread
blocks on a lock.

Each waiter can also tell, from any thread, that its task is already being
cancelled (:meth:`Waiter.leaving`), so that a limiter hands a freed slot
past it instead of to it: when a task group cancels many waiters at once,
the slot then skips the whole doomed queue in one pass instead of being
handed down it one wake-up at a time. A waiter that leaves without being
served drops every reference to its event loop (:meth:`Waiter.forget`), so a
limiter that outlives a loop never keeps the loop alive.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import sniffio

if TYPE_CHECKING:
    import trio

__all__ = [
    "AsyncioWaiter",
    "ThreadWaiter",
    "TrioWaiter",
    "Waiter",
    "running_async_library",
    "soon_in_this_loop",
    "task_waiter",
]


def running_async_library() -> str | None:
    """The async library running in this thread, or None when there is none."""
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        pass
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "asyncio"


def _soon_in_this_loop() -> Callable[[Callable[[], object]], object]:
    library = running_async_library()
    if library == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    return asyncio.get_running_loop().call_soon_threadsafe


def soon_in_this_loop() -> Callable[[Callable[[], object]], object]:
    """``run_soon(fn)``: have the event loop running now call ``fn`` soon.

    ``run_soon`` may be called from any thread and never blocks; it raises
    once the loop has closed.
    """
    return _soon_in_this_loop()


class Waiter:
    """One caller queued for a slot; the limiter's flags live here too.

    ``queued`` and ``granted`` are read and written only under the lock of
    the limiter that holds the waiter; ``borrower`` is what the slot is
    recorded under once granted.
    """

    __slots__ = ("borrower", "granted", "queued")

    def __init__(self, borrower: object) -> None:
        self.borrower = borrower
        self.granted = False
        self.queued = False

    def leaving(self) -> bool:
        """True if the waiter is being cancelled and will never use a slot."""
        return False

    def wake(self) -> bool:
        """Let the waiter go on; False if it never will (its loop is gone)."""
        raise NotImplementedError

    def forget(self) -> None:
        """Drop every reference to the event loop (the waiter has left)."""


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncioWaiter(Waiter):
    """A task on an asyncio (or uvloop) loop, wakeable from any thread."""

    __slots__ = ("_future", "_loop", "_thread")

    def __init__(self, borrower: object) -> None:
        super().__init__(borrower)
        loop = asyncio.get_running_loop()
        self._loop: asyncio.AbstractEventLoop | None = loop
        self._future: asyncio.Future[None] | None = loop.create_future()
        self._thread = threading.get_ident()

    def __await__(self) -> Generator[Any, None, None]:
        # The future's own iterator: waiting adds no coroutine frame that a
        # cancellation would have to unwind.
        assert self._future is not None
        return self._future.__await__()

    def leaving(self) -> bool:
        # Cancelling a task cancels the future it awaits, at once.
        future = self._future
        return future is not None and future.cancelled()

    def wake(self) -> bool:
        future, loop = self._future, self._loop
        if future is None or loop is None:
            return False
        try:
            if threading.get_ident() == self._thread:
                _resolve(future)
            else:
                loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:  # the loop has closed
            return False
        return True

    def forget(self) -> None:
        self._future = self._loop = None


class TrioWaiter(Waiter):
    """A Trio task parked until rescheduled, wakeable from any thread."""

    __slots__ = ("_aborted", "_task", "_thread", "_token")

    def __init__(self, borrower: object) -> None:
        import trio

        super().__init__(borrower)
        self._task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
        self._token: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        self._aborted = False

    def __await__(self) -> Generator[Any, None, None]:
        import trio

        # Awaited by whoever awaits this waiter.
        parked = trio.lowlevel.wait_task_rescheduled(self._abort)  # noqa: ASYNC105
        return parked.__await__()

    def _abort(self, raise_cancel: object) -> trio.lowlevel.Abort:
        import trio

        # Runs on the Trio thread, as does _resume: one of them wins.
        self._aborted = True
        return trio.lowlevel.Abort.SUCCEEDED

    def _resume(self) -> None:
        import trio

        task = self._task
        if task is not None and not self._aborted:
            self._task = self._token = None
            trio.lowlevel.reschedule(task)

    def leaving(self) -> bool:
        return self._aborted

    def wake(self) -> bool:
        token = self._token
        if token is None:
            return False
        if threading.get_ident() == self._thread:
            self._resume()
            return True
        import trio

        try:
            token.run_sync_soon(self._resume)
        except trio.RunFinishedError:
            return False
        return True

    def forget(self) -> None:
        self._task = self._token = None


def task_waiter(borrower: object) -> AsyncioWaiter | TrioWaiter:
    """A waiter for the task running now, on whichever backend runs it."""
    if running_async_library() == "trio":
        return TrioWaiter(borrower)
    return AsyncioWaiter(borrower)


class ThreadWaiter(Waiter):
    """A plain thread blocked until another thread grants it."""

    __slots__ = ("_lock",)

    def __init__(self, borrower: object) -> None:
        super().__init__(borrower)
        self._lock = threading.Lock()
        self._lock.acquire()

    def wait(self, timeout: float | None = None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else timeout)

    def wake(self) -> bool:
        self._lock.release()
        return True
