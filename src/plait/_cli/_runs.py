"""``plait runs`` and ``--journal``: the journal a command line names."""

from __future__ import annotations

import argparse
import datetime
import sys

from .._journal._postgres import PostgresJournal
from .._journal._protocol import Journal
from .._journal._sqlite import SqliteJournal
from ._exit import ExitCode

__all__ = ["journal_at", "runs_command"]

_SERVER = ("postgresql://", "postgres://")


def journal_at(where: str) -> Journal:
    """The journal at ``where``: a ``postgresql://`` DSN, else a SQLite file."""
    if where.startswith(_SERVER):
        return PostgresJournal(where)
    return SqliteJournal(where)


def runs_command(args: argparse.Namespace) -> int:
    """``plait runs PATH_OR_DSN``: one line per run, the latest first."""
    runs = journal_at(args.journal).runs()
    header = ("RUN ID", "WORKFLOW", "STATUS", "CALLS DONE", "FAILURES", "UPDATED")
    rows = [
        (
            r.run_id,
            r.workflow or "-",
            r.status,
            str(r.calls_done),
            str(r.failures),
            datetime.datetime.fromtimestamp(r.updated).strftime("%Y-%m-%d %H:%M:%S"),
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")
    return ExitCode.OK
