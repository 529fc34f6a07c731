"""A KeyedLimit's adaptive limits: each key's live value in events, stats and progress."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import plait
from plait._cli._display import headline
from plait._cli._tracker import RunTracker

pytestmark = pytest.mark.anyio


def _keyed(registry: plait.LimiterRegistry) -> plait.KeyedLimit:
    return plait.KeyedLimit(
        registry,
        key=lambda c: c.kwargs["key"],
        adaptive=plait.Adaptive(initial=4, min=1, max=4),
    )


@plait.tool(retry=plait.Retry(attempts=1))
async def api(key: str) -> str:
    await anyio.sleep(0)
    if key == "a":
        raise plait.RateLimited()
    return key


async def _run(
    engine: plait.Engine, over: list[str]
) -> tuple[plait.RunResult, list[plait.Event]]:
    events: list[plait.Event] = []
    engine.subscribe(events.append, kinds=[plait.EventKind.LIMIT_CHANGED])
    result = await engine.execute(
        plait.MapReduce(
            over=over, map=plait.Call("api", key=plait.Var("item")), on_error="collect"
        )
    )
    return result, events


async def test_each_keys_limit_is_in_the_events_and_the_stats() -> None:
    registry = plait.LimiterRegistry()
    engine = plait.Engine(tools=[api], middleware=[_keyed(registry)])
    result, events = await _run(engine, ["a", "b"] * 4)
    moved = [(e.key, e.limit, e.tool) for e in events]
    assert moved, "a push-back of key a moves its limit"
    assert {key for key, _, _ in moved} == {"a"}
    assert all(tool == "api" for _, _, tool in moved)
    limits = [limit for _, limit, _ in moved]
    assert limits == sorted(limits, reverse=True)
    assert all(e.path.startswith("map[") for e in events)
    stats = result.stats.tools["api"]
    assert stats.key_limits == {"a": registry.get_limit("a"), "b": 4}
    assert registry.get_limit("b") == 4  # a key that only succeeds keeps its limit
    assert stats.key_limits["a"] == limits[-1] < 4
    assert stats.limit is None  # the tool's own limit is not adaptive


async def test_a_key_that_only_succeeds_shows_its_value_without_events() -> None:
    registry = plait.LimiterRegistry()
    engine = plait.Engine(tools=[api], middleware=[_keyed(registry)])
    result, events = await _run(engine, ["b", "c"])
    assert events == []
    assert result.stats.tools["api"].key_limits == {"b": 4, "c": 4}


async def test_without_adaptive_no_key_limits_are_reported() -> None:
    registry = plait.LimiterRegistry()
    registry.set_limit("a", 2)
    engine = plait.Engine(
        tools=[api],
        middleware=[plait.KeyedLimit(registry, key=lambda c: c.kwargs["key"])],
    )
    result, events = await _run(engine, ["a", "b"])
    assert events == []
    assert result.stats.tools["api"].key_limits == {}


async def test_the_progress_shows_each_keys_limit() -> None:
    registry = plait.LimiterRegistry()
    engine = plait.Engine(tools=[api], middleware=[_keyed(registry)])
    step = plait.MapReduce(
        over=["a", "b"] * 4,
        map=plait.Call("api", key=plait.Var("item")),
        on_error="collect",
    )
    tracker = RunTracker(plait.Workflow(step))
    engine.subscribe(tracker)
    await engine.execute(step)
    limit = registry.get_limit("a")
    assert tracker.limits() == {"api[a]": limit}
    assert headline(tracker, now=0.0).endswith(f"limit api[a]={limit}")


async def test_a_tool_calling_a_tool_keeps_each_calls_report() -> None:
    """The inner call's report is its own; the outer call's is back after it."""
    registry = plait.LimiterRegistry()
    inner_engine: list[plait.Engine] = []

    @plait.tool(retry=plait.Retry(attempts=1))
    async def outer(key: str) -> Any:
        await inner_engine[0].call_tools(
            [("api", {"key": "a"})], parallel=False, on_error="collect"
        )
        raise plait.RateLimited()

    engine = plait.Engine(tools=[api, outer], middleware=[_keyed(registry)])
    inner_engine.append(engine)
    events: list[plait.Event] = []
    engine.subscribe(events.append, kinds=[plait.EventKind.LIMIT_CHANGED])
    result = await engine.execute(
        plait.MapReduce(
            over=["x"],
            map=plait.Call("outer", key=plait.Var("item")),
            on_error="collect",
        )
    )
    assert {(e.tool, e.key) for e in events} == {("api", "a"), ("outer", "x")}
    assert set(result.stats.tools["outer"].key_limits) == {"x"}
