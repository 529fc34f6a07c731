"""The embedded journal: one SQLite file in WAL mode, stdlib ``sqlite3`` only.

Groups of records go in and chunks of records come out as one JSON text
each, through one SQL statement (``json_each`` / ``json_group_array``):
``sqlite3`` lets go of the GIL around every step of a statement, and a
thread that must get it back once per row from a busy event loop would
wait a switch interval (5 ms) per row.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._model._errors import ConfigError, JournalError
from ._codec import JsonCodec, rows_json
from ._locks import RunLock
from ._protocol import (
    DURABILITY,
    Codec,
    Durability,
    JournalRecord,
    RunInfo,
    check_fingerprint,
    read_runs,
)

__all__ = ["SqliteJournal"]

_BUSY_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plait_runs (
    run_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS plait_calls (
    run_id TEXT NOT NULL,
    site TEXT NOT NULL,
    element INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    tool TEXT NOT NULL,
    digest TEXT NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (run_id, site, element, attempt)
) WITHOUT ROWID;
"""

_RUNS = """
SELECT r.run_id, r.workflow, r.status, r.updated,
    (SELECT COUNT(*) FROM (SELECT 1 FROM plait_calls c
        WHERE c.run_id = r.run_id AND c.ok = 1 GROUP BY c.site, c.element)),
    (SELECT COUNT(*) FROM (SELECT 1 FROM plait_calls c
        WHERE c.run_id = r.run_id GROUP BY c.site, c.element HAVING MAX(c.ok) = 0))
FROM plait_runs r ORDER BY r.updated DESC
"""


_WRITE = """
INSERT OR REPLACE INTO plait_calls
SELECT ?, json_extract(value, '$[0]'), json_extract(value, '$[1]'),
    json_extract(value, '$[2]'), json_extract(value, '$[3]'),
    json_extract(value, '$[4]'), json_extract(value, '$[5]'),
    json_extract(value, '$[6]')
FROM json_each(?)
"""

_FETCH = """
SELECT json_group_array(json_array(element, attempt, tool, digest, output))
FROM plait_calls
WHERE run_id = ? AND site = ? AND element BETWEEN ? AND ? AND ok = 1
"""


class SqliteJournal:
    """The embedded journal of durable runs: one SQLite file (WAL mode).

    Give it to ``plait.Engine(journal=...)`` (or ``plait.run(journal=...)``),
    then run with a ``run_id``: running the same workflow with the same
    ``run_id`` again answers every call that succeeded from the journal.
    A run's claim on its id is an OS file lock (in ``PATH.locks/``) that a
    crashed process lets go at once.

    Args:
        path: the database file, made if missing (with its ``-wal`` and
            ``-shm`` files and the ``.locks`` folder beside it).
        durability: ``"batch"`` commits in groups off the event loop (after
            at most 100 ms or 1,000 calls); a crash re-runs at most the calls
            in flight and those of the last uncommitted group. ``"sync"``
            commits each call before its output goes on (calls that finish
            together share a commit), and syncs the file to disk.
        codec: turns outputs into text and back; :class:`plait.JsonCodec`
            by default.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "batch",
        codec: Codec | None = None,
    ) -> None:
        DURABILITY.check(durability, "SqliteJournal.durability")
        path = os.fspath(path)
        if not isinstance(path, str) or not path or path == ":memory:":
            raise ConfigError(
                f"SqliteJournal.path must be the path of a file, got {path!r}"
            )
        self.path = path
        self.durability: Durability = durability
        self.codec: Codec = codec if codec is not None else JsonCodec()

    def __repr__(self) -> str:
        return f"SqliteJournal({self.path!r}, durability={self.durability!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.path, self.durability, self.codec))

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path,
                timeout=_BUSY_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            # Two connections making a new file WAL at once: SQLite may
            # refuse one at once ("database is locked", without waiting out
            # the busy timeout) to avoid a deadlock. It is worth trying again.
            _when_unlocked(lambda: db.execute("PRAGMA journal_mode=WAL"))
            sync = "FULL" if self.durability == "sync" else "NORMAL"
            db.execute(f"PRAGMA synchronous={sync}")
            _when_unlocked(lambda: db.executescript(_SCHEMA))
        except sqlite3.Error as error:
            raise JournalError(
                f"cannot open the journal {self.path!r}: {error}"
            ) from error
        return db

    def open_run(
        self, run_id: str, workflow: str, fingerprint: str, *, claim: bool = True
    ) -> _SqliteRun:
        """Open run ``run_id`` (see :meth:`plait.Journal.open_run`)."""
        lock = None
        if claim:
            lock = RunLock.try_take(self.path, run_id)
            if lock is None:
                raise JournalError(
                    f"run {run_id!r} is running in another process or engine "
                    f"(journal {self.path!r}); wait for it to end, or use "
                    "another run_id",
                    run_id,
                )
        try:
            db = self._connect()
            try:
                fresh = _claim(db, run_id, workflow, fingerprint, check=claim)
            except BaseException:
                db.close()
                raise
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return _SqliteRun(self, db, run_id, lock, fresh)

    def runs(self) -> list[RunInfo]:
        """Every run in the file, the most recently updated first."""
        return read_runs(self._connect(), _RUNS)


_make = tuple.__new__


def _rebuild(path: str, durability: Durability, codec: Codec) -> SqliteJournal:
    return SqliteJournal(path, durability=durability, codec=codec)


def _claim(
    db: sqlite3.Connection, run_id: str, workflow: str, fingerprint: str, check: bool
) -> bool:
    """Make or reopen the run's row; True when it has no calls yet."""
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute(
            "SELECT workflow, fingerprint FROM plait_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO plait_runs VALUES (?, ?, ?, 'running', ?)",
                (run_id, workflow, fingerprint, time.time()),
            )
            fresh = True
        else:
            if check:
                check_fingerprint(run_id, row[0], row[1], fingerprint)
            if check:
                db.execute(
                    "UPDATE plait_runs SET status = 'running', updated = ? "
                    "WHERE run_id = ?",
                    (time.time(), run_id),
                )
            fresh = (
                db.execute(
                    "SELECT 1 FROM plait_calls WHERE run_id = ? LIMIT 1", (run_id,)
                ).fetchone()
                is None
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return fresh


def _when_unlocked(statement: Callable[[], object]) -> None:
    """Run ``statement``; on "database is locked", try again a few times."""
    for delay in (0.05, 0.2, 1.0, None):
        try:
            statement()
            return
        except sqlite3.OperationalError as error:
            if delay is None or "locked" not in str(error):
                raise
            time.sleep(delay)


class _SqliteRun:
    """One run's connections: a writer's (the writer thread) and a reader's."""

    def __init__(
        self,
        journal: SqliteJournal,
        db: sqlite3.Connection,
        run_id: str,
        lock: RunLock | None,
        fresh: bool,
    ) -> None:
        self.fresh = fresh
        # A chunk is one statement on a local file, under a millisecond: a
        # worker thread would wait longer for the GIL from the busy loop.
        self.inline_reads = True
        self._journal = journal
        self._db = db
        self._reader = journal._connect()
        self._read_lock = threading.Lock()
        self._run_id = run_id
        self._lock = lock

    def fetch(self, site: str, first: int, last: int) -> list[JournalRecord]:
        with self._read_lock:
            (rows,) = self._reader.execute(
                _FETCH, (self._run_id, site, first, last)
            ).fetchone()
        # tuple.__new__ makes the same named tuple without the Python-level
        # __new__ of its class: a resume reads a record per finished call.
        fromhex = bytes.fromhex
        return [
            _make(
                JournalRecord,
                (site, element, attempt, True, tool, fromhex(digest), output),
            )
            for element, attempt, tool, digest, output in json.loads(rows)
        ]

    def write(self, records: Sequence[JournalRecord]) -> None:
        rows = rows_json(records)
        args = (self._run_id, rows)
        db = self._db
        # One statement, its own transaction: the thread lets go of the GIL
        # once per group, not once per BEGIN and COMMIT too. "database is
        # locked" past the busy timeout: another writer held the file long.
        _when_unlocked(lambda: db.execute(_WRITE, args))

    def finish(self, status: str) -> None:
        try:
            if self._lock is not None:
                self._db.execute(
                    "UPDATE plait_runs SET status = ?, updated = ? WHERE run_id = ?",
                    (status, time.time(), self._run_id),
                )
        finally:
            self._db.close()
            self._reader.close()
            if self._lock is not None:
                self._lock.release()
