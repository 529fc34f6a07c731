"""The server journal: PostgreSQL through psycopg 3 (extra ``plait[postgres]``).

psycopg is imported only when a run opens. Every connection has a 5 s
connect timeout, a 5 s statement timeout and a 5 s TCP user timeout, so a
server that accepts connections but never answers is an error, never a
hang. A run's claim is a lease on its row, renewed by a thread every third
of ``lease_ttl``; a crashed holder's lease lapses within ``lease_ttl``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import Any

from .._model._errors import ConfigError, JournalError
from .._model._validate import SECONDS, TEXT
from ._codec import JsonCodec, rows_json
from ._protocol import (
    DURABILITY,
    Codec,
    Durability,
    JournalRecord,
    RunInfo,
    check_fingerprint,
    read_runs,
)

__all__ = ["PostgresJournal"]

TIMEOUT = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plait_runs (
    run_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    updated TIMESTAMPTZ NOT NULL,
    owner TEXT,
    lease_until TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS plait_calls (
    run_id TEXT NOT NULL,
    site TEXT NOT NULL,
    element BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    ok BOOLEAN NOT NULL,
    tool TEXT NOT NULL,
    digest BYTEA NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (run_id, site, element, attempt)
);
"""

# One group is one parameter: a JSON array of rows, unpacked by the server.
# Adapting seven arrays of a thousand values each cost the writer thread
# about 9 us of CPU (and of GIL) per record; encoding one JSON text costs
# about 1.5.
_WRITE = """
INSERT INTO plait_calls
SELECT %s, e->>0, (e->>1)::bigint, (e->>2)::int, (e->>3)::bool, e->>4,
    decode(e->>5, 'hex'), e->>6
FROM json_array_elements(%s::json) AS e
ON CONFLICT (run_id, site, element, attempt) DO UPDATE SET
    ok = EXCLUDED.ok, tool = EXCLUDED.tool, digest = EXCLUDED.digest,
    output = EXCLUDED.output
"""

_RUNS = """
SELECT r.run_id, r.workflow, r.status, extract(epoch FROM r.updated),
    (SELECT count(*) FROM (SELECT 1 FROM plait_calls c
        WHERE c.run_id = r.run_id AND c.ok GROUP BY c.site, c.element) d),
    (SELECT count(*) FROM (SELECT 1 FROM plait_calls c
        WHERE c.run_id = r.run_id GROUP BY c.site, c.element
        HAVING NOT bool_or(c.ok)) f)
FROM plait_runs r ORDER BY r.updated DESC
"""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as error:
        raise ImportError(
            'plait.PostgresJournal needs psycopg: pip install "plait[postgres]"'
        ) from error
    return psycopg


class PostgresJournal:
    """The server journal of durable runs, for many processes and machines.

    Like :class:`plait.SqliteJournal`, on PostgreSQL (psycopg 3, installed
    with ``pip install "plait[postgres]"``). It holds only its settings, so
    it pickles: a worker process given one writes into the same store.

    Args:
        dsn: a libpq connection string or URL (``postgresql://...``).
        durability: ``"batch"`` or ``"sync"``, as for
            :class:`plait.SqliteJournal`.
        lease_ttl: seconds a run's claim on its id outlives its process:
            the lease is renewed every ``lease_ttl / 3`` seconds while the
            run goes on, so a crashed run can be resumed ``lease_ttl``
            seconds later at the latest.
        codec: turns outputs into text and back; :class:`plait.JsonCodec`
            by default.

    Every connection has a connect timeout, a statement timeout and a TCP
    user timeout of 5 s: an unreachable server raises
    :class:`plait.JournalError`, it never hangs a run.
    """

    def __init__(
        self,
        dsn: str,
        *,
        durability: Durability = "batch",
        lease_ttl: float = 15.0,
        codec: Codec | None = None,
    ) -> None:
        TEXT.check(dsn, "PostgresJournal.dsn")
        DURABILITY.check(durability, "PostgresJournal.durability")
        SECONDS.check(lease_ttl, "PostgresJournal.lease_ttl")
        if not dsn:
            raise ConfigError("PostgresJournal.dsn must be a non-empty str, got ''")
        self.dsn = dsn
        self.durability: Durability = durability
        self.lease_ttl = float(lease_ttl)
        self.codec: Codec = codec if codec is not None else JsonCodec()

    def __repr__(self) -> str:
        return f"PostgresJournal(<dsn>, durability={self.durability!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.dsn, self.durability, self.lease_ttl, self.codec))

    def _connect(self) -> Any:
        psycopg = _psycopg()
        ms = int(TIMEOUT * 1000)
        try:
            db = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=int(TIMEOUT),
                options=f"-c statement_timeout={ms} -c lock_timeout={ms}",
                tcp_user_timeout=ms,
                keepalives=1,
                keepalives_idle=int(TIMEOUT),
                keepalives_interval=1,
                keepalives_count=3,
            )
        except psycopg.Error as error:
            raise JournalError(
                f"cannot connect to the journal's server: {error}"
            ) from error
        try:
            with db.transaction():
                # One maker of the tables at a time: CREATE IF NOT EXISTS races.
                db.execute("SELECT pg_advisory_xact_lock(hashtext('plait journal'))")
                db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def open_run(
        self, run_id: str, workflow: str, fingerprint: str, *, claim: bool = True
    ) -> _PostgresRun:
        """Open run ``run_id`` (see :meth:`plait.Journal.open_run`)."""
        psycopg = _psycopg()
        owner = uuid.uuid4().hex if claim else None
        try:
            db = self._connect()
            try:
                fresh = self._claim(db, run_id, workflow, fingerprint, owner)
                reader = self._connect()
            except BaseException:
                db.close()
                raise
        except psycopg.Error as error:
            raise JournalError(
                f"cannot open run {run_id!r}: {error}", run_id
            ) from error
        return _PostgresRun(self, db, reader, run_id, owner, fresh)

    def _claim(
        self, db: Any, run_id: str, workflow: str, fingerprint: str, owner: str | None
    ) -> bool:
        ttl = self.lease_ttl
        with db.transaction():
            db.execute(
                "INSERT INTO plait_runs VALUES (%s, %s, %s, 'running', now(), "
                "NULL, NULL) ON CONFLICT (run_id) DO NOTHING",
                (run_id, workflow, fingerprint),
            )
            row = db.execute(
                "SELECT workflow, fingerprint, owner, lease_until > now() "
                "FROM plait_runs WHERE run_id = %s FOR UPDATE",
                (run_id,),
            ).fetchone()
            if owner is not None:
                held_by, live = row[2], row[3]
                if held_by is not None and live:
                    raise JournalError(
                        f"run {run_id!r} is running in another process (its "
                        f"lease lapses within {ttl:g} s of that process's "
                        "end); wait for it to end, or use another run_id",
                        run_id,
                    )
                check_fingerprint(run_id, row[0], row[1], fingerprint)
                db.execute(
                    "UPDATE plait_runs SET owner = %s, status = 'running', "
                    "updated = now(), lease_until = now() + %s * interval '1 second' "
                    "WHERE run_id = %s",
                    (owner, ttl, run_id),
                )
            found = db.execute(
                "SELECT 1 FROM plait_calls WHERE run_id = %s LIMIT 1", (run_id,)
            ).fetchone()
        return found is None

    def runs(self) -> list[RunInfo]:
        """Every run on the server, the most recently updated first."""
        return read_runs(self._connect(), _RUNS)


def _rebuild(
    dsn: str, durability: Durability, lease_ttl: float, codec: Codec
) -> PostgresJournal:
    return PostgresJournal(dsn, durability=durability, lease_ttl=lease_ttl, codec=codec)


class _PostgresRun:
    """One run's connections (writer, reader) and the thread renewing its lease."""

    def __init__(
        self,
        journal: PostgresJournal,
        db: Any,
        reader: Any,
        run_id: str,
        owner: str | None,
        fresh: bool,
    ) -> None:
        self.fresh = fresh
        self.inline_reads = False
        self._journal = journal
        self._db = db
        self._reader = reader
        self._read_lock = threading.Lock()
        self._run_id = run_id
        self._owner = owner
        self._lost: BaseException | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        if owner is not None:
            self._renewer = threading.Thread(
                target=self._renew, name=f"plait lease {run_id}", daemon=True
            )
            self._renewer.start()

    def _renew(self) -> None:
        ttl = self._journal.lease_ttl
        while not self._stop.wait(ttl / 3):
            try:
                cur = self._db.execute(
                    "UPDATE plait_runs SET lease_until = now() + %s * interval "
                    "'1 second' WHERE run_id = %s AND owner = %s",
                    (ttl, self._run_id, self._owner),
                )
            except Exception as error:
                self._lost = error
                return
            if cur.rowcount != 1:
                self._lost = JournalError(
                    f"run {self._run_id!r} was taken over by another process",
                    self._run_id,
                )
                return

    def fetch(self, site: str, first: int, last: int) -> list[JournalRecord]:
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT element, attempt, tool, digest, output FROM plait_calls "
                "WHERE run_id = %s AND site = %s AND element BETWEEN %s AND %s "
                "AND ok",
                (self._run_id, site, first, last),
            ).fetchall()
        return [
            JournalRecord(site, element, attempt, True, tool, bytes(digest), output)
            for element, attempt, tool, digest, output in rows
        ]

    def write(self, records: Sequence[JournalRecord]) -> None:
        if self._lost is not None:
            raise JournalError(
                f"run {self._run_id!r} lost its lease: {self._lost}", self._run_id
            )
        rows = rows_json(records)
        self._db.execute(_WRITE, (self._run_id, rows))

    def finish(self, status: str) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            if self._owner is not None:
                self._db.execute(
                    "UPDATE plait_runs SET status = %s, updated = now(), "
                    "owner = NULL, lease_until = NULL "
                    "WHERE run_id = %s AND owner = %s",
                    (status, self._run_id, self._owner),
                )
        finally:
            self._db.close()
            self._reader.close()
