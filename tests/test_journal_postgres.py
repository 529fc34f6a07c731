"""Durable runs on a real PostgreSQL server (the ``postgres_dsn`` fixture).

Each test uses its own run ids, so tests share the server's tables. The
crash tests for Postgres are in ``test_journal_crash.py``.
"""

from __future__ import annotations

import socket
import sys
import time
import uuid
from collections import Counter

import anyio
import pytest

import plait
from _journal_checks import check_a_running_id_is_refused
from plait import Call, MapReduce, Var

pytestmark = pytest.mark.anyio


def new_id() -> str:
    return f"pg-{uuid.uuid4().hex}"


def counting() -> tuple[Counter[int], plait.Tool]:
    calls: Counter[int] = Counter()

    @plait.tool
    async def square(x: int) -> int:
        calls[x] += 1
        await anyio.lowlevel.checkpoint()
        return x * x

    return calls, square


@pytest.mark.parametrize("durability", ["batch", "sync"])
async def test_resume_replays_from_postgres(postgres_dsn: str, durability: str) -> None:
    calls, square = counting()
    journal = plait.PostgresJournal(postgres_dsn, durability=durability)  # type: ignore[arg-type]
    engine = plait.Engine(tools=[square], journal=journal)
    step = plait.Workflow(
        MapReduce(Var("xs"), Call("square", Var("item"))), name="pg", inputs=("xs",)
    )
    run_id = new_id()
    first = await engine.execute(step, {"xs": list(range(300))}, run_id=run_id)
    again = await engine.execute(step, {"xs": list(range(300))}, run_id=run_id)
    assert again.output == first.output == [x * x for x in range(300)]
    assert calls.total() == 300
    listed = {r.run_id: r for r in journal.runs()}
    assert (listed[run_id].workflow, listed[run_id].status) == ("pg", "finished")
    assert listed[run_id].calls_done == 300


async def test_postgres_refuses_another_workflow_and_a_running_id(
    postgres_dsn: str,
) -> None:
    _calls, square = counting()
    journal = plait.PostgresJournal(postgres_dsn, lease_ttl=5.0)
    engine = plait.Engine(tools=[square], journal=journal)
    run_id = new_id()
    await engine.execute(Call("square", 2), run_id=run_id)
    with pytest.raises(plait.JournalError, match="another workflow"):
        await engine.execute(Call("square", 3), run_id=run_id)
    await check_a_running_id_is_refused(
        lambda: plait.PostgresJournal(postgres_dsn, lease_ttl=5.0), new_id()
    )


async def test_a_lease_is_renewed_while_the_run_goes_on(postgres_dsn: str) -> None:
    journal = plait.PostgresJournal(postgres_dsn, lease_ttl=0.3)
    run_id = new_id()

    @plait.tool
    async def slow() -> int:
        await anyio.sleep(1.0)  # more than three lease periods
        with pytest.raises(plait.JournalError, match="running in another"):
            await plait.Engine(tools=[slow], journal=journal).run(
                Call("slow"), run_id=run_id
            )
        return 1

    assert (
        await plait.Engine(tools=[slow], journal=journal).run(
            Call("slow"), run_id=run_id
        )
        == 1
    )


def test_an_unreachable_server_is_an_error_not_a_hang() -> None:
    # A server that accepts connections and never answers.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        journal = plait.PostgresJournal(f"postgresql://u@127.0.0.1:{port}/db")
        started = time.monotonic()
        with pytest.raises(plait.JournalError, match="cannot connect"):
            plait.run(Call(lambda: 1), journal=journal, run_id="x")
        assert time.monotonic() - started < 30


def test_importing_plait_does_not_import_psycopg() -> None:
    import subprocess

    code = "import plait, sys; print('psycopg' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_worker_processes_write_into_a_claimed_run(postgres_dsn: str) -> None:
    # What a worker given only the picklable journal and the run id does:
    # open the run without claiming it, and write its calls there.
    import pickle

    journal = plait.PostgresJournal(postgres_dsn)
    run_id = new_id()
    claimed = journal.open_run(run_id, "w", "fp:-")
    try:
        worker = pickle.loads(pickle.dumps(journal))
        joined = worker.open_run(run_id, "w", "fp:-", claim=False)
        record = plait.JournalRecord("map[{}]", 3, 1, True, "t", b"d", "9")
        joined.write([record])
        joined.finish("finished")
        assert [r.output for r in claimed.fetch("map[{}]", 0, 10)] == ["9"]
    finally:
        claimed.finish("finished")
