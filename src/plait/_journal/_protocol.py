"""What a journal store is: the records it keeps and the calls the engine makes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Protocol, get_args, runtime_checkable

import attrs

from .._model._validate import one_of

__all__ = [
    "DURABILITY",
    "Codec",
    "Durability",
    "Journal",
    "JournalRecord",
    "JournalRun",
    "RunInfo",
    "check_fingerprint",
    "read_runs",
]

Durability = Literal["batch", "sync"]
DURABILITY = one_of(*get_args(Durability))
"""The rule a journal's ``durability`` setting is checked by."""


class JournalRecord(NamedTuple):
    """One finished call of a run (a named tuple: one is made per call).

    Attributes:
        site: the call's path with its last element index left as ``{}``
            (``steps[1].map[{}]``), or its whole path when it runs under no
            ``MapReduce``: the calls of one map step share a site.
        element: the last element index of the call's path, -1 if none.
        attempt: the attempt (from 1) that finished the call.
        ok: True for a success, False for a call that failed for good.
        tool: the tool's name.
        digest: a hash of the tool's name and the call's arguments.
        output: the encoded output of a success; the error's type and
            message for a failure.
    """

    site: str
    element: int
    attempt: int
    ok: bool
    tool: str
    digest: bytes
    output: str


@attrs.frozen
class RunInfo:
    """One run kept in a journal, as ``plait runs`` lists it.

    Attributes:
        run_id: the run's id.
        workflow: the workflow's name (``""`` for a bare step).
        status: ``"running"``, ``"finished"``, ``"failed"`` or ``"cancelled"``
            (a run whose process died stays ``"running"``).
        calls_done: calls journaled as succeeded.
        failures: calls whose last record is a failure.
        updated: when the run last started or ended (seconds since the epoch).
    """

    run_id: str
    workflow: str
    status: str
    calls_done: int
    failures: int
    updated: float


@runtime_checkable
class JournalRun(Protocol):
    """One run's records in a store, opened by :meth:`Journal.open_run`.

    The engine calls ``fetch`` from worker threads and ``write`` from the
    run's one writer thread, possibly at the same time; ``finish`` once,
    after the last ``write``.
    """

    #: True when the store held no record of this run when it was opened.
    fresh: bool
    #: True when ``fetch`` is quick enough to call on the event loop's
    #: thread (a local file); else it runs on a worker thread.
    inline_reads: bool

    def fetch(self, site: str, first: int, last: int) -> Sequence[JournalRecord]:
        """The successes at ``site`` whose element is in ``first..last``."""
        ...

    def write(self, records: Sequence[JournalRecord]) -> None:
        """Store ``records`` durably (one commit); a record replaces the one
        with the same site, element and attempt."""
        ...

    def finish(self, status: str) -> None:
        """Mark the run ``status``, let go of its claim and its connections."""
        ...


@runtime_checkable
class Journal(Protocol):
    """A store for durable runs, given to ``plait.Engine(journal=...)``.

    plait ships :class:`plait.SqliteJournal` and :class:`plait.PostgresJournal`;
    another store implements these members. A journal object holds only
    its configuration (it is picklable, so that other processes can open
    the same store); live connections belong to the :class:`JournalRun`
    objects it opens.

    Attributes:
        durability: ``"batch"`` (group commits that calls do not wait for)
            or ``"sync"`` (a call's output goes on once it is committed).
        codec: turns outputs into text and back (see :class:`plait.JsonCodec`).
    """

    durability: Durability
    codec: Codec

    def open_run(
        self, run_id: str, workflow: str, fingerprint: str, *, claim: bool = True
    ) -> JournalRun:
        """Open run ``run_id``, making it if new.

        With ``claim``, take the run for this process (a lock or a lease held
        until :meth:`JournalRun.finish`) and check that ``fingerprint``
        matches the one the run was made with (:func:`check_fingerprint`). Without it (a worker
        process writing calls of a run its coordinator claimed), do neither.

        Raises:
            JournalError: another workflow's run, a run another process
                holds, or a store that cannot be reached.
        """
        ...

    def runs(self) -> Sequence[RunInfo]:
        """Every run the store keeps, the most recently updated first."""
        ...


@runtime_checkable
class Codec(Protocol):
    """Turns a tool's outputs into text for a journal, and back."""

    def encode(self, value: Any) -> str:
        """The text of ``value``; raise (any ``Exception``) to refuse it."""
        ...

    def decode(self, text: str, annotation: Any) -> Any:
        """The value of ``text``, as ``annotation`` (None: as decoded)."""
        ...


def check_fingerprint(run_id: str, workflow: str, kept: str, given: str) -> None:
    """Raise :class:`plait.JournalError` if run ``run_id`` was made otherwise.

    A fingerprint is ``"<workflow hash>:<inputs hash>"`` (the inputs hash is
    ``-`` when the inputs cannot be encoded: then only the calls' own
    arguments are checked, as they run). ``workflow`` is the name the run
    was made with.
    """
    from .._model._errors import JournalError

    kept_steps, _, kept_inputs = kept.partition(":")
    given_steps, _, given_inputs = given.partition(":")
    if kept_steps != given_steps:
        raise JournalError(
            f"run {run_id!r} in this journal belongs to another workflow "
            f"({workflow!r}, as it was then); resume it with that workflow "
            "unchanged, or use another run_id",
            run_id,
        )
    if "-" not in (kept_inputs, given_inputs) and kept_inputs != given_inputs:
        raise JournalError(
            f"run {run_id!r} in this journal was started with other inputs; "
            "resume it with the same inputs, or use another run_id",
            run_id,
        )


def read_runs(db: Any, query: str) -> list[RunInfo]:
    """Every run that ``query`` lists on connection ``db``, which it then closes.

    ``query`` gives rows of ``(run_id, workflow, status, updated, done,
    failed)``; SQLite and PostgreSQL differ only in how they count them.
    """
    try:
        rows = db.execute(query).fetchall()
    finally:
        db.close()
    return [
        RunInfo(run_id, workflow, status, int(done), int(failed), float(updated))
        for run_id, workflow, status, updated, done, failed in rows
    ]
