"""Backpressure from services: RateLimited pauses a tool, Adaptive limits adapt."""

from __future__ import annotations

import email.utils
import math
import pickle
import time
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plait
from plait._concurrency._adaptive import CAUTION, AdaptiveLimit
from plait._concurrency._limits import Limiter
from plait._model._backpressure import retry_after_seconds

pytestmark = pytest.mark.anyio

# -- RateLimited and Retry-After --------------------------------------------------


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert plait.RateLimited(retry_after=2).retry_after == 2.0
    assert plait.RateLimited(retry_after="0.25").retry_after == 0.25
    assert plait.RateLimited(retry_after=" 3 ").retry_after == 3.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(date, now) == pytest.approx(30, abs=1)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert retry_after_seconds(past, now) == 0.0
    assert plait.RateLimited().retry_after is None
    assert not plait.RateLimited().retry_after_ignored


@pytest.mark.parametrize(
    "value", [-1, "-5", "soon", math.inf, math.nan, True, [], "Wed, 99 Foo", b"\xff"]
)
def test_a_bad_retry_after_is_ignored_not_raised(value: object) -> None:
    error = plait.RateLimited("429", retry_after=value)
    assert error.retry_after is None
    assert error.retry_after_ignored
    assert error.retry_after_given is value


@given(st.one_of(st.text(), st.floats(), st.integers(), st.binary(), st.none()))
def test_retry_after_is_none_or_a_finite_wait(value: object) -> None:
    seconds = retry_after_seconds(value)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


def test_rate_limited_is_a_plait_error_that_pickles() -> None:
    error = plait.RateLimited("slow down", retry_after=1.5)
    assert isinstance(error, plait.PlaitError)
    back = pickle.loads(pickle.dumps(error))
    assert (str(back), back.retry_after) == ("slow down", 1.5)


def test_the_default_retry_retries_it_an_explicit_retry_on_decides() -> None:
    assert plait.Retry().should_retry(plait.RateLimited())
    assert not plait.Retry(retry_on=(OSError,)).should_retry(plait.RateLimited())
    assert plait.Retry(retry_on=(plait.RateLimited,)).should_retry(plait.RateLimited())


# -- Adaptive, the spec ------------------------------------------------------------


def test_adaptive_defaults_and_repr() -> None:
    assert plait.Adaptive() == plait.Adaptive(initial=8, min=1, max=64)
    assert repr(plait.Adaptive(2, 1, 4)) == "Adaptive(initial=2, min=1, max=4)"
    tool = plait.Tool(lambda: None, "t", concurrency_limit=plait.Adaptive())
    assert tool.concurrency_limit == plait.Adaptive()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"min": 5, "max": 2},
            "Adaptive.min must be an int <= Adaptive.max (2), got 5",
        ),
        (
            {"initial": 100},
            "Adaptive.initial must be an int from Adaptive.min to Adaptive.max "
            "(1..64), got 100",
        ),
        ({"max": 0}, "Adaptive.max must be an int >= 1, got 0"),
        ({"initial": 2.5}, "Adaptive.initial must be an int >= 1, got 2.5"),
        ({"min": True}, "Adaptive.min must be an int >= 1, got True"),
    ],
)
def test_bad_adaptive_values_name_the_field(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(plait.ConfigError) as info:
        plait.Adaptive(**kwargs)
    assert str(info.value) == message


def test_a_tool_limit_must_be_an_int_or_adaptive() -> None:
    with pytest.raises(plait.WorkflowError, match=r"an int >= 1 or a plait\.Adaptive"):
        plait.Tool(lambda: None, "t", concurrency_limit="8")  # type: ignore[arg-type]


def test_keyed_limit_checks_its_adaptive() -> None:
    with pytest.raises(plait.ConfigError, match=r"KeyedLimit\.adaptive"):
        plait.KeyedLimit(plait.LimiterRegistry(), adaptive=8)  # type: ignore[arg-type]


# -- Adaptive, the controller ------------------------------------------------------


def test_the_controller_cuts_on_push_back_and_grows_while_in_use() -> None:
    limiter = Limiter(None, "t")
    control = AdaptiveLimit(plait.Adaptive(initial=8, min=2, max=10), limiter)
    assert (limiter.total, control.value) == (8, 8)
    assert control.pushed_back() == 6
    assert control.pushed_back() == 4  # nothing was in flight at the cut
    for _ in range(3):
        assert limiter.try_acquire()
    assert control.pushed_back() == 3
    # The three calls in flight at that cut were sent under the old limit.
    assert [control.pushed_back() for _ in range(3)] == [None, None, None]
    assert control.pushed_back() == 2
    # Growth, once pushed back: CAUTION round trips of successes per slot,
    # and only while the slots are in use.
    limiter.release()
    grown = [control.succeeded() for _ in range(2 * CAUTION)]
    assert grown == [None] * (2 * CAUTION - 1) + [3]
    for _ in range(2):
        limiter.release()
    assert all(control.succeeded() is None for _ in range(50))  # idle
    assert control.value == 3
    assert control.pushed_back() == 2
    assert control.pushed_back() is None  # at min


def test_before_any_push_back_the_limit_grows_by_one_per_round_trip() -> None:
    limiter = Limiter(None, "t")
    control = AdaptiveLimit(plait.Adaptive(initial=2, min=1, max=4), limiter)
    assert limiter.try_acquire()
    assert [control.succeeded() for _ in range(2)] == [None, 3]
    assert limiter.try_acquire()
    assert [control.succeeded() for _ in range(3)] == [None, None, 4]
    assert limiter.try_acquire()
    assert all(control.succeeded() is None for _ in range(10))  # max
    assert control.value == 4


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 20).flatmap(
        lambda lo: st.tuples(st.just(lo), st.integers(lo, 40)).flatmap(
            lambda b: st.tuples(
                st.just(b),
                st.integers(b[0], b[1]),
                st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=300),
            )
        )
    )
)
def test_the_limit_stays_within_min_and_max(
    case: tuple[tuple[int, int], int, list[tuple[bool, int]]],
) -> None:
    (lo, hi), initial, events = case
    limiter = Limiter(None, "t")
    control = AdaptiveLimit(plait.Adaptive(initial, lo, hi), limiter)
    held = 0
    for ok, in_flight in events:
        while held < in_flight and limiter.try_acquire():
            held += 1
        while held > in_flight:
            limiter.release()
            held -= 1
        before = control.value
        changed = control.succeeded() if ok else control.pushed_back()
        assert lo <= control.value <= hi
        if changed is not None:
            assert changed == control.value
            assert changed > before if ok else changed < before


# -- the pause: one cool-down per tool ------------------------------------------------


def _retry() -> plait.Retry:
    return plait.Retry(attempts=4, initial_delay=0.01, jitter=False)


async def test_a_push_back_pauses_every_queued_call_of_the_tool() -> None:
    starts: list[tuple[int, float]] = []
    pushed: list[float] = []
    registry = plait.LimiterRegistry()

    @plait.tool(concurrency_limit=2, retry=_retry())
    async def api(i: int) -> int:
        now = anyio.current_time()
        starts.append((i, now))
        if i == 0 and not pushed:
            pushed.append(now)
            raise plait.RateLimited("429", retry_after=0.5)
        await anyio.sleep(0.02)
        return i

    async def probe() -> int:
        await anyio.sleep(0.25)
        return registry.in_use("tool:api")

    engine = plait.Engine(tools=[api, probe], limiters=registry)
    events: list[plait.Event] = []
    engine.subscribe(events.append, ["call.pushed_back"])
    out = await engine.run(
        plait.Parallel(
            plait.MapReduce(
                over=list(range(8)), map=plait.Call("api", plait.Var("item"))
            ),
            plait.Call("probe"),
        )
    )
    assert out == [list(range(8)), 0]  # no slot held while paused
    (t0,) = pushed
    later = [t for i, t in starts if t > t0 + 0.001]
    started_with_it = len(starts) - len(later)
    assert started_with_it <= 2  # the first two only
    assert len(later) == 8 - started_with_it + 1  # the rest, and item 0 again
    assert min(later) >= t0 + 0.45
    (event,) = events
    assert (event.tool, event.delay, event.attempt) == ("api", 0.5, 1)
    assert isinstance(event.error, plait.RateLimited)


async def test_a_push_back_waits_at_least_retry_after_and_is_counted() -> None:
    times: list[float] = []

    @plait.tool(retry=_retry())
    async def api() -> str:
        times.append(anyio.current_time())
        if len(times) == 1:
            raise plait.RateLimited(retry_after=0.3)
        return "ok"

    result = await plait.Engine(tools=[api]).execute(plait.Call("api"))
    assert result.output == "ok"
    assert times[1] - times[0] >= 0.28
    stats = result.stats.tools["api"]
    assert (stats.pushed_back, stats.retries, stats.limit) == (1, 1, None)


async def test_a_wait_past_the_deadline_is_not_started() -> None:
    calls = 0

    @plait.tool(retry=_retry())
    async def api() -> str:
        nonlocal calls
        calls += 1
        raise plait.RateLimited(retry_after=30)

    started = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await plait.Engine(tools=[api]).run(plait.Call("api"), deadline=5)
    assert isinstance(info.value.error, plait.RateLimited)
    assert calls == 1
    assert anyio.current_time() - started < 2


async def test_the_pause_of_others_never_outlives_the_deadline() -> None:
    @plait.tool(retry=_retry(), concurrency_limit=1)
    async def api(i: int) -> int:
        if i == 0:
            raise plait.RateLimited(retry_after=30)
        await anyio.sleep(0.01)
        return i

    started = anyio.current_time()
    with pytest.raises(plait.StepTimeout):
        await plait.Engine(tools=[api]).run(
            plait.MapReduce(
                over=[0, 1, 2],
                map=plait.Call("api", plait.Var("item")),
                on_error="collect",  # item 0 fails at once; 1 and 2 wait out the pause
            ),
            deadline=0.5,
        )
    assert 0.4 < anyio.current_time() - started < 3


async def test_an_explicit_retry_on_without_it_fails_at_once() -> None:
    calls = 0

    @plait.tool(retry=plait.Retry(retry_on=(OSError,)))
    async def api() -> None:
        nonlocal calls
        calls += 1
        raise plait.RateLimited(retry_after=0.01)

    with pytest.raises(plait.StepFailed):
        await plait.Engine(tools=[api]).run(plait.Call("api"))
    assert calls == 1


async def test_an_unreadable_retry_after_is_reported_and_the_call_retried() -> None:
    calls = 0

    @plait.tool(retry=_retry())
    async def api() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise plait.RateLimited(retry_after="in a while")
        return "ok"

    engine = plait.Engine(tools=[api])
    events: list[plait.Event] = []
    engine.subscribe(events.append, ["call.retry_after_ignored"])
    assert await engine.run(plait.Call("api")) == "ok"
    (event,) = events
    assert event.kind is plait.EventKind.RETRY_AFTER_IGNORED
    assert event.error is not None


async def test_a_middleware_maps_a_client_error_onto_rate_limited() -> None:
    class ClientRateLimitError(Exception):
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

    calls = 0

    @plait.tool(retry=_retry())
    async def llm() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ClientRateLimitError({"retry-after": "0.2"})
        return "ok"

    async def map_rate_limits(call: plait.ToolCall, call_next: plait.Next) -> Any:
        try:
            return await call_next(call)
        except ClientRateLimitError as error:
            raise plait.RateLimited(
                str(error), retry_after=error.headers.get("retry-after")
            ) from error

    result = await plait.Engine(tools=[llm], middleware=[map_rate_limits]).execute(
        plait.Call("llm")
    )
    assert result.output == "ok"
    assert result.stats.tools["llm"].pushed_back == 1


async def test_under_keyed_limit_one_key_pauses_the_others_go_on() -> None:
    starts: dict[str, list[float]] = {"a": [], "b": []}
    pushed: list[float] = []

    @plait.tool(retry=_retry())
    async def api(key: str, i: int) -> str:
        now = anyio.current_time()
        starts[key].append(now)
        if key == "a" and not pushed:
            pushed.append(now)
            raise plait.RateLimited(retry_after=0.4)
        await anyio.sleep(0.05)
        return key

    registry = plait.LimiterRegistry()
    registry.set_limit("b", 1)  # b's calls one after another, over the pause
    limit = plait.KeyedLimit(registry, key=lambda c: c.kwargs["key"])
    engine = plait.Engine(tools=[api], middleware=[limit])
    items = [{"k": k, "i": i} for i in range(4) for k in "ab"]
    out = await engine.run(
        plait.MapReduce(
            over=items,
            map=plait.Call("api", key=plait.Var("item.k"), i=plait.Var("item.i")),
        )
    )
    assert sorted(out) == ["a"] * 4 + ["b"] * 4
    (t0,) = pushed
    assert all(t >= t0 + 0.35 for t in starts["a"][1:])
    assert any(t0 < t < t0 + 0.3 for t in starts["b"])  # b went on


# -- Adaptive in the engine --------------------------------------------------------


async def test_initial_calls_at_most_before_the_first_finishes() -> None:
    running = peak_before_first = finished = 0

    @plait.tool(concurrency_limit=plait.Adaptive(initial=3, min=1, max=10))
    async def api(i: int) -> int:
        nonlocal running, peak_before_first, finished
        running += 1
        if not finished:
            peak_before_first = max(peak_before_first, running)
        await anyio.sleep(0.01)
        running -= 1
        finished += 1
        return i

    engine = plait.Engine(tools=[api])
    changes: list[int | None] = []
    engine.subscribe(lambda e: changes.append(e.limit), ["tool.limit_changed"])
    result = await engine.execute(
        plait.MapReduce(over=list(range(40)), map=plait.Call("api", plait.Var("item")))
    )
    assert result.output == list(range(40))
    assert peak_before_first == 3
    stats = result.stats.tools["api"]
    assert stats.limit is not None
    assert 3 < stats.limit <= 10
    assert changes
    assert changes[-1] == stats.limit
    assert changes == sorted(changes)


async def test_push_backs_shrink_the_limit_not_below_min() -> None:
    @plait.tool(
        concurrency_limit=plait.Adaptive(initial=8, min=2, max=8),
        retry=plait.Retry(attempts=2, initial_delay=0, retry_on=(OSError,)),
    )
    async def api(i: int) -> int:
        await anyio.sleep(0)
        raise plait.RateLimited()

    engine = plait.Engine(tools=[api])
    result = await engine.execute(
        plait.MapReduce(
            over=list(range(30)),
            map=plait.Call("api", plait.Var("item")),
            on_error="collect",
        )
    )
    stats = result.stats.tools["api"]
    assert stats.pushed_back == 30
    assert stats.failures == 30
    assert stats.limit == 2


async def test_adaptive_with_a_shared_registry_drives_its_limiter() -> None:
    registry = plait.LimiterRegistry()

    @plait.tool(concurrency_limit=plait.Adaptive(initial=5, min=1, max=9))
    async def api() -> None:
        raise plait.RateLimited()

    engine = plait.Engine(tools=[api], limiters=registry)
    assert registry.get_limit("tool:api") == 5
    with pytest.raises(plait.StepFailed):
        await engine.run(plait.Call("api"))
    assert registry.get_limit("tool:api") == 3


# -- in documents ------------------------------------------------------------------

ADAPTIVE_DOC = """
tools:
  api:
    import: plait.tools:http
    concurrency_limit: {initial: 2, max: 8}
kind: call
tool: api
args: {method: GET, url: "http://127.0.0.1:9/"}
"""


def test_a_document_declares_an_adaptive_limit_and_dumps_it_back() -> None:
    import jsonschema
    import yaml

    workflow = plait.load(ADAPTIVE_DOC)
    tool = workflow.step.target
    assert isinstance(tool, plait.Tool)
    assert tool.concurrency_limit == plait.Adaptive(initial=2, min=1, max=8)
    text = plait.dump(workflow)
    assert "initial: 2" in text
    assert plait.load(text) == workflow
    jsonschema.validate(yaml.safe_load(ADAPTIVE_DOC), plait.json_schema())


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        (
            "{initial: 9, max: 8}",
            "Adaptive.initial must be an int from Adaptive.min to Adaptive.max "
            "(1..8), got 9",
        ),
        ("{min: 3, max: 2}", "Adaptive.min must be an int <= Adaptive.max (2), got 3"),
        (
            "{initial: 2, most: 8}",
            "unknown key 'most' in an adaptive concurrency_limit",
        ),
        ("0", "Tool.concurrency_limit must be an int >= 1 or a plait.Adaptive"),
    ],
)
def test_a_bad_adaptive_limit_in_a_document_names_the_field(
    limit: str, message: str
) -> None:
    doc = ADAPTIVE_DOC.replace("{initial: 2, max: 8}", limit)
    with pytest.raises(plait.WorkflowError) as info:
        plait.load(doc)
    problem = info.value.errors[0]
    assert problem.path == "tools.api.concurrency_limit"
    assert message in problem.message


# -- with shared limits --------------------------------------------------------------


async def test_under_shared_limits_the_adaptive_value_stays_local(
    redis_url: str,
) -> None:
    import uuid

    from plait.redis import RedisLimits

    namespace = f"bp-{uuid.uuid4().hex[:10]}"
    shared = [RedisLimits(redis_url, namespace=namespace) for _ in range(2)]
    running = peak = 0

    def api_tool(pushes_back: bool) -> plait.Tool:
        pushed = False

        async def api(i: int) -> int:
            nonlocal running, peak, pushed
            running += 1
            peak = max(peak, running)
            try:
                await anyio.sleep(0.02)
                if pushes_back and not pushed:
                    pushed = True
                    raise plait.RateLimited(retry_after=0.01)
                return i
            finally:
                running -= 1

        return plait.Tool(
            api,
            "api",
            concurrency_limit=plait.Adaptive(initial=3, min=1, max=4),
            retry=plait.Retry(attempts=3, initial_delay=0),
        )

    engines = [
        plait.Engine(tools=[api_tool(pushes_back=i == 0)], shared_limits=shared[i])
        for i in range(2)
    ]
    conflicts: list[plait.Event] = []
    moves: list[list[int | None]] = [[], []]
    for engine, moved in zip(engines, moves, strict=True):
        engine.subscribe(conflicts.append, ["limits.conflict"])
        engine.subscribe(lambda e, m=moved: m.append(e.limit), ["tool.limit_changed"])
    results: list[plait.RunResult] = []

    async def run(engine: plait.Engine) -> None:
        step = plait.MapReduce(
            over=list(range(12)), map=plait.Call("api", plait.Var("item"))
        )
        results.append(await engine.execute(step))

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for engine in engines:
                    tg.start_soon(run, engine)
    finally:
        for limits in shared:
            limits.close()
    assert [r.output for r in results] == [list(range(12))] * 2
    assert peak <= 4  # the shared limit is the adaptive max, across engines
    assert not conflicts  # every process declares the same shared value
    assert 2 in moves[0]  # the engine pushed back cut its own limit, 3 to 2
    assert all(m is not None and m > 3 for m in moves[1])  # the other only grew
