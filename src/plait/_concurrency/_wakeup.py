"""Waking a waiter that may live on another thread or another event loop.

A limiter shared between threads and loops must wake a waiting task from
whatever thread releases the slot, without blocking that thread and without
polling. anyio has no non-blocking "run soon on that loop" call, so this
module holds the two backend-specific ways to do it: asyncio's
``call_soon_threadsafe`` (uvloop included) and Trio's token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import anyio
import sniffio

__all__ = ["AsyncWaiter", "ThreadWaiter", "running_async_library"]


def running_async_library() -> str | None:
    """The async library running in this thread, or None when there is none."""
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        pass
    import asyncio

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
    import asyncio

    return asyncio.get_running_loop().call_soon_threadsafe


class AsyncWaiter:
    """A task waiting on its own event loop, wakeable from any thread."""

    __slots__ = ("_event", "_schedule", "_thread", "granted", "queued")

    def __init__(self) -> None:
        self.granted = False
        self.queued = False
        self._event = anyio.Event()
        self._thread = threading.get_ident()
        self._schedule = _soon_in_this_loop()

    async def wait(self) -> None:
        await self._event.wait()

    def wake(self) -> bool:
        """Wake the task; False if its loop is gone and it never will wake."""
        try:
            if threading.get_ident() == self._thread:
                self._event.set()
            else:
                self._schedule(self._event.set)
        except Exception:  # the loop has closed (RuntimeError, RunFinishedError)
            return False
        return True


class ThreadWaiter:
    """A plain thread blocked until another thread grants it."""

    __slots__ = ("_lock", "granted", "queued")

    def __init__(self) -> None:
        self.granted = False
        self.queued = False
        self._lock = threading.Lock()
        self._lock.acquire()

    def wait(self, timeout: float | None = None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else timeout)

    def wake(self) -> bool:
        self._lock.release()
        return True
