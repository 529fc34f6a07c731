"""The Engine: configuration, call_tools, run statistics and shared limits."""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import pytest

import plait

pytestmark = pytest.mark.anyio


class Gauge:
    """Counts tool bodies running at once (async tools, one loop)."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.order: list[Any] = []

    async def hold(self, tag: Any, seconds: float) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.order.append(tag)
        try:
            await anyio.sleep(seconds)
        finally:
            self.running -= 1


# -- configuration -----------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10", None])
def test_max_concurrency_must_be_a_positive_int(value: object) -> None:
    with pytest.raises(plait.ConfigError, match="max_concurrency") as info:
        plait.Engine(max_concurrency=value)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)
    assert isinstance(info.value, plait.PlaitError)


@pytest.mark.parametrize("value", [5, 2.0, "10/s", {"rate": 5}, (5, 1.0)])
def test_rate_limit_must_be_a_rate_limit(value: object) -> None:
    with pytest.raises(plait.ConfigError, match="rate_limit"):
        plait.Engine(rate_limit=value)  # type: ignore[arg-type]


def test_limiters_must_be_a_registry() -> None:
    with pytest.raises(plait.ConfigError, match="limiters"):
        plait.Engine(limiters={"a": 1})  # type: ignore[arg-type]


def test_valid_configuration_is_kept() -> None:
    rate = plait.RateLimit(5)
    reg = plait.LimiterRegistry()
    engine = plait.Engine(max_concurrency=7, rate_limit=rate, limiters=reg)
    assert engine.max_concurrency == 7
    assert engine.rate_limit is rate
    assert engine.limiters is reg
    assert engine.abandoned_threads == 0
    assert "max_concurrency=7" in repr(engine)


@pytest.mark.parametrize("deadline", [0, -1, -0.5, math.nan, "1", True])
async def test_deadline_must_be_positive(deadline: object) -> None:
    ran = False

    @plait.tool
    async def work() -> None:
        nonlocal ran
        ran = True

    engine = plait.Engine(tools=[work])
    with pytest.raises(plait.ConfigError, match="deadline"):
        await engine.run(plait.Call("work"), deadline=deadline)  # type: ignore[arg-type]
    assert ran is False


async def test_deadline_stops_the_run_with_step_timeout() -> None:
    cancelled = []

    @plait.tool
    async def slow() -> None:
        try:
            await anyio.sleep(5)
        except BaseException:
            cancelled.append(True)
            raise

    engine = plait.Engine(tools=[slow])
    started = anyio.current_time()
    with pytest.raises(plait.StepTimeout) as info:
        await engine.run(
            plait.Parallel(plait.Call("slow"), plait.Call("slow")), deadline=0.1
        )
    assert anyio.current_time() - started < 1.0
    assert isinstance(info.value, TimeoutError)
    assert info.value.path == ""
    assert cancelled == [True, True]


async def test_deadline_not_reached_returns_normally() -> None:
    @plait.tool
    async def quick() -> int:
        await anyio.sleep(0.01)
        return 1

    engine = plait.Engine(tools=[quick])
    assert await engine.run(plait.Call("quick"), deadline=5) == 1
    result = await engine.execute(plait.Call("quick"), deadline=5)
    assert result.output == 1


def test_functions_registration() -> None:
    def total(a: int, b: int) -> int:
        return a + b

    engine = plait.Engine(functions=[total, ("twice", lambda x: 2 * x)])
    assert set(engine.functions) == {"total", "twice"}
    engine2 = plait.Engine(functions={"add": total})
    assert engine2.functions == {"add": total}
    with pytest.raises(plait.ConfigError, match="total"):
        plait.Engine(functions=[total, ("total", total)])
    with pytest.raises(plait.ConfigError):
        plait.Engine(functions=[42])  # type: ignore[list-item]


async def test_run_rejects_things_that_are_not_steps() -> None:
    with pytest.raises(plait.WorkflowError):
        await plait.Engine().run("Call('x')")  # type: ignore[arg-type]


async def test_workflow_inputs_are_checked() -> None:
    @plait.tool
    async def echo(x: Any) -> Any:
        return x

    engine = plait.Engine(tools=[echo])
    wf = plait.Workflow(plait.Call("echo", plait.Var("q")), name="w", inputs=("q",))
    assert await engine.run(wf, {"q": 3}) == 3
    with pytest.raises(plait.WorkflowError, match="'q'") as info:
        await engine.run(wf, {})
    assert info.value.path == "inputs"
    with pytest.raises(plait.WorkflowError, match="'extra'"):
        await engine.run(wf, {"q": 1, "extra": 2})
    with pytest.raises(plait.WorkflowError):
        await engine.run(wf, [("q", 1)])  # type: ignore[arg-type]


# -- running inside the caller's structure -----------------------------------


async def test_engine_runs_inside_the_callers_task_group() -> None:
    @plait.tool
    async def double(x: int) -> int:
        await anyio.sleep(0.01)
        return 2 * x

    engine = plait.Engine(tools=[double])
    out: dict[int, int] = {}

    async def one(i: int) -> None:
        out[i] = await engine.run(plait.Call("double", i))

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(one, i)
    assert out == {i: 2 * i for i in range(5)}


async def test_concurrent_runs_share_the_tool_limit() -> None:
    gauge = Gauge()

    @plait.tool(concurrency_limit=2)
    async def work(i: int) -> int:
        await gauge.hold(i, 0.02)
        return i

    engine = plait.Engine(tools=[work])
    wf = plait.Parallel(*[plait.Call("work", i) for i in range(4)])
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(engine.run, wf)
    assert gauge.peak == 2


async def test_max_concurrency_bounds_all_tools() -> None:
    gauge = Gauge()

    @plait.tool
    async def a(i: int) -> None:
        await gauge.hold(("a", i), 0.02)

    engine = plait.Engine(tools=[a], max_concurrency=3)
    wf = plait.Parallel(*[plait.Call("a", i) for i in range(9)])
    await engine.run(wf)
    assert gauge.peak == 3


async def test_shared_limiter_registry_limits_across_engines() -> None:
    gauge = Gauge()

    async def body(i: int) -> int:
        await gauge.hold(i, 0.02)
        return i

    shared = plait.LimiterRegistry()
    first = plait.Engine(
        tools=[plait.tool(name="work", concurrency_limit=1)(body)], limiters=shared
    )
    second = plait.Engine(
        tools=[plait.tool(name="work", concurrency_limit=1)(body)], limiters=shared
    )
    wf = plait.Parallel(*[plait.Call("work", i) for i in range(3)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run, wf)
        tg.start_soon(second.run, wf)
    assert gauge.peak == 1
    assert shared.get_limit("tool:work") == 1


async def test_separate_engines_have_separate_tool_limits() -> None:
    gauge = Gauge()

    @plait.tool(concurrency_limit=1)
    async def work(i: int) -> int:
        await gauge.hold(i, 0.05)
        return i

    first = plait.Engine(tools=[work])
    second = plait.Engine(tools=[work])
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run, plait.Call("work", 1))
        tg.start_soon(second.run, plait.Call("work", 2))
    assert gauge.peak == 2


# -- call_tools ----------------------------------------------------------------


async def test_call_tools_results_in_order_when_finishing_out_of_order() -> None:
    finished: list[int] = []

    @plait.tool
    async def wait(i: int, seconds: float) -> int:
        await anyio.sleep(seconds)
        finished.append(i)
        return i * 10

    engine = plait.Engine(tools=[wait])
    calls = [("wait", {"i": i, "seconds": 0.08 - 0.02 * i}) for i in range(4)]
    assert await engine.call_tools(calls, parallel=True) == [0, 10, 20, 30]
    assert finished == [3, 2, 1, 0]


async def test_call_tools_parallel_overlaps() -> None:
    gauge = Gauge()

    @plait.tool
    async def work(i: int) -> int:
        await gauge.hold(i, 0.1)
        return i

    @plait.tool
    def work_sync(i: int) -> int:
        time.sleep(0.1)
        return -i

    engine = plait.Engine(tools=[work, work_sync])
    started = anyio.current_time()
    out = await engine.call_tools(
        [("work", {"i": i}) for i in range(4)]
        + [("work_sync", {"i": i}) for i in range(4)]
    )
    elapsed = anyio.current_time() - started
    assert out == [0, 1, 2, 3, 0, -1, -2, -3]
    assert gauge.peak == 4
    # one by one it would take 0.8 s
    assert elapsed < 0.45


async def test_call_tools_sequential_runs_one_by_one() -> None:
    gauge = Gauge()

    @plait.tool
    async def work(i: int) -> int:
        await gauge.hold(i, 0.02)
        return i

    engine = plait.Engine(tools=[work])
    started = anyio.current_time()
    out = await engine.call_tools(
        [("work", {"i": i}) for i in range(5)], parallel=False
    )
    elapsed = anyio.current_time() - started
    assert out == [0, 1, 2, 3, 4]
    assert gauge.peak == 1
    assert gauge.order == [0, 1, 2, 3, 4]
    assert elapsed >= 0.09


async def test_call_tools_failure_raises_with_path_and_cancels_the_others() -> None:
    cancelled: list[int] = []

    @plait.tool
    async def slow(i: int) -> int:
        try:
            await anyio.sleep(5)
        except BaseException:
            cancelled.append(i)
            raise
        return i

    @plait.tool
    async def broken() -> None:
        await anyio.sleep(0.02)
        raise ValueError("broken tool")

    engine = plait.Engine(tools=[slow, broken])
    started = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await engine.call_tools(
            [("slow", {"i": 0}), ("broken", {}), ("slow", {"i": 2})]
        )
    assert anyio.current_time() - started < 1.0
    assert info.value.path == "calls[1]"
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.error is info.value.__cause__
    assert sorted(cancelled) == [0, 2]


async def test_call_tools_sequential_failure_stops_the_batch() -> None:
    ran: list[int] = []

    @plait.tool
    async def step(i: int) -> int:
        ran.append(i)
        if i == 1:
            raise KeyError("no")
        return i

    engine = plait.Engine(tools=[step])
    with pytest.raises(plait.StepFailed) as info:
        await engine.call_tools([("step", {"i": i}) for i in range(3)], parallel=False)
    assert info.value.path == "calls[1]"
    assert isinstance(info.value.__cause__, KeyError)
    assert ran == [0, 1]


@pytest.mark.parametrize("parallel", [True, False])
async def test_call_tools_collect_puts_failures_in_place(parallel: bool) -> None:
    @plait.tool
    async def check(x: int) -> int:
        await anyio.sleep(0.01)
        if x < 0:
            raise ValueError(f"negative: {x}")
        return x

    @plait.tool(timeout=0.05)
    async def hang() -> None:
        await anyio.sleep(5)

    engine = plait.Engine(tools=[check, hang])
    out = await engine.call_tools(
        [("check", {"x": 1}), ("check", {"x": -2}), ("hang", {}), ("check", {"x": 3})],
        parallel=parallel,
        on_error="collect",
    )
    assert out[0] == 1
    assert out[3] == 3
    assert isinstance(out[1], plait.Failure)
    assert isinstance(out[1].error, ValueError)
    assert out[1].path == "calls[1]"
    assert isinstance(out[2], plait.Failure)
    assert isinstance(out[2].error, plait.ToolTimeout)
    assert out[2].path == "calls[2]"


async def test_call_tools_unknown_tool() -> None:
    ran = False

    @plait.tool
    async def search(q: str) -> str:
        nonlocal ran
        ran = True
        return q

    engine = plait.Engine(tools=[search])
    with pytest.raises(plait.UnknownTool) as info:
        await engine.call_tools([("search", {"q": "a"}), ("serch", {"q": "b"})])
    assert info.value.path == "calls[1]"
    assert "serch" in str(info.value)
    assert ran is False


async def test_call_tools_accepts_tool_objects() -> None:
    @plait.tool
    async def registered(x: int) -> int:
        return x + 1

    @plait.tool
    def adhoc(x: int) -> int:
        return x - 1

    engine = plait.Engine(tools=[registered])
    assert await engine.call_tools([(registered, {"x": 1}), (adhoc, {"x": 1})]) == [
        2,
        0,
    ]


async def test_call_tools_uses_tool_policies() -> None:
    tries = 0

    @plait.tool(retry=plait.Retry(attempts=3, initial_delay=0.0, jitter=False))
    async def flaky() -> str:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise ConnectionError("again")
        return "ok"

    engine = plait.Engine(tools=[flaky])
    assert await engine.call_tools([("flaky", {})]) == ["ok"]
    assert tries == 3


async def test_call_tools_edge_cases() -> None:
    @plait.tool
    async def echo(x: int) -> int:
        return x

    engine = plait.Engine(tools=[echo])
    assert await engine.call_tools([]) == []
    assert await engine.call_tools([("echo", {"x": 5})]) == [5]
    assert await engine.call_tools(iter([("echo", {"x": 6})])) == [6]
    with pytest.raises(plait.WorkflowError) as info:
        await engine.call_tools([("echo", {"x": 1}), ("echo",)])  # type: ignore[list-item]
    assert info.value.path == "calls[1]"
    with pytest.raises(plait.WorkflowError) as info:
        await engine.call_tools([("echo", [1])])  # type: ignore[list-item]
    assert info.value.path == "calls[0]"
    with pytest.raises(plait.ConfigError, match="on_error"):
        await engine.call_tools([("echo", {"x": 1})], on_error="ignore")  # type: ignore[arg-type]


async def test_call_tools_kwargs_are_copied() -> None:
    @plait.tool
    async def mutate(**kwargs: Any) -> None:
        kwargs["x"] = 99

    engine = plait.Engine(tools=[mutate])
    kwargs = {"x": 1}
    await engine.call_tools([("mutate", kwargs)])
    assert kwargs == {"x": 1}


# -- statistics ----------------------------------------------------------------


async def test_execute_returns_output_failures_and_stats() -> None:
    @plait.tool
    async def fast(i: int) -> int:
        await anyio.sleep(0.01)
        return i

    @plait.tool
    async def mixed(seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    @plait.tool
    def sync_sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    engine = plait.Engine(tools=[fast, mixed, sync_sleep])
    wf = plait.Parallel(
        fast=plait.MapReduce(plait.Var("xs"), plait.Call("fast", plait.Var("item"))),
        mixed=plait.Parallel(
            *[plait.Call("mixed", 0.01) for _ in range(10)],
            *[plait.Call("mixed", 0.1) for _ in range(10)],
        ),
        sync=plait.Call("sync_sleep", 0.05),
    )
    result = await engine.execute(wf, {"xs": list(range(8))})
    assert isinstance(result, plait.RunResult)
    assert result.output["fast"] == list(range(8))
    assert result.failures == ()
    assert result.ok
    stats = result.stats
    assert isinstance(stats, plait.RunStats)
    assert set(stats.tools) == {"fast", "mixed", "sync_sleep"}
    assert stats.calls == 8 + 20 + 1
    assert stats.failures == 0
    assert 0.1 <= stats.duration < 2.0

    f = stats.tools["fast"]
    assert isinstance(f, plait.ToolStats)
    assert (f.calls, f.failures, f.retries, f.timeouts) == (8, 0, 0, 0)
    assert f.p50 is not None
    # Upper bounds leave room for a stalled machine (a 0.2 s stall was seen
    # on a loaded CI run); the lower ones show the tool's own sleep.
    assert 0.009 <= f.p50 < 0.5
    assert f.mean is not None
    assert 0.009 <= f.mean < 0.5

    m = stats.tools["mixed"]
    assert m.calls == 20
    assert m.p50 is not None
    assert m.p95 is not None
    assert m.p99 is not None
    assert m.p50 >= 0.009
    assert 0.095 <= m.p95 < 0.6
    assert m.p50 <= m.p95 <= m.p99
    # The median is a short call's, the 95th percentile a long one's.
    assert m.p95 - m.p50 >= 0.05

    s = stats.tools["sync_sleep"]
    assert s.calls == 1
    assert s.p50 is not None
    assert 0.045 <= s.p50 < 0.6


async def test_stats_count_failures_retries_and_timeouts() -> None:
    tries = 0

    @plait.tool(retry=plait.Retry(attempts=3, initial_delay=0.0, jitter=False))
    async def flaky() -> str:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise ConnectionError("again")
        return "ok"

    @plait.tool
    async def broken(x: int) -> int:
        raise ValueError(x)

    @plait.tool(
        timeout=0.02, retry=plait.Retry(attempts=2, initial_delay=0.0, jitter=False)
    )
    async def hang() -> None:
        await anyio.sleep(5)

    engine = plait.Engine(tools=[flaky, broken, hang])
    wf = plait.Parallel(
        plait.Call("flaky"),
        plait.Call("broken", 1),
        plait.Call("broken", 2),
        plait.Call("hang"),
        on_error="collect",
    )
    result = await engine.execute(wf)
    assert result.output[0] == "ok"
    assert not result.ok
    assert sorted(f.path for f in result.failures) == [
        "steps[1]",
        "steps[2]",
        "steps[3]",
    ]
    errors = {f.path: f.error for f in result.failures}
    assert isinstance(errors["steps[1]"], ValueError)
    assert isinstance(errors["steps[3]"], plait.ToolTimeout)

    tools = result.stats.tools
    assert (tools["flaky"].calls, tools["flaky"].failures, tools["flaky"].retries) == (
        1,
        0,
        2,
    )
    assert tools["flaky"].timeouts == 0
    assert (tools["broken"].calls, tools["broken"].failures) == (2, 2)
    assert tools["broken"].retries == 0
    # only successful attempts have a latency
    assert tools["broken"].p50 is None
    assert tools["broken"].mean is None
    h = tools["hang"]
    assert (h.calls, h.failures, h.retries, h.timeouts) == (1, 1, 1, 2)
    assert result.stats.calls == 4
    assert result.stats.failures == 3


async def test_stats_count_rate_limited_attempts() -> None:
    @plait.tool(rate_limit=plait.RateLimit(50, burst=1))
    async def ping(i: int) -> int:
        return i

    engine = plait.Engine(tools=[ping])
    result = await engine.execute(
        plait.Parallel(*[plait.Call("ping", i) for i in range(4)])
    )
    assert result.output == [0, 1, 2, 3]
    assert result.stats.tools["ping"].rate_limited >= 3


async def test_stats_belong_to_one_run() -> None:
    @plait.tool
    async def echo(x: int) -> int:
        return x

    engine = plait.Engine(tools=[echo])
    first = await engine.execute(
        plait.Parallel(plait.Call("echo", 1), plait.Call("echo", 2))
    )
    second = await engine.execute(plait.Call("echo", 3))
    assert first.stats.tools["echo"].calls == 2
    assert second.stats.tools["echo"].calls == 1


async def test_max_concurrency_can_change_while_a_run_is_in_flight() -> None:
    in_flight = 0
    peak_after = 0
    lowered = anyio.Event()

    @plait.tool
    async def work(i: int) -> int:
        nonlocal in_flight, peak_after
        in_flight += 1
        if lowered.is_set():
            peak_after = max(peak_after, in_flight)
        await anyio.sleep(0.02)
        in_flight -= 1
        return i

    engine = plait.Engine(tools=[work], max_concurrency=10)

    async def lower() -> None:
        await anyio.sleep(0.01)
        engine.max_concurrency = 2
        await anyio.sleep(0.03)  # the ten running when it was lowered end
        lowered.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lower)
        out = await engine.run(
            plait.Parallel(*[plait.Call("work", i) for i in range(40)])
        )
    assert out == list(range(40))
    assert 1 <= peak_after <= 2
    with pytest.raises(plait.ConfigError, match=r"Engine\.max_concurrency"):
        engine.max_concurrency = 0
