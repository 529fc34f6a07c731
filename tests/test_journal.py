"""Durable runs in one process: replay, resume, refusals, keys, codecs.

Every test runs on asyncio, uvloop and Trio, against a real SQLite file.
The crash tests (a killed process) are in ``test_journal_crash.py``, the
same behaviour on a real PostgreSQL server in ``test_journal_postgres.py``.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

import plait
from _journal_checks import check_a_running_id_is_refused
from plait import Call, MapReduce, Sequential, Var

pytestmark = pytest.mark.anyio


@attrs.frozen
class Answer:
    text: str
    score: float


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Tools:
    """Tools that count their calls by argument."""

    def __init__(self) -> None:
        self.calls: Counter[Any] = Counter()
        self.fail: set[int] = set()

    def make(self) -> list[plait.Tool]:
        calls, fail = self.calls, self.fail

        @plait.tool
        async def square(x: int) -> int:
            calls["square", x] += 1
            await anyio.lowlevel.checkpoint()
            if x in fail:
                raise ValueError(f"no {x}")
            return x * x

        @plait.tool
        def answer(x: int) -> Answer:
            calls["answer", x] += 1
            return Answer(f"a{x}", x / 2)

        @plait.tool
        async def point(x: int) -> Point:
            calls["point", x] += 1
            return Point(x, -x)

        @plait.tool(journal=False)
        async def clock(x: int) -> int:
            calls["clock", x] += 1
            return x

        return [square, answer, point, clock]


def journal(tmp_path: Path, durability: str = "batch") -> plait.SqliteJournal:
    return plait.SqliteJournal(tmp_path / "runs.db", durability=durability)  # type: ignore[arg-type]


WORKFLOW = plait.Workflow(
    Sequential(
        MapReduce(Var("xs"), Call("square", Var("item")), name="squares"),
        MapReduce(Var("squares"), Call("answer", Var("item")), name="answers"),
        Call("point", 3, name="p"),
        Call("clock", 1),
        Call("point", 4),
    ),
    name="demo",
    inputs=("xs",),
)


@pytest.mark.parametrize("durability", ["batch", "sync"])
async def test_resume_replays_every_success_without_calling_tools(
    tmp_path: Path, durability: str
) -> None:
    tools = Tools()
    engine = plait.Engine(tools=tools.make(), journal=journal(tmp_path, durability))
    first = await engine.execute(WORKFLOW, {"xs": list(range(50))}, run_id="r1")
    assert first.run_id == "r1"
    made = sum(tools.calls.values())
    assert made == 50 + 50 + 1 + 1 + 1
    again = await engine.execute(WORKFLOW, {"xs": list(range(50))}, run_id="r1")
    assert again.output == first.output == Point(4, -4)
    assert again.run_id == "r1"
    # Only the journal=False tool ran again.
    assert sum(tools.calls.values()) - made == 1
    assert tools.calls["clock", 1] == 2
    assert (
        again.stats.tools.get("square") is None
        or again.stats.tools["square"].calls == 0
    )


async def test_replayed_outputs_come_back_as_the_return_annotation(
    tmp_path: Path,
) -> None:
    tools = Tools()
    engine = plait.Engine(tools=tools.make(), journal=journal(tmp_path))
    step = Sequential(
        MapReduce(Var("xs"), Call("answer", Var("item")), name="a"),
        Call("point", 2, name="p"),
        plait.Parallel(Call("answer", 7), Call("point", 9)),
    )
    first = await engine.execute(step, {"xs": [1, 2]}, run_id="typed")
    second = await engine.execute(step, {"xs": [1, 2]}, run_id="typed")
    assert second.output == first.output == [Answer("a7", 3.5), Point(9, -9)]
    assert type(second.output[0]) is Answer
    assert tools.calls["answer", 7] == 1


async def test_a_new_run_id_calls_everything(tmp_path: Path) -> None:
    tools = Tools()
    engine = plait.Engine(tools=tools.make(), journal=journal(tmp_path))
    a = await engine.execute(WORKFLOW, {"xs": [1, 2, 3]})
    b = await engine.execute(WORKFLOW, {"xs": [1, 2, 3]})
    assert a.run_id != b.run_id
    assert len(a.run_id) >= 16
    assert tools.calls["square", 2] == 2
    assert tools.calls["answer", 4] == 2


async def test_failed_calls_run_again_and_only_they(tmp_path: Path) -> None:
    tools = Tools()
    tools.fail.update({3, 7})
    engine = plait.Engine(tools=tools.make(), journal=journal(tmp_path))
    step = MapReduce(Var("xs"), Call("square", Var("item")), on_error="collect")
    first = await engine.execute(step, {"xs": list(range(10))}, run_id="f")
    assert sorted(f.path for f in first.failures) == ["map[3]", "map[7]"]
    tools.fail.clear()
    second = await engine.execute(step, {"xs": list(range(10))}, run_id="f")
    assert second.output == [x * x for x in range(10)]
    assert tools.calls["square", 3] == 2
    assert tools.calls["square", 7] == 2
    assert tools.calls["square", 5] == 1
    [info] = engine.journal.runs()  # type: ignore[union-attr]
    assert (info.run_id, info.status, info.calls_done, info.failures) == (
        "f",
        "finished",
        10,
        0,
    )


async def test_failures_are_listed_until_they_succeed(tmp_path: Path) -> None:
    tools = Tools()
    tools.fail.add(1)
    engine = plait.Engine(tools=tools.make(), journal=journal(tmp_path))
    step = MapReduce(Var("xs"), Call("square", Var("item")))
    with pytest.raises(plait.StepFailed):
        await engine.execute(step, {"xs": [0, 1]}, run_id="bad")
    [info] = engine.journal.runs()  # type: ignore[union-attr]
    assert (info.status, info.failures) == ("failed", 1)


async def test_another_workflow_under_a_run_id_is_refused_before_any_call(
    tmp_path: Path,
) -> None:
    tools = Tools()
    engine = plait.Engine(tools=tools.make(), journal=journal(tmp_path))
    await engine.execute(WORKFLOW, {"xs": [1]}, run_id="w")
    made = sum(tools.calls.values())
    other = plait.Workflow(Call("square", 2), name="other")
    with pytest.raises(plait.JournalError, match="another workflow") as caught:
        await engine.execute(other, run_id="w")
    assert caught.value.run_id == "w"
    with pytest.raises(plait.JournalError, match="other inputs"):
        await engine.execute(WORKFLOW, {"xs": [2]}, run_id="w")
    assert sum(tools.calls.values()) == made


async def test_a_longer_timeout_or_more_retries_is_the_same_workflow(
    tmp_path: Path,
) -> None:
    tools = Tools()
    engine = plait.Engine(tools=tools.make(), journal=journal(tmp_path))
    await engine.execute(Call("square", 5, timeout=1.0), run_id="t")
    again = await engine.execute(
        Call("square", 5, timeout=9.0, retry=plait.Retry(attempts=5)), run_id="t"
    )
    assert again.output == 25
    assert tools.calls["square", 5] == 1


async def test_arguments_that_differ_at_a_path_are_refused(tmp_path: Path) -> None:
    tools = Tools()
    seeds = iter([[1, 2, 3], [1, 5, 3]])

    def source(_: Any) -> list[int]:
        return next(seeds)  # not deterministic: another list on resume

    engine = plait.Engine(
        tools=tools.make(), functions=[source], journal=journal(tmp_path)
    )
    step = MapReduce(plait.Fn("source", 0), Call("square", Var("item")))
    await engine.execute(step, run_id="nd")
    with pytest.raises(plait.JournalError, match="other arguments") as caught:
        await engine.execute(step, run_id="nd")
    assert caught.value.path == "map[1]"
    assert tools.calls["square", 5] == 0


@pytest.mark.parametrize("kind", ["map", "parallel"])
async def test_a_refusal_ends_the_run_in_collect_mode_too(
    tmp_path: Path, kind: str
) -> None:
    tools = Tools()
    seeds = iter([[1, 2, 3], [1, 5, 3]])

    def source(_: Any) -> list[int]:
        return next(seeds)

    engine = plait.Engine(
        tools=tools.make(), functions=[source], journal=journal(tmp_path)
    )
    body = Call("square", Var("item"))
    step: plait.Step = MapReduce(plait.Fn("source", 0), body, on_error="collect")
    if kind == "parallel":
        step = MapReduce(
            plait.Fn("source", 0), plait.Parallel(body, on_error="collect")
        )
    await engine.execute(step, run_id="nd")
    with pytest.raises(plait.JournalError, match="other arguments"):
        await engine.execute(step, run_id="nd")


async def test_a_run_id_running_now_is_refused(tmp_path: Path) -> None:
    await check_a_running_id_is_refused(lambda: journal(tmp_path), "busy")


async def test_an_output_that_cannot_be_encoded_is_not_journaled(
    tmp_path: Path,
) -> None:
    made: list[int] = []

    @plait.tool
    async def opaque(x: int) -> object:
        made.append(x)
        return object() if x == 2 else x

    events: list[plait.Event] = []
    engine = plait.Engine(tools=[opaque], journal=journal(tmp_path))
    engine.subscribe(events.append, ["call.not_journaled"])
    step = MapReduce(Var("xs"), Call("opaque", Var("item")))
    first = await engine.execute(step, {"xs": [1, 2, 3]}, run_id="o")
    assert first.output[0] == 1
    assert [(e.path, e.tool) for e in events] == [("map[1]", "opaque")]
    assert isinstance(events[0].error, TypeError)
    assert "object" in str(events[0].error)
    await engine.execute(step, {"xs": [1, 2, 3]}, run_id="o")
    assert made == [1, 2, 3, 2]


async def test_an_argument_that_cannot_be_encoded_runs_every_time(
    tmp_path: Path,
) -> None:
    made: list[object] = []

    @plait.tool
    async def take(x: object) -> int:
        made.append(x)
        return 1

    thing = object()
    engine = plait.Engine(tools=[take], journal=journal(tmp_path))
    events: list[plait.Event] = []
    engine.subscribe(events.append, ["call.not_journaled"])
    for _ in range(2):
        await engine.execute(Call("take", Var("t")), {"t": thing}, run_id="a")
    assert made == [thing, thing]
    assert len(events) == 2


async def test_sync_durability_commits_before_the_output_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    seen: list[int] = []

    @plait.tool
    async def first() -> int:
        return 1

    @plait.tool
    def second(x: int) -> int:
        with sqlite3.connect(path) as db:
            (n,) = db.execute("SELECT COUNT(*) FROM plait_calls").fetchone()
        seen.append(n)
        return x

    engine = plait.Engine(
        tools=[first, second], journal=plait.SqliteJournal(path, durability="sync")
    )
    step = Sequential(Call("first", name="a"), Call("second", Var("a")))
    assert await engine.run(step) == 1
    assert seen == [1]


async def test_every_finished_call_is_committed_when_run_raises(
    tmp_path: Path,
) -> None:
    @plait.tool
    async def ok(x: int) -> int:
        return x

    @plait.tool
    async def boom() -> int:
        await anyio.sleep(0.01)
        raise RuntimeError("boom")

    path = tmp_path / "runs.db"
    engine = plait.Engine(tools=[ok, boom], journal=plait.SqliteJournal(path))
    step = plait.Parallel(MapReduce(Var("xs"), Call("ok", Var("item"))), Call("boom"))
    with pytest.raises(plait.StepFailed):
        await engine.execute(step, {"xs": list(range(100))}, run_id="x")
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT ok, COUNT(*) FROM plait_calls GROUP BY ok ORDER BY ok"
        ).fetchall()
    assert rows == [(0, 1), (1, 100)]


async def test_cancelled_run_commits_what_finished_and_resumes(
    tmp_path: Path,
) -> None:
    tools = Tools()
    engine = plait.Engine(
        tools=tools.make(), journal=journal(tmp_path), max_concurrency=4
    )
    step = MapReduce(Var("xs"), Call("square", Var("item")), max_concurrency=4)
    with anyio.CancelScope() as scope:

        def stop(event: plait.Event) -> None:
            if tools.calls.total() >= 300:
                scope.cancel()

        with engine.subscribe(stop, ["call.finished"]):
            await engine.execute(step, {"xs": list(range(1000))}, run_id="c")
    assert scope.cancelled_caught
    done = tools.calls.total()
    result = await engine.execute(step, {"xs": list(range(1000))}, run_id="c")
    assert result.output == [x * x for x in range(1000)]
    # Calls cancelled in flight run again; nothing that finished does.
    assert tools.calls.total() - done <= 1000 - 300 + 4
    assert max(tools.calls.values()) <= 2
    [info] = engine.journal.runs()  # type: ignore[union-attr]
    assert (info.status, info.calls_done) == ("finished", 1000)


# -- current_call --------------------------------------------------------------


class Keys:
    def __init__(self) -> None:
        self.seen: list[plait.CallInfo] = []
        self.fail_first = True

    def tools(self) -> list[plait.Tool]:
        seen = self.seen

        @plait.tool(retry=plait.Retry(attempts=3, initial_delay=0.001))
        async def flaky(x: int) -> int:
            info = plait.current_call()
            assert info is not None
            seen.append(info)
            if info.attempt == 1 and self.fail_first:
                raise OSError("try again")
            return x

        @plait.tool
        def blocking(x: int) -> int:
            info = plait.current_call()
            assert info is not None
            seen.append(info)
            return x

        @plait.tool
        async def plain(x: int) -> int:
            info = plait.current_call()
            assert info is not None
            seen.append(info)
            return x

        return [flaky, blocking, plain]


@pytest.mark.parametrize("journaled", [False, True])
async def test_current_call_in_async_and_sync_tools(
    tmp_path: Path, journaled: bool
) -> None:
    keys = Keys()
    engine = plait.Engine(
        tools=keys.tools(), journal=journal(tmp_path) if journaled else None
    )
    assert plait.current_call() is None
    step = Sequential(
        Call("flaky", 1),
        MapReduce(Var("xs"), Call("plain", Var("item"))),
        MapReduce(Var("xs"), Call("blocking", Var("item"))),
    )
    result = await engine.execute(step, {"xs": [5, 6]}, run_id="k1")
    assert plait.current_call() is None
    by_path = {(c.path, c.attempt): c for c in keys.seen}
    assert sorted(by_path) == [
        ("steps[0]", 1),
        ("steps[0]", 2),
        ("steps[1].map[0]", 1),
        ("steps[1].map[1]", 1),
        ("steps[2].map[0]", 1),
        ("steps[2].map[1]", 1),
    ]
    assert {c.run_id for c in keys.seen} == {"k1"} == {result.run_id}
    # Stable across attempts, different between calls.
    assert (
        by_path["steps[0]", 1].idempotency_key == by_path["steps[0]", 2].idempotency_key
    )
    assert len({c.idempotency_key for c in keys.seen}) == 5
    # Different in another run, the same in the same run id.
    other = Keys()
    await plait.Engine(tools=other.tools()).execute(step, {"xs": [5, 6]})
    assert not {c.idempotency_key for c in keys.seen} & {
        c.idempotency_key for c in other.seen
    }
    same = Keys()
    await plait.Engine(tools=same.tools()).execute(step, {"xs": [5, 6]}, run_id="k1")
    assert {c.idempotency_key for c in same.seen} == {
        c.idempotency_key for c in keys.seen
    }


async def test_current_call_key_is_stable_across_a_resume(tmp_path: Path) -> None:
    keys = Keys()
    keys.fail_first = True
    tools = keys.tools()
    flaky = attrs.evolve(tools[0], retry=None)
    engine = plait.Engine(tools=[flaky, *tools[1:]], journal=journal(tmp_path))
    step = plait.Parallel(Call("flaky", 1), Call("plain", 2), on_error="collect")
    first = await engine.execute(step, run_id="res")
    assert isinstance(first.output[0], plait.Failure)
    keys.fail_first = False
    second = await engine.execute(step, run_id="res")
    assert second.output == [1, 2]
    flaky_keys = [c for c in keys.seen if c.path == "steps[0]"]
    assert [c.attempt for c in flaky_keys] == [1, 1]
    assert flaky_keys[0].idempotency_key == flaky_keys[1].idempotency_key
    assert [c.path for c in keys.seen].count("steps[1]") == 1  # replayed


# -- settings --------------------------------------------------------------------


def test_bad_settings_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(plait.ConfigError, match=r"SqliteJournal\.durability"):
        plait.SqliteJournal(tmp_path / "x.db", durability="often")  # type: ignore[arg-type]
    with pytest.raises(plait.ConfigError, match=r"SqliteJournal\.path"):
        plait.SqliteJournal(":memory:")
    with pytest.raises(plait.ConfigError, match=r"Engine\.journal"):
        plait.Engine(journal="runs.db")  # type: ignore[arg-type]
    with pytest.raises(plait.ConfigError, match=r"PostgresJournal\.lease_ttl"):
        plait.PostgresJournal("postgresql://x", lease_ttl=0)
    with pytest.raises(plait.ConfigError, match="run_id"):
        plait.run(Call(lambda: 1), run_id="")


def test_journals_pickle_as_their_settings(tmp_path: Path) -> None:
    import pickle

    j = plait.SqliteJournal(tmp_path / "x.db", durability="sync")
    back = pickle.loads(pickle.dumps(j))
    assert (back.path, back.durability) == (j.path, "sync")
    p = plait.PostgresJournal("postgresql://u@h/db", lease_ttl=3.0)
    back_p = pickle.loads(pickle.dumps(p))
    assert (back_p.dsn, back_p.lease_ttl) == (p.dsn, 3.0)
    assert isinstance(back_p, plait.Journal)


def test_plait_run_takes_a_journal_and_a_run_id(tmp_path: Path) -> None:
    made: list[int] = []

    def triple(x: int) -> int:
        made.append(x)
        return 3 * x

    j = journal(tmp_path)
    step = MapReduce(Var("xs"), Call(triple, Var("item")))
    for _ in range(2):
        out = plait.run(step, {"xs": [1, 2]}, tools=[triple], journal=j, run_id="p")
        assert out == [3, 6]
    assert made == [1, 2]


def test_tool_journal_flag() -> None:
    @plait.tool(journal=False)
    def now() -> float:
        return 0.0

    assert now.journal is False
    assert "journal=False" in repr(now)
    assert plait.tool(now.fn).journal is True


def test_a_locked_database_is_tried_again_and_other_errors_are_not() -> None:
    import sqlite3

    from plait._journal._sqlite import _when_unlocked

    tries: list[int] = []

    def locked_twice() -> None:
        tries.append(1)
        if len(tries) <= 2:
            raise sqlite3.OperationalError("database is locked")

    _when_unlocked(locked_twice)
    assert len(tries) == 3

    def broken() -> None:
        tries.append(1)
        raise sqlite3.OperationalError("disk I/O error")

    tries.clear()
    with pytest.raises(sqlite3.OperationalError, match="disk"):
        _when_unlocked(broken)
    assert len(tries) == 1
