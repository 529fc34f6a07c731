"""Fault injection: failures, interrupts and cancellations at every layer of a run.

Each test injects one fault where a deployment meets it: a caller cancelling
a large fan-out, Ctrl-C (a ``KeyboardInterrupt``) inside ``plait.run``,
exceptions in the user code plait calls besides tools (reduce functions,
expressions, middleware, event subscribers), base exceptions under retry and
collect mode, and sync tools that hang. Then it checks that nothing is left
behind: no task, no concurrency slot, no rate-limit gate, no thread holding
a slot past its return.

The simple cases live next to their feature and are not repeated here:
outside cancellation of a small workflow and of the caller's task group
(``test_interpret.py``), Ctrl-C by a real SIGINT in a subprocess
(``test_run.py``), a failing top-level reduce and initial
(``test_mapreduce.py``), Fn and Var errors in a plain call
(``test_expr.py``), middleware errors at a named branch
(``test_middleware.py``), a raising subscriber on a plain run
(``test_events.py``), a custom BaseException and cancellation under retry
(``test_retry.py``), and sleep-based abandoned threads (``test_bridge.py``).

Exceptions that asyncio treats specially (``KeyboardInterrupt``,
``SystemExit``) stop the event loop they escape from, so the tests that
raise them run ``plait.run`` or ``anyio.run`` on a fresh loop of each
backend instead of the test runner's.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio

import plait
from plait import Call, Failure, Fn, MapReduce, Parallel, Sequential, Var

anyio_test = pytest.mark.anyio

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
on_each_backend = pytest.mark.parametrize("backend", list(BACKENDS))

FOREVER = 3600.0
PROMPT = 2.0  # generous bound for "it did not wait for the blocked calls"


class Boom(Exception):
    """An ordinary failure, retried by no policy here."""


class Abort(BaseException):
    """A base exception that asyncio, unlike KeyboardInterrupt, lets a task
    raise without stopping the test runner's event loop."""


@pytest.fixture(autouse=True)
def collect_garbage_now() -> Iterator[None]:
    """Free each test's garbage at its teardown, not at a random later point.

    On plain asyncio a KeyboardInterrupt raised in a task stops the loop at
    once, so asyncio never retrieves the main task's exception; when that
    task is garbage-collected it logs "Task exception was never retrieved"
    with a formatted traceback. On CPython 3.11 formatting a traceback
    parses source with ``ast``, and doing that inside another ``ast.parse``
    that happened to trigger the collection (pytest's own, say) raises
    ``SystemError: AST constructor recursion depth mismatch``.
    """
    yield
    gc.collect()


def run_on(backend: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``anyio.run(fn, *args)`` on a fresh loop of ``backend``."""
    name, options = BACKENDS[backend]
    return anyio.run(fn, *args, backend=name, backend_options=options)


def live_tasks() -> int:
    """How many tasks exist on the running event loop."""
    if sniffio.current_async_library() == "trio":
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(
                count(child)
                for nursery in task.child_nurseries
                for child in nursery.child_tasks
            )

        return count(trio.lowlevel.current_root_task())
    return len(asyncio.all_tasks())


def slots_in_use(engine: plait.Engine) -> dict[str, int]:
    """Every concurrency slot and rate-limit gate held in ``engine``'s limits.

    Reads private attributes: the public API shows a tool's limit only
    through a shared ``LimiterRegistry``, and the engine-wide limit not at
    all.
    """
    held = {"engine": engine._limiter.borrowed}
    for name, rt in engine._tools.items():
        if rt.limiter is not None:
            held[f"tool:{name}"] = rt.limiter.borrowed
        if rt.bucket is not None:
            held[f"bucket:{name}"] = rt.bucket.gate.borrowed
    return held


def waiters(engine: plait.Engine) -> int:
    """How many calls wait for a slot or a rate-limit gate in ``engine``."""
    total = engine._limiter.waiting
    for rt in engine._tools.values():
        if rt.limiter is not None:
            total += rt.limiter.waiting
        if rt.bucket is not None:
            total += rt.bucket.gate.waiting
    return total


def idle(engine: plait.Engine) -> bool:
    return not any(slots_in_use(engine).values()) and waiters(engine) == 0


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.01)


def wait_until_sync(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


class Tally:
    """Thread-safe counters per tool: started, cancelled, finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: collections.Counter[str] = collections.Counter()
        self.cancelled: collections.Counter[str] = collections.Counter()
        self.finished: collections.Counter[str] = collections.Counter()

    def bump(self, counter: collections.Counter[str], name: str) -> None:
        with self._lock:
            counter[name] += 1

    async def block(self, name: str) -> None:
        """Count a start, then sleep until cancelled (counting that too)."""
        self.bump(self.started, name)
        try:
            await anyio.sleep(FOREVER)
        except anyio.get_cancelled_exc_class():
            self.bump(self.cancelled, name)
            raise
        self.bump(self.finished, name)


# -- cancellation from outside -------------------------------------------------


class Fanout:
    """Tools that block in every place a call can wait.

    - ``nap``: in the tool, in an async sleep;
    - ``paced``: for a token of an exhausted rate limit (the one token there
      is goes to the first call, which then sleeps in the tool);
    - ``narrow``: for a slot of its ``concurrency_limit=3`` (three calls
      sleep in the tool);
    - ``flaky``: in retry backoff (every attempt fails, the next is an hour
      away);
    - ``stuck``: a sync tool blocked on a ``threading.Event`` in a worker
      thread (four at most, its ``concurrency_limit``).
    """

    def __init__(self) -> None:
        self.tally = Tally()
        self.release = threading.Event()
        self.flaky_tries: collections.Counter[int] = collections.Counter()
        tally = self.tally

        @plait.tool
        async def nap(i: int) -> None:
            await tally.block("nap")

        @plait.tool(rate_limit=plait.RateLimit(1, per=FOREVER))
        async def paced(i: int) -> None:
            await tally.block("paced")

        @plait.tool(concurrency_limit=3)
        async def narrow(i: int) -> None:
            await tally.block("narrow")

        @plait.tool(
            retry=plait.Retry(
                attempts=3, initial_delay=FOREVER, max_delay=FOREVER, jitter=False
            )
        )
        async def flaky(i: int) -> None:
            tally.bump(tally.started, "flaky")
            self.flaky_tries[i] += 1
            raise ConnectionError(f"flaky {i}")

        @plait.tool(concurrency_limit=4)
        def stuck(i: int) -> None:
            tally.bump(tally.started, "stuck")
            self.release.wait(60)
            tally.bump(tally.finished, "stuck")

        self.tools = [nap, paced, narrow, flaky, stuck]

    def engine(self, **kw: Any) -> plait.Engine:
        return plait.Engine(tools=self.tools, **kw)

    def workflow(self, n: int, **options: Any) -> plait.Step:
        def fan(tool: str) -> MapReduce:
            return MapReduce(
                Var("xs"), Call(tool, Var("item")), max_concurrency=n, **options
            )

        return Parallel(
            fan("nap"),
            fan("paced"),
            fan("narrow"),
            fan("flaky"),
            MapReduce(Var("few"), Call("stuck", Var("item")), **options),
            Sequential(Call("nap", -1), Call("nap", -2)),
            **options,
        )


@anyio_test
@pytest.mark.parametrize("how", ["deadline", "cancel"])
async def test_cancelling_a_big_fan_out_from_outside_stops_and_frees_everything(
    how: str,
) -> None:
    n = 1000
    box = Fanout()
    tally = box.tally
    engine = box.engine(max_concurrency=10 * n)
    before = live_tasks()
    # A move_on_after whose deadline is pulled in once everything waits, so
    # that the test does not depend on how fast 4,000 calls start. It starts
    # far enough away for the retries to sleep (a retry never sleeps past
    # the enclosing deadline).
    if how == "deadline":
        scope = anyio.move_on_after(100 * FOREVER)
    else:
        scope = anyio.CancelScope()
    cancelled_at: list[float] = []

    async def cancel_once_everything_waits() -> None:
        await wait_until(lambda: tally.started["stuck"] == 4)
        await anyio.wait_all_tasks_blocked()
        cancelled_at.append(anyio.current_time())
        if how == "deadline":
            scope.deadline = anyio.current_time()
        else:
            scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_once_everything_waits)
            with scope:
                await engine.run(box.workflow(n), {"xs": range(n), "few": range(10)})
                pytest.fail("the run should have been cancelled")
        assert scope.cancelled_caught
        assert anyio.current_time() - cancelled_at[0] < PROMPT
        # Everything that started saw the cancellation; nothing finished,
        # and no call was retried after it.
        assert tally.started == {
            "nap": n + 1,  # the Sequential never reached its second call
            "paced": 1,
            "narrow": 3,
            "flaky": n,
            "stuck": 4,
        }
        assert tally.cancelled == {"nap": n + 1, "paced": 1, "narrow": 3}
        assert tally.finished == {}
        assert set(box.flaky_tries.values()) == {1}
        assert live_tasks() == before
        assert waiters(engine) == 0
        # The hung threads keep their slots, the tool's and the engine's,
        # until they return; every other slot and gate is free.
        assert engine.abandoned_threads == 4
        assert slots_in_use(engine) == {
            "engine": 4,
            "tool:narrow": 0,
            "tool:stuck": 4,
            "bucket:paced": 0,
        }
    finally:
        box.release.set()
    await wait_until(lambda: idle(engine))
    assert tally.finished == {"stuck": 4}


@anyio_test
async def test_cancelling_calls_queued_for_the_engines_own_slots() -> None:
    tally = Tally()

    @plait.tool
    async def nap(i: int) -> None:
        await tally.block("nap")

    engine = plait.Engine(tools=[nap], max_concurrency=10)
    # The first map is the direct path (a map worker calls the tool itself,
    # keeping its slot); the second goes through the full pipeline.
    wf = Parallel(
        MapReduce(Var("xs"), Call("nap", Var("item")), max_concurrency=500),
        MapReduce(Var("xs"), Sequential(Call("nap", Var("item"))), max_concurrency=500),
    )
    before = live_tasks()
    scope = anyio.CancelScope()

    async def cancel_once_everything_waits() -> None:
        await anyio.wait_all_tasks_blocked()
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_once_everything_waits)
        with scope:
            await engine.run(wf, {"xs": range(500)})
    assert scope.cancelled_caught
    assert tally.started == tally.cancelled == {"nap": 10}
    assert live_tasks() == before
    assert idle(engine)


@anyio_test
async def test_move_on_after_around_a_collecting_fan_out_makes_no_failures() -> None:
    # A real timeout this time, at whatever point the fan-out has reached:
    # cancellation is never collected as a Failure nor reported as a failed
    # step or call, and no call is retried after it.
    n = 1000
    box = Fanout()
    engine = box.engine(max_concurrency=10 * n)
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    before = live_tasks()
    try:
        started = anyio.current_time()
        with anyio.move_on_after(0.3) as scope:
            await engine.execute(
                box.workflow(n, on_error="collect"), {"xs": range(n), "few": []}
            )
            pytest.fail("the run should have been cancelled")
        assert scope.cancelled_caught
        assert anyio.current_time() - started < 0.3 + PROMPT
    finally:
        box.release.set()
    tally = box.tally
    for name in ("nap", "paced", "narrow"):
        assert tally.cancelled[name] == tally.started[name]
    assert tally.finished == {}
    assert tally.started["nap"] > 0
    assert set(box.flaky_tries.values()) <= {1}
    # The only failures are flaky's own errors: its retries would sleep past
    # the deadline, so each gave up at once with the real error.
    failed = {plait.EventKind.STEP_FAILED, plait.EventKind.CALL_FAILED}
    assert {
        (e.path.split(".")[0], type(getattr(e.error, "error", e.error)))
        for e in events
        if e.kind in failed
    } <= {("steps[3]", ConnectionError)}
    assert live_tasks() == before
    assert idle(engine)


# -- Ctrl-C inside plait.run -----------------------------------------------------


@on_each_backend
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_keyboard_interrupt_in_a_tool_stops_plait_run_cleanly(
    backend: str, kind: str
) -> None:
    # The interrupt comes from a tool (async, or sync in a worker thread)
    # while its siblings sleep, wait for slots and crunch in threads; every
    # collect mode on the way must let it through.
    tally = Tally()
    limits = plait.LimiterRegistry()
    interrupt = KeyboardInterrupt("stop")

    @plait.tool(concurrency_limit=5)
    async def nap(i: int) -> None:
        await tally.block("nap")

    @plait.tool(concurrency_limit=2)
    def crunch(i: int) -> None:
        tally.bump(tally.started, "crunch")
        try:
            for _ in range(6000):
                time.sleep(0.005)
                plait.check_cancelled()
        finally:
            tally.bump(tally.finished, "crunch")

    def everyone_busy() -> bool:
        return tally.started["nap"] == 5 and tally.started["crunch"] == 2

    if kind == "async":

        @plait.tool(name="boom")
        async def boom_async() -> None:
            await wait_until(everyone_busy)
            raise interrupt

        boom = boom_async
    else:

        @plait.tool(name="boom")
        def boom_sync() -> None:
            wait_until_sync(everyone_busy)
            raise interrupt

        boom = boom_sync

    wf = Parallel(
        MapReduce(Var("xs"), Call("nap", Var("item")), on_error="collect"),
        MapReduce(Var("xs"), Call("crunch", Var("item")), on_error="collect"),
        Sequential(Parallel(Call("boom"), on_error="collect")),
        on_error="collect",
    )
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as info:
        plait.run(
            wf,
            {"xs": list(range(20))},
            backend=backend,
            tools=[nap, crunch, boom],
            limiters=limits,
        )
    assert time.monotonic() - started < PROMPT
    assert info.value is interrupt  # bare, never wrapped in a group
    assert tally.cancelled == {"nap": 5}
    assert limits.in_use("tool:nap") == 0
    assert limits.limiter("tool:nap").waiting == 0
    assert limits.limiter("tool:crunch").waiting == 0
    # The threads stop at their next check_cancelled() and give their slots
    # back; no further call started.
    wait_until_sync(lambda: tally.finished["crunch"] == 2)
    wait_until_sync(lambda: limits.in_use("tool:crunch") == 0)
    assert tally.started == {"nap": 5, "crunch": 2}


# -- errors in user code besides tools: reported with their path ---------------


async def ident(x: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return x


def total_without_13(acc: int, value: int) -> int:
    if value == 13:
        raise ZeroDivisionError("13 is unlucky")
    return acc + value


GROUPS = {"groups": [[1, 2], [3, 4], [5, 13, 6], [7]]}


def nested_sums(outer: str = "raise", inner: str = "raise") -> MapReduce:
    return MapReduce(
        Var("groups"),
        MapReduce(
            Var("group"),
            Call("ident", Var("item")),
            reduce=total_without_13,
            on_error=inner,
        ),
        item="group",
        on_error=outer,
    )


@anyio_test
async def test_reduce_error_in_a_nested_map_names_the_element() -> None:
    engine = plait.Engine(tools=[ident])
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(Sequential(nested_sums()), GROUPS)
    assert info.value.path == "steps[0].map[2].reduce"
    assert isinstance(info.value.error, ZeroDivisionError)
    assert info.value.__cause__ is info.value.error

    # Outer collect: the element whose reduce failed is a Failure in place.
    result = await engine.execute(nested_sums(outer="collect"), GROUPS)
    failure = Failure(ZeroDivisionError("13 is unlucky"), "map[2].reduce")
    assert result.output == [3, 7, failure, 7]
    assert result.failures == (failure,)

    # Inner collect: the fold skips the value and goes on; the failure is
    # reported with the same path.
    events: list[plait.Event] = []
    with engine.subscribe(events.append):
        result = await engine.execute(nested_sums(inner="collect"), GROUPS)
    assert result.output == [3, 7, 11, 7]
    assert result.failures == (failure,)
    assert [(e.path, type(e.error)) for e in events if e.kind == "step.failed"] == [
        ("map[2].reduce", ZeroDivisionError)
    ]


@anyio_test
async def test_unordered_reduce_error_cancels_the_elements_in_flight() -> None:
    tally = Tally()

    @plait.tool
    async def work(i: int) -> int:
        if i == 0:
            # fail once the other nine elements are in flight
            await anyio.wait_all_tasks_blocked()
            return i
        await tally.block("work")
        return i

    def refuse(acc: int, value: int) -> int:
        raise Boom(f"cannot fold {value}")

    engine = plait.Engine(tools=[work])
    wf = MapReduce(
        Var("xs"),
        Call("work", Var("item")),
        reduce=refuse,
        initial=0,
        ordered=False,
        max_concurrency=10,
    )
    before = live_tasks()
    started = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(wf, {"xs": range(1000)})
    assert anyio.current_time() - started < PROMPT
    assert info.value.path == "reduce"
    assert str(info.value.error) == "cannot fold 0"
    assert tally.started == tally.cancelled == {"work": 9}
    assert live_tasks() == before
    assert idle(engine)


def shout(row: dict[str, str]) -> str:
    name = row.get("name", "")
    if name == "d":
        raise UnicodeError("cannot shout 'd'")
    return name.upper()


ROWS = {"rows": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}, {}]}
EXPRESSION_FAULTS = [
    # (argument, index of the failing row, its error, the other rows' values)
    pytest.param(
        Fn(shout, Var("item")),
        3,
        UnicodeError,
        ["A", "B", "C", ""],
        id="Fn-raises",
    ),
    pytest.param(
        Var("item.name"),
        4,
        plait.ExpressionError,
        ["a", "b", "c", "d"],
        id="Var-missing-key",
    ),
]


@anyio_test
@pytest.mark.parametrize(("expr", "bad", "error", "others"), EXPRESSION_FAULTS)
async def test_expression_error_in_a_map_element_names_the_element(
    expr: Any, bad: int, error: type[Exception], others: list[str]
) -> None:
    engine = plait.Engine(tools=[ident])
    inner = Parallel(a=Call("ident", 0), b=Call("ident", expr))
    wf = Sequential(Call("ident", 0), MapReduce(Var("rows"), inner))
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(wf, ROWS)
    assert info.value.path == f"steps[1].map[{bad}].steps.b"
    assert isinstance(info.value.error, error)
    assert info.value.__cause__ is info.value.error

    collect = Sequential(
        Call("ident", 0), MapReduce(Var("rows"), inner, on_error="collect")
    )
    result = await engine.execute(collect, ROWS)
    [failure] = result.failures
    assert result.output[bad] is failure
    assert failure.path == f"steps[1].map[{bad}].steps.b"
    assert type(failure.error) is error  # the original error, not a StepFailed
    del result.output[bad]
    assert result.output == [{"a": 0, "b": b} for b in others]


@anyio_test
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_middleware_error_after_the_call_names_the_element_and_frees_slots(
    kind: str,
) -> None:
    # The tool ran; the middleware rejects its result on the way back.
    calls: list[int] = []

    async def body(i: int) -> int:
        calls.append(i)
        return i

    def sync_body(i: int) -> int:
        calls.append(i)
        return i

    work = plait.tool(name="work", concurrency_limit=3)(
        body if kind == "async" else sync_body
    )

    async def audit(call: plait.ToolCall, call_next: plait.Next) -> Any:
        result = await call_next(call)
        if result == 4:
            raise PermissionError("result 4 rejected")
        return result

    engine = plait.Engine(tools=[work], middleware=[audit])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    wf = Sequential(MapReduce(Var("xs"), Call("work", Var("item")), max_concurrency=1))
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(wf, {"xs": range(10)})
    assert info.value.path == "steps[0].map[4]"
    assert isinstance(info.value.error, PermissionError)
    assert calls == [0, 1, 2, 3, 4]
    failed = [e for e in events if e.kind is plait.EventKind.CALL_FAILED]
    assert [(e.path, e.tool, type(e.error)) for e in failed] == [
        ("steps[0].map[4]", "work", PermissionError)
    ]
    assert idle(engine)

    result = await engine.execute(
        MapReduce(Var("xs"), Call("work", Var("item")), on_error="collect"),
        {"xs": range(10)},
    )
    assert result.failures == (Failure(PermissionError("result 4 rejected"), "map[4]"),)
    assert result.output[4] is result.failures[0]
    assert idle(engine)


@anyio_test
async def test_a_subscriber_raising_on_every_kind_of_event_never_breaks_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    tries: collections.Counter[int] = collections.Counter()

    @plait.tool(retry=plait.Retry(attempts=2, initial_delay=0))
    async def flaky(i: int) -> int:
        tries[i] += 1
        if i == 1 and tries[i] == 1:
            raise ConnectionError("flaky")
        return i

    @plait.tool(rate_limit=plait.RateLimit(50, burst=1))
    async def paced(i: int) -> int:
        return i

    @plait.tool(timeout=0.05)
    async def slow() -> None:
        await anyio.sleep(FOREVER)

    @plait.tool(timeout=0.05)
    def hung() -> None:
        release.wait(60)

    @plait.tool
    async def broken() -> None:
        raise Boom("broken")

    @plait.tool
    async def unjournaled() -> frozenset[int]:
        return frozenset({1})  # JSON holds no sets: call.not_journaled

    pushes: collections.Counter[int] = collections.Counter()

    @plait.tool(
        retry=plait.Retry(attempts=2, initial_delay=0),
        concurrency_limit=plait.Adaptive(initial=2, min=1, max=2),
    )
    async def pushy(i: int) -> int:
        pushes[i] += 1
        if i == 1 and pushes[i] == 1:  # pushed back, with a header unread
            raise plait.RateLimited("429", retry_after="soon")
        return i

    tools = [flaky, paced, slow, hung, broken, unjournaled, pushy]
    wf = Parallel(
        MapReduce(Var("xs"), Call("flaky", Var("item"))),
        MapReduce(Var("xs"), Call("paced", Var("item"))),
        Call("slow"),
        Call("hung"),
        Call("broken"),
        MapReduce(Var("xs"), Call("pushy", Var("item"))),
        Call("unjournaled"),
        on_error="collect",
    )

    async def run(*subscribers: Callable[[plait.Event], Any]) -> plait.RunResult:
        journal = plait.SqliteJournal(Path(tempfile.mkdtemp()) / "runs.db")
        engine = plait.Engine(tools=tools, journal=journal)
        for fn in subscribers:
            engine.subscribe(fn)
        result = await engine.execute(wf, {"xs": range(3)})
        assert engine.abandoned_threads == 1
        return result

    bad_calls: list[plait.Event] = []

    def bad(event: plait.Event) -> None:
        bad_calls.append(event)
        raise RuntimeError(f"subscriber bug on {event.kind}")

    seen: list[plait.Event] = []
    try:
        reference = await run(lambda e: None)
        tries.clear()
        pushes.clear()
        with caplog.at_level(logging.ERROR, logger="plait"):
            result = await run(bad, seen.append)
    finally:
        release.set()

    def by_path(result: plait.RunResult) -> list[Failure]:
        return sorted(result.failures, key=lambda f: f.path)

    assert result.output == reference.output
    assert by_path(result) == by_path(reference)
    assert [(f.path, type(f.error)) for f in by_path(result)] == [
        ("steps[2]", plait.ToolTimeout),
        ("steps[3]", plait.ToolTimeout),
        ("steps[4]", Boom),
    ]
    # Shared limits' events need a shared-limits server (test_redis_limits.py).
    shared_only = {plait.EventKind.LEASE_LOST, plait.EventKind.LIMIT_CONFLICT}
    assert {e.kind for e in seen} == set(plait.EventKind) - shared_only
    # The broken subscriber stayed subscribed and saw every event the good
    # one saw; each of its errors was logged, naming the event.
    assert [(e.kind, e.path) for e in bad_calls] == [(e.kind, e.path) for e in seen]
    messages = [r.getMessage() for r in caplog.records if r.name == "plait"]
    assert len(messages) == len(bad_calls)
    for kind in set(plait.EventKind) - shared_only:
        assert any(f"failed on {kind} at" in m for m in messages), kind


# -- base exceptions are never swallowed ---------------------------------------


@on_each_backend
@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_base_exceptions_from_a_tool_are_never_retried(
    backend: str, error: type[BaseException], kind: str
) -> None:
    calls = 0
    raised = error("stop")
    tally = Tally()
    retry_everything = plait.Retry(
        attempts=5, initial_delay=0, jitter=False, retry_on=lambda e: True
    )

    async def body() -> None:
        nonlocal calls
        calls += 1
        raise raised

    def sync_body() -> None:
        nonlocal calls
        calls += 1
        raise raised

    tool = plait.tool(name="t", retry=retry_everything)(
        body if kind == "async" else sync_body
    )

    @plait.tool
    async def nap() -> None:
        await tally.block("nap")

    # The tool runs in a task of its own, under a timeout layer, next to a
    # sibling that must be cancelled, in collect mode.
    wf = Parallel(Call("nap"), Call("t", timeout=5), on_error="collect")
    with pytest.raises(error) as info:
        plait.run(wf, backend=backend, tools=[tool, nap])
    assert info.value is raised
    assert calls == 1
    assert tally.cancelled == tally.started


INTERRUPT_SITES = [
    "tool",
    "tool with retry",
    "Sequential map step",
    "sync tool",
    "reduce",
    "Fn argument",
    "over",
    "middleware",
    "subscriber",
]


def interrupted_run(site: str) -> tuple[plait.Engine, plait.Step]:
    """An engine and a collect-mode step where ``site`` raises a
    KeyboardInterrupt at element 3 (element 1 fails normally: collected)."""
    interrupt = KeyboardInterrupt(site)

    def maybe_interrupt(here: str, value: Any) -> None:
        if site == here and value == 3:
            raise interrupt

    async def work(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        if site in ("tool", "tool with retry", "Sequential map step"):
            maybe_interrupt(site, i)
        if i == 1:
            raise Boom("an ordinary failure: collected")
        return i

    def blocking(i: int) -> int:
        maybe_interrupt("sync tool", i)
        return i

    def fold(acc: int, value: int) -> int:
        maybe_interrupt("reduce", value)
        return acc + value

    def check(i: int) -> int:
        maybe_interrupt("Fn argument", i)
        return i

    def source() -> Iterator[int]:
        yield from range(3)
        maybe_interrupt("over", 3)

    async def refuse_3(call: plait.ToolCall, call_next: plait.Next) -> Any:
        maybe_interrupt("middleware", call.args[0])
        return await call_next(call)

    def on_start(event: plait.Event) -> None:
        if event.kind is plait.EventKind.CALL_STARTED and event.path.endswith("[3]"):
            maybe_interrupt("subscriber", 3)

    retried = plait.tool(name="retried", retry=plait.Retry(attempts=3, initial_delay=0))
    engine = plait.Engine(
        tools=[work, retried(work), blocking],
        middleware=[refuse_3] if site == "middleware" else [],
    )
    if site == "subscriber":
        engine.subscribe(on_start)
    map_step = {
        "tool with retry": Call("retried", Var("item")),
        "Sequential map step": Sequential(Call("work", Var("item"))),
        "sync tool": Call("blocking", Var("item")),
        "Fn argument": Call("work", Fn(check, Var("item"))),
    }.get(site, Call("work", Var("item")))  # "tool": the map's direct path
    step = Parallel(
        Call("work", 0),
        MapReduce(
            Fn(source) if site == "over" else Var("xs"),
            map_step,
            reduce=fold if site == "reduce" else None,
            on_error="collect",
            max_concurrency=2,
        ),
        on_error="collect",
    )
    return engine, step


@on_each_backend
@pytest.mark.parametrize("site", INTERRUPT_SITES)
def test_keyboard_interrupt_is_never_collected_as_a_failure(
    backend: str, site: str
) -> None:
    engine, step = interrupted_run(site)

    async def main() -> plait.RunResult:
        return await engine.execute(step, {"xs": range(6)})

    with pytest.raises(KeyboardInterrupt) as info:
        run_on(backend, main)
    assert type(info.value) is KeyboardInterrupt
    assert info.value.args == (site,)


@on_each_backend
@pytest.mark.parametrize("parallel", [True, False])
def test_keyboard_interrupt_is_never_collected_by_call_tools(
    backend: str, parallel: bool
) -> None:
    @plait.tool
    async def work(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        if i == 1:
            raise Boom("collected")
        if i == 2:
            raise KeyboardInterrupt("call 2")
        return i

    engine = plait.Engine(tools=[work])
    calls = [("work", {"i": i}) for i in range(4)]

    async def main() -> list[Any]:
        return await engine.call_tools(calls, parallel=parallel, on_error="collect")

    with pytest.raises(KeyboardInterrupt, match="call 2"):
        run_on(backend, main)


@anyio_test
async def test_a_step_timeout_around_a_collecting_retried_map_is_not_collected() -> (
    None
):
    # Cancellation under retry and collect mode: the step timeout fires
    # while every element's first attempt sleeps. No element becomes a
    # Failure, none is retried, the step raises StepTimeout.
    tally = Tally()

    @plait.tool(retry=plait.Retry(attempts=5, initial_delay=0, retry_on=lambda e: True))
    async def nap(i: int) -> None:
        await tally.block("nap")

    engine = plait.Engine(tools=[nap])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    wf = Sequential(
        MapReduce(Var("xs"), Call("nap", Var("item")), on_error="collect"),
        timeout=0.2,
    )
    with pytest.raises(plait.StepTimeout) as info:
        await engine.run(wf, {"xs": range(50)})
    assert info.value.path == ""
    assert tally.started == tally.cancelled == {"nap": 50}
    kinds = collections.Counter(e.kind for e in events)
    assert kinds[plait.EventKind.CALL_RETRIED] == 0
    assert kinds[plait.EventKind.CALL_FAILED] == 0
    failed_steps = [e.path for e in events if e.kind is plait.EventKind.STEP_FAILED]
    assert failed_steps == [""]  # only the Sequential, with its StepTimeout
    assert idle(engine)


# -- sync tools that hang --------------------------------------------------------


BOUNDS = ["tool timeout", "step timeout", "run deadline", "caller's scope"]


@anyio_test
@pytest.mark.parametrize("bound", BOUNDS)
async def test_a_hung_sync_tool_is_left_on_time_but_keeps_its_slot(bound: str) -> None:
    gate = threading.Event()
    entered: list[int] = []

    @plait.tool(concurrency_limit=1, timeout=0.1 if bound == "tool timeout" else None)
    def hang(i: int) -> int:
        entered.append(i)
        gate.wait(60)
        return i

    limits = plait.LimiterRegistry()
    engine = plait.Engine(tools=[hang], limiters=limits)
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    path = ""
    try:
        started = anyio.current_time()
        if bound == "tool timeout":
            with pytest.raises(plait.StepFailed) as failed:
                await engine.run(Call("hang", 1))
            assert isinstance(failed.value.error, plait.ToolTimeout)
        elif bound == "step timeout":
            path = "steps[0]"
            with pytest.raises(plait.StepTimeout) as timed_out:
                await engine.run(Sequential(Call("hang", 1), timeout=0.1))
            assert timed_out.value.path == ""
        elif bound == "run deadline":
            with pytest.raises(plait.StepTimeout) as timed_out:
                await engine.run(Call("hang", 1), deadline=0.1)
            assert timed_out.value.deadline
        else:
            with anyio.move_on_after(0.1) as scope:
                await engine.run(Call("hang", 1))
            assert scope.cancelled_caught
        assert anyio.current_time() - started < 1.0
        assert entered == [1]
        assert engine.abandoned_threads == 1
        abandoned = [e for e in events if e.kind is plait.EventKind.THREAD_ABANDONED]
        assert [(e.path, e.tool, e.attempt) for e in abandoned] == [(path, "hang", 1)]
        # The hung thread still holds the tool's only slot and an engine
        # slot; a second call waits for it instead of starting a thread.
        assert limits.in_use("tool:hang") == 1
        assert slots_in_use(engine)["engine"] == 1
        second: list[int] = []

        async def call_again() -> None:
            second.append(await engine.run(Call("hang", 2)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call_again)
            await wait_until(lambda: limits.limiter("tool:hang").waiting == 1)
            await anyio.sleep(0.1)
            assert entered == [1]
            gate.set()
        assert second == [2]
        assert entered == [1, 2]
    finally:
        gate.set()
    await wait_until(lambda: limits.in_use("tool:hang") == 0 and idle(engine))
    assert engine.abandoned_threads == 1


@anyio_test
async def test_a_map_over_a_hung_sync_tool_finishes_at_its_step_timeout() -> None:
    # Two slots, both held by hung threads after their calls time out: the
    # other elements wait for slots rather than start threads, and the
    # step's own timeout ends the run on time.
    gate = threading.Event()
    entered: list[int] = []

    @plait.tool(concurrency_limit=2, timeout=0.05)
    def hang(i: int) -> int:
        entered.append(i)
        gate.wait(60)
        return i

    engine = plait.Engine(tools=[hang])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    wf = MapReduce(
        Var("xs"), Call("hang", Var("item")), on_error="collect", timeout=0.5
    )
    try:
        started = anyio.current_time()
        with pytest.raises(plait.StepTimeout):
            await engine.run(wf, {"xs": range(20)})
        assert anyio.current_time() - started < 0.5 + PROMPT
        assert len(entered) == 2
        assert engine.abandoned_threads == 2
        abandoned = [
            e.path for e in events if e.kind is plait.EventKind.THREAD_ABANDONED
        ]
        assert sorted(abandoned) == sorted(f"map[{i}]" for i in entered)
        assert slots_in_use(engine) == {"engine": 2, "tool:hang": 2}
        assert waiters(engine) == 0
    finally:
        gate.set()
    await wait_until(lambda: idle(engine))
    assert len(entered) == 2


# -- bugs found by these tests, fixed -----------------------------------------------


@anyio_test
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_base_exception_from_a_call_started_subscriber_leaks_no_slot(
    kind: str,
) -> None:
    async def body() -> str:
        return "ok"

    def sync_body() -> str:
        return "ok"

    work = plait.tool(name="work", concurrency_limit=1)(
        body if kind == "async" else sync_body
    )
    engine = plait.Engine(tools=[work])

    def interrupt(event: plait.Event) -> None:
        if event.kind is plait.EventKind.CALL_STARTED:
            raise Abort

    with engine.subscribe(interrupt), pytest.raises(Abort):
        await engine.run(Call("work"))
    assert slots_in_use(engine) == {"engine": 0, "tool:work": 0}
    with anyio.fail_after(1):  # with the slot leaked, this waits forever
        assert await engine.run(Call("work")) == "ok"


@anyio_test
async def test_a_slow_over_cleanup_does_not_hold_the_run_past_its_deadline() -> None:
    cleanup_may_end = anyio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            await cleanup_may_end.wait()  # closing a connection, say

    @plait.tool
    async def nap(i: int) -> None:
        await anyio.sleep(FOREVER)

    engine = plait.Engine(tools=[nap])
    wf = MapReduce(Fn(source), Call("nap", Var("item")), max_concurrency=2)

    async def let_cleanup_end_eventually() -> None:
        await anyio.sleep(1.0)  # so that the test ends even with the bug
        cleanup_may_end.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(let_cleanup_end_eventually)
        started = anyio.current_time()
        with pytest.raises(plait.StepTimeout):
            await engine.run(wf, deadline=0.1)
        elapsed = anyio.current_time() - started
        tg.cancel_scope.cancel()
    assert elapsed < 0.6
