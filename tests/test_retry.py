"""Retries: the Retry policy, and how the tool pipeline retries calls.

Tools count their attempts; errors are checked by identity; "no slot held
while backing off" and "never sleeps past the deadline" are checked with
timestamps and generous bounds.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import anyio
import anyio.to_thread
import pytest

import plait

pytestmark = pytest.mark.anyio

NO_WAIT = {"initial_delay": 0, "jitter": False}


class Attempts:
    """Counts a tool's attempts and raises the errors it is told to."""

    def __init__(self, *errors: BaseException | type[BaseException]) -> None:
        self.errors = list(errors)
        self.raised: list[BaseException] = []
        self.starts: list[float] = []
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.starts)

    def __call__(self) -> None:
        with self._lock:
            self.starts.append(time.monotonic())
            n = len(self.starts)
        if n <= len(self.errors):
            error = self.errors[n - 1]
            if isinstance(error, type):
                error = error(f"attempt {n}")
            self.raised.append(error)
            raise error


def async_tool(attempts: Attempts, name: str = "t", **options: Any) -> plait.Tool:
    async def body() -> str:
        await anyio.sleep(0)
        attempts()
        return "ok"

    return plait.tool(name=name, **options)(body)


def sync_tool(attempts: Attempts, name: str = "t", **options: Any) -> plait.Tool:
    def body() -> str:
        attempts()
        return "ok"

    return plait.tool(name=name, **options)(body)


TOOL_KINDS = [
    pytest.param(async_tool, id="async"),
    pytest.param(sync_tool, id="sync"),
]


# -- the policy ------------------------------------------------------------------


def test_defaults() -> None:
    r = plait.Retry()
    assert r.attempts == 3
    assert r.backoff == 2.0
    assert r.initial_delay == 0.1
    assert r.max_delay == 30.0
    assert r.jitter is True
    assert r.should_retry(OSError())
    assert r.should_retry(ConnectionResetError())
    assert r.should_retry(TimeoutError())
    assert r.should_retry(plait.ToolTimeout("t", 1.0))
    assert not r.should_retry(ValueError())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": -1}, "attempts"),
        ({"attempts": 1.5}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"attempts": "3"}, "attempts"),
        ({"backoff": 0.5}, "backoff"),
        ({"backoff": math.nan}, "backoff"),
        ({"initial_delay": -0.1}, "initial_delay"),
        ({"initial_delay": math.inf}, "initial_delay"),
        ({"max_delay": -1}, "max_delay"),
        ({"jitter": "yes"}, "jitter"),
        ({"jitter": 1}, "jitter"),
        ({"retry_on": "OSError"}, "retry_on"),
        ({"retry_on": (int,)}, "retry_on"),
        ({"retry_on": (KeyboardInterrupt,)}, "retry_on"),
        ({"retry_on": (OSError, "x")}, "retry_on"),
    ],
)
def test_retry_rejects_bad_values(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(plait.WorkflowError) as info:
        plait.Retry(**kwargs)
    assert f"Retry.{field}" in str(info.value)
    assert repr(kwargs[field]) in str(info.value)


def test_retry_on_accepts_one_type_a_list_or_a_predicate() -> None:
    assert plait.Retry(retry_on=ValueError).should_retry(ValueError())  # type: ignore[arg-type]
    assert not plait.Retry(retry_on=ValueError).should_retry(OSError())  # type: ignore[arg-type]
    listed = plait.Retry(retry_on=[KeyError, ValueError])  # type: ignore[arg-type]
    assert listed.should_retry(KeyError())
    assert not listed.should_retry(OSError())
    pred = plait.Retry(retry_on=lambda e: "transient" in str(e))
    assert pred.should_retry(RuntimeError("transient glitch"))
    assert not pred.should_retry(RuntimeError("fatal"))


def test_base_exceptions_are_never_retried() -> None:
    everything = plait.Retry(retry_on=lambda e: True)
    for error in (
        KeyboardInterrupt(),
        SystemExit(1),
        GeneratorExit(),
        asyncio.CancelledError(),
    ):
        assert not everything.should_retry(error), error
        assert not plait.Retry().should_retry(error), error
    assert everything.should_retry(ValueError())


def test_delay_grows_by_backoff_and_is_capped() -> None:
    r = plait.Retry(initial_delay=0.1, backoff=2.0, max_delay=1.0, jitter=False)
    assert [r.delay(n) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert r.delay(10_000) == 1.0  # no OverflowError for huge attempt numbers
    flat = plait.Retry(initial_delay=0.3, backoff=1.0, jitter=False)
    assert [flat.delay(n) for n in (1, 2, 50)] == [0.3, 0.3, 0.3]
    zero = plait.Retry(initial_delay=0, max_delay=5.0, jitter=False)
    assert [zero.delay(n) for n in (1, 2, 100, 10_000)] == [0, 0, 0, 0]


def test_zero_delay_stays_zero_with_jitter() -> None:
    r = plait.Retry(initial_delay=0, max_delay=5.0)
    assert {r.delay(n) for n in (1, 5, 5_000)} == {0.0}


def test_jitter_is_uniform_between_zero_and_the_delay() -> None:
    r = plait.Retry(initial_delay=0.1, backoff=2.0, max_delay=1.0, jitter=True)
    for attempt, base in ((1, 0.1), (3, 0.4), (8, 1.0)):
        samples = [r.delay(attempt) for _ in range(500)]
        assert all(0.0 <= s <= base for s in samples)
        # Spread over the whole range, not a constant.
        assert min(samples) < base * 0.2
        assert max(samples) > base * 0.8


# -- attempts in the pipeline --------------------------------------------------------


@pytest.mark.parametrize("make", TOOL_KINDS)
async def test_persistent_error_runs_exactly_attempts_times(make: Any) -> None:
    attempts = Attempts(OSError, OSError, OSError, OSError)
    engine = plait.Engine(
        tools=[make(attempts, retry=plait.Retry(attempts=3, **NO_WAIT))]
    )
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("t"))
    assert attempts.count == 3
    last = attempts.raised[-1]
    assert info.value.__cause__ is last
    assert info.value.error is last
    assert str(last) == "attempt 3"


@pytest.mark.parametrize("make", TOOL_KINDS)
async def test_success_after_failures(make: Any) -> None:
    attempts = Attempts(ConnectionError, TimeoutError)
    engine = plait.Engine(
        tools=[make(attempts, retry=plait.Retry(attempts=3, **NO_WAIT))]
    )
    assert await engine.run(plait.Call("t")) == "ok"
    assert attempts.count == 3


async def test_attempts_one_means_no_retry() -> None:
    attempts = Attempts(OSError, OSError)
    engine = plait.Engine(tools=[async_tool(attempts, retry=plait.Retry(attempts=1))])
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("t"))
    assert attempts.count == 1
    assert info.value.error is attempts.raised[0]


async def test_no_retry_policy_means_one_attempt() -> None:
    attempts = Attempts(OSError, OSError)
    engine = plait.Engine(tools=[async_tool(attempts)])
    with pytest.raises(plait.StepFailed):
        await engine.run(plait.Call("t"))
    assert attempts.count == 1


@pytest.mark.parametrize("make", TOOL_KINDS)
async def test_errors_not_in_retry_on_are_not_retried(make: Any) -> None:
    attempts = Attempts(ValueError, ValueError)
    engine = plait.Engine(
        tools=[make(attempts, retry=plait.Retry(attempts=5, **NO_WAIT))]
    )
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("t"))
    assert attempts.count == 1
    assert info.value.__cause__ is attempts.raised[0]


async def test_a_non_retryable_error_after_retries_stops_at_once() -> None:
    attempts = Attempts(OSError, KeyError, OSError)
    engine = plait.Engine(
        tools=[async_tool(attempts, retry=plait.Retry(attempts=5, **NO_WAIT))]
    )
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("t"))
    assert attempts.count == 2
    assert isinstance(info.value.error, KeyError)


async def test_retry_on_types() -> None:
    policy = plait.Retry(attempts=4, retry_on=(ValueError,), **NO_WAIT)
    retried = Attempts(ValueError, ValueError)
    engine = plait.Engine(tools=[async_tool(retried, retry=policy)])
    assert await engine.run(plait.Call("t")) == "ok"
    assert retried.count == 3

    # OSError is no longer retried once retry_on is given.
    not_retried = Attempts(OSError)
    engine = plait.Engine(tools=[async_tool(not_retried, retry=policy)])
    with pytest.raises(plait.StepFailed):
        await engine.run(plait.Call("t"))
    assert not_retried.count == 1


async def test_retry_on_predicate() -> None:
    policy = plait.Retry(
        attempts=5, retry_on=lambda e: "transient" in str(e), **NO_WAIT
    )
    attempts = Attempts(
        RuntimeError("transient 1"), RuntimeError("transient 2"), RuntimeError("fatal")
    )
    engine = plait.Engine(tools=[async_tool(attempts, retry=policy)])
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("t"))
    assert attempts.count == 3
    assert str(info.value.error) == "fatal"


async def test_call_retry_overrides_the_tools() -> None:
    attempts = Attempts(*[OSError] * 10)
    t = async_tool(attempts, retry=plait.Retry(attempts=5, **NO_WAIT))
    engine = plait.Engine(tools=[t])
    with pytest.raises(plait.StepFailed):
        await engine.run(plait.Call("t", retry=plait.Retry(attempts=2, **NO_WAIT)))
    assert attempts.count == 2


async def test_call_tools_retries_too() -> None:
    attempts = Attempts(OSError)
    engine = plait.Engine(tools=[async_tool(attempts, retry=plait.Retry(**NO_WAIT))])
    assert await engine.call_tools([("t", {})]) == ["ok"]
    assert attempts.count == 2


async def test_base_exception_from_a_tool_is_not_retried() -> None:
    class Abort(BaseException):
        pass

    attempts = Attempts(Abort, Abort)
    everything = plait.Retry(attempts=5, retry_on=lambda e: True, **NO_WAIT)
    engine = plait.Engine(tools=[async_tool(attempts, retry=everything)])
    with pytest.raises(Abort):
        await engine.run(plait.Call("t"))
    assert attempts.count == 1


# -- timeouts --------------------------------------------------------------------


async def test_tool_timeout_is_retried_by_default() -> None:
    attempts = Attempts()

    @plait.tool(timeout=0.05, retry=plait.Retry(attempts=2, initial_delay=0))
    async def slow() -> None:
        attempts()
        await anyio.sleep(1)

    engine = plait.Engine(tools=[slow])
    started = time.monotonic()
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("slow"))
    elapsed = time.monotonic() - started
    assert attempts.count == 2
    assert isinstance(info.value.__cause__, plait.ToolTimeout)
    assert info.value.error is info.value.__cause__
    assert elapsed < 0.5


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_timed_out_body_runs_exactly_attempts_times(sync: bool) -> None:
    # Regression: a body that timed out ran 5 times with attempts=3.
    attempts = Attempts()
    policy = plait.Retry(attempts=3, initial_delay=0)
    if sync:

        @plait.tool(name="slow", timeout=0.03, retry=policy)
        def slow_sync() -> None:
            attempts()
            for _ in range(200):
                time.sleep(0.005)
                plait.check_cancelled()

        t = slow_sync
    else:

        @plait.tool(name="slow", timeout=0.03, retry=policy)
        async def slow_async() -> None:
            attempts()
            await anyio.sleep(1)

        t = slow_async

    engine = plait.Engine(tools=[t])
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("slow"))
    assert isinstance(info.value.error, plait.ToolTimeout)
    await anyio.sleep(0.1)  # nothing left running may start another attempt
    assert attempts.count == 3


async def test_call_timeout_override_is_retried() -> None:
    attempts = Attempts()

    @plait.tool(retry=plait.Retry(attempts=3, initial_delay=0))
    async def slow() -> None:
        attempts()
        await anyio.sleep(1)

    engine = plait.Engine(tools=[slow])
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("slow", timeout=0.03))
    assert isinstance(info.value.error, plait.ToolTimeout)
    assert attempts.count == 3


async def test_sync_attempts_never_overlap_after_a_timeout() -> None:
    # A timed-out sync body keeps its slot until its thread really returns,
    # so with concurrency_limit=1 the retry waits for it.
    inside = 0
    peak = 0
    lock = threading.Lock()
    attempts = Attempts()

    @plait.tool(
        concurrency_limit=1,
        timeout=0.03,
        retry=plait.Retry(attempts=3, initial_delay=0),
    )
    def stubborn() -> None:
        nonlocal inside, peak
        attempts()
        with lock:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.08)  # ignores the timeout
        with lock:
            inside -= 1

    engine = plait.Engine(tools=[stubborn])
    with pytest.raises(plait.StepFailed):
        await engine.run(plait.Call("stubborn"))
    assert attempts.count == 3
    assert peak == 1
    await anyio.to_thread.run_sync(time.sleep, 0.1)  # let the last thread end


# -- slots, deadlines and cancellation during backoff --------------------------------


async def test_no_slot_is_held_while_backing_off() -> None:
    events: dict[str, float] = {}
    first_failure = anyio.Event()
    tries = 0

    @plait.tool(
        concurrency_limit=1,
        retry=plait.Retry(attempts=2, initial_delay=0.5, jitter=False),
    )
    async def work(who: str) -> str:
        nonlocal tries
        if who == "x":
            tries += 1
            events[f"x{tries}"] = time.monotonic()
            if tries == 1:
                first_failure.set()
                raise ConnectionError("flaky")
            return "x"
        events["y-start"] = time.monotonic()
        await anyio.sleep(0.01)
        events["y-end"] = time.monotonic()
        return "y"

    engine = plait.Engine(tools=[work], max_concurrency=1)
    results: dict[str, str] = {}

    async def run(who: str) -> None:
        if who == "y":
            await first_failure.wait()
        results[who] = await engine.run(plait.Call("work", who))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "x")
        tg.start_soon(run, "y")
    assert results == {"x": "x", "y": "y"}
    assert events["x2"] - events["x1"] >= 0.5 - 0.01
    # y ran entirely inside x's backoff, on the one slot there is, without
    # waiting for the backoff to end.
    assert events["x1"] < events["y-start"] < events["y-end"] < events["x2"]
    assert events["y-end"] - events["x1"] < 0.3


async def test_retry_never_sleeps_past_the_run_deadline() -> None:
    attempts = Attempts(*[OSError] * 5)
    policy = plait.Retry(attempts=5, initial_delay=5, jitter=False)
    engine = plait.Engine(tools=[async_tool(attempts, retry=policy)])
    started = time.monotonic()
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("t"), deadline=0.3)
    assert time.monotonic() - started < 1.0
    assert attempts.count == 1
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__ is attempts.raised[0]


async def test_retry_never_sleeps_past_the_callers_own_deadline() -> None:
    attempts = Attempts(*[OSError] * 5)
    policy = plait.Retry(attempts=5, initial_delay=5, jitter=False)
    engine = plait.Engine(tools=[async_tool(attempts, retry=policy)])
    started = time.monotonic()
    with pytest.raises(plait.StepFailed) as info, anyio.fail_after(0.3):
        await engine.run(plait.Call("t"))
    assert time.monotonic() - started < 1.0
    assert attempts.count == 1
    assert info.value.error is attempts.raised[0]


async def test_retries_that_fit_before_the_deadline_still_happen() -> None:
    # Delays 0.2 then 0.4: the first fits in 0.5 s, the second does not.
    attempts = Attempts(*[OSError] * 5)
    policy = plait.Retry(attempts=5, initial_delay=0.2, backoff=2.0, jitter=False)
    engine = plait.Engine(tools=[async_tool(attempts, retry=policy)])
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("t"), deadline=0.5)
    assert attempts.count == 2
    assert info.value.error is attempts.raised[1]
    assert attempts.starts[1] - attempts.starts[0] >= 0.2 - 0.01


async def test_step_timeout_bounds_retries_too() -> None:
    attempts = Attempts(*[OSError] * 5)
    policy = plait.Retry(attempts=5, initial_delay=5, jitter=False)
    engine = plait.Engine(tools=[async_tool(attempts, retry=policy)])
    wf = plait.Sequential(plait.Call("t"), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(wf)
    assert time.monotonic() - started < 1.0
    assert attempts.count == 1
    assert isinstance(info.value.error, OSError)


async def test_cancel_during_backoff_stops_retrying() -> None:
    attempts = Attempts(*[OSError] * 5)
    policy = plait.Retry(attempts=5, initial_delay=1.0, jitter=False)
    engine = plait.Engine(tools=[async_tool(attempts, retry=policy)])
    scope = anyio.CancelScope()

    async def caller() -> None:
        with scope:
            await engine.run(plait.Call("t"))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await anyio.sleep(0.05)  # the first attempt failed; it now backs off
        assert attempts.count == 1
        scope.cancel()
    assert scope.cancelled_caught
    assert time.monotonic() - started < 0.6, "waited the backoff out"
    assert attempts.count == 1


async def test_cancel_during_an_attempt_is_not_retried() -> None:
    attempts = Attempts()

    @plait.tool(retry=plait.Retry(attempts=5, retry_on=lambda e: True, **NO_WAIT))
    async def slow() -> None:
        attempts()
        await anyio.sleep(5)

    engine = plait.Engine(tools=[slow])
    with anyio.move_on_after(0.05) as scope:
        await engine.run(plait.Call("slow"))
    assert scope.cancelled_caught
    assert attempts.count == 1


# -- statistics --------------------------------------------------------------------


async def test_run_result_stats_count_calls_retries_failures_timeouts() -> None:
    flaky_attempts = Attempts(OSError, OSError)
    bad_attempts = Attempts(*[ValueError] * 3)
    slow_attempts = Attempts()
    quick = plait.Retry(attempts=3, initial_delay=0)

    flaky = async_tool(flaky_attempts, name="flaky", retry=quick)
    bad = sync_tool(bad_attempts, name="bad", retry=quick)

    @plait.tool(timeout=0.03, retry=plait.Retry(attempts=2, initial_delay=0))
    async def slow() -> None:
        slow_attempts()
        await anyio.sleep(1)

    @plait.tool(rate_limit=plait.RateLimit(50, burst=1))
    async def limited(i: int) -> int:
        return i

    engine = plait.Engine(tools=[flaky, bad, slow, limited])
    wf = plait.Parallel(
        plait.Call("flaky"),
        plait.Call("bad"),
        plait.Call("slow"),
        plait.MapReduce([1, 2, 3], plait.Call("limited", plait.Var("item"))),
        on_error="collect",
    )
    result = await engine.execute(wf)
    assert isinstance(result, plait.RunResult)
    assert result.output[0] == "ok"
    assert result.output[3] == [1, 2, 3]
    assert [type(f.error) for f in result.failures] in (
        [ValueError, plait.ToolTimeout],
        [plait.ToolTimeout, ValueError],
    )
    tools = result.stats.tools
    assert isinstance(tools["flaky"], plait.ToolStats)

    def counts(name: str) -> tuple[int, int, int, int, int]:
        s = tools[name]
        return (s.calls, s.failures, s.retries, s.timeouts, s.rate_limited)

    # (calls, failures, retries, timeouts, rate_limited)
    assert counts("flaky") == (1, 0, 2, 0, 0)
    assert counts("bad") == (1, 1, 0, 0, 0)
    assert counts("slow") == (1, 1, 1, 2, 0)
    assert counts("limited") == (3, 0, 0, 0, 2)
    assert flaky_attempts.count == 3
    assert bad_attempts.count == 1
    assert slow_attempts.count == 2
    assert result.stats.calls == 6
    assert result.stats.failures == 2
    assert tools["flaky"].p50 is not None  # its one successful attempt
    assert tools["slow"].p50 is None  # no attempt succeeded


async def test_retry_events_match_the_stats() -> None:
    attempts = Attempts(OSError, OSError)
    engine = plait.Engine(
        tools=[async_tool(attempts, retry=plait.Retry(attempts=3, **NO_WAIT))]
    )
    seen: list[plait.Event] = []
    with engine.subscribe(seen.append):
        result = await engine.execute(plait.Call("t"))
    retried = [e for e in seen if e.kind == plait.EventKind.CALL_RETRIED]
    started = [e for e in seen if e.kind == plait.EventKind.CALL_STARTED]
    assert [e.attempt for e in retried] == [1, 2]
    assert [e.attempt for e in started] == [1, 2, 3]
    assert [e.error for e in retried] == attempts.raised
    assert all(e.delay == 0 for e in retried)
    assert result.stats.tools["t"].retries == 2
