"""Remote map steps on a real Dask LocalCluster: 2 worker processes on loopback.

The cluster starts once for the module. Its workers import the tools of
``tests/_dask_tools.py`` by import path: the tests' directory is on the
coordinator's ``sys.path`` when the cluster starts, and spawned worker
processes start with the same ``sys.path``.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _dask_tools as T
import plait
from _servers import dask_cluster, need_module
from plait import Call, Engine, Failure, Fn, MapReduce, Parallel, Sequential, Var

need_module("distributed")

from plait.dask import DaskExecutor  # noqa: E402


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with dask_cluster() as client:
        yield client


@pytest.fixture(scope="module")
def executor(client: Any) -> Iterator[DaskExecutor]:
    with DaskExecutor(client, chunk_size=4) as ex:
        yield ex
    assert client.status == "running"  # a given cluster stays up


def plus(acc: int, value: Any) -> int:
    return acc + (value if isinstance(value, int) else 0)


def _key(result: plait.RunResult) -> tuple[Any, ...]:
    failures = sorted(
        (f.path, type(f.error).__name__, str(f.error)) for f in result.failures
    )
    return result.output, failures


# -- same result as locally ---------------------------------------------------

MAP_STEPS = {
    "call": Call(T.inc, Var("item")),
    "async": Call(T.ainc, Var("item")),
    "seq": Sequential(
        Call(T.inc, Var("item"), name="a"), Call(T.add, Var("a"), Var("k"))
    ),
    "par": Parallel(Call(T.inc, Var("item")), Call(T.double, Var("item"))),
    "fn": Call(T.add, Fn("twice", Var("item")), Var("k")),
    "fail": Call(T.fail_on, Var("item")),
    "nested": MapReduce(Fn("upto", Var("item")), Call(T.fail_on, Var("item"))),
}


def twice(x: int) -> int:
    return 2 * x


def upto(x: int) -> list[int]:
    return list(range(x % 5))


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(0, 30),
    kind=st.sampled_from(sorted(MAP_STEPS)),
    reduce=st.booleans(),
    ordered=st.booleans(),
    collect=st.booleans(),
    chunk=st.integers(1, 7),
    width=st.sampled_from([None, 1, 3]),
)
def test_same_result_locally_and_remotely(
    executor: DaskExecutor,
    n: int,
    kind: str,
    reduce: bool,
    ordered: bool,
    collect: bool,
    chunk: int,
    width: int | None,
) -> None:
    step = MapReduce(
        Var("xs"),
        MAP_STEPS[kind],
        reduce=plus if reduce else None,
        initial=0 if reduce else None,
        ordered=ordered or not reduce,
        max_concurrency=width,
        on_error="collect" if collect else "raise",
        remote=True,
    )
    inputs = {"xs": list(range(n)), "k": 100}
    executor.chunk_size = chunk

    async def both() -> tuple[Any, Any]:
        outcomes = []
        for ex in (None, executor):
            engine = Engine(functions=[twice, upto], executor=ex)
            try:
                outcomes.append(_key(await engine.execute(step, inputs)))
            except plait.StepFailed as e:
                outcomes.append(("raised", type(e.error).__name__))
            except BaseExceptionGroup as g:  # several at once
                outcomes.append(("raised", type(g.exceptions[0].error).__name__))
        return outcomes[0], outcomes[1]

    local, remote = anyio.run(both)
    # In raise mode, chunks run at once: when several elements fail, which
    # one is raised may differ from a local run; that one fails is the same.
    assert remote == local


@pytest.mark.anyio
async def test_remote_map_on_every_backend(executor: DaskExecutor) -> None:
    seen: list[plait.Event] = []
    engine = Engine(tools=[T.inc], executor=executor)
    step = MapReduce(Var("xs"), "inc", reduce=plus, initial=0, remote=True)
    with engine.subscribe(seen.append, ["call.finished"]):
        result = await engine.run(step, {"xs": list(range(50))})
    assert result == sum(range(1, 51))
    # The workers' call events come back with the coordinator's paths.
    assert sorted(e.path for e in seen) == sorted(f"map[{i}]" for i in range(50))
    assert {e.tool for e in seen} == {"inc"}


@pytest.mark.anyio
async def test_without_an_executor_a_remote_map_runs_locally() -> None:
    step = MapReduce(Var("xs"), T.pid, remote=True)
    import os

    assert await Engine().run(step, {"xs": [1, 2]}) == [os.getpid()] * 2


def test_chunks_run_in_the_worker_processes(executor: DaskExecutor) -> None:
    step = MapReduce(Var("xs"), T.pid, remote=True)
    pids = plait.run(step, {"xs": list(range(40))}, executor=executor)
    assert len(pids) == 40
    assert set(pids) <= {
        p for p in executor.client.run(lambda: __import__("os").getpid()).values()
    }


def _most_at_once_per_process(log: Path) -> int:
    """The most calls in flight at once in any one process of ``log``."""
    moves: dict[str, list[tuple[float, int]]] = {}
    for line in log.read_text().splitlines():
        pid, what, at = line.split()
        moves.setdefault(pid, []).append((float(at), 1 if what == "start" else -1))
    most = 0
    for events in moves.values():
        now = 0
        for _, step in sorted(events):  # an end before a start at one time
            now += step
            most = max(most, now)
    return most


@pytest.mark.parametrize(("threads", "most"), [("worker", 1), (2, 2), (None, None)])
def test_sync_calls_per_worker_process_follow_executor_threads(
    client: Any, tmp_path: Path, threads: int | str | None, most: int | None
) -> None:
    # The test cluster's workers have one thread each: by default a chunk's
    # sync calls run one at a time in each process, as Dask runs its tasks.
    log = tmp_path / "calls.log"
    with DaskExecutor(client, chunk_size=8, threads=threads) as ex:
        step = MapReduce(
            Var("xs"), Call(T.blocking_logged, Var("item"), str(log)), remote=True
        )
        assert plait.run(step, {"xs": list(range(32))}, executor=ex) == list(range(32))
    if most is None:  # a chunk's 8 calls at once, unless the machine lags
        assert _most_at_once_per_process(log) > 2
    else:
        assert _most_at_once_per_process(log) == most


def test_async_calls_are_not_bound_by_executor_threads(
    client: Any, tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    with DaskExecutor(client, chunk_size=8) as ex:
        step = MapReduce(
            Var("xs"), Call(T.async_logged, Var("item"), str(log), 0.2), remote=True
        )
        assert plait.run(step, {"xs": list(range(16))}, executor=ex) == list(range(16))
    assert _most_at_once_per_process(log) > 2


@pytest.mark.anyio
async def test_run_stats_count_the_workers_calls(executor: DaskExecutor) -> None:
    retry = plait.Retry(attempts=2, initial_delay=0.001, retry_on=(T.Boom,))
    step = MapReduce(
        Var("xs"),
        Call(T.fail_on, Var("item"), retry=retry),
        on_error="collect",
        remote=True,
    )
    xs = list(range(30))
    remote = await Engine(executor=executor).execute(step, {"xs": xs})
    local = await Engine().execute(attrs.evolve(step, remote=False), {"xs": xs})
    assert remote.output == local.output
    got, want = remote.stats.tools["fail_on"], local.stats.tools["fail_on"]
    assert (got.calls, got.failures, got.retries) == (30, 3, 3)
    assert (got.calls, got.failures, got.retries) == (
        want.calls,
        want.failures,
        want.retries,
    )
    assert got.p50 is not None
    assert got.mean is not None


def test_failure_paths_are_the_coordinators(executor: DaskExecutor) -> None:
    executor.chunk_size = 4
    step = Sequential(
        Call(T.inc, 1, name="one"),
        MapReduce(
            Var("xs"), Call(T.fail_on, Var("item")), on_error="collect", remote=True
        ),
    )
    result = anyio.run(
        lambda: Engine(executor=executor).execute(step, {"xs": list(range(25))})
    )
    # Failures are listed as they happen (chunks finish in any order), as
    # locally; the paths are what must match.
    assert sorted(f.path for f in result.failures) == [
        "steps[1].map[13]",
        "steps[1].map[23]",
        "steps[1].map[3]",
    ]
    assert all(isinstance(f.error, T.Boom) for f in result.failures)
    assert isinstance(result.output[13], Failure)


def test_an_unpicklable_error_arrives_as_remote_error(executor: DaskExecutor) -> None:
    step = MapReduce(Var("xs"), T.fail_unpicklable, on_error="collect", remote=True)
    out = plait.run(step, {"xs": [1, 2, 3]}, executor=executor)
    failure = out[1]
    assert isinstance(failure, Failure)
    assert failure.path == "map[1]"
    assert isinstance(failure.error, plait.RemoteError)
    assert failure.error.type_name == "_dask_tools.Unpicklable"
    assert "cannot travel 2" in failure.error.message
    assert "fail_unpicklable" in failure.error.traceback


# -- refused before the run ------------------------------------------------------


def test_a_lambda_tool_is_refused_before_the_run(executor: DaskExecutor) -> None:
    step = Sequential(Call(T.inc, 1), MapReduce(Var("xs"), lambda x: x, remote=True))
    with pytest.raises(plait.WorkflowError, match="import path") as info:
        plait.run(step, {"xs": [1]}, executor=executor)
    assert info.value.path.startswith("steps[1].map")


def test_a_tool_the_workers_cannot_import_is_refused(
    executor: DaskExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "only_here.py").write_text("def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here  # type: ignore[import-not-found]

    step = MapReduce(Var("xs"), only_here.f, remote=True)
    with pytest.raises(plait.WorkflowError, match="only_here") as info:
        plait.run(step, {"xs": [1]}, executor=executor)
    assert info.value.path == "<root>" or info.value.path == ""
    assert "worker" in str(info.value)


def test_a_limited_tool_needs_shared_or_per_worker_limits(
    client: Any, executor: DaskExecutor
) -> None:
    step = MapReduce(Var("xs"), T.limited, remote=True)
    with pytest.raises(plait.ConfigError, match=r"'limited'.*concurrency_limit"):
        plait.run(step, {"xs": [1, 2]}, executor=executor)
    with pytest.raises(plait.ConfigError, match=r"Engine\.rate_limit"):
        plait.run(
            MapReduce(Var("xs"), T.inc, remote=True),
            {"xs": [1]},
            executor=executor,
            rate_limit=plait.RateLimit(100),
        )
    with DaskExecutor(client, limits="per-worker") as per_worker:
        assert plait.run(step, {"xs": [1, 2]}, executor=per_worker) == [2, 3]


def test_shared_limits_hold_across_the_workers(
    executor: DaskExecutor, redis_url: str, tmp_path: Path
) -> None:
    from plait.redis import RedisLimits

    executor.chunk_size = 3
    log = tmp_path / "calls.log"
    limits = RedisLimits(redis_url, namespace=f"dask-{uuid.uuid4().hex}")
    step = MapReduce(
        Var("xs"), Call(T.logged_limited, Var("item"), str(log)), remote=True
    )
    try:
        out = plait.run(
            step,
            {"xs": list(range(24))},
            executor=executor,
            shared_limits=limits,
            rate_limit=plait.RateLimit(1000),
        )
    finally:
        limits.close()
    assert out == list(range(24))
    events = []
    pids = set()
    for line in log.read_text().splitlines():
        what, _, t, pid = line.split()
        events.append((float(t), 1 if what == "start" else -1))
        pids.add(pid)
    assert len(pids) >= 2  # the calls ran in both worker processes
    running = most = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        running += change
        most = max(most, running)
    assert most <= 2


# -- cancellation reaches every chunk --------------------------------------------


def _log_lines(log: Path) -> list[tuple[str, int, float]]:
    lines = []
    for line in log.read_text().splitlines() if log.exists() else []:
        what, x, t = line.split()
        lines.append((what, int(x), float(t)))
    return lines


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["failure", "deadline", "cancel"])
async def test_a_stop_reaches_every_running_chunk(
    executor: DaskExecutor, tmp_path: Path, how: str
) -> None:
    executor.chunk_size = 4
    log = tmp_path / "calls.log"
    tool = T.logged_fail if how == "failure" else T.logged_sleep
    step = MapReduce(
        Var("xs"),
        Call(
            tool,
            Var("item"),
            str(log),
            **({} if how == "failure" else {"seconds": 5.0}),
        ),
        remote=True,
    )
    engine = Engine(executor=executor)
    started = time.time()
    if how == "failure":
        with pytest.raises(plait.StepFailed) as info:
            await engine.run(step, {"xs": list(range(12))})
        assert info.value.path == "map[0]"
    elif how == "deadline":
        with pytest.raises(plait.StepTimeout):
            await engine.run(step, {"xs": list(range(12))}, deadline=1.0)
    else:
        with anyio.move_on_after(1.0):
            await engine.run(step, {"xs": list(range(12))})
    ended = time.time()
    assert ended - started < 4.0  # well before any 5 s call ends
    await anyio.sleep(1.0)
    lines = _log_lines(log)
    assert any(what == "start" for what, _, _ in lines)  # calls did run remotely
    # No call ends (they would take 5 s) and none starts once run is over.
    assert [x for what, x, _ in lines if what == "end"] == []
    assert all(t <= ended for _, _, t in lines)


# -- a worker dies --------------------------------------------------------------


def test_a_worker_killed_mid_run_still_gives_the_right_result(
    executor: DaskExecutor, tmp_path: Path
) -> None:
    executor.chunk_size = 4
    step = MapReduce(
        Var("xs"), Call(T.kill_once, Var("item"), str(tmp_path / "flag")), remote=True
    )
    assert plait.run(step, {"xs": list(range(40))}, executor=executor) == [
        3 * x for x in range(40)
    ]
    assert (tmp_path / "flag").exists()  # a worker did die
    executor.client.wait_for_workers(2, timeout=30)


# -- memory stays bounded ---------------------------------------------------------


@pytest.mark.parametrize("n", [20_000, pytest.param(200_000, marks=pytest.mark.slow)])
def test_a_lazy_remote_map_pulls_a_bounded_window(
    executor: DaskExecutor, n: int
) -> None:
    executor.chunk_size = 256
    pulled = [0]
    folded = [0]
    ahead = [0]

    def source() -> Iterator[int]:
        for i in range(n):
            pulled[0] += 1
            yield i

    def count(acc: int, value: int) -> int:
        folded[0] += 1
        ahead[0] = max(ahead[0], pulled[0] - folded[0])
        return acc + value

    step = MapReduce(Var("xs"), T.inc, reduce=count, initial=0, remote=True)
    gc.collect()
    out = plait.run(step, {"xs": source()}, executor=executor)
    assert out == n * (n + 1) // 2
    window = 2 * 2  # twice the cluster's 2 worker threads
    assert ahead[0] <= (window + 1) * 256
    assert sys.getrefcount(executor) < 10


def test_the_command_runs_remote_steps_on_a_given_cluster(
    client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from plait._cli import main

    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "kind: map_reduce\nover: ${xs}\nremote: true\n"
        "map: {kind: call, tool: '_dask_tools:pid', args: ['${item}']}\n"
    )
    (tmp_path / "in.json").write_text('{"xs": [1, 2, 3, 4, 5, 6, 7, 8]}')
    address = client.scheduler.address
    code = main(
        [
            "run",
            str(flow),
            "--inputs",
            str(tmp_path / "in.json"),
            "--dask",
            address,
            "-q",
        ]
    )
    assert code == 0
    pids = set(json.loads(capsys.readouterr().out))
    assert pids <= set(client.run(lambda: __import__("os").getpid()).values())


def test_the_chunks_of_a_silent_coordinator_stop_themselves(
    client: Any, tmp_path: Path
) -> None:
    from plait._runtime._executor import CHUNK_VAR
    from plait.dask._wire import WireSpec
    from plait.dask._worker import run_chunk

    log = tmp_path / "calls.log"
    chunk_step = MapReduce(
        Var(CHUNK_VAR), Call(T.logged_sleep, Var("item"), str(log), seconds=5.0)
    )
    spec = WireSpec(
        document=plait.dump(chunk_step),
        event_kinds=frozenset(),
        max_concurrency=10,
        stale_after=1.0,
    )
    # No coordinator bumps this run's heartbeat: its chunk must stop itself.
    started = time.monotonic()
    future = client.submit(run_chunk, spec, "silent-run", {}, [1, 2, 3], pure=False)
    outcome = future.result(timeout=30)
    assert outcome.stopped
    assert time.monotonic() - started < 4.5  # before the 5 s calls end
    assert [what for what, _, _ in _log_lines(log)] == ["start"] * 3


def test_elements_that_do_not_pickle_fail_the_step(executor: DaskExecutor) -> None:
    import threading

    step = Sequential(Call(T.inc, 1), MapReduce(Var("xs"), T.inc, remote=True))
    with pytest.raises(plait.StepFailed, match=r"pickle|serialize") as info:
        plait.run(step, {"xs": [threading.Lock()]}, executor=executor)
    assert info.value.path == "steps[1]"


def test_a_registry_limit_is_refused_too(executor: DaskExecutor) -> None:
    registry = plait.LimiterRegistry()
    registry.set_limit("tool:inc", 1)
    engine = Engine(tools=[T.inc], limiters=registry, executor=executor)
    step = MapReduce(Var("xs"), "inc", remote=True)
    with pytest.raises(plait.ConfigError, match=r"'inc'.*Engine\.limiters"):
        anyio.run(engine.run, step, {"xs": [1]})


@pytest.mark.anyio
async def test_async_with_leaves_a_given_cluster_running(client: Any) -> None:
    async with DaskExecutor(client, chunk_size=2) as ex:
        step = MapReduce(Var("xs"), T.inc, remote=True)
        assert await Engine(executor=ex).run(step, {"xs": [1, 2, 3]}) == [2, 3, 4]
    assert client.status == "running"
    with pytest.raises(RuntimeError, match="closed"):
        _ = ex.client


@pytest.mark.filterwarnings("ignore:Port .* is already in use")
def test_an_owned_local_cluster_starts_on_loopback_and_closes() -> None:
    with DaskExecutor(chunk_size=2) as ex:
        step = MapReduce(Var("xs"), T.inc, remote=True)
        assert plait.run(step, {"xs": [1, 2, 3]}, executor=ex) == [2, 3, 4]
        cluster = ex._cluster
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in ex.client.nthreads())
    assert cluster.status.name == "closed"


def test_bad_executor_options_are_config_errors() -> None:
    with pytest.raises(plait.ConfigError, match="chunk_size"):
        DaskExecutor(chunk_size=0)
    with pytest.raises(plait.ConfigError, match="limits"):
        DaskExecutor(limits="everywhere")
    for threads in (0, "all", True, 1.5):
        with pytest.raises(
            plait.ConfigError,
            match=r"DaskExecutor\.threads must be 'worker' or an int >= 1 or None",
        ):
            DaskExecutor(threads=threads)  # type: ignore[arg-type]
    with pytest.raises(plait.ConfigError, match="client"):
        DaskExecutor(42)  # type: ignore[arg-type]
    with pytest.raises(plait.ConfigError, match="executor"):
        Engine(executor=object())  # type: ignore[arg-type]
