"""plait's worker threads: one process-wide pool, woken loops batched.

Sync tools and blocking agents run here rather than through
``anyio.to_thread``, for speed where agents spend their time: many short
blocking calls finishing at once. Each anyio call wakes its event loop on
its own (a self-pipe write and a loop turn per call); here a finished call
posts to its loop's inbox, and one loop callback wakes every task whose call
finished meanwhile, so that many short blocking calls cost about what a
bare ``ThreadPoolExecutor`` costs (``benchmarks/agents.py`` measures it;
the numbers are in docs/benchmarks.md).

The threads are daemon threads, kept for a while when idle and shared by
every event loop of the process, so a tool that hangs forever can never keep
the process from exiting. How many may run at once is bounded by the
caller (the engine's thread limit), not by the pool.
"""

from __future__ import annotations

import asyncio
import collections
import os
import queue
import threading
from collections.abc import Callable

import anyio

from ._wakeup import _soon_in_this_loop

__all__ = ["Inbox", "current_inbox", "submit"]

#: Seconds an idle worker thread waits for work before it exits.
IDLE_SECONDS = 10.0


class _Pool:
    """Daemon worker threads pulling jobs from one queue, started on demand."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Workers blocked waiting for a job that no submitted job is meant for.
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1  # that worker is now meant for this job
        self._jobs.put(job)
        if spawn:
            threading.Thread(
                target=self._work, name="plait worker", daemon=True
            ).start()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            try:
                job = jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # else a job is on its way to us
                        self._idle -= 1
                        return
                continue
            job()
            del job
            with self._lock:
                self._idle += 1


_pool = _Pool()


def _reset_after_fork() -> None:
    global _pool
    _pool = _Pool()  # the parent's threads do not exist in the child


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
    os.register_at_fork(after_in_child=_reset_after_fork)


def submit(job: Callable[[], None]) -> None:
    """Run ``job()`` on a worker thread; ``job`` must not raise."""
    _pool.submit(job)


class Inbox:
    """Where worker threads post the events of finished calls for one event loop.

    The first post after a drain schedules one drain on the loop; posts that
    come before it runs ride along.
    """

    __slots__ = ("_items", "_lock", "_schedule", "_scheduled", "key")

    def __init__(self, key: object) -> None:
        self.key = key
        self._items: collections.deque[anyio.Event] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._schedule = _soon_in_this_loop()

    def post(self, event: anyio.Event) -> None:
        """Set ``event`` on the inbox's loop soon; from any thread."""
        self._items.append(event)
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._schedule(self._drain)
        except Exception:  # the loop has closed: nobody waits any more
            with self._lock:
                self._scheduled = False

    def _drain(self) -> None:
        with self._lock:
            self._scheduled = False
        items = self._items
        while items:
            items.popleft().set()


_local = threading.local()


def _loop_key() -> object:
    """Something that identifies the event loop running in this thread."""
    loop = asyncio._get_running_loop()
    if loop is not None:
        return loop
    import trio

    return trio.lowlevel.current_trio_token()


def current_inbox() -> Inbox:
    """The inbox of the event loop running in this thread."""
    key = _loop_key()
    inbox: Inbox | None = getattr(_local, "inbox", None)
    if inbox is None or inbox.key is not key:
        inbox = _local.inbox = Inbox(key)
    return inbox
