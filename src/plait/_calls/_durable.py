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
import functools

import anyio
import anyio.to_thread

from .._concurrency._threads import current_inbox
from .._journal._protocol import Journal, JournalRecord, JournalRun
from .._journal._writer import MAX_GROUP, GroupWriter
from .._model._errors import JournalError

__all__ = ["BACKLOG", "CHUNK", "MAX_CHUNKS", "RunJournal"]

#: Elements of one map step read from the journal in one query.
CHUNK = 256
#: Chunks kept at once (across the run's map steps), the oldest dropped first.
MAX_CHUNKS = 64
#: With ``"batch"`` durability, a call waits for its commit while this many
#: records are not committed yet: a crash loses at most the calls in flight
#: and one group, and memory stays bounded when the disk is slow.
BACKLOG = MAX_GROUP
#: Seconds a run's end waits for its last commit and its store to answer.
CLOSE_TIMEOUT = 30.0


class RunJournal:
    """One run's journal: what its calls look up and record."""

    def __init__(self, journal: Journal, store: JournalRun, run_id: str) -> None:
        self.run_id = run_id
        self.codec = journal.codec
        self.sync = journal.durability == "sync"
        #: No record existed when the run was opened: nothing to look up.
        self.fresh = bool(store.fresh)
        self._store = store
        self._writer = GroupWriter(store.write, sync=self.sync, name=run_id)
        self._post = current_inbox().post
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
            journal.open_run, run_id, workflow, fingerprint, claim=claim
        )
        try:
            store = await anyio.to_thread.run_sync(opener)
        except JournalError:
            raise
        except Exception as error:
            raise JournalError(
                f"cannot open run {run_id!r} in {journal!r}: {error}", run_id
            ) from error
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

    async def lookup(self, site: str, element: int) -> JournalRecord | None:
        """The journaled success at ``site`` and ``element``, if there is one."""
        key = (site, element // CHUNK if element >= 0 else -1)
        records = self._chunks.get(key)
        if records is None:
            records = await self._load(key)
        return records.pop(element, None)

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
    def record(self, record: JournalRecord) -> anyio.Event | None:
        """Queue ``record``; the event to wait on before its output goes on.

        None when the call need not wait: ``"batch"`` durability with a
        writer that keeps up.
        """
        writer = self._writer
        if record.ok and (self.sync or writer.backlog >= BACKLOG):
            committed = anyio.Event()
            writer.put(record, functools.partial(self._post, committed))
            return committed
        writer.put(record)
        return None

    async def committed(self, event: anyio.Event) -> None:
        """Wait for ``event`` from :meth:`record`; raise if the commit failed."""
        await event.wait()
        self.check()

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
