"""A run's side of its journal: records looked up in ranges, a writer thread.

:class:`RunJournal` is what the journal layer of every call of one run
talks to. Looking up a call reads its chunk of ``CHUNK`` elements of the
same map step in one query (on a worker thread) and keeps at most
``MAX_CHUNKS`` chunks, each shrinking as its calls are replayed: a resumed
map over millions of elements holds O(max_concurrency) records, never the
whole run. A run that was new when it was opened reads nothing at all.
"""

from __future__ import annotations

import collections
import contextlib
import functools

import anyio
import anyio.to_thread

from .._concurrency._wakeup import soon_in_this_loop
from .._journal._protocol import Journal, JournalRecord, JournalRun
from .._journal._writer import MAX_GROUP, GroupWriter
from .._model._errors import JournalError

__all__ = ["BACKLOG", "CHUNK", "MAX_CHUNKS", "RunJournal", "open_store"]

#: Elements of one map step read from the journal in one query.
CHUNK = 512
#: Chunks kept at once (across the run's map steps), the oldest dropped first.
MAX_CHUNKS = 32
#: With ``"batch"`` durability, a call waits for its commit while this many
#: records are not committed yet: a crash loses at most the calls in flight
#: and one group, and memory stays bounded when the disk is slow.
BACKLOG = MAX_GROUP
#: Seconds a run's end waits for its last commit and its store to answer.
CLOSE_TIMEOUT = 30.0


def open_store(
    journal: Journal, run_id: str, workflow: str, fingerprint: str, *, claim: bool
) -> JournalRun:
    """``journal.open_run(...)`` (blocking), any failure but a refusal a JournalError.

    A store that cannot be reached or read is a ``JournalError`` naming the
    run and the journal, so that a run never fails on a bare driver error.
    """
    try:
        return journal.open_run(run_id, workflow, fingerprint, claim=claim)
    except JournalError:
        raise
    except Exception as error:
        raise JournalError(
            f"cannot open run {run_id!r} in {journal!r}: {error}", run_id
        ) from error


class RunJournal:
    """One run's journal: what its calls look up and record."""

    def __init__(self, journal: Journal, store: JournalRun, run_id: str) -> None:
        self.run_id = run_id
        #: The store's configuration (it pickles as such: a remote map's
        #: workers open the same run in it).
        self.journal = journal
        self.codec = journal.codec
        self.sync = journal.durability == "sync"
        #: No record existed when the run was opened: nothing to look up.
        self.fresh = bool(store.fresh)
        self._store = store
        self._inline = bool(getattr(store, "inline_reads", False))
        self._writer = GroupWriter(store.write, sync=self.sync, name=run_id)
        # Calls that wait for their commit wait for one event per group: the
        # writer thread has the loop swap it for a new one and set it.
        self._soon = soon_in_this_loop()
        self._wake = self._wake_from_writer
        self._durable = 0
        self._commit = anyio.Event()
        self._chunks: collections.OrderedDict[
            tuple[str, int], dict[int, JournalRecord]
        ] = collections.OrderedDict()
        self._loading: dict[tuple[str, int], anyio.Event] = {}
        self._sites: dict[tuple[str, tuple[int, ...]], str] = {}

    @classmethod
    async def open(
        cls,
        journal: Journal,
        run_id: str,
        workflow: str,
        fingerprint: str,
        *,
        claim: bool = True,
    ) -> RunJournal:
        """Open (and with ``claim``, take) run ``run_id`` in ``journal``."""
        opener = functools.partial(
            open_store, journal, run_id, workflow, fingerprint, claim=claim
        )
        store = await anyio.to_thread.run_sync(opener)
        return cls(journal, store, run_id)

    # -- lookups ---------------------------------------------------------------
    def site(self, template: str, loc: tuple[int, ...]) -> tuple[str, int]:
        """The site and element of the call at ``template`` filled with ``loc``."""
        prefix = loc[:-1]
        key = (template, prefix)
        site = self._sites.get(key)
        if site is None:
            if len(self._sites) > 4 * MAX_CHUNKS:
                self._sites.clear()
            site = template.format(*prefix, "{}") if loc else template.format()
            self._sites[key] = site
        return site, loc[-1] if loc else -1

    def chunk(self, site: str, element: int) -> dict[int, JournalRecord] | None:
        """The records of the chunk of ``element`` at ``site``, if in memory.

        Replaying calls from a chunk in memory needs no await; pop the
        record of ``element`` from it. None: get the chunk with :meth:`load`.
        """
        return self._chunks.get((site, element // CHUNK if element >= 0 else -1))

    async def load(self, site: str, element: int) -> dict[int, JournalRecord]:
        """Read the chunk of ``element`` at ``site`` (see :meth:`chunk`)."""
        return await self._load((site, element // CHUNK if element >= 0 else -1))

    async def read_ahead(self, site: str, element: int) -> None:
        """Read the two chunks after ``element``'s when ``element`` is its first.

        The call of a chunk's first element reads the chunks ahead, so that
        the map's other workers find them in memory instead of all waiting
        at the chunk's edge (a read on a worker thread can take a while to
        get the GIL back from a busy event loop: two chunks of slack).
        """
        if element < 0 or element % CHUNK:
            return
        n = element // CHUNK
        for ahead in (n + 1, n + 2):
            key = (site, ahead)
            if key not in self._chunks and key not in self._loading:
                await self._load(key)

    async def _load(self, key: tuple[str, int]) -> dict[int, JournalRecord]:
        while (loading := self._loading.get(key)) is not None:
            # Another call of this chunk is reading it: one query for both.
            await loading.wait()
            records = self._chunks.get(key)
            if records is not None:
                return records
        done = self._loading[key] = anyio.Event()
        try:
            site, n = key
            first, last = (n * CHUNK, n * CHUNK + CHUNK - 1) if n >= 0 else (-1, -1)
            try:
                if self._inline:
                    found = self._store.fetch(site, first, last)
                else:
                    found = await anyio.to_thread.run_sync(
                        self._store.fetch, site, first, last
                    )
            except JournalError:
                raise
            except Exception as error:
                raise JournalError(
                    f"cannot read run {self.run_id!r} from its journal: {error}",
                    self.run_id,
                ) from error
            records = {r.element: r for r in found}
            chunks = self._chunks
            chunks[key] = records
            if len(chunks) > MAX_CHUNKS:
                chunks.popitem(last=False)
            return records
        finally:
            del self._loading[key]
            done.set()

    # -- records ---------------------------------------------------------------
    def record(self, record: JournalRecord) -> int | None:
        """Queue ``record``; the number to give :meth:`committed`, if it must wait.

        None when the call need not wait: ``"batch"`` durability with a
        writer that keeps up.
        """
        writer = self._writer
        if record.ok and (self.sync or writer.backlog >= BACKLOG):
            return writer.put(record, self._wake)
        writer.put(record)
        return None

    async def committed(self, number: int) -> None:
        """Wait until record ``number`` is committed; raise if that failed."""
        while self._durable < number:
            await self._commit.wait()
        self.check()

    def _wake_from_writer(self) -> None:
        """On the writer thread: a group with waiting calls is committed."""
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
            self._soon(self._committed_now)

    def _committed_now(self) -> None:
        """On the loop: let the calls whose records are committed go on."""
        self._durable = self._writer.committed
        done, self._commit = self._commit, anyio.Event()
        done.set()

    def check(self) -> None:
        """Raise :class:`JournalError` if writing the journal failed."""
        error = self._writer.error
        if error is not None:
            raise JournalError(
                f"cannot write run {self.run_id!r} to its journal: {error}",
                self.run_id,
            ) from error

    # -- the end ---------------------------------------------------------------
    async def close(self, status: str) -> None:
        """Commit every queued record, mark the run ``status``, let it go.

        Shielded: a cancelled run still commits what it finished.
        """
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close, status)
        self.check()

    def _close(self, status: str) -> None:
        writer = self._writer
        flushed = writer.flush(CLOSE_TIMEOUT) and writer.close(CLOSE_TIMEOUT)
        try:
            self._store.finish(status)
        except Exception as error:
            if writer.error is None:
                writer.error = error
        if not flushed and writer.error is None:
            writer.error = TimeoutError(
                f"the journal did not commit within {CLOSE_TIMEOUT:g} s"
            )

    def __repr__(self) -> str:
        return f"<RunJournal {self.run_id!r}>"
