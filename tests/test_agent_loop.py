"""AgentLoop: limits, retries, timeouts, as-completed, streams and latency stats."""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

import plait.agents
from plait import ConfigError, PlaitError, Retry, ToolTimeout
from plait.agents import AgentLoop, AsCompleted, InvocationResult, _loop, percentile

pytestmark = pytest.mark.anyio

# Fast, deterministic retries: 10 ms then 20 ms.
FAST = Retry(attempts=3, initial_delay=0.01, jitter=False)


class Gauge:
    """Counts bodies running at once, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def enter(self) -> int:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            return self.running

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


async def drain(chunks: AsyncIterator[Any], into: list[Any]) -> None:
    """Append every chunk of ``chunks`` to ``into``."""
    async for chunk in chunks:
        into.append(chunk)


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.005)


async def echo(value: Any, *, suffix: str = "") -> str:
    await anyio.sleep(0)
    return f"{value}{suffix}"


def flaky(errors: list[BaseException], result: Any = "ok") -> Callable[[], Any]:
    """An async fn raising ``errors`` one per call, then returning ``result``."""
    calls: list[float] = []

    async def fn() -> Any:
        calls.append(anyio.current_time())
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


# -- construction ---------------------------------------------------------------


def test_defaults() -> None:
    loop = AgentLoop()
    assert loop.max_concurrency == 10
    assert loop.timeout == 300.0
    assert loop.retry == Retry()
    assert loop.retry is not None
    assert loop.retry.retry_on == (OSError, TimeoutError, plait.RateLimited)
    assert loop.collect_metrics is True
    assert loop.attempt_timeout is None
    assert loop.in_flight == 0
    assert loop.abandoned_threads == 0
    assert repr(loop).startswith("AgentLoop(max_concurrency=10, timeout=300.0,")
    assert AgentLoop(timeout=None, retry=None).timeout is None


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": -3}, "max_concurrency"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"max_concurrency": 2.5}, "max_concurrency"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"retry": "x"}, "retry"),
        ({"retry": 3}, "retry"),
        ({"collect_metrics": 1}, "collect_metrics"),
        ({"attempt_timeout": 0}, "attempt_timeout"),
    ],
)
def test_constructor_errors_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(PlaitError) as info:
        AgentLoop(**options)
    assert isinstance(info.value, ValueError)
    value = next(iter(options.values()))
    assert f"AgentLoop.{field} must be" in str(info.value)
    assert repr(value) in str(info.value)


def test_max_concurrency_setter_validates() -> None:
    loop = AgentLoop(max_concurrency=4)
    with pytest.raises(
        PlaitError, match=r"AgentLoop\.max_concurrency must be an int >= 1, got 0"
    ):
        loop.max_concurrency = 0
    assert loop.max_concurrency == 4
    loop.max_concurrency = 7
    assert loop.max_concurrency == 7


# -- run_one ------------------------------------------------------------------------


async def test_run_one_returns_the_output_and_timings() -> None:
    loop = AgentLoop()
    result = await loop.run_one("a", echo, 1, suffix="!")
    assert isinstance(result, InvocationResult)
    assert (result.agent_id, result.success, result.output, result.error) == (
        "a",
        True,
        "1!",
        None,
    )
    assert result.attempts == 1
    assert 0 < result.latency_ms <= result.total_ms


async def test_sync_fn_runs_on_a_worker_thread() -> None:
    loop = AgentLoop()
    here = threading.get_ident()
    result = await loop.run_one(
        "s", lambda x, *, y: (threading.get_ident(), x + y), 2, y=3
    )
    assert result.success
    ident, value = result.output
    assert ident != here
    assert value == 5


async def test_transient_errors_are_retried_and_attempts_counted() -> None:
    fn = flaky([OSError("down"), ConnectionResetError("reset")])
    result = await AgentLoop(retry=FAST).run_one("a", fn)
    assert result.success
    assert result.output == "ok"
    assert result.error is None
    assert result.attempts == 3
    assert len(fn.calls) == 3  # type: ignore[attr-defined]


async def test_sync_fn_is_retried_too() -> None:
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise TimeoutError("slow backend")
        return "done"

    result = await AgentLoop(retry=FAST).run_one("s", fn)
    assert (result.success, result.output, result.attempts) == (True, "done", 2)


async def test_other_errors_are_not_retried() -> None:
    error = ValueError("bad input")
    fn = flaky([error, error, error])
    result = await AgentLoop(retry=FAST).run_one("a", fn)
    assert not result.success
    assert result.output is None
    assert result.error is error
    assert result.attempts == 1
    assert len(fn.calls) == 1  # type: ignore[attr-defined]


async def test_retries_end_with_the_last_error() -> None:
    errors: list[BaseException] = [OSError(i) for i in range(5)]
    fn = flaky(errors)
    result = await AgentLoop(retry=FAST).run_one("a", fn)
    assert not result.success
    assert result.attempts == 3
    assert result.error is errors[2]


async def test_retry_none_means_one_attempt() -> None:
    fn = flaky([OSError("down")])
    result = await AgentLoop(retry=None).run_one("a", fn)
    assert (result.success, result.attempts) == (False, 1)
    assert isinstance(result.error, OSError)


async def test_retry_on_chooses_what_is_retried() -> None:
    by_type = AgentLoop(
        retry=Retry(attempts=2, initial_delay=0, retry_on=(ValueError,))
    )
    result = await by_type.run_one("a", flaky([ValueError("once")]))
    assert (result.success, result.attempts) == (True, 2)
    result = await by_type.run_one("b", flaky([OSError("not retried now")]))
    assert (result.success, result.attempts) == (False, 1)

    predicate = Retry(attempts=3, initial_delay=0, retry_on=lambda e: "retry" in str(e))
    result = await AgentLoop(retry=predicate).run_one(
        "c", flaky([KeyError("retry me")])
    )
    assert (result.success, result.attempts) == (True, 2)


async def test_backoff_grows_between_attempts() -> None:
    # The peer documents exponential backoff and retries at once.
    retry = Retry(attempts=3, initial_delay=0.04, backoff=2.0, jitter=False)
    fn = flaky([OSError(), OSError()])
    result = await AgentLoop(retry=retry).run_one("a", fn)
    assert result.attempts == 3
    first, second, third = fn.calls  # type: ignore[attr-defined]
    assert second - first >= 0.035
    assert third - second >= 0.075
    assert result.total_ms >= 110


async def test_latency_is_the_successful_attempt_and_total_includes_backoff() -> None:
    calls = []

    async def fn() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("first try fails at once")
        await anyio.sleep(0.05)
        return "ok"

    retry = Retry(attempts=2, initial_delay=0.06, jitter=False)
    result = await AgentLoop(retry=retry).run_one("a", fn)
    assert result.success
    assert result.attempts == 2
    assert result.latency_ms >= 45  # the second attempt's own sleep
    assert result.total_ms >= result.latency_ms + 55  # plus the backoff
    assert result.total_ms >= 105


async def test_timeout_bounds_one_slow_attempt_without_retrying_past_it() -> None:
    # The peer applied its timeout per attempt: 0.2 s became 0.8 s.
    loop = AgentLoop(timeout=0.2, retry=Retry(attempts=4, initial_delay=0.01))
    began = anyio.current_time()
    result = await loop.run_one("slow", anyio.sleep, 10)
    elapsed = anyio.current_time() - began
    assert 0.15 <= elapsed < 0.6
    assert not result.success
    assert isinstance(result.error, ToolTimeout)
    assert result.error.timeout == 0.2
    assert "'slow'" in str(result.error)
    assert result.attempts == 1
    assert loop.in_flight == 0


async def test_timeout_covers_every_attempt_and_backoff() -> None:
    loop = AgentLoop(
        timeout=0.3,
        attempt_timeout=0.06,
        retry=Retry(attempts=50, initial_delay=0.01, backoff=1.0, jitter=False),
    )
    began = anyio.current_time()
    result = await loop.run_one("hang", anyio.sleep, 10)
    elapsed = anyio.current_time() - began
    assert 0.22 <= elapsed < 0.6
    assert not result.success
    assert isinstance(result.error, ToolTimeout)
    assert result.error.tool == "hang"
    assert result.attempts >= 3
    assert result.latency_ms < 150  # one attempt, never the whole run
    assert result.total_ms >= 220
    assert loop.in_flight == 0


async def test_attempt_timeout_is_retried_by_default() -> None:
    calls = []

    async def fn() -> str:
        calls.append(1)
        if len(calls) == 1:
            await anyio.sleep(10)
        return "second time lucky"

    result = await AgentLoop(attempt_timeout=0.05, retry=FAST).run_one("a", fn)
    assert (result.success, result.output, result.attempts) == (
        True,
        "second time lucky",
        2,
    )


@pytest.mark.parametrize("agent_id", ["slow", "a{0}[1]", ""])
async def test_attempt_timeout_names_the_agent(agent_id: str) -> None:
    loop = AgentLoop(attempt_timeout=0.02, retry=None)
    result = await loop.run_one(agent_id, anyio.sleep, 10)
    assert isinstance(result.error, ToolTimeout)
    assert (result.error.tool, result.error.timeout) == (agent_id, 0.02)
    assert result.attempts == 1


async def test_many_agent_ids_each_get_their_own_name() -> None:
    # More distinct ids than the loop keeps pipelines for.
    loop = AgentLoop(max_concurrency=50, attempt_timeout=0.05, retry=None)

    async def fn(i: int) -> int:
        if i % 7 == 0:
            await anyio.sleep(10)
        return i

    tasks: list[Any] = [(f"agent-{i}", fn, (i,)) for i in range(600)]
    results = await loop.run_all(tasks)
    for i, result in enumerate(results):
        if i % 7 == 0:
            assert isinstance(result.error, ToolTimeout)
            assert result.error.tool == f"agent-{i}"
        else:
            assert (result.success, result.output) == (True, i)
    assert loop.in_flight == 0


async def test_retry_and_attempt_timeout_can_change_later() -> None:
    loop = AgentLoop(retry=None)
    assert (await loop.run_one("a", flaky([OSError()]))).attempts == 1
    loop.retry = FAST
    result = await loop.run_one("a", flaky([OSError()]))
    assert (result.success, result.attempts) == (True, 2)

    loop.retry = None
    loop.attempt_timeout = 0.02
    result = await loop.run_one("a", anyio.sleep, 10)
    assert isinstance(result.error, ToolTimeout)
    assert result.error.timeout == 0.02
    loop.attempt_timeout = None
    assert (await loop.run_one("a", anyio.sleep, 0.03)).success

    with pytest.raises(PlaitError, match=r"AgentLoop\.retry must be a plait\.Retry"):
        loop.retry = 3  # type: ignore[assignment]
    with pytest.raises(PlaitError, match=r"AgentLoop\.attempt_timeout must be"):
        loop.attempt_timeout = -1
    assert (loop.retry, loop.attempt_timeout) == (None, None)


async def test_timeout_starts_with_the_first_attempt_not_the_wait_for_a_slot() -> None:
    # The second waits ~0.18 s for the slot, then runs 0.14 s: past the
    # timeout in all, within it from its first attempt on.
    loop = AgentLoop(max_concurrency=1, timeout=0.3)
    results: dict[str, InvocationResult] = {}

    async def run(name: str, delay: float) -> None:
        results[name] = await loop.run_one(name, anyio.sleep, delay)

    began = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "first", 0.18)
        await wait_until(lambda: loop.in_flight == 1)
        tg.start_soon(run, "second", 0.14)
    assert anyio.current_time() - began >= 0.3
    assert results["first"].success
    assert results["second"].success


async def test_cancellation_propagates_and_frees_the_slot() -> None:
    loop = AgentLoop()
    with anyio.move_on_after(0.05) as scope:
        await loop.run_one("a", anyio.sleep, 10)
        pytest.fail("not cancelled")
    assert scope.cancelled_caught
    assert loop.in_flight == 0


async def test_agents_are_accepted_as_fn() -> None:
    class AsyncAgent:
        async def arun(self, task: str) -> str:
            await anyio.sleep(0)
            return f"async {task}"

    class SyncAgent:
        def run(self, task: str) -> tuple[str, int]:
            return f"sync {task}", threading.get_ident()

    class LazyAgent:
        def run(self, task: str) -> Any:
            return echo(task, suffix=" later")  # a coroutine, awaited for us

    loop = AgentLoop()
    assert (await loop.run_one("a", AsyncAgent(), "t")).output == "async t"
    output, ident = (await loop.run_one("s", SyncAgent(), "t")).output
    assert output == "sync t"
    assert ident != threading.get_ident()
    assert (await loop.run_one("l", LazyAgent(), "t")).output == "t later"
    with pytest.raises(ConfigError, match="fn of 'x' must be an agent"):
        await loop.run_one("x", object())


# -- concurrency ---------------------------------------------------------------------


async def test_limit_holds_for_async_fns() -> None:
    loop = AgentLoop(max_concurrency=3)
    gauge = Gauge()

    async def fn(i: int) -> int:
        gauge.enter()
        await anyio.sleep(0.01)
        gauge.leave()
        return i

    results = await loop.run_all([(f"a{i}", fn, (i,), {}) for i in range(12)])
    assert [r.output for r in results] == list(range(12))
    assert gauge.peak == 3
    assert loop.in_flight == 0


async def test_sync_fns_run_concurrently_up_to_the_limit() -> None:
    # More than the peer's default executor (min(32, cpus + 4) threads) on
    # a small machine; each call waits until all of them run at once.
    width = 12
    loop = AgentLoop(max_concurrency=width)
    gauge = Gauge()
    all_running = threading.Event()

    def fn() -> bool:
        if gauge.enter() == width:
            all_running.set()
        try:
            return all_running.wait(5)
        finally:
            gauge.leave()

    results = await loop.run_all([(f"s{i}", fn) for i in range(2 * width)])
    assert all(r.success and r.output is True for r in results)
    assert gauge.peak == width
    assert loop.in_flight == 0


async def test_max_concurrency_can_change_while_running() -> None:
    loop = AgentLoop(max_concurrency=1)
    gauge = Gauge()
    gate = anyio.Event()
    late_starts: list[int] = []
    lowered = False

    async def fn() -> None:
        running = gauge.enter()
        if lowered:
            late_starts.append(running)
        await gate.wait()
        await anyio.sleep(0.005)
        gauge.leave()

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop.run_all, [(f"a{i}", fn) for i in range(8)])
        await wait_until(lambda: gauge.running == 1)
        await anyio.sleep(0.02)
        assert gauge.running == 1
        loop.max_concurrency = 3
        await wait_until(lambda: gauge.running == 3)
        await anyio.sleep(0.02)
        assert gauge.peak == 3
        loop.max_concurrency = 1
        lowered = True
        gate.set()
    assert gauge.peak == 3
    assert late_starts == [1] * 5
    assert loop.in_flight == 0


async def test_the_slot_is_free_while_a_retry_backs_off() -> None:
    loop = AgentLoop(
        max_concurrency=1, retry=Retry(attempts=2, initial_delay=0.15, jitter=False)
    )
    events: list[str] = []
    tries = 0

    async def first() -> str:
        nonlocal tries
        tries += 1
        events.append(f"first try {tries}")
        if tries == 1:
            raise OSError("transient")
        return "first"

    async def second() -> str:
        events.append("second")
        return "second"

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop.run_one, "first", first)
        await wait_until(lambda: bool(events))
        tg.start_soon(loop.run_one, "second", second)
    assert events == ["first try 1", "second", "first try 2"]


# -- run_all / as_completed ------------------------------------------------------


async def test_run_all_keeps_input_order() -> None:
    finished: list[int] = []

    async def fn(i: int, delay: float) -> int:
        await anyio.sleep(delay)
        finished.append(i)
        return i

    delays = [0.12, 0.09, 0.06, 0.03, 0.0]
    tasks: list[Any] = [(f"a{i}", fn, (i, d), {}) for i, d in enumerate(delays)]
    results = await AgentLoop().run_all(tasks)
    assert [r.agent_id for r in results] == ["a0", "a1", "a2", "a3", "a4"]
    assert [r.output for r in results] == [0, 1, 2, 3, 4]
    assert finished == [4, 3, 2, 1, 0]


async def test_run_all_accepts_short_tuples_and_lists() -> None:
    loop = AgentLoop()
    assert await loop.run_all([]) == []
    tasks: list[Any] = [
        ("a", echo, (1,)),
        ["b", echo, [2], {"suffix": "?"}],
        ("c", lambda: 3),
    ]
    results = await loop.run_all(tasks)
    assert [r.output for r in results] == ["1", "2?", 3]


async def ok() -> str:
    return "ok"


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            [("a", ok), "oops"],
            r"tasks\[1\] must be an \(agent_id, fn, args, kwargs\) tuple",
        ),
        ([("a",)], r"tasks\[0\] must be an \(agent_id, fn, args, kwargs\) tuple"),
        ([("a", ok, (), {}, "extra")], r"tasks\[0\] must be"),
        ([("a", ok), ("b", ok, "xy")], r"tasks\[1\] args must be a tuple, got 'xy'"),
        ([("a", ok, (), [1])], r"tasks\[0\] kwargs must be a dict, got \[1\]"),
        ([("a", ok), ("b", ok), ("c", 42)], r"tasks\[2\] fn must be an agent"),
        (None, "tasks must be a list of"),
        ("abc", "tasks must be a list of"),
    ],
)
@pytest.mark.parametrize("method", ["run_all", "as_completed"])
async def test_bad_tasks_are_named(tasks: Any, message: str, method: str) -> None:
    loop = AgentLoop()

    async def call() -> Any:
        if method == "run_all":
            return await loop.run_all(tasks)
        return loop.as_completed(tasks)  # checked at once, before anything runs

    with pytest.raises(ConfigError, match=message):
        await call()
    assert loop.in_flight == 0


def sleeper(delay: float, cancelled: list[str] | None = None) -> Callable[[str], Any]:
    async def fn(name: str) -> str:
        try:
            await anyio.sleep(delay)
        except anyio.get_cancelled_exc_class():
            if cancelled is not None:
                cancelled.append(name)
            raise
        return name

    return fn


def delayed_tasks(delays: list[float], cancelled: list[str] | None = None) -> list[Any]:
    return [(f"a{i}", sleeper(d, cancelled), (f"a{i}",)) for i, d in enumerate(delays)]


async def test_as_completed_yields_in_completion_order() -> None:
    loop = AgentLoop()
    seen = []
    async with loop.as_completed(delayed_tasks([0.5, 0.01, 0.25])) as results:
        assert isinstance(results, AsCompleted)
        async for result in results:
            seen.append(result.agent_id)
            assert result.output == result.agent_id
    assert seen == ["a1", "a2", "a0"]
    assert loop.in_flight == 0


async def test_as_completed_hands_over_the_first_result_at_once() -> None:
    loop = AgentLoop()
    began = anyio.current_time()
    async with loop.as_completed(delayed_tasks([0.4, 0.01])) as results:
        first = await results.__anext__()
        assert first.agent_id == "a1"
        assert anyio.current_time() - began < 0.3
        second = await results.__anext__()
        assert second.agent_id == "a0"
        with pytest.raises(StopAsyncIteration):
            await results.__anext__()


ENTER_FIRST = r"async with loop\.as_completed\(tasks\) as results"


async def test_as_completed_must_be_entered_before_it_is_iterated() -> None:
    # No task group could own invocations running while a plain `async for`
    # body runs: the error says what to write instead, and nothing starts.
    loop = AgentLoop()
    calls: list[str] = []

    async def fn(name: str) -> str:
        calls.append(name)
        return name

    results = loop.as_completed([("a", fn, ("a",)), ("b", fn, ("b",))])
    with pytest.raises(RuntimeError, match=ENTER_FIRST):
        [r async for r in results]
    with pytest.raises(RuntimeError, match=ENTER_FIRST):
        await results.__anext__()
    with pytest.raises(RuntimeError, match=ENTER_FIRST):
        [r async for r in loop.as_completed([])]
    await anyio.sleep(0.01)
    assert calls == []
    assert loop.in_flight == 0

    async with results:  # still usable the right way
        assert sorted([r.output async for r in results]) == ["a", "b"]
    assert sorted(calls) == ["a", "b"]


async def test_leaving_async_with_early_cancels_the_rest() -> None:
    loop = AgentLoop()
    cancelled: list[str] = []
    tasks = [("quick", sleeper(0.01), ("quick",)), *delayed_tasks([10, 10], cancelled)]
    began = anyio.current_time()
    with anyio.fail_after(3):  # exits cleanly: the caller's scopes are intact
        async with loop.as_completed(tasks) as results:
            async for result in results:
                assert result.agent_id == "quick"
                break
    assert anyio.current_time() - began < 2
    assert sorted(cancelled) == ["a0", "a1"]
    assert loop.in_flight == 0
    assert [r async for r in results] == []  # closed


async def test_an_error_in_the_block_propagates_as_is() -> None:
    loop = AgentLoop()
    cancelled: list[str] = []
    tasks = [("quick", sleeper(0), ("quick",)), *delayed_tasks([10], cancelled)]

    async def body() -> None:
        async with loop.as_completed(tasks) as results:
            async for _ in results:
                raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await body()
    assert cancelled == ["a0"]
    assert loop.in_flight == 0


async def test_as_completed_is_cancelled_from_outside() -> None:
    loop = AgentLoop()
    cancelled: list[str] = []
    with anyio.move_on_after(0.05) as scope:
        async with loop.as_completed(delayed_tasks([10, 10], cancelled)) as results:
            async for _ in results:
                pytest.fail("nothing finishes")
    assert scope.cancelled_caught
    assert sorted(cancelled) == ["a0", "a1"]
    assert loop.in_flight == 0


async def test_as_completed_invocations_are_children_of_the_callers_task() -> None:
    loop = AgentLoop()
    parents: list[int | None] = []

    async def fn() -> int:
        parents.append(anyio.get_current_task().parent_id)
        return 1

    async with loop.as_completed([("a", fn), ("b", fn)]) as results:
        assert [r.output async for r in results] == [1, 1]
    me = anyio.get_current_task().id
    assert parents == [me, me]


async def test_as_completed_misuse() -> None:
    loop = AgentLoop()
    results = loop.as_completed(delayed_tasks([0.01]))
    async with results:
        with pytest.raises(RuntimeError, match="entered only once"):
            async with results:
                pass
        await results.aclose()  # cancels, and ends the iteration
        assert [r async for r in results] == []
    with pytest.raises(RuntimeError, match="entered only once"):
        async with results:
            pass
    assert [r async for r in results] == []  # closed: nothing more

    async with loop.as_completed([]) as empty:
        assert [r async for r in empty] == []


# -- streams ---------------------------------------------------------------------------


async def numbers(
    count: int, delay: float = 0.0, *, start: int = 0
) -> AsyncIterator[int]:
    for i in range(start, start + count):
        await anyio.sleep(delay)
        yield i


async def test_stream_relays_chunks_in_order() -> None:
    loop = AgentLoop()
    chunks = [c async for c in loop.stream("s", numbers, 5, start=10)]
    assert chunks == [10, 11, 12, 13, 14]
    assert loop.in_flight == 0
    assert loop.latency_stats()["count"] == 1
    assert loop.latency_stats("total")["count"] == 1


async def test_stream_accepts_async_iterables() -> None:
    class Chunks:
        def __aiter__(self) -> AsyncIterator[int]:
            return numbers(3)

    assert [c async for c in AgentLoop().stream("s", Chunks)] == [0, 1, 2]


async def test_chunk_timeout_cuts_a_long_gap() -> None:
    loop = AgentLoop()
    closed = []

    async def stalls() -> AsyncIterator[str]:
        try:
            yield "first"
            await anyio.sleep(10)
            yield "never"
        finally:
            closed.append(True)

    got: list[Any] = []
    began = anyio.current_time()
    with pytest.raises(ToolTimeout) as info:
        await drain(loop.stream("s", stalls, chunk_timeout=0.05), got)
    assert anyio.current_time() - began < 1
    assert info.value.timeout == 0.05
    assert info.value.tool == "s"
    assert got == ["first"]
    assert closed == [True]
    assert loop.in_flight == 0


async def test_timeout_bounds_the_whole_stream() -> None:
    loop = AgentLoop(timeout=0.15)
    got: list[Any] = []
    began = anyio.current_time()
    with pytest.raises(ToolTimeout) as info:
        await drain(loop.stream("s", numbers, 1000, 0.02, chunk_timeout=1), got)
    assert 0.12 <= anyio.current_time() - began < 0.6
    assert info.value.timeout == 0.15
    assert 1 <= len(got) < 20  # of 1000
    assert got == list(range(len(got)))
    assert loop.in_flight == 0
    assert loop.latency_stats()["count"] == 0


async def test_stream_holds_its_slot_until_it_ends() -> None:
    loop = AgentLoop(max_concurrency=1)
    events: list[str] = []

    async def other() -> None:
        events.append("run_one")

    async with anyio.create_task_group() as tg:
        async for chunk in loop.stream("s", numbers, 3):
            events.append(f"chunk {chunk}")
            if chunk == 0:
                tg.start_soon(loop.run_one, "other", other)
            await anyio.sleep(0.02)
            assert loop.in_flight == 1
        events.append("end")
    assert events == ["chunk 0", "chunk 1", "chunk 2", "end", "run_one"]


def closing_numbers(closed: list[int]) -> Callable[[], AsyncIterator[int]]:
    async def gen() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
                await anyio.sleep(0)
        finally:
            closed.append(1)

    return gen


async def test_early_exit_under_aclosing_frees_the_slot_at_once() -> None:
    loop = AgentLoop(max_concurrency=1)
    closed: list[int] = []
    async with contextlib.aclosing(loop.stream("s", closing_numbers(closed))) as chunks:
        async for chunk in chunks:
            if chunk == 2:
                break
    assert closed == [1]
    assert loop.in_flight == 0


async def test_early_exit_without_aclosing_frees_the_slot_soon() -> None:
    # The peer's slot leaked for good; here the dropped generator is closed
    # by the event loop's async-generator finalizer within a few turns.
    loop = AgentLoop(max_concurrency=1)
    closed: list[int] = []
    async for chunk in loop.stream("s", closing_numbers(closed)):
        if chunk == 2:
            break
    for _ in range(10):
        if loop.in_flight == 0:
            break
        await anyio.sleep(0)
    assert loop.in_flight == 0
    assert closed == [1]
    assert (await loop.run_one("next", echo, 1)).output == "1"


async def test_an_error_in_the_stream_propagates_and_frees_the_slot() -> None:
    loop = AgentLoop()

    async def breaks() -> AsyncIterator[int]:
        yield 1
        raise ValueError("stream broke")

    got: list[Any] = []
    with pytest.raises(ValueError, match="stream broke"):
        await drain(loop.stream("s", breaks), got)
    assert got == [1]
    assert loop.in_flight == 0


async def test_stream_fn_must_return_an_async_iterator() -> None:
    loop = AgentLoop()
    with pytest.raises(
        ConfigError, match="stream_fn of 's' must return an async iterator"
    ):
        await drain(loop.stream("s", lambda: [1, 2]), [])
    assert loop.in_flight == 0
    with pytest.raises(
        ConfigError, match="chunk_timeout must be a number of seconds > 0"
    ):
        await drain(loop.stream("s", numbers, 1, chunk_timeout=0), [])
    assert loop.in_flight == 0


# -- latency statistics --------------------------------------------------------------------


def test_percentile_interpolates_linearly() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([7.0], 99) == 7.0
    ten = [float(i) for i in range(1, 11)]
    assert percentile(ten, 0) == 1.0
    assert percentile(ten, 100) == 10.0
    assert percentile(ten, 50) == 5.5  # the peer's int(n * p) rank gave 6
    assert percentile(ten, 95) == pytest.approx(9.55)
    assert percentile(ten, 99) == pytest.approx(9.91)

    rng = random.Random(7)
    for n in (2, 3, 10, 57, 200):
        data = sorted(rng.uniform(0, 1000) for _ in range(n))
        cuts = statistics.quantiles(data, n=100, method="inclusive")
        for q in (1, 25, 50, 95, 99):
            assert percentile(data, q) == pytest.approx(cuts[q - 1])


@pytest.mark.parametrize("q", [-1, 100.5, float("nan")])
def test_percentile_rejects_bad_input(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0, 2.0], q)
    with pytest.raises(ValueError, match="no data"):
        percentile([], 50)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The loop's timer, advanced only by the test's agents (seconds)."""
    now = [100.0]
    monkeypatch.setattr(_loop, "_perf", lambda: now[0])
    return now


# The histogram's buckets are about 1.1% wide; a percentile is a bucket's middle.
WITHIN = 0.006


async def test_latency_stats_for_known_latencies(fake_clock: list[float]) -> None:
    async def takes(ms: float, fail: bool = False) -> None:
        fake_clock[0] += ms / 1000.0
        if fail:
            raise ValueError("failed")

    loop = AgentLoop()
    assert loop.latency_stats() == {
        "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "count": 0,
    }  # fmt: skip
    known = [float(ms) for ms in range(1, 101)]
    random.Random(3).shuffle(known)
    for ms in known:
        await loop.run_one("a", takes, ms)
    await loop.run_one("failed", takes, 500.0, True)

    stats = loop.latency_stats()
    assert set(stats) == {"p50_ms", "p95_ms", "p99_ms", "mean_ms", "count"}
    assert stats["count"] == 100
    # The latency at rank q / 100 * (count - 1), rounded down, within ~1%.
    assert stats["p50_ms"] == pytest.approx(50.0, rel=WITHIN)
    assert stats["p95_ms"] == pytest.approx(95.0, rel=WITHIN)
    assert stats["p99_ms"] == pytest.approx(99.0, rel=WITHIN)
    assert stats["mean_ms"] == pytest.approx(50.5)  # exact
    ordered = sorted(known)
    for q in (50, 95, 99):
        assert stats[f"p{q}_ms"] == pytest.approx(percentile(ordered, q), rel=0.011)

    total = loop.latency_stats("total")  # failures count here
    assert total["count"] == 101
    assert total["mean_ms"] == pytest.approx((sum(known) + 500.0) / 101)
    assert total["p99_ms"] == pytest.approx(100.0, rel=WITHIN)
    with pytest.raises(ConfigError, match='which must be "attempt" or "total"'):
        loop.latency_stats("p50")  # type: ignore[arg-type]

    loop.reset_metrics()
    assert loop.latency_stats()["count"] == 0
    assert loop.latency_stats("total") == loop.latency_stats()
    assert loop.latency_stats()["p99_ms"] == 0.0


async def test_total_latency_includes_retries(fake_clock: list[float]) -> None:
    calls = []

    async def fn() -> None:
        calls.append(1)
        fake_clock[0] += 0.010
        if len(calls) == 1:
            raise OSError("once")

    loop = AgentLoop(retry=Retry(attempts=2, initial_delay=0, jitter=False))
    result = await loop.run_one("a", fn)
    assert result.attempts == 2
    assert result.latency_ms == pytest.approx(10.0)
    assert result.total_ms == pytest.approx(20.0)
    assert loop.latency_stats()["p50_ms"] == pytest.approx(10.0, rel=WITHIN)
    assert loop.latency_stats("total")["p50_ms"] == pytest.approx(20.0, rel=WITHIN)


async def test_a_failed_attempt_has_its_own_latency(fake_clock: list[float]) -> None:
    durations = iter([0.030, 0.010])

    async def fn() -> None:
        fake_clock[0] += next(durations)
        raise OSError("down")

    loop = AgentLoop(retry=Retry(attempts=2, initial_delay=0, jitter=False))
    result = await loop.run_one("a", fn)
    assert (result.success, result.attempts) == (False, 2)
    assert result.latency_ms == pytest.approx(10.0)  # the last attempt's
    assert result.total_ms == pytest.approx(40.0)
    assert loop.latency_stats()["count"] == 0  # no successful attempt
    assert loop.latency_stats("total")["count"] == 1


async def test_collect_metrics_false_records_nothing() -> None:
    loop = AgentLoop(collect_metrics=False)
    await loop.run_one("a", echo, 1)
    await loop.run_one("b", flaky([ValueError()]))
    await loop.run_all([("c", echo, (2,))])
    assert [c async for c in loop.stream("s", numbers, 2)] == [0, 1]
    assert loop.latency_stats()["count"] == 0
    assert loop.latency_stats("total")["count"] == 0


# -- blocking agents that hang ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["attempt_timeout", "timeout"])
async def test_a_hanging_sync_fn_is_abandoned_and_keeps_its_slot(which: str) -> None:
    loop = AgentLoop(max_concurrency=1, retry=None, **{which: 0.05})  # type: ignore[arg-type]
    release = threading.Event()
    started = threading.Event()

    def hangs() -> str:
        started.set()
        release.wait(10)
        return "too late"

    try:
        began = anyio.current_time()
        result = await loop.run_one("hang", hangs)
        assert anyio.current_time() - began < 1
        assert not result.success
        assert isinstance(result.error, ToolTimeout)
        assert result.error.timeout == 0.05
        assert loop.abandoned_threads == 1
        assert loop.in_flight == 1  # the thread still runs and holds the slot

        done: list[InvocationResult] = []

        async def next_one() -> None:
            done.append(await loop.run_one("next", echo, "after"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(next_one)
            await anyio.sleep(0.05)
            assert done == []  # waits for the hung thread's slot
            release.set()
        assert done[0].output == "after"
        await wait_until(lambda: loop.in_flight == 0)
    finally:
        release.set()


async def test_a_retry_behind_a_hung_thread_ends_at_the_timeout() -> None:
    loop = AgentLoop(
        max_concurrency=1,
        timeout=0.25,
        attempt_timeout=0.05,
        retry=Retry(attempts=5, initial_delay=0.01, jitter=False),
    )
    release = threading.Event()
    try:
        began = anyio.current_time()
        result = await loop.run_one("hang", lambda: release.wait(10))
        assert 0.2 <= anyio.current_time() - began < 1
        assert isinstance(result.error, ToolTimeout)
        assert result.error.timeout == 0.25
        # The second attempt never got the slot the hung thread holds.
        assert result.attempts == 1
        assert result.latency_ms < 200  # the first attempt, not the wait after it
        assert result.total_ms >= 200
        assert loop.abandoned_threads == 1
    finally:
        release.set()
    await wait_until(lambda: loop.in_flight == 0)


def test_exported_from_plait_agents() -> None:
    assert plait.agents.AgentLoop is AgentLoop
    assert plait.agents.percentile is percentile
    assert issubclass(ToolTimeout, TimeoutError)


@pytest.mark.parametrize("max_samples", [1, 2, 3, 4, 7])
async def test_latency_stats_cover_the_latest_max_samples(
    fake_clock: list[float], max_samples: int
) -> None:
    async def takes(ms: float) -> None:
        fake_clock[0] += ms / 1000.0

    loop = AgentLoop(max_samples=max_samples)
    recorded: list[float] = []
    for ms in range(1, 4 * max_samples + 3):
        await loop.run_one("a", takes, float(ms))
        recorded.append(float(ms))
        stats = loop.latency_stats()
        # At most the latest max_samples, at least the latest half of them.
        assert (
            min(len(recorded), math.ceil(max_samples / 2))
            <= stats["count"]
            <= min(len(recorded), max_samples)
        )
        latest = recorded[-int(stats["count"]) :]
        assert stats["mean_ms"] == pytest.approx(statistics.fmean(latest))
        assert loop.latency_stats("total") == stats
    loop.reset_metrics()
    assert loop.latency_stats()["count"] == 0


def test_max_samples_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match="max_samples"):
        AgentLoop(max_samples=0)
