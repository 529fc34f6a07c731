"""Journaled remote maps: workers journal their calls in the coordinator's run.

A real PostgreSQL server (``postgres_dsn``) and a real Dask ``LocalCluster``
of 2 worker processes on loopback (started once for the module, as in
tests/test_dask.py). The tools of ``tests/_dask_tools.py`` append their
element to a side-effect file, so that a test sees which calls ran twice.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import _dask_tools as T
import plait
from _servers import dask_cluster, need_module
from plait import Call, Engine, Fn, MapReduce, Sequential, Var

need_module("distributed")
need_module("psycopg")

from plait.dask import DaskExecutor  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with dask_cluster() as client:
        yield client


@pytest.fixture
def executor(client: Any) -> Iterator[DaskExecutor]:
    with DaskExecutor(client, chunk_size=4) as ex:
        yield ex


def effects_of(log: Path) -> Counter[int]:
    if not log.exists():
        return Counter()
    return Counter(int(line) for line in log.read_text().split())


def journaled_map(log: Path, flag: Path, *, remote: bool = True) -> Sequential:
    """A remote map at ``steps[1]``, its calls at ``steps[1].map[i]``."""
    return Sequential(
        Call(T.inc, 1),
        MapReduce(
            Var("xs"),
            Call(T.effect, Var("item"), str(log), str(flag)),
            on_error="collect",
            remote=remote,
        ),
    )


# -- resume ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "then", "durability"),
    [
        ("remote", "remote", "batch"),
        ("local", "remote", "sync"),
        ("remote", "local", "batch"),
    ],
)
def test_a_resume_answers_finished_calls_from_the_journal(
    executor: DaskExecutor,
    postgres_dsn: str,
    tmp_path: Path,
    first: str,
    then: str,
    durability: str,
) -> None:
    log, flag = tmp_path / "effects", tmp_path / "fail"
    journal = plait.PostgresJournal(postgres_dsn, durability=durability)  # type: ignore[arg-type]
    run_id = f"dj-{uuid.uuid4().hex}"
    xs = list(range(30))

    def run(where: str) -> Any:
        return plait.run(
            journaled_map(log, flag),
            {"xs": xs},
            executor=executor if where == "remote" else None,
            journal=journal,
            run_id=run_id,
        )

    flag.touch()  # the first run fails every x % 7 == 3 (collect mode)
    out = run(first)
    failed = [x for x in xs if x % 7 == 3]
    assert [i for i, v in enumerate(out) if isinstance(v, plait.Failure)] == failed
    assert out[4] == 16
    assert effects_of(log) == Counter(x for x in xs if x % 7 != 3)
    flag.unlink()
    assert run(then) == [x * x for x in xs]
    # Finished calls were answered from the journal; failed ones ran again.
    assert effects_of(log) == Counter(xs)


def test_a_worker_killed_mid_run_repeats_no_journaled_call(
    client: Any, postgres_dsn: str, tmp_path: Path
) -> None:
    log, flag = tmp_path / "effects", tmp_path / "killed"
    journal = plait.PostgresJournal(postgres_dsn, durability="sync")
    step = MapReduce(
        Var("xs"),
        Call(T.effect_kill_once, Var("item"), str(log), str(flag)),
        remote=True,
    )
    with DaskExecutor(client, chunk_size=8) as executor:
        out = plait.run(
            step, {"xs": list(range(40))}, executor=executor, journal=journal
        )
    assert out == [x * x for x in range(40)]
    assert flag.exists()  # a worker did die, in the chunk of elements 8..15
    # Dask ran that chunk again: its calls that had finished came from the
    # journal, so no element's side effect happened twice.
    assert effects_of(log) == Counter(range(40))
    client.wait_for_workers(2, timeout=30)


_COORDINATOR = """
import json, sys
sys.path.insert(0, {tests!r})
import plait, _dask_tools as T
from plait import Call, MapReduce, Var
from plait.dask import DaskExecutor

address, dsn, run_id, log, n = sys.argv[1:]
step = MapReduce(Var("xs"), Call(T.effect_slow, Var("item"), log), remote=True)
journal = plait.PostgresJournal(dsn, durability="sync", lease_ttl=1.0)
with DaskExecutor(address, chunk_size=4) as executor:
    out = plait.run(step, {{"xs": list(range(int(n)))}}, executor=executor,
                    journal=journal, run_id=run_id)
print(json.dumps(out))
"""


def _quiet(log: Path, seconds: float) -> None:
    """Wait until ``log`` has not grown for ``seconds`` (at most 30 s)."""
    end = time.monotonic() + 30
    size, since = -1, time.monotonic()
    while time.monotonic() < end:
        now_size = log.stat().st_size if log.exists() else 0
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        time.sleep(0.05)


def test_a_killed_coordinator_resumes_without_repeating_finished_calls(
    client: Any, postgres_dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "effects"
    run_id = f"coord-{uuid.uuid4().hex}"
    n = 80
    script = _COORDINATOR.format(tests=str(HERE))
    args = [client.scheduler.address, postgres_dsn, run_id, str(log), str(n)]
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    end = time.monotonic() + 60
    while time.monotonic() < end and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= 16:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    # The dead coordinator's running chunks end (they finish, or stop once
    # its heartbeat is silent), and its lease (lease_ttl=1 s) lapses.
    _quiet(log, 1.5)
    before = effects_of(log)
    assert 0 < len(before) < n
    journal = plait.PostgresJournal(postgres_dsn, durability="sync", lease_ttl=1.0)
    step = MapReduce(Var("xs"), Call(T.effect_slow, Var("item"), str(log)), remote=True)
    with DaskExecutor(client, chunk_size=4) as executor:
        out = plait.run(
            step,
            {"xs": list(range(n))},
            executor=executor,
            journal=journal,
            run_id=run_id,
        )
    assert out == [x * x for x in range(n)]
    after = effects_of(log)
    assert set(after) == set(range(n))
    # Every call the dead coordinator's workers finished was committed
    # before its chunk returned, so the resume called none of them again.
    assert after - before == Counter(x for x in range(n) if x not in before)


def test_a_worker_refuses_other_arguments_at_a_journaled_path(
    executor: DaskExecutor, postgres_dsn: str, tmp_path: Path
) -> None:
    # The same inputs, but an 'over' that gives other elements on resume:
    # the workers of the second chunk find other arguments at journaled paths.
    log, flag = tmp_path / "effects", tmp_path / "shifted"
    step = MapReduce(
        Fn(T.listing, 8, str(flag)), Call(T.effect, Var("item"), str(log)), remote=True
    )
    journal = plait.PostgresJournal(postgres_dsn)
    run_id = f"args-{uuid.uuid4().hex}"
    assert plait.run(step, executor=executor, journal=journal, run_id=run_id)[1] == 1
    flag.touch()
    with pytest.raises(plait.JournalError, match=r"other arguments") as info:
        plait.run(step, executor=executor, journal=journal, run_id=run_id)
    assert info.value.run_id == run_id
    # At the coordinator's path: one of the changed elements, 4 to 7.
    assert re.fullmatch(r"map\[[4-7]\]", info.value.path)
    assert f"at {info.value.path} has" in str(info.value)
    assert effects_of(log) == Counter(range(8))  # no call of the changed elements


# -- idempotency keys -------------------------------------------------------------


@pytest.mark.anyio
async def test_current_call_keys_are_the_local_ones(executor: DaskExecutor) -> None:
    # A remote map inside a local one: outer element indexes and the chunks'
    # offsets both go into the paths the workers' tools see.
    step = MapReduce(
        Var("groups"),
        Sequential(
            Call(T.inc, 1), MapReduce(Var("g"), T.call_key, remote=True, item="y")
        ),
        item="g",
    )
    groups = [[1, 2, 3], list(range(11))]
    remote = await Engine(executor=executor).run(
        step, {"groups": groups}, run_id="keys"
    )
    local = await Engine().run(step, {"groups": groups}, run_id="keys")
    assert remote == local
    assert remote[1][9][1] == "map[1].steps[1].map[9]"
    other = await Engine(executor=executor).run(step, {"groups": groups}, run_id="k2")
    assert other[1][9][2] != remote[1][9][2]


# -- SQLite ----------------------------------------------------------------------


def test_a_sqlite_journal_with_a_remote_map_is_refused(
    executor: DaskExecutor, tmp_path: Path
) -> None:
    log, flag = tmp_path / "effects", tmp_path / "fail"
    journal = plait.SqliteJournal(tmp_path / "runs.db")
    with pytest.raises(
        plait.ConfigError, match=r"steps\[1\].*SqliteJournal.*PostgresJournal"
    ):
        plait.run(
            journaled_map(log, flag), {"xs": [1, 2]}, executor=executor, journal=journal
        )
    assert not log.exists()  # before any tool ran
    assert list(journal.runs()) == []  # and before the run was opened
    # Without an executor the map runs locally, journaled in the file.
    out = plait.run(journaled_map(log, flag), {"xs": [1, 2]}, journal=journal)
    assert out == [1, 4]
