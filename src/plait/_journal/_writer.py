"""The writer thread: commits a run's records in groups, off the event loop.

Calls hand records over without waiting (a deque and, when the thread
sleeps, one notify). The thread commits them in groups: with ``"batch"``
durability a group closes after ``MAX_DELAY`` seconds or ``MAX_GROUP``
records, whichever comes first; with ``"sync"`` it commits what is queued at
once (the calls that queued while the last commit ran share the next one)
and wakes each record's waiter when its group is on disk.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence

from ._protocol import JournalRecord

__all__ = ["MAX_DELAY", "MAX_GROUP", "GroupWriter"]

#: A ``"batch"`` group is committed at most this many seconds after its first record.
MAX_DELAY = 0.1
#: A group holds at most this many records.
MAX_GROUP = 1000

# Calls come fast: the thread commits as soon as this many are queued, so
# that a group is written while the next one fills, and callers rarely find
# a whole group not committed (then they wait, see RunJournal.record).
_BUSY = MAX_GROUP // 4

Wake = Callable[[], None]


class GroupWriter:
    """One thread that gives records to ``write`` in groups, one commit each."""

    def __init__(
        self, write: Callable[[Sequence[JournalRecord]], None], *, sync: bool, name: str
    ) -> None:
        self._write = write
        self._sync = sync
        self._queue: collections.deque[tuple[JournalRecord, Wake | None]] = (
            collections.deque()
        )
        self._cond = threading.Condition(threading.Lock())
        self._idle = False
        self._closing = False
        self._put = 0
        self._committed = 0
        self._flush_to = 0
        self._waiters = 0
        #: The first error ``write`` raised; every later group is dropped.
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"plait journal {name}", daemon=True
        )
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Records handed over and not committed yet."""
        return self._put - self._committed

    @property
    def committed(self) -> int:
        """How many records put so far are committed (or dropped after an error)."""
        return self._committed

    def put(self, record: JournalRecord, wake: Wake | None = None) -> int:
        """Queue ``record``; return its number (from 1) in the writer's order.

        ``wake()`` runs on the thread once the record is committed, once per
        group however many of its records share that ``wake``.

        Called from one event loop's thread. Without ``wake`` the record is
        appended without the lock (a deque append is atomic); a thread that
        misses that wake-up finds the record within ``MAX_DELAY``.
        """
        self._put += 1
        if wake is None:
            self._queue.append((record, None))
            if self._idle or len(self._queue) == _BUSY:
                with self._cond:
                    self._cond.notify()
            return self._put
        with self._cond:
            self._queue.append((record, wake))
            if not self._sync:
                # Someone waits for this record (the writer fell behind):
                # the group closes now rather than at its deadline.
                self._waiters += 1
            self._cond.notify()
        return self._put

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every record put so far is committed; False on timeout."""
        with self._cond:
            target = self._put
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: self._committed >= target or self.error is not None, timeout
            )

    def close(self, timeout: float | None = None) -> bool:
        """Commit what is queued and end the thread; False if it did not end."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        queue, cond = self._queue, self._cond
        while True:
            with cond:
                while not queue:
                    if self._closing:
                        return
                    self._idle = True
                    # Bounded: a record put without the lock may miss the
                    # notify; it waits no longer than a batch group would.
                    cond.wait(MAX_DELAY)
                    self._idle = False
                if not self._sync:
                    self._fill_group(time.monotonic() + MAX_DELAY)
                group = [queue.popleft() for _ in range(min(len(queue), MAX_GROUP))]
                self._waiters = 0
            if self.error is None:
                try:
                    self._write([record for record, _ in group])
                except Exception as error:  # kept: the run raises it as it ends
                    self.error = error
            with cond:
                self._committed += len(group)
                cond.notify_all()
            for wake in {wake for _, wake in group if wake is not None}:
                wake()

    def _fill_group(self, deadline: float) -> None:
        """Wait (lock held) until the group is full, due, or someone waits on it."""
        queue, cond = self._queue, self._cond
        while len(queue) < _BUSY and not self._closing:
            if self._flush_to > self._committed:
                return
            if self._waiters:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            cond.wait(remaining)
