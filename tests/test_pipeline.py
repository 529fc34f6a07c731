"""The call pipeline: kept engine slots (leases), every call shape, event kinds."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import plait
from plait import Call, Lit, MapReduce, Parallel, Sequential, Var

pytestmark = pytest.mark.anyio

PROMPT = 5.0  # generous bound for "it did not deadlock"


class Peak:
    """Counts calls in flight and remembers the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def __call__(self, x: Any) -> Any:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await anyio.lowlevel.checkpoint()
            return x
        finally:
            self.now -= 1


# -- a worker's kept slot never blocks anyone -----------------------------------
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda: Call("work", Var("item")), id="call"),
        pytest.param(
            lambda: Sequential(
                Call("work", Var("item"), name="a"), Call("work", Var("a"))
            ),
            id="sequential",
        ),
        pytest.param(
            lambda: Parallel(Call("work", Var("item")), Call("work", Var("item"))),
            id="parallel",
        ),
        pytest.param(
            lambda: MapReduce(Lit([1, 2]), Call("work", Var("inner")), item="inner"),
            id="nested-map",
        ),
        pytest.param(
            lambda: Sequential(
                Call("work", Var("item")), Call("blocking", Var("item"))
            ),
            id="sync-after-async",
        ),
        pytest.param(
            lambda: Sequential(Call("work", Var("item")), Call("flaky", Var("item"))),
            id="retry-after-async",
        ),
    ],
)
async def test_one_engine_slot_is_enough_for_every_body(body: Any) -> None:
    # With max_concurrency=1 a worker that kept its slot while it waits for
    # children, a thread or a backoff would wait for itself forever.
    peak = Peak()
    tries: dict[int, int] = {}

    @plait.tool
    def blocking(x: int) -> int:
        return x

    @plait.tool(retry=plait.Retry(attempts=2, initial_delay=0.01, jitter=False))
    async def flaky(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        if tries[x] == 1:
            raise ConnectionError("once")
        return x

    engine = plait.Engine(
        tools=[plait.tool(name="work")(peak), blocking, flaky], max_concurrency=1
    )
    with anyio.fail_after(PROMPT):
        out = await engine.run(
            MapReduce(Var("xs"), body(), max_concurrency=4), {"xs": list(range(8))}
        )
    assert len(out) == 8
    assert peak.peak == 1


async def test_a_kept_slot_goes_to_a_waiting_caller() -> None:
    # A run that maps for a long time must not starve another run of the
    # same engine: a worker gives its kept slot up as soon as someone waits.
    engine_slots = 2
    order: list[str] = []

    @plait.tool
    async def work(x: int) -> int:
        await anyio.sleep(0.001)
        return x

    @plait.tool
    async def other() -> str:
        order.append("other")
        return "done"

    engine = plait.Engine(tools=[work, other], max_concurrency=engine_slots)

    async def long_map() -> None:
        await engine.run(
            MapReduce(Var("xs"), Call("work", Var("item"))), {"xs": range(300)}
        )
        order.append("map")

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_map)
        await anyio.sleep(0.02)
        with anyio.fail_after(PROMPT):
            assert await engine.run(Call("other")) == "done"
    assert order == ["other", "map"]


async def test_no_slot_is_kept_after_a_map() -> None:
    engine = plait.Engine(tools=[plait.tool(name="work")(Peak())], max_concurrency=3)
    await engine.run(
        Sequential(
            MapReduce(Var("xs"), Call("work", Var("item")), name="m"),
            Call("work", Var("m")),
        ),
        {"xs": range(10)},
    )
    assert engine._limiter.borrowed == 0


@pytest.mark.parametrize(
    ("call", "items"),
    [
        pytest.param(Call("t", Var("item")), list(range(50)), id="positional"),
        pytest.param(Call("t", x=Var("item")), list(range(50)), id="keyword"),
        pytest.param(
            Call("t2", Var("item.a"), y=Lit(1)),
            [{"a": i} for i in range(50)],
            id="attr-two-args",
        ),
    ],
)
async def test_every_call_shape_counts_and_reports_alike(
    call: Call, items: list[Any]
) -> None:
    @plait.tool(name="t")
    async def t(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        if x == 7:
            raise ValueError("seven")
        return x

    @plait.tool(name="t2")
    async def t2(x: int, y: int) -> int:
        return await t.fn(x)  # type: ignore[no-any-return]

    engine = plait.Engine(tools=[t, t2])
    result = await engine.execute(
        MapReduce(Var("xs"), call, on_error="collect"), {"xs": items}
    )
    name = call.target
    stats = result.stats.tools[name]  # type: ignore[index]
    assert stats.calls == 50
    assert stats.failures == 1
    [failure] = result.failures
    assert failure.path == "map[7]"
    assert isinstance(failure.error, ValueError)
    assert result.output[8] == 8


# -- event kinds ----------------------------------------------------------------
async def test_subscribe_to_some_kinds_only() -> None:
    @plait.tool
    async def work(x: int) -> int:
        return x

    engine = plait.Engine(tools=[work])
    finished: list[plait.Event] = []
    everything: list[plait.Event] = []
    engine.subscribe(finished.append, kinds=["call.finished"])
    engine.subscribe(everything.append)
    await engine.run(MapReduce(Var("xs"), Call("work", Var("item"))), {"xs": range(3)})
    assert {e.kind for e in finished} == {plait.EventKind.CALL_FINISHED}
    assert sorted(e.path for e in finished) == ["map[0]", "map[1]", "map[2]"]
    assert len(everything) > len(finished)


async def test_events_nobody_wants_are_not_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []
    real_init = plait.Event.__init__

    def counting_init(self: plait.Event, kind: Any, *args: Any, **kw: Any) -> None:
        built.append(str(kind))
        real_init(self, kind, *args, **kw)

    monkeypatch.setattr(plait.Event, "__init__", counting_init)

    @plait.tool
    async def work(x: int) -> int:
        return x

    engine = plait.Engine(tools=[work])
    engine.subscribe(lambda e: None, kinds=[plait.EventKind.CALL_FAILED])
    await engine.run(MapReduce(Var("xs"), Call("work", Var("item"))), {"xs": range(20)})
    assert built == []


def test_subscribe_rejects_unknown_kinds() -> None:
    engine = plait.Engine()
    with pytest.raises(ValueError, match=r"call\.finished"):
        engine.subscribe(print, kinds=["call.done"])


async def test_a_late_subscriber_sees_no_finish_without_its_start() -> None:
    engine_box: list[plait.Engine] = []
    seen: list[plait.Event] = []

    @plait.tool
    async def work(x: int) -> int:
        if x == 0:
            engine_box[0].subscribe(seen.append)
        await anyio.lowlevel.checkpoint()
        return x

    engine = plait.Engine(tools=[work])
    engine_box.append(engine)
    await engine.run(Parallel(Call("work", 0), Call("work", 1)))
    started = {e.path for e in seen if e.kind is plait.EventKind.CALL_STARTED}
    finished = {e.path for e in seen if e.kind is plait.EventKind.CALL_FINISHED}
    assert finished <= started


async def test_a_retried_call_keeps_its_slot_free_while_backing_off() -> None:
    # Inside a map the worker's kept slot is let go before the backoff.
    holding: list[int] = []
    engine_box: list[plait.Engine] = []
    tries = 0

    @plait.tool(retry=plait.Retry(attempts=2, initial_delay=0.05, jitter=False))
    async def flaky(x: int) -> int:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ConnectionError("once")
        return x

    @plait.tool
    async def watch() -> None:
        await anyio.sleep(0.02)
        holding.append(engine_box[0]._limiter.borrowed)

    engine = plait.Engine(tools=[flaky, watch], max_concurrency=2)
    engine_box.append(engine)
    started = time.perf_counter()
    await engine.run(
        Parallel(MapReduce(Lit([1]), Call("flaky", Var("item"))), Call("watch"))
    )
    assert time.perf_counter() - started >= 0.05
    assert holding == [1]  # only watch itself holds a slot during the backoff


async def test_middleware_that_waits_never_waits_on_a_kept_slot() -> None:
    # A middleware runs before its call takes any slot; a worker keeping its
    # engine slot while its middleware waits for another limit would
    # deadlock with a call holding that limit and waiting for the slot.
    registry = plait.LimiterRegistry()
    registry.set_limit("k", 1)

    async def one_at_a_time(call: plait.ToolCall, call_next: plait.Next) -> Any:
        async with registry.limit("k"):
            return await call_next(call)

    @plait.tool
    async def work(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x

    engine = plait.Engine(tools=[work], max_concurrency=1, middleware=[one_at_a_time])
    with anyio.fail_after(PROMPT):
        out = await engine.run(
            MapReduce(Var("xs"), Call("work", Var("item")), max_concurrency=4),
            {"xs": list(range(20))},
        )
    assert out == list(range(20))
