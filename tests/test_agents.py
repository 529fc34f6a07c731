"""plait.agents: many agents at once, in order, bounded, on every backend.

Async tests call the ``arun_agents_*`` twins on the test runner's loop of
each backend (asyncio, uvloop, Trio); the sync ``run_agents_*`` functions
are called with ``backend=`` for each backend. The fake agents of
``_fake_agents.py`` count what they see, so limits, order and overlap are
proved with gauges and rendezvous, and timings are only loose bounds.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
import sniffio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plait
from _fake_agents import (
    BACKENDS,
    HANG,
    ArunAgent,
    AsyncAgent,
    Boom,
    CoroutineAgent,
    FlakyAgent,
    Gauge,
    HangingAgent,
    SyncAgent,
    returns_once_released,
)
from plait.agents import (
    DEFAULT_BATCH_SIZE,
    ResourceMetrics,
    ResourceMonitor,
    agent_name,
    agent_tool,
    arun_agents_concurrently,
    arun_agents_sequentially,
    arun_agents_with_different_tasks,
    arun_agents_with_resource_monitoring,
    arun_agents_with_timeout,
    run_agents_concurrently,
    run_agents_sequentially,
    run_agents_with_different_tasks,
    run_agents_with_resource_monitoring,
    run_agents_with_timeout,
)

anyio_test = pytest.mark.anyio
on_each_backend = pytest.mark.parametrize("backend", BACKENDS)

PROMPT = 2.0  # "it did not wait for the hung agent" (which hangs 10 s)
KINDS: dict[str, type[SyncAgent]] = {
    "sync": SyncAgent,
    "async": AsyncAgent,
    "arun": ArunAgent,
    "coroutine": CoroutineAgent,
}


def quiet_monitor() -> ResourceMonitor:
    """A monitor that always reads an idle machine."""
    return ResourceMonitor(
        check_interval=0.01, sample=lambda: ResourceMetrics(1.0, 1.0, 1)
    )


async def until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll ``predicate`` on the loop until it holds; fail after ``limit``."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.01)


def outputs(*names: str, task: Any = "t") -> list[Any]:
    return [(name, task) for name in names]


def assert_failure(
    value: Any, path: str, error_type: type[BaseException]
) -> BaseException:
    assert isinstance(value, plait.Failure), value
    assert value.path == path
    assert isinstance(value.error, error_type), value.error
    return value.error


# -- names and kinds of agents ---------------------------------------------------


def researcher(task: Any) -> Any:
    return task


async def writer(task: Any) -> Any:
    return task


class Plain:
    def run(self, task: Any) -> Any:
        return task


@pytest.mark.parametrize(
    ("agent", "name"),
    [
        pytest.param(
            SimpleNamespace(agent_name="chosen", name="no", __name__="no"),
            "chosen",
            id="agent_name first",
        ),
        pytest.param(
            SimpleNamespace(name="named", __name__="no"), "named", id="then name"
        ),
        pytest.param(SimpleNamespace(__name__="dunder"), "dunder", id="then __name__"),
        pytest.param(researcher, "researcher", id="function"),
        pytest.param(writer, "writer", id="async function"),
        pytest.param(lambda task: task, "<lambda>", id="lambda"),
        pytest.param(Plain(), "Plain", id="then the type's name"),
        pytest.param(
            SimpleNamespace(agent_name="", name=None, __name__=42),
            "SimpleNamespace",
            id="empty and non-str names are skipped",
        ),
        pytest.param(
            SimpleNamespace(agent_name=3, name="second"), "second", id="non-str"
        ),
    ],
)
def test_agent_name_resolution_order(agent: object, name: str) -> None:
    assert agent_name(agent) == name


def every_kind(loop_thread: int) -> tuple[list[Any], list[Any]]:
    """One agent of each kind, each reporting where its work ran; and the outputs."""

    def here() -> str:
        return "loop" if threading.get_ident() == loop_thread else "thread"

    class SyncRun:
        def run(self, task: Any) -> Any:
            return ("sync run", task, here())

    class AsyncRun:
        async def run(self, task: Any) -> Any:
            await anyio.sleep(0)
            return ("async run", task, here())

    class Arun:
        async def arun(self, task: Any) -> Any:
            await anyio.sleep(0)
            return ("arun", task, here())

        def run(self, task: Any) -> Any:
            raise AssertionError("arun() must win over run()")

    class CoroutineRun:
        def run(self, task: Any) -> Awaitable[Any]:
            return self.work(task, here())

        async def work(self, task: Any, made_on: str) -> Any:
            await anyio.sleep(0)
            return ("coroutine run", task, made_on, here())

    class Later:
        def __init__(self, task: Any) -> None:
            self.task = task

        def __await__(self) -> Generator[Any, None, Any]:
            yield from anyio.sleep(0).__await__()
            return ("awaitable run", self.task, here())

    class AwaitableRun:
        def run(self, task: Any) -> Any:
            return Later(task)

    class SyncCallable:
        def __call__(self, task: Any) -> Any:
            return ("sync callable", task, here())

    class AsyncCallable:
        async def __call__(self, task: Any) -> Any:
            return ("async callable", task, here())

    def function(task: Any) -> Any:
        return ("function", task, here())

    async def coroutine_function(task: Any) -> Any:
        await anyio.sleep(0)
        return ("coroutine function", task, here())

    async def tagged(tag: str, task: Any) -> Any:
        return (tag, task, here())

    agents = [
        SyncRun(),
        AsyncRun(),
        Arun(),
        CoroutineRun(),
        AwaitableRun(),
        SyncCallable(),
        AsyncCallable(),
        function,
        coroutine_function,
        lambda task: ("lambda", task, here()),
        functools.partial(tagged, "partial"),
    ]
    expected = [
        ("sync run", "t", "thread"),
        ("async run", "t", "loop"),
        ("arun", "t", "loop"),
        ("coroutine run", "t", "thread", "loop"),
        ("awaitable run", "t", "loop"),
        ("sync callable", "t", "thread"),
        ("async callable", "t", "loop"),
        ("function", "t", "thread"),
        ("coroutine function", "t", "loop"),
        ("lambda", "t", "thread"),
        ("partial", "t", "loop"),
    ]
    return agents, expected


@anyio_test
async def test_every_kind_of_agent_runs_where_it_should_and_is_awaited() -> None:
    agents, expected = every_kind(threading.get_ident())
    out = await arun_agents_concurrently(agents, "t")
    assert out == expected
    assert not any(inspect.isawaitable(value) for value in out)


@on_each_backend
def test_run_agents_concurrently_mixes_every_kind_on_each_backend(
    backend: str,
) -> None:
    agents, expected = every_kind(threading.get_ident())
    out = run_agents_concurrently(agents, "t", backend=backend)
    assert out == expected


async def which_loop(task: Any) -> str:
    library = sniffio.current_async_library()
    if library == "asyncio":
        loop = type(asyncio.get_running_loop())
        return "uvloop" if loop.__module__.startswith("uvloop") else "asyncio"
    return library


@on_each_backend
def test_sync_functions_run_on_the_backend_asked_for(backend: str) -> None:
    monitor = quiet_monitor()
    assert run_agents_concurrently([which_loop], "t", backend=backend) == [backend]
    assert run_agents_sequentially([which_loop], "t", backend=backend) == [backend]
    assert run_agents_with_different_tasks([(which_loop, 1)], backend=backend) == [
        backend
    ]
    assert run_agents_with_timeout([which_loop], "t", 5, backend=backend) == [backend]
    assert run_agents_with_resource_monitoring(
        [which_loop], "t", monitor=monitor, backend=backend
    ) == [backend]


def test_an_unknown_backend_is_refused() -> None:
    agent = SyncAgent("a")
    with pytest.raises(ValueError, match="backend must be None or one of"):
        run_agents_concurrently([agent], "t", backend="curio")
    assert agent.calls == 0


# -- order, limits, no barrier -----------------------------------------------------


@anyio_test
@pytest.mark.parametrize("kind", ["sync", "async", "coroutine"])
async def test_outputs_keep_input_order_when_later_agents_finish_first(
    kind: str,
) -> None:
    gauge = Gauge()
    n = 5
    agents = [KINDS[kind](f"a{i}", 0.03 * (n - i), gauge) for i in range(n)]
    out = await arun_agents_concurrently(agents, "t")
    assert out == outputs(*(f"a{i}" for i in range(n)))
    # the last agent (shortest) finished before the first (longest)
    assert gauge.finished.index(f"a{n - 1}") < gauge.finished.index("a0")


@on_each_backend
def test_run_agents_concurrently_keeps_order_on_each_backend(backend: str) -> None:
    gauge = Gauge()
    delays = [0.09, 0.0, 0.06, 0.03]
    agents = [
        kind(f"a{i}", delay, gauge)
        for i, (kind, delay) in enumerate(
            zip([SyncAgent, AsyncAgent, CoroutineAgent, SyncAgent], delays, strict=True)
        )
    ]
    out = run_agents_concurrently(agents, "t", backend=backend)
    assert out == outputs("a0", "a1", "a2", "a3")
    assert gauge.finished[0] == "a1"
    assert gauge.finished.index("a3") < gauge.finished.index("a0")


def mixed(i: int, gauge: Gauge, rendezvous: int, delay: float = 0.005) -> SyncAgent:
    kind = list(KINDS.values())[i % len(KINDS)]
    return kind(f"a{i}", delay, gauge, rendezvous=rendezvous)


@anyio_test
@pytest.mark.parametrize("kind", [*KINDS, "mixed"])
@pytest.mark.parametrize("batch_size", [1, 4])
async def test_batch_size_is_reached_and_never_exceeded(
    kind: str, batch_size: int
) -> None:
    gauge = Gauge()
    agents = [
        mixed(i, gauge, batch_size)
        if kind == "mixed"
        else KINDS[kind](f"a{i}", 0.005, gauge, rendezvous=batch_size)
        for i in range(12)
    ]
    started = anyio.current_time()
    out = await arun_agents_concurrently(agents, "t", batch_size)
    assert out == outputs(*(f"a{i}" for i in range(12)))
    # every agent waited until batch_size ran at once: had that never
    # happened, they would have waited 5 s each
    assert gauge.peak == batch_size
    assert anyio.current_time() - started < 5.0
    assert sorted(gauge.started) == sorted(f"a{i}" for i in range(12))


@anyio_test
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_default_batch_size_and_threads_are_64(kind: str) -> None:
    gauge = Gauge()
    agents = [KINDS[kind](f"a{i}", 0.001, gauge, rendezvous=64) for i in range(80)]
    out = await arun_agents_concurrently(agents, "t")
    assert out == outputs(*(f"a{i}" for i in range(80)))
    # blocking agents too: 64 threads at once, not a thread pool's default
    assert gauge.peak == DEFAULT_BATCH_SIZE == 64


@anyio_test
async def test_max_workers_alone_also_bounds_the_agents_in_flight() -> None:
    gauge = Gauge()
    agents = [AsyncAgent(f"a{i}", 0.001, gauge, rendezvous=3) for i in range(10)]
    out = await arun_agents_concurrently(agents, "t", max_workers=3)
    assert out == outputs(*(f"a{i}" for i in range(10)))
    assert gauge.peak == 3


@anyio_test
async def test_max_workers_bounds_threads_but_not_async_agents() -> None:
    total = Gauge()
    threads = Gauge(parent=total)
    loop = Gauge(parent=total)
    async_agents = [AsyncAgent(f"async{i}", 0.0, loop, rendezvous=4) for i in range(4)]
    sync_agents = [SyncAgent(f"sync{i}", 0.01, threads, rendezvous=2) for i in range(8)]
    out = await arun_agents_concurrently(
        async_agents + sync_agents, "t", batch_size=6, max_workers=2
    )
    assert out == outputs(*(a.name for a in async_agents + sync_agents))
    assert threads.peak == 2
    assert loop.peak == 4  # more than max_workers: async agents need no thread
    assert total.peak <= 6


@anyio_test
@pytest.mark.parametrize("slow_kind", ["sync", "async"])
async def test_a_slow_agent_does_not_hold_up_the_others(slow_kind: str) -> None:
    """No batch barrier: the slot of a finished agent is reused at once."""
    gauge = Gauge()
    fast = [SyncAgent(f"fast{i}", 0.01, gauge) for i in range(8)]

    def all_fast_done() -> bool:
        return len(gauge.finished) >= len(fast)

    def slow_sync(task: Any) -> bool:
        return gauge.wait_until(all_fast_done)

    async def slow_async(task: Any) -> bool:
        return await gauge.await_until(all_fast_done)

    slow = slow_sync if slow_kind == "sync" else slow_async
    started = anyio.current_time()
    out = await arun_agents_concurrently([slow, *fast], "t", batch_size=2)
    elapsed = anyio.current_time() - started
    # With batches of 2, fast1..fast7 would wait for the slow agent, which
    # waits for them: it would give up after 5 s and return False.
    assert out == [True, *outputs(*(a.name for a in fast))]
    assert gauge.peak == 1  # the fast ones ran one at a time beside it
    assert elapsed < PROMPT


# -- the other shapes: sequentially, different tasks ----------------------------------


@on_each_backend
def test_run_agents_sequentially_runs_one_at_a_time_in_order(backend: str) -> None:
    gauge = Gauge()
    agents = [
        SyncAgent("s0", 0.01, gauge),
        AsyncAgent("a1", 0.01, gauge),
        CoroutineAgent("c2", 0.01, gauge),
        ArunAgent("r3", 0.0, gauge),
        SyncAgent("s4", 0.0, gauge),
    ]
    out = run_agents_sequentially(agents, "t", backend=backend)
    names = ["s0", "a1", "c2", "r3", "s4"]
    assert out == outputs(*names)
    assert gauge.peak == 1
    assert gauge.started == names
    assert gauge.finished == names


@anyio_test
async def test_arun_agents_sequentially_collects_and_raises() -> None:
    gauge = Gauge()
    first = SyncAgent("first", 0.0, gauge)
    bad = AsyncAgent("bad", 0.0, gauge, fail=True)
    last = SyncAgent("last", 0.0, gauge)
    out = await arun_agents_sequentially([first, bad, last], "t")
    assert out[0] == ("first", "t")
    assert assert_failure(out[1], "agents[1]", Boom) is bad.error
    assert out[2] == ("last", "t")

    gauge.started.clear()
    with pytest.raises(plait.StepFailed) as info:
        await arun_agents_sequentially([first, bad, last], "t", on_error="raise")
    assert info.value.path == "agents[1]"
    assert info.value.__cause__ is bad.error
    assert gauge.started == ["first", "bad"]  # the last one never started


@on_each_backend
def test_run_agents_with_different_tasks_gives_each_agent_its_task(
    backend: str,
) -> None:
    gauge = Gauge()
    # the same object in three pairs, all three running at once
    shared = AsyncAgent("shared", 0.01, gauge, rendezvous=3)
    other = SyncAgent("other", 0.0, gauge)
    pairs = [(shared, 1), (other, 2), [shared, 3], (shared, 4), (other, 5)]
    out = run_agents_with_different_tasks(pairs, backend=backend)
    assert out == [
        ("shared", 1),
        ("other", 2),
        ("shared", 3),
        ("shared", 4),
        ("other", 5),
    ]
    assert shared.calls == 3
    assert other.calls == 2
    assert gauge.peak >= 3


@anyio_test
async def test_arun_agents_with_different_tasks_bounds_and_fails_at_pairs_i() -> None:
    gauge = Gauge()
    sync = SyncAgent("sync", 0.005, gauge, rendezvous=2)
    bad = SyncAgent("bad", 0.0, gauge, fail=True)
    pairs = ((agent, i) for i, agent in enumerate([sync, sync, bad, sync, sync]))
    out = await arun_agents_with_different_tasks(pairs, batch_size=2)
    assert out[:2] == [("sync", 0), ("sync", 1)]
    assert assert_failure(out[2], "pairs[2]", Boom) is bad.error
    assert out[3:] == [("sync", 3), ("sync", 4)]
    assert gauge.peak == 2

    with pytest.raises(plait.StepFailed) as info:
        await arun_agents_with_different_tasks([(sync, 0), (bad, 1)], on_error="raise")
    assert info.value.path == "pairs[1]"
    assert info.value.__cause__ is bad.error


@anyio_test
async def test_no_agents_give_no_outputs() -> None:
    assert await arun_agents_concurrently([], "t") == []
    assert await arun_agents_sequentially((), "t") == []
    assert await arun_agents_with_different_tasks([]) == []
    assert await arun_agents_with_timeout(iter([]), "t", 1.0) == []
    assert (
        await arun_agents_with_resource_monitoring([], "t", monitor=quiet_monitor())
        == []
    )


@on_each_backend
def test_sync_functions_with_no_agents_give_no_outputs(backend: str) -> None:
    assert run_agents_concurrently([], "t", backend=backend) == []
    assert run_agents_sequentially([], "t", backend=backend) == []
    assert run_agents_with_different_tasks([], backend=backend) == []
    assert run_agents_with_timeout([], "t", 1.0, backend=backend) == []
    assert (
        run_agents_with_resource_monitoring(
            [], "t", monitor=quiet_monitor(), backend=backend
        )
        == []
    )


@anyio_test
async def test_agents_may_be_any_iterable() -> None:
    a, b = SyncAgent("a"), AsyncAgent("b")
    assert await arun_agents_concurrently((a, b), "t") == outputs("a", "b")
    assert await arun_agents_concurrently(iter([b, a]), "t") == outputs("b", "a")


# -- errors: collect and raise ------------------------------------------------------


def fails_too(task: Any) -> Any:
    raise KeyError(task)


@anyio_test
async def test_one_failing_agent_does_not_lose_the_others_outputs() -> None:
    gauge = Gauge()
    agents = [
        SyncAgent("ok0", 0.0, gauge),
        SyncAgent("bad1", 0.01, gauge, fail=True),
        AsyncAgent("ok2", 0.02, gauge),
        AsyncAgent("bad3", 0.0, gauge, fail=True),
        CoroutineAgent("bad4", 0.0, gauge, fail=True),
        ArunAgent("ok5", 0.0, gauge),
        fails_too,
        lambda task: task * 2,
    ]
    out = await arun_agents_concurrently(agents, "t")
    assert out[0] == ("ok0", "t")
    assert out[2] == ("ok2", "t")
    assert out[5] == ("ok5", "t")
    assert out[7] == "tt"
    for i in (1, 3, 4):
        # the original exception object, not a wrapper
        assert assert_failure(out[i], f"agents[{i}]", Boom) is agents[i].error
    assert assert_failure(out[6], "agents[6]", KeyError).args == ("t",)
    assert len(gauge.started) == 6


@anyio_test
async def test_raise_mode_cancels_the_rest_and_raises_step_failed() -> None:
    gauge = Gauge()
    sleeper = AsyncAgent("sleeper", HANG, gauge)
    bad = SyncAgent("bad", 0.02, gauge, fail=True)
    rest = [AsyncAgent(f"rest{i}", 0.0, gauge) for i in range(4)]
    started = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await arun_agents_concurrently(
            [sleeper, bad, *rest], "t", batch_size=2, on_error="raise"
        )
    assert anyio.current_time() - started < PROMPT
    assert info.value.path == "agents[1]"
    assert info.value.__cause__ is bad.error
    assert info.value.error is bad.error
    assert "agents[1]" in str(info.value)
    assert sleeper.cancelled  # saw the cancellation, did not finish
    assert gauge.started == ["sleeper", "bad"]
    assert [agent.calls for agent in rest] == [0, 0, 0, 0]


@on_each_backend
def test_sync_raise_mode_raises_step_failed_on_each_backend(backend: str) -> None:
    sleeper = AsyncAgent("sleeper", HANG)
    bad = AsyncAgent("bad", 0.01, fail=True)
    started = time.monotonic()
    with pytest.raises(plait.StepFailed) as info:
        run_agents_with_different_tasks(
            [(sleeper, 0), (bad, 1)], on_error="raise", backend=backend
        )
    assert time.monotonic() - started < PROMPT
    assert info.value.path == "pairs[1]"
    assert info.value.__cause__ is bad.error
    assert sleeper.cancelled


@on_each_backend
def test_sync_collect_mode_keeps_the_others_on_each_backend(backend: str) -> None:
    good = SyncAgent("good", 0.01)
    bad = CoroutineAgent("bad", 0.0, fail=True)
    out = run_agents_concurrently([bad, good, bad], "t", backend=backend)
    assert out[1] == ("good", "t")
    assert_failure(out[0], "agents[0]", Boom)
    assert_failure(out[2], "agents[2]", Boom)


# -- timeouts -------------------------------------------------------------------------


def agent_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "plait.agents"]


def check_timed_out(out: list[Any], timed_out: dict[int, str], timeout: float) -> None:
    for i, name in timed_out.items():
        error = assert_failure(out[i], f"agents[{i}]", plait.ToolTimeout)
        assert isinstance(error, TimeoutError)
        assert error.tool == name
        assert error.timeout == timeout


@anyio_test
async def test_timeout_puts_a_failure_in_place_and_keeps_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="plait.agents")
    release = threading.Event()
    hanger = HangingAgent(release)
    sleeper = AsyncAgent("sleeper", HANG)
    quick = SyncAgent("quick", 0.0)
    quick_async = AsyncAgent("quick_async", 0.01)
    try:
        started = anyio.current_time()
        out = await arun_agents_with_timeout(
            [quick, hanger, quick_async, sleeper], "t", 0.2
        )
        elapsed = anyio.current_time() - started
        assert not hanger.returned.is_set()  # abandoned, not killed
    finally:
        release.set()
    assert elapsed < PROMPT
    assert out[0] == ("quick", "t")
    assert out[2] == ("quick_async", "t")
    check_timed_out(out, {1: "hanger", 3: "sleeper"}, 0.2)
    assert sleeper.cancelled
    [record] = agent_warnings(caplog)
    assert record.levelno == logging.WARNING
    assert "1 blocking agent(s) timed out" in record.getMessage()
    assert "plait.check_cancelled()" in record.getMessage()
    await until(hanger.returned.is_set)


@on_each_backend
def test_run_agents_with_timeout_returns_on_time_despite_a_hung_agent(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="plait.agents")
    release = threading.Event()
    hangers = [HangingAgent(release, "h0"), HangingAgent(release, "h1")]
    try:
        started = time.monotonic()
        out = run_agents_with_timeout(
            [hangers[0], AsyncAgent("a", 0.0), hangers[1], which_loop],
            "t",
            0.1,
            backend=backend,
        )
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert elapsed < PROMPT
    assert out[1] == ("a", "t")
    assert out[3] == backend
    check_timed_out(out, {0: "h0", 2: "h1"}, 0.1)
    [record] = agent_warnings(caplog)
    assert "2 blocking agent(s) timed out" in record.getMessage()
    for hanger in hangers:
        assert returns_once_released(hanger)


@anyio_test
async def test_no_warning_when_no_thread_is_abandoned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="plait.agents")
    out = await arun_agents_with_timeout(
        [SyncAgent("quick"), AsyncAgent("slow", HANG)], "t", 0.05
    )
    assert out[0] == ("quick", "t")
    check_timed_out(out, {1: "slow"}, 0.05)
    assert agent_warnings(caplog) == []


@anyio_test
async def test_timeout_in_raise_mode_raises_step_failed_from_tool_timeout() -> None:
    release = threading.Event()
    try:
        with pytest.raises(plait.StepFailed) as info:
            await arun_agents_with_timeout(
                [SyncAgent("quick"), HangingAgent(release)],
                "t",
                0.05,
                on_error="raise",
            )
    finally:
        release.set()
    assert info.value.path == "agents[1]"
    assert isinstance(info.value.__cause__, plait.ToolTimeout)


@anyio_test
async def test_every_timeout_names_its_own_agent() -> None:
    # More agents than the pipelines kept at once, some sharing a name,
    # blocking and async, retried: each timeout names the agent it cut.
    # (The ones that hang are async: a hung thread would outlive the test.)
    agents: list[SyncAgent] = []
    for i in range(150):
        kind = AsyncAgent if i % 2 or i % 5 == 0 else SyncAgent
        name = f"agent-{i % 100}" if i % 3 else f"{{odd}} name {i}"
        agents.append(kind(name, HANG if i % 5 == 0 else 0.0))
    retry = plait.Retry(attempts=2, initial_delay=0.0, retry_on=(Boom,))
    # A timeout generous enough that no quick agent meets it on a busy machine.
    out = await arun_agents_with_timeout(agents, "t", 0.5, retry=retry)
    for i, agent in enumerate(agents):
        if i % 5 == 0:
            error = assert_failure(out[i], f"agents[{i}]", plait.ToolTimeout)
            assert error.tool == agent.name  # type: ignore[attr-defined]
        else:
            assert out[i] == (agent.name, "t")


@anyio_test
async def test_a_timeout_in_raise_mode_names_the_agent() -> None:
    with pytest.raises(plait.StepFailed) as info:
        await arun_agents_with_timeout(
            [AsyncAgent("quick"), AsyncAgent("slow", HANG)],
            "t",
            0.05,
            on_error="raise",
        )
    assert info.value.path == "agents[1]"
    cause = info.value.__cause__
    assert isinstance(cause, plait.ToolTimeout)
    assert (cause.tool, cause.timeout) == ("slow", 0.05)


@anyio_test
async def test_an_agents_own_tool_timeout_keeps_its_name() -> None:
    # A timeout the agent raised itself (from a workflow it ran, say) is
    # its error as it is, whatever the agent's name.
    own = plait.ToolTimeout("search", 1.0)

    async def agent(task: Any) -> Any:
        raise own

    for timeout in (None, 5.0):
        out = await arun_agents_concurrently([agent], "t", timeout=timeout)
        assert assert_failure(out[0], "agents[0]", plait.ToolTimeout) is own
        assert own.tool == "search"


@anyio_test
async def test_a_hung_agent_frees_its_batch_slot_but_keeps_its_thread() -> None:
    release = threading.Event()
    hanger = HangingAgent(release)
    gauge = Gauge()
    after = SyncAgent("after", 0.0, gauge)
    try:
        # One agent in flight, two threads: once the hanger timed out, the
        # next agent runs on the other thread while the hung one still runs.
        out = await arun_agents_with_timeout(
            [hanger, after], "t", 0.05, batch_size=1, max_workers=2
        )
        assert not hanger.returned.is_set()
        assert gauge.started == ["after"]
    finally:
        release.set()
    check_timed_out(out, {0: "hanger"}, 0.05)
    assert out[1] == ("after", "t")


@anyio_test
async def test_hung_threads_count_against_max_workers_until_they_return() -> None:
    release = threading.Event()
    hanger = HangingAgent(release)
    gauge = Gauge()
    blocked = SyncAgent("blocked", 0.0, gauge)
    try:
        # The only thread is the hung one's: the next blocking agent cannot
        # start and times out waiting for it; an async agent needs none.
        started = anyio.current_time()
        out = await arun_agents_with_timeout(
            [hanger, blocked, AsyncAgent("async", 0.0)],
            "t",
            0.1,
            batch_size=3,
            max_workers=1,
        )
        elapsed = anyio.current_time() - started
        assert gauge.started == []
    finally:
        release.set()
    assert elapsed < PROMPT
    check_timed_out(out, {0: "hanger", 1: "blocked"}, 0.1)
    assert out[2] == ("async", "t")
    await until(hanger.returned.is_set)


@anyio_test
async def test_more_hung_agents_than_batch_size_still_return_in_bounded_time() -> None:
    release = threading.Event()
    hangers = [HangingAgent(release, f"h{i}") for i in range(6)]
    quick = [SyncAgent(f"q{i}", 0.0) for i in range(4)]
    try:
        started = anyio.current_time()
        out = await arun_agents_with_timeout(
            [*hangers, *quick], "t", 0.1, batch_size=2, max_workers=10
        )
        elapsed = anyio.current_time() - started
    finally:
        release.set()
    # Three rounds of two hung agents, each round one timeout long.
    assert elapsed < PROMPT
    check_timed_out(out, {i: f"h{i}" for i in range(6)}, 0.1)
    assert out[6:] == [(f"q{i}", "t") for i in range(4)]
    for hanger in hangers:
        assert returns_once_released(hanger)


@anyio_test
async def test_a_timed_out_agent_can_stop_early_with_check_cancelled() -> None:
    stopped: list[BaseException] = []

    def diligent(task: Any) -> str:
        try:
            for _ in range(1000):
                plait.check_cancelled()
                time.sleep(0.005)
        except BaseException as exc:
            stopped.append(exc)
            raise
        return "finished"

    out = await arun_agents_with_timeout([diligent], "t", 0.05)
    check_timed_out(out, {0: "diligent"}, 0.05)
    await until(lambda: bool(stopped), PROMPT)
    assert not isinstance(stopped[0], Exception)


# -- retry ------------------------------------------------------------------------------

NO_WAIT = plait.Retry(attempts=3, initial_delay=0.0, jitter=False)


@anyio_test
async def test_retry_retries_a_flaky_agent() -> None:
    flaky = FlakyAgent(2, lambda: ConnectionError("reset"))
    out = await arun_agents_concurrently([flaky], "t", retry=NO_WAIT)
    assert out == [("flaky", "t", 3)]
    assert flaky.calls == 3


@anyio_test
async def test_retry_gives_up_after_its_attempts() -> None:
    flaky = FlakyAgent(5, lambda: ConnectionError("reset"))
    out = await arun_agents_concurrently(
        [flaky], "t", retry=plait.Retry(attempts=2, initial_delay=0.0)
    )
    assert_failure(out[0], "agents[0]", ConnectionError)
    assert flaky.calls == 2


@anyio_test
async def test_retry_leaves_errors_it_does_not_retry() -> None:
    flaky = FlakyAgent(1, lambda: Boom("not transient"))
    out = await arun_agents_sequentially([flaky], "t", retry=NO_WAIT)
    assert_failure(out[0], "agents[0]", Boom)
    assert flaky.calls == 1


@anyio_test
async def test_retry_retries_an_attempt_that_timed_out() -> None:
    calls = 0

    async def slow_once(task: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(HANG)
        return (task, calls)

    out = await arun_agents_with_timeout([slow_once], "t", 0.05, retry=NO_WAIT)
    assert out == [("t", 2)]


@on_each_backend
def test_retry_on_each_backend(backend: str) -> None:
    flaky = FlakyAgent(1, lambda: TimeoutError("slow upstream"))
    steady = SyncAgent("steady")
    out = run_agents_with_different_tasks(
        [(flaky, 1), (steady, 2), (flaky, 3)], 1, retry=NO_WAIT, backend=backend
    )
    # one at a time: the first pair fails once and is retried, the third
    # succeeds at once
    assert out == [("flaky", 1, 2), ("steady", 2), ("flaky", 3, 3)]
    assert flaky.calls == 3
    assert steady.calls == 1


# -- bad input ---------------------------------------------------------------------------

Make = Callable[[SyncAgent], Awaitable[Any]]


def bad(name: str, make: Make, match: str) -> Any:
    return pytest.param(make, match, id=name)


BAD_INPUT = [
    bad(
        "a single agent",
        lambda ok: arun_agents_concurrently(ok, "t"),
        r"^agents must be a list of agents, got SyncAgent",
    ),
    bad(
        "a str",
        lambda ok: arun_agents_concurrently("researcher", "t"),
        r"^agents must be a list of agents, got str 'researcher'",
    ),
    bad(
        "a single function",
        lambda ok: arun_agents_sequentially(researcher, "t"),
        r"^agents must be a list of agents, got function",
    ),
    bad(
        "not an agent",
        lambda ok: arun_agents_concurrently([ok, ok, 42], "t"),
        r"^agents\[2\] must be an agent: an object with a run\(task\) method or an "
        r"arun\(task\) coroutine method, or a callable; got 42$",
    ),
    bad(
        "None as an agent",
        lambda ok: arun_agents_with_timeout([ok, None], "t", 1.0),
        r"^agents\[1\] must be an agent: .*; got None$",
    ),
    bad(
        "not an agent, monitored",
        lambda ok: arun_agents_with_resource_monitoring(
            [ok, "x"], "t", monitor=quiet_monitor()
        ),
        r"^agents\[1\] must be an agent",
    ),
    bad(
        "pairs a str",
        lambda ok: arun_agents_with_different_tasks("ab"),
        r"^pairs must be a list of \(agent, task\) pairs, got 'ab'",
    ),
    bad(
        "pairs a single pair's agent",
        lambda ok: arun_agents_with_different_tasks(ok),
        r"^pairs must be a list of \(agent, task\) pairs",
    ),
    bad(
        "a pair of one",
        lambda ok: arun_agents_with_different_tasks([(ok, 1), (ok,)]),
        r"^pairs\[1\] must be an \(agent, task\) pair, got \(<",
    ),
    bad(
        "a pair of three",
        lambda ok: arun_agents_with_different_tasks([(ok, 1, 2)]),
        r"^pairs\[0\] must be an \(agent, task\) pair",
    ),
    bad(
        "a bare agent in pairs",
        lambda ok: arun_agents_with_different_tasks([(ok, 1), ok]),
        r"^pairs\[1\] must be an \(agent, task\) pair",
    ),
    bad(
        "not an agent in a pair",
        lambda ok: arun_agents_with_different_tasks([(ok, 1), (ok, 2), (3, 4)]),
        r"^pairs\[2\] must be an agent: .*; got 3$",
    ),
    *(
        bad(
            f"batch_size {value!r}",
            lambda ok, value=value: arun_agents_concurrently([ok], "t", value),
            rf"^batch_size must be an int >= 1 or None, got {value!r}$",
        )
        for value in (0, -1, True, 2.0, "4")
    ),
    bad(
        "batch_size of pairs",
        lambda ok: arun_agents_with_different_tasks([(ok, 1)], batch_size=0),
        r"^batch_size must be an int >= 1 or None, got 0$",
    ),
    bad(
        "batch_size monitored",
        lambda ok: arun_agents_with_resource_monitoring(
            [ok], "t", batch_size=False, monitor=quiet_monitor()
        ),
        r"^batch_size must be an int >= 1 or None, got False$",
    ),
    *(
        bad(
            f"max_workers {value!r}",
            lambda ok, value=value: arun_agents_concurrently(
                [ok], "t", max_workers=value
            ),
            rf"^max_workers must be an int >= 1 or None, got {value!r}$",
        )
        for value in (0, False, 1.5)
    ),
    bad(
        "max_workers of pairs",
        lambda ok: arun_agents_with_different_tasks([(ok, 1)], max_workers=-2),
        r"^max_workers must be an int >= 1 or None, got -2$",
    ),
    *(
        bad(
            f"timeout {value!r}",
            lambda ok, value=value: arun_agents_with_timeout([ok], "t", value),
            rf"^timeout must be a number of seconds > 0.*, got {value!r}$",
        )
        for value in (0, -1.0, math.nan, "1", True, None)
    ),
    bad(
        "timeout of concurrently",
        lambda ok: arun_agents_concurrently([ok], "t", timeout=0),
        r"^timeout must be a number of seconds > 0 or None, got 0$",
    ),
    bad(
        "timeout of sequentially",
        lambda ok: arun_agents_sequentially([ok], "t", timeout=-3),
        r"^timeout must be a number of seconds > 0 or None, got -3$",
    ),
    bad(
        "retry a number",
        lambda ok: arun_agents_concurrently([ok], "t", retry=3),
        r"^retry must be a plait.Retry or None, got 3$",
    ),
    bad(
        "retry the class",
        lambda ok: arun_agents_sequentially([ok], "t", retry=plait.Retry),
        r"^retry must be a plait.Retry or None, got <class",
    ),
    bad(
        "on_error unknown",
        lambda ok: arun_agents_concurrently([ok], "t", on_error="ignore"),
        r"""^on_error must be 'collect' or 'raise', got 'ignore'$""",
    ),
    bad(
        "on_error of pairs",
        lambda ok: arun_agents_with_different_tasks([(ok, 1)], on_error=None),
        r"""^on_error must be 'collect' or 'raise', got None$""",
    ),
    bad(
        "monitor not a monitor",
        lambda ok: arun_agents_with_resource_monitoring([ok], "t", monitor="x"),
        r"^monitor must be a plait.agents.ResourceMonitor or None, got 'x'$",
    ),
]


@anyio_test
@pytest.mark.parametrize(("make", "match"), BAD_INPUT)
async def test_bad_input_raises_config_error_naming_the_field(
    make: Make, match: str
) -> None:
    ok = SyncAgent("ok")
    with pytest.raises(plait.ConfigError, match=match) as info:
        await make(ok)
    assert isinstance(info.value, ValueError)
    assert ok.calls == 0  # everything is checked before any agent runs


@on_each_backend
def test_sync_functions_raise_config_error_on_each_backend(backend: str) -> None:
    ok = SyncAgent("ok")
    with pytest.raises(plait.ConfigError, match=r"^agents\[1\] must be an agent"):
        run_agents_concurrently([ok, object()], "t", backend=backend)
    with pytest.raises(plait.ConfigError, match=r"^batch_size must be"):
        run_agents_concurrently([ok], "t", batch_size=0, backend=backend)
    with pytest.raises(plait.ConfigError, match=r"^pairs\[0\] must be"):
        run_agents_with_different_tasks([ok], backend=backend)
    with pytest.raises(plait.ConfigError, match=r"^timeout must be"):
        run_agents_with_timeout([ok], "t", -1, backend=backend)
    with pytest.raises(plait.ConfigError, match=r"^on_error must be"):
        run_agents_sequentially([ok], "t", on_error="skip", backend=backend)
    assert ok.calls == 0


# -- sync functions inside a running loop --------------------------------------------

SYNC_IN_A_LOOP = [
    pytest.param(
        lambda agent: run_agents_concurrently([agent], "t"),
        "arun_agents_concurrently",
        id="concurrently",
    ),
    pytest.param(
        lambda agent: run_agents_sequentially([agent], "t"),
        "arun_agents_sequentially",
        id="sequentially",
    ),
    pytest.param(
        lambda agent: run_agents_with_different_tasks([(agent, "t")]),
        "arun_agents_with_different_tasks",
        id="with_different_tasks",
    ),
    pytest.param(
        lambda agent: run_agents_with_timeout([agent], "t", 1.0),
        "arun_agents_with_timeout",
        id="with_timeout",
    ),
    pytest.param(
        lambda agent: run_agents_with_resource_monitoring(
            [agent], "t", monitor=quiet_monitor()
        ),
        "arun_agents_with_resource_monitoring",
        id="with_resource_monitoring",
    ),
]


@anyio_test
@pytest.mark.parametrize(("call", "twin"), SYNC_IN_A_LOOP)
async def test_sync_functions_refuse_a_running_loop_and_name_the_twin(
    call: Callable[[Any], Any], twin: str
) -> None:
    agent = SyncAgent("a")
    library = sniffio.current_async_library()
    with pytest.raises(RuntimeError) as info:
        call(agent)
    message = str(info.value)
    assert f"plait.agents.{twin[1:]}() cannot be called" in message
    assert f"running {library} event loop" in message
    assert f"await plait.agents.{twin}(...)" in message
    assert agent.calls == 0


def test_a_blocking_agent_may_call_the_sync_functions() -> None:
    """A worker thread runs no event loop, so the sync functions work there."""

    def manager(task: Any) -> Any:
        return run_agents_concurrently([SyncAgent("inner"), which_loop], task)

    assert run_agents_concurrently([manager], "t", backend="trio") == [
        [("inner", "t"), "uvloop"]
    ]


# -- agents as workflow tools ------------------------------------------------------------


@anyio_test
async def test_agent_tool_runs_an_agent_inside_a_workflow() -> None:
    agent = AsyncAgent("researcher")
    tool = agent_tool(agent, timeout=5)
    assert tool.name == "researcher"
    assert tool.timeout == 5
    assert tool.is_async
    out = await plait.Engine().run(
        plait.Call(tool, plait.Var("task")), {"task": "find"}
    )
    assert out == ("researcher", "find")
    assert agent_tool(SyncAgent("x"), name="renamed").name == "renamed"
    with pytest.raises(plait.ConfigError, match=r"^agent must be an agent"):
        agent_tool(42)


# -- property: limits and order under random agents -----------------------------------


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    backend=st.sampled_from(BACKENDS),
    specs=st.lists(
        st.tuples(st.sampled_from(sorted(KINDS)), st.integers(0, 8), st.booleans()),
        max_size=12,
    ),
    batch_size=st.none() | st.integers(1, 5),
    max_workers=st.none() | st.integers(1, 4),
)
def test_in_flight_never_exceeds_batch_size_and_nothing_is_lost(
    backend: str,
    specs: list[tuple[str, int, bool]],
    batch_size: int | None,
    max_workers: int | None,
) -> None:
    total = Gauge()
    threads = Gauge(parent=total)
    loop = Gauge(parent=total)
    agents = [
        KINDS[kind](f"a{i}", ms / 1000, threads if kind == "sync" else loop, fail=fail)
        for i, (kind, ms, fail) in enumerate(specs)
    ]
    out = run_agents_concurrently(agents, "t", batch_size, max_workers, backend=backend)

    expected = [
        plait.Failure(Boom(f"a{i} failed"), f"agents[{i}]") if fail else (f"a{i}", "t")
        for i, (_, _, fail) in enumerate(specs)
    ]
    assert out == expected
    width = batch_size or max_workers or DEFAULT_BATCH_SIZE
    assert total.peak <= width
    assert threads.peak <= min(width, max_workers or width)
    # every agent ran exactly once
    assert sorted(total.started) == sorted(f"a{i}" for i in range(len(specs)))
    assert [agent.calls for agent in agents] == [1] * len(specs)
    assert total.running == 0
