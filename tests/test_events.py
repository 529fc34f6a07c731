"""Events: what a run reports to its subscribers."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio
import attrs
import pytest

import plait

pytestmark = pytest.mark.anyio

K = plait.EventKind


def kinds_at(events: list[plait.Event], path: str) -> list[K]:
    return [e.kind for e in events if e.path == path]


def of_kind(events: list[plait.Event], kind: K) -> list[plait.Event]:
    return [e for e in events if e.kind is kind]


def test_event_kind_values() -> None:
    assert str(K.STEP_STARTED) == "step.started"
    assert K.STEP_FINISHED.value == "step.finished"
    assert K.STEP_FAILED.value == "step.failed"
    assert K.CALL_STARTED.value == "call.started"
    assert K.CALL_FINISHED.value == "call.finished"
    assert K.CALL_FAILED.value == "call.failed"
    assert K.CALL_RETRIED.value == "call.retried"
    assert K.CALL_RATE_LIMITED.value == "call.rate_limited"
    assert K.CALL_TIMED_OUT.value == "call.timed_out"


async def test_step_and_call_events_of_a_successful_run() -> None:
    @plait.tool
    async def fetch(x: int) -> int:
        await anyio.sleep(0.02)
        return x

    @plait.tool
    def add(a: int, b: int) -> int:
        return a + b

    engine = plait.Engine(tools=[fetch, add])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    wf = plait.Sequential(
        plait.Call("fetch", 1, name="one"),
        plait.Parallel(
            a=plait.Call("add", plait.Var("one"), 1), b=plait.Call("fetch", 5)
        ),
    )
    before = time.monotonic()
    assert await engine.run(wf) == {"a": 2, "b": 5}
    after = time.monotonic()

    assert events[0].kind is K.STEP_STARTED
    assert events[0].path == ""
    assert events[0].step == "Sequential"
    assert events[-1].kind is K.STEP_FINISHED
    assert events[-1].path == ""
    assert kinds_at(events, "steps[0]") == [
        K.STEP_STARTED,
        K.CALL_STARTED,
        K.CALL_FINISHED,
        K.STEP_FINISHED,
    ]
    assert kinds_at(events, "steps[1]") == [K.STEP_STARTED, K.STEP_FINISHED]
    for path in ("steps[1].steps.a", "steps[1].steps.b"):
        assert kinds_at(events, path) == [
            K.STEP_STARTED,
            K.CALL_STARTED,
            K.CALL_FINISHED,
            K.STEP_FINISHED,
        ]

    steps = {(e.path, e.step) for e in events if e.kind is K.STEP_STARTED}
    assert steps == {
        ("", "Sequential"),
        ("steps[0]", "Call"),
        ("steps[1]", "Parallel"),
        ("steps[1].steps.a", "Call"),
        ("steps[1].steps.b", "Call"),
    }
    calls = {(e.path, e.tool, e.attempt) for e in of_kind(events, K.CALL_FINISHED)}
    assert calls == {
        ("steps[0]", "fetch", 1),
        ("steps[1].steps.a", "add", 1),
        ("steps[1].steps.b", "fetch", 1),
    }
    fetched = [e for e in of_kind(events, K.CALL_FINISHED) if e.path == "steps[0]"]
    assert fetched[0].duration is not None
    assert fetched[0].duration >= 0.015
    root_done = events[-1]
    assert root_done.duration is not None
    assert root_done.duration >= 0.03
    for e in events:
        assert before <= e.time <= after
        assert e.error is None
    times = [e.time for e in events]
    assert times == sorted(times)


async def test_failed_call_emits_call_failed_and_step_failed() -> None:
    @plait.tool
    async def broken(x: int) -> int:
        raise ValueError(f"bad {x}")

    engine = plait.Engine(tools=[broken])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    with pytest.raises(plait.StepFailed):
        await engine.run(plait.Sequential(plait.Call("broken", 4)))

    assert kinds_at(events, "steps[0]") == [
        K.STEP_STARTED,
        K.CALL_STARTED,
        K.CALL_FAILED,
        K.STEP_FAILED,
    ]
    assert kinds_at(events, "") == [K.STEP_STARTED, K.STEP_FAILED]
    (failed,) = of_kind(events, K.CALL_FAILED)
    assert failed.tool == "broken"
    assert failed.attempt == 1
    assert isinstance(failed.error, ValueError)
    assert str(failed.error) == "bad 4"
    step_failed = [e for e in of_kind(events, K.STEP_FAILED) if e.path == "steps[0]"]
    assert step_failed[0].step == "Call"
    error = step_failed[0].error
    assert error is not None
    assert isinstance(getattr(error, "error", error), ValueError)
    assert not of_kind(events, K.CALL_FINISHED)
    assert not of_kind(events, K.STEP_FINISHED)


async def test_retried_call_events() -> None:
    tries = 0

    @plait.tool(retry=plait.Retry(attempts=4, initial_delay=0.01, jitter=False))
    async def flaky() -> str:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise ConnectionError(f"try {tries}")
        return "ok"

    engine = plait.Engine(tools=[flaky])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    assert await engine.run(plait.Call("flaky")) == "ok"

    call_events = [e for e in events if e.kind.value.startswith("call.")]
    assert [(e.kind, e.attempt) for e in call_events] == [
        (K.CALL_STARTED, 1),
        (K.CALL_RETRIED, 1),
        (K.CALL_STARTED, 2),
        (K.CALL_RETRIED, 2),
        (K.CALL_STARTED, 3),
        (K.CALL_FINISHED, 3),
    ]
    retried = of_kind(events, K.CALL_RETRIED)
    assert [str(e.error) for e in retried] == ["try 1", "try 2"]
    assert all(isinstance(e.error, ConnectionError) for e in retried)
    assert [e.delay for e in retried] == pytest.approx([0.01, 0.02])
    assert {(e.path, e.tool) for e in call_events} == {("", "flaky")}


async def test_retries_exhausted_emit_call_failed_with_last_attempt() -> None:
    @plait.tool(retry=plait.Retry(attempts=2, initial_delay=0.0, jitter=False))
    async def down() -> None:
        raise ConnectionError("down")

    engine = plait.Engine(tools=[down])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    with pytest.raises(plait.StepFailed):
        await engine.run(plait.Call("down"))
    assert [e.attempt for e in of_kind(events, K.CALL_RETRIED)] == [1]
    (failed,) = of_kind(events, K.CALL_FAILED)
    assert failed.attempt == 2
    assert isinstance(failed.error, ConnectionError)


async def test_rate_limited_events() -> None:
    @plait.tool(rate_limit=plait.RateLimit(20, burst=1))
    async def ping(i: int) -> int:
        return i

    engine = plait.Engine(tools=[ping])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    wf = plait.Parallel(*[plait.Call("ping", i) for i in range(3)])
    assert await engine.run(wf) == [0, 1, 2]

    limited = of_kind(events, K.CALL_RATE_LIMITED)
    assert len(limited) >= 2
    for e in limited:
        assert e.tool == "ping"
        assert e.attempt == 1
        assert e.path in {"steps[0]", "steps[1]", "steps[2]"}
        assert e.duration is not None
        assert 0 < e.duration <= 0.11
    assert len(of_kind(events, K.CALL_FINISHED)) == 3


async def test_engine_rate_limit_emits_rate_limited_events() -> None:
    @plait.tool
    async def ping() -> None:
        pass

    engine = plait.Engine(tools=[ping], rate_limit=plait.RateLimit(50, burst=1))
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    await engine.run(plait.Parallel(plait.Call("ping"), plait.Call("ping")))
    assert len(of_kind(events, K.CALL_RATE_LIMITED)) >= 1


async def test_timed_out_events() -> None:
    @plait.tool(timeout=0.05)
    async def sleepy() -> None:
        await anyio.sleep(5)

    engine = plait.Engine(tools=[sleepy])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    with pytest.raises(plait.StepFailed):
        await engine.run(plait.Sequential(plait.Call("sleepy")))

    assert kinds_at(events, "steps[0]") == [
        K.STEP_STARTED,
        K.CALL_STARTED,
        K.CALL_TIMED_OUT,
        K.CALL_FAILED,
        K.STEP_FAILED,
    ]
    (timed_out,) = of_kind(events, K.CALL_TIMED_OUT)
    assert timed_out.tool == "sleepy"
    assert timed_out.attempt == 1
    assert isinstance(timed_out.error, plait.ToolTimeout)
    assert timed_out.duration is not None
    assert 0.04 <= timed_out.duration < 1.0
    (failed,) = of_kind(events, K.CALL_FAILED)
    assert isinstance(failed.error, plait.ToolTimeout)


async def test_timed_out_and_retried() -> None:
    @plait.tool(
        timeout=0.03, retry=plait.Retry(attempts=2, initial_delay=0.0, jitter=False)
    )
    async def sleepy() -> None:
        await anyio.sleep(5)

    engine = plait.Engine(tools=[sleepy])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    with pytest.raises(plait.StepFailed):
        await engine.run(plait.Call("sleepy"))
    call_events = [(e.kind, e.attempt) for e in events if e.tool is not None]
    assert call_events == [
        (K.CALL_STARTED, 1),
        (K.CALL_TIMED_OUT, 1),
        (K.CALL_RETRIED, 1),
        (K.CALL_STARTED, 2),
        (K.CALL_TIMED_OUT, 2),
        (K.CALL_FAILED, 2),
    ]


async def test_map_element_paths_in_events() -> None:
    @plait.tool
    async def inc(x: int) -> int:
        return x + 1

    engine = plait.Engine(tools=[inc])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    wf = plait.Sequential(
        plait.MapReduce(
            plait.Var("xs"), plait.Sequential(plait.Call("inc", plait.Var("item")))
        )
    )
    assert await engine.run(wf, {"xs": [1, 2, 3]}) == [2, 3, 4]
    finished = sorted(e.path for e in of_kind(events, K.CALL_FINISHED))
    assert finished == [f"steps[0].map[{i}].steps[0]" for i in range(3)]
    started = {(e.path, e.step) for e in of_kind(events, K.STEP_STARTED)}
    assert ("steps[0]", "MapReduce") in started
    for i in range(3):
        assert (f"steps[0].map[{i}]", "Sequential") in started


async def test_collect_mode_failure_events() -> None:
    @plait.tool
    async def check(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    engine = plait.Engine(tools=[check])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    wf = plait.MapReduce(
        plait.Var("xs"), plait.Call("check", plait.Var("item")), on_error="collect"
    )
    out = await engine.run(wf, {"xs": [1, 2, 3]})
    assert isinstance(out[1], plait.Failure)
    assert [e.path for e in of_kind(events, K.CALL_FAILED)] == ["map[1]"]
    assert [e.path for e in of_kind(events, K.STEP_FAILED)] == ["map[1]"]
    assert kinds_at(events, "") == [K.STEP_STARTED, K.STEP_FINISHED]


@pytest.mark.parametrize("timeout", [None, 60.0], ids=["lean", "wrapped"])
async def test_a_map_elements_call_step_events_do_not_depend_on_its_path(
    timeout: float | None,
) -> None:
    # A plain async call in a map is driven by the worker itself (no node
    # wrapper); with a timeout it goes through the wrapped node. Subscribers
    # see the same step and call events, in the same order, either way.
    @plait.tool
    async def check(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    engine = plait.Engine(tools=[check])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    wf = plait.MapReduce(
        plait.Var("xs"),
        plait.Call("check", plait.Var("item.v"), timeout=timeout),
        on_error="collect",
        max_concurrency=1,
    )
    before = time.monotonic()
    out = await engine.run(wf, {"xs": [{"v": 1}, {"v": 2}, {}]})
    assert out[0] == 1
    assert all(isinstance(f, plait.Failure) for f in out[1:])
    seen = [
        (e.kind, e.path, e.step, e.tool, e.attempt, type(e.error).__name__)
        for e in events
    ]
    call_step = ("Call", None, None)
    assert seen == [
        (K.STEP_STARTED, "", "MapReduce", None, None, "NoneType"),
        (K.STEP_STARTED, "map[0]", *call_step, "NoneType"),
        (K.CALL_STARTED, "map[0]", None, "check", 1, "NoneType"),
        (K.CALL_FINISHED, "map[0]", None, "check", 1, "NoneType"),
        (K.STEP_FINISHED, "map[0]", *call_step, "NoneType"),
        (K.STEP_STARTED, "map[1]", *call_step, "NoneType"),
        (K.CALL_STARTED, "map[1]", None, "check", 1, "NoneType"),
        (K.CALL_FAILED, "map[1]", None, "check", 1, "ValueError"),
        (K.STEP_FAILED, "map[1]", *call_step, "StepFailed"),
        (K.STEP_STARTED, "map[2]", *call_step, "NoneType"),
        (K.STEP_FAILED, "map[2]", *call_step, "StepFailed"),
        (K.STEP_FINISHED, "", "MapReduce", None, None, "NoneType"),
    ]
    for e in events:
        assert e.time >= before
        if e.kind in (K.STEP_FINISHED, K.STEP_FAILED):
            assert e.duration is not None
            assert e.duration >= 0


async def test_call_tools_events_use_call_paths() -> None:
    @plait.tool
    async def echo(x: int) -> int:
        return x

    engine = plait.Engine(tools=[echo])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    assert await engine.call_tools([("echo", {"x": 1}), ("echo", {"x": 2})]) == [1, 2]
    finished = sorted((e.path, e.tool) for e in of_kind(events, K.CALL_FINISHED))
    assert finished == [("calls[0]", "echo"), ("calls[1]", "echo")]


async def test_subscribers_run_on_the_loop_thread_even_for_sync_tools() -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    @plait.tool
    def sync_tool() -> int:
        return threading.get_ident()

    engine = plait.Engine(tools=[sync_tool])
    engine.subscribe(lambda e: threads.add(threading.get_ident()))
    worker = await engine.run(plait.Call("sync_tool"))
    assert worker != loop_thread
    assert threads == {loop_thread}


async def test_several_subscribers_all_receive() -> None:
    @plait.tool
    async def noop() -> None:
        pass

    engine = plait.Engine(tools=[noop])
    first: list[plait.Event] = []
    second: list[plait.Event] = []
    engine.subscribe(first.append)
    engine.subscribe(second.append)
    await engine.run(plait.Call("noop"))
    assert first
    assert first == second


async def test_subscription_close_stops_delivery() -> None:
    @plait.tool
    async def noop() -> None:
        pass

    engine = plait.Engine(tools=[noop])
    kept: list[plait.Event] = []
    dropped: list[plait.Event] = []
    engine.subscribe(kept.append)
    sub = engine.subscribe(dropped.append)
    assert isinstance(sub, plait.Subscription)
    await engine.run(plait.Call("noop"))
    n = len(dropped)
    assert n > 0
    sub.close()
    sub.close()  # idempotent
    await engine.run(plait.Call("noop"))
    assert len(dropped) == n
    assert len(kept) == 2 * n


async def test_subscription_as_context_manager() -> None:
    @plait.tool
    async def noop() -> None:
        pass

    engine = plait.Engine(tools=[noop])
    seen: list[plait.Event] = []
    with engine.subscribe(seen.append) as sub:
        assert isinstance(sub, plait.Subscription)
        await engine.run(plait.Call("noop"))
    n = len(seen)
    assert n > 0
    await engine.run(plait.Call("noop"))
    assert len(seen) == n
    assert not engine.events


async def test_raising_subscriber_does_not_break_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @plait.tool
    async def work(x: int) -> int:
        return x * 2

    calls = 0

    def bad(event: plait.Event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("subscriber bug")

    good: list[plait.Event] = []
    engine = plait.Engine(tools=[work])
    engine.subscribe(bad)
    engine.subscribe(good.append)
    with caplog.at_level(logging.ERROR, logger="plait"):
        out = await engine.run(
            plait.Parallel(plait.Call("work", 1), plait.Call("work", 2))
        )
    assert out == [2, 4]
    # the failing subscriber stays subscribed, the others still get everything
    assert calls == len(good) > 0
    records = [r for r in caplog.records if r.name == "plait"]
    assert len(records) == calls
    assert all(r.levelno == logging.ERROR for r in records)
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)
    assert "subscriber" in records[0].getMessage()


async def test_raising_subscriber_on_failure_events_keeps_the_real_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @plait.tool
    async def broken() -> None:
        raise KeyError("real")

    def bad(event: plait.Event) -> None:
        raise RuntimeError("subscriber bug")

    engine = plait.Engine(tools=[broken])
    engine.subscribe(bad)
    with (
        caplog.at_level(logging.ERROR, logger="plait"),
        pytest.raises(plait.StepFailed) as info,
    ):
        await engine.run(plait.Call("broken"))
    assert isinstance(info.value.__cause__, KeyError)
    assert any(r.name == "plait" for r in caplog.records)


def test_subscribe_rejects_non_callables() -> None:
    engine = plait.Engine()
    with pytest.raises(TypeError):
        engine.subscribe("print")  # type: ignore[arg-type]


async def test_no_events_are_built_without_subscribers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Events reach subscribers by one of two roads: built by the bus's hot
    # path (new_event) or built elsewhere and handed to emit(). Count both.
    from plait._model import _events

    emitted: list[plait.Event] = []
    real_emit = plait.EventBus.emit
    real_new = _events.new_event

    def counting_emit(self: plait.EventBus, event: plait.Event) -> None:
        emitted.append(event)
        real_emit(self, event)

    def counting_new(*args: Any, **kwargs: Any) -> plait.Event:
        event = real_new(*args, **kwargs)
        emitted.append(event)
        return event

    monkeypatch.setattr(plait.EventBus, "emit", counting_emit)
    monkeypatch.setattr(_events, "new_event", counting_new)

    tries = 0

    @plait.tool(
        retry=plait.Retry(attempts=2, initial_delay=0.0, jitter=False),
        rate_limit=plait.RateLimit(100, burst=1),
    )
    async def flaky(x: int) -> int:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ConnectionError("once")
        return x

    @plait.tool(timeout=0.01)
    async def slow() -> None:
        await anyio.sleep(1)

    @plait.tool(timeout=0.01)
    def slow_sync() -> None:
        time.sleep(0.1)

    engine = plait.Engine(tools=[flaky, slow, slow_sync])
    wf = plait.Parallel(
        plait.MapReduce(plait.Var("xs"), plait.Call("flaky", plait.Var("item"))),
        plait.Call("slow"),
        plait.Call("slow_sync"),
        on_error="collect",
    )
    assert not engine.events
    out = await engine.run(wf, {"xs": [1, 2, 3]})
    assert out[0] == [1, 2, 3]
    assert tries == 4
    assert emitted == []

    # the same run with a subscriber does emit, through the same method
    tries = 0
    seen: list[plait.Event] = []
    with engine.subscribe(seen.append):
        assert engine.events
        await engine.run(wf, {"xs": [1, 2, 3]})
    assert len(emitted) == len(seen) > 0
    emitted.clear()
    tries = 0
    await engine.run(wf, {"xs": [1, 2, 3]})
    assert emitted == []
    await anyio.sleep(0.15)  # let the abandoned sync threads return


async def test_event_bus_can_be_used_directly() -> None:
    bus = plait.EventBus()
    got: list[Any] = []
    assert not bus
    sub = bus.subscribe(got.append)
    assert bus
    event = plait.Event(K.STEP_STARTED, "steps[0]", step="Call")
    bus.emit(event)
    assert got == [event]
    sub.close()
    assert not bus
    bus.emit(event)
    assert got == [event]


def test_new_event_is_the_event_the_constructor_makes() -> None:
    from plait._model._events import new_event

    error = ValueError("x")
    fields = {
        "step": "Call",
        "tool": "t",
        "attempt": 2,
        "duration": 0.5,
        "error": error,
        "delay": 1.5,
        "limit": 3,
        "key": "alice",
    }
    made = new_event(plait.EventKind.CALL_RETRIED, "map[3]", **fields)
    assert made == plait.Event(
        plait.EventKind.CALL_RETRIED, "map[3]", time=made.time, **fields
    )
    assert abs(made.time - time.monotonic()) < 60
    bare = new_event(plait.EventKind.STEP_STARTED, "")
    assert bare == plait.Event(plait.EventKind.STEP_STARTED, "", time=bare.time)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        made.path = "elsewhere"  # type: ignore[misc]
