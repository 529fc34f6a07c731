"""A process that runs a journaled MapReduce, for the crash tests to kill.

Usage::

    python _crash_run.py JOURNAL RUN_ID DURABILITY EFFECTS N WORKERS KILL_AT PAUSE

``JOURNAL`` is a SQLite path or a ``postgresql://`` DSN. The tool appends
its element to ``EFFECTS`` (its side effect, one ``O_APPEND`` write per
call) and returns its square; at element ``KILL_AT`` (-1: never) it sends
itself SIGKILL before its side effect. The output, as JSON, goes to stdout;
a :class:`plait.JournalError` exits with status 3 and its message.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import anyio

import plait
from plait import Call, MapReduce, Var


def main() -> int:
    journal_at, run_id, durability, effects, n, workers, kill_at, pause = sys.argv[1:]
    fd = os.open(effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @plait.tool
    async def work(x: int) -> int:
        if x == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        await anyio.sleep(float(pause))
        os.write(fd, f"{x}\n".encode())
        return x * x

    journal: plait.Journal
    if journal_at.startswith("postgresql://"):
        journal = plait.PostgresJournal(
            journal_at,
            durability=durability,  # type: ignore[arg-type]
            lease_ttl=1.0,
        )
    else:
        journal = plait.SqliteJournal(journal_at, durability=durability)  # type: ignore[arg-type]
    step = MapReduce(Var("xs"), Call("work", Var("item")), max_concurrency=int(workers))
    try:
        output = plait.run(
            step,
            {"xs": range(int(n))},
            tools=[work],
            journal=journal,
            run_id=run_id,
            backend="asyncio",
        )
    except plait.JournalError as error:
        print(error, file=sys.stderr)
        return 3
    print(json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
