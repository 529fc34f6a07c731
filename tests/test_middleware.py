"""Middleware: wrappers around every attempt of every tool call."""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import pytest

import plait

pytestmark = pytest.mark.anyio

NO_WAIT = plait.Retry(attempts=3, initial_delay=0.0, jitter=False)


async def test_logging_middleware_sees_every_attempt() -> None:
    seen: list[plait.ToolCall] = []
    outcomes: list[str] = []
    tries = 0

    @plait.tool(retry=NO_WAIT)
    async def flaky(x: int, *, scale: int) -> int:
        nonlocal tries
        tries += 1
        await anyio.sleep(0)
        if tries < 3:
            raise ConnectionError(f"try {tries}")
        return x * scale

    async def log(call: plait.ToolCall, call_next: plait.Next) -> Any:
        seen.append(call)
        try:
            value = await call_next(call)
        except Exception as exc:
            outcomes.append(f"{call.attempt}:{type(exc).__name__}")
            raise
        outcomes.append(f"{call.attempt}:{value}")
        return value

    engine = plait.Engine(tools=[flaky], middleware=[log])
    assert await engine.run(plait.Sequential(plait.Call("flaky", 7, scale=3))) == 21

    assert [c.attempt for c in seen] == [1, 2, 3]
    for c in seen:
        assert isinstance(c, plait.ToolCall)
        assert c.tool is flaky
        assert c.name == "flaky"
        assert c.args == (7,)
        assert c.kwargs == {"scale": 3}
        assert c.path == "steps[0]"
    assert outcomes == ["1:ConnectionError", "2:ConnectionError", "3:21"]


async def test_middleware_sees_map_element_paths() -> None:
    paths: list[str] = []

    @plait.tool
    async def inc(x: int) -> int:
        return x + 1

    async def record(call: plait.ToolCall, call_next: plait.Next) -> Any:
        paths.append(call.path)
        return await call_next(call)

    engine = plait.Engine(tools=[inc], middleware=[record])
    wf = plait.Sequential(
        plait.Call("inc", 0, name="zero"),
        plait.MapReduce(plait.Var("xs"), plait.Call("inc", plait.Var("item"))),
    )
    assert await engine.run(wf, {"xs": [1, 2, 3]}) == [2, 3, 4]
    assert paths[0] == "steps[0]"
    assert sorted(paths[1:]) == [f"steps[1].map[{i}]" for i in range(3)]


async def test_middleware_order_first_is_outermost() -> None:
    trace: list[str] = []

    @plait.tool
    async def work() -> str:
        trace.append("tool")
        return "ok"

    def make(label: str) -> plait.Middleware:
        async def mw(call: plait.ToolCall, call_next: plait.Next) -> Any:
            trace.append(f"{label}>")
            try:
                return await call_next(call)
            finally:
                trace.append(f"<{label}")

        return mw

    engine = plait.Engine(tools=[work], middleware=[make("a"), make("b"), make("c")])
    assert await engine.run(plait.Call("work")) == "ok"
    assert trace == ["a>", "b>", "c>", "tool", "<c", "<b", "<a"]


async def test_middleware_can_change_kwargs() -> None:
    received: list[dict[str, Any]] = []

    @plait.tool
    async def greet(who: str, punctuation: str = ".") -> str:
        received.append({"who": who, "punctuation": punctuation})
        return f"hello {who}{punctuation}"

    async def excited(call: plait.ToolCall, call_next: plait.Next) -> Any:
        return await call_next(
            attrs.evolve(call, kwargs={**call.kwargs, "punctuation": "!"})
        )

    async def shout(call: plait.ToolCall, call_next: plait.Next) -> Any:
        return (await call_next(call)).upper()

    engine = plait.Engine(tools=[greet], middleware=[shout, excited])
    assert await engine.run(plait.Call("greet", who="ann")) == "HELLO ANN!"
    assert received == [{"who": "ann", "punctuation": "!"}]


async def test_middleware_can_change_args() -> None:
    @plait.tool
    def square(x: int) -> int:
        return x * x

    async def plus_one(call: plait.ToolCall, call_next: plait.Next) -> Any:
        return await call_next(attrs.evolve(call, args=(call.args[0] + 1,)))

    engine = plait.Engine(tools=[square], middleware=[plus_one])
    assert await engine.run(plait.Call("square", 4)) == 25


async def test_cache_middleware_short_circuits() -> None:
    calls: list[int] = []

    @plait.tool
    async def expensive(x: int) -> int:
        calls.append(x)
        await anyio.sleep(0)
        return x * 10

    cache: dict[tuple[str, tuple[Any, ...]], Any] = {}

    async def caching(call: plait.ToolCall, call_next: plait.Next) -> Any:
        key = (call.name, call.args)
        if key in cache:
            return cache[key]
        value = await call_next(call)
        cache[key] = value
        return value

    engine = plait.Engine(tools=[expensive], middleware=[caching], max_concurrency=1)
    wf = plait.MapReduce(plait.Var("xs"), plait.Call("expensive", plait.Var("item")))
    result = await engine.execute(wf, {"xs": [1, 2, 1, 1, 2, 3]})
    assert result.output == [10, 20, 10, 10, 20, 30]
    assert calls == [1, 2, 3]
    # the tool itself ran three times; every call still counts as a call
    assert result.stats.tools["expensive"].calls == 6


async def test_short_circuit_takes_no_concurrency_slot() -> None:
    @plait.tool(concurrency_limit=1)
    async def blocked() -> str:
        await anyio.sleep(10)
        return "never"

    async def answer(call: plait.ToolCall, call_next: plait.Next) -> Any:
        if call.kwargs.get("cached"):
            return "from cache"
        return await call_next(call)

    engine = plait.Engine(tools=[blocked], middleware=[answer])
    wf = plait.Parallel(
        plait.Call("blocked", timeout=0.5),
        plait.Call("blocked", cached=True),
        on_error="collect",
    )
    with anyio.fail_after(3):
        out = await engine.run(wf)
    assert out[1] == "from cache"
    assert isinstance(out[0], plait.Failure)
    assert isinstance(out[0].error, plait.ToolTimeout)


async def test_exception_in_middleware_fails_the_step_with_its_path() -> None:
    ran = False

    @plait.tool
    async def work() -> None:
        nonlocal ran
        ran = True

    async def deny(call: plait.ToolCall, call_next: plait.Next) -> Any:
        raise PermissionError(f"{call.name} is not allowed")

    engine = plait.Engine(tools=[work], middleware=[deny])
    wf = plait.Sequential(plait.Parallel(x=plait.Call("work")))
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(wf)
    assert info.value.path == "steps[0].steps.x"
    assert isinstance(info.value.__cause__, PermissionError)
    assert str(info.value.__cause__) == "work is not allowed"
    assert ran is False


async def test_exception_in_middleware_in_collect_mode_is_a_failure() -> None:
    @plait.tool
    async def work(x: int) -> int:
        return x

    async def odd_only(call: plait.ToolCall, call_next: plait.Next) -> Any:
        if call.args[0] % 2 == 0:
            raise ValueError("even")
        return await call_next(call)

    engine = plait.Engine(tools=[work], middleware=[odd_only])
    wf = plait.MapReduce(
        plait.Var("xs"), plait.Call("work", plait.Var("item")), on_error="collect"
    )
    out = await engine.run(wf, {"xs": [1, 2, 3]})
    assert out[0] == 1
    assert out[2] == 3
    assert isinstance(out[1], plait.Failure)
    assert isinstance(out[1].error, ValueError)
    assert out[1].path == "map[1]"


async def test_middleware_error_is_retried_like_a_tool_error() -> None:
    attempts: list[int] = []

    @plait.tool(retry=NO_WAIT)
    async def work() -> str:
        return "ok"

    async def flaky_proxy(call: plait.ToolCall, call_next: plait.Next) -> Any:
        attempts.append(call.attempt)
        if call.attempt == 1:
            raise ConnectionError("proxy down")
        return await call_next(call)

    engine = plait.Engine(tools=[work], middleware=[flaky_proxy])
    assert await engine.run(plait.Call("work")) == "ok"
    assert attempts == [1, 2]


async def test_middleware_runs_for_sync_tools_and_call_tools() -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    @plait.tool
    def add(a: int, b: int) -> int:
        return a + b

    async def record(call: plait.ToolCall, call_next: plait.Next) -> Any:
        seen.append((call.name, call.path, call.kwargs))
        return await call_next(call)

    engine = plait.Engine(tools=[add], middleware=[record])
    out = await engine.call_tools(
        [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})], parallel=False
    )
    assert out == [3, 7]
    assert seen == [
        ("add", "calls[0]", {"a": 1, "b": 2}),
        ("add", "calls[1]", {"a": 3, "b": 4}),
    ]


async def test_keyed_limit_limits_per_key() -> None:
    running: dict[str, int] = {}
    peaks: dict[str, int] = {}

    @plait.tool
    async def ask(agent: str, question: int) -> int:
        running[agent] = running.get(agent, 0) + 1
        peaks[agent] = max(peaks.get(agent, 0), running[agent])
        await anyio.sleep(0.02)
        running[agent] -= 1
        return question

    limits = plait.LimiterRegistry()
    limits.set_limit("researcher", 2)
    limits.set_limit("writer", 1)
    keyed = plait.KeyedLimit(limits, key=lambda call: call.kwargs["agent"])
    engine = plait.Engine(tools=[ask], middleware=[keyed])

    steps = [
        plait.Call("ask", agent=agent, question=i)
        for i in range(6)
        for agent in ("researcher", "writer", "critic")
    ]
    out = await engine.run(plait.Parallel(*steps))
    assert out == [i for i in range(6) for _ in range(3)]
    assert peaks == {"researcher": 2, "writer": 1, "critic": 6}
    for key in ("researcher", "writer", "critic"):
        assert limits.in_use(key) == 0


async def test_keyed_limit_defaults_to_the_tool_name() -> None:
    running = {"a": 0, "b": 0}
    peaks = {"a": 0, "b": 0}

    def make(name: str) -> plait.Tool:
        async def body() -> str:
            running[name] += 1
            peaks[name] = max(peaks[name], running[name])
            await anyio.sleep(0.02)
            running[name] -= 1
            return name

        return plait.tool(name=name)(body)

    limits = plait.LimiterRegistry()
    limits.set_limit("a", 1)
    engine = plait.Engine(
        tools=[make("a"), make("b")], middleware=[plait.KeyedLimit(limits)]
    )
    steps = [plait.Call(n) for _ in range(4) for n in ("a", "b")]
    assert await engine.run(plait.Parallel(*steps)) == ["a", "b"] * 4
    assert peaks == {"a": 1, "b": 4}


async def test_keyed_limit_releases_on_error() -> None:
    @plait.tool
    async def boom() -> None:
        raise RuntimeError("boom")

    limits = plait.LimiterRegistry()
    limits.set_limit("boom", 1)
    engine = plait.Engine(tools=[boom], middleware=[plait.KeyedLimit(limits)])
    wf = plait.Parallel(*[plait.Call("boom") for _ in range(3)], on_error="collect")
    with anyio.fail_after(2):
        out = await engine.run(wf)
    assert all(isinstance(v, plait.Failure) for v in out)
    assert limits.in_use("boom") == 0


async def test_keyed_rate_limit_spaces_calls_per_key() -> None:
    starts: dict[str, list[float]] = {"x": [], "y": []}

    @plait.tool
    async def hit(key: str) -> str:
        starts[key].append(anyio.current_time())
        return key

    rl = plait.KeyedRateLimit(
        plait.RateLimit(10, burst=1), key=lambda call: call.kwargs["key"]
    )
    engine = plait.Engine(tools=[hit], middleware=[rl])
    steps = [plait.Call("hit", key=k) for _ in range(3) for k in ("x", "y")]
    began = anyio.current_time()
    await engine.run(plait.Parallel(*steps))
    # 3 calls per key at 10/s with burst 1: the third starts >= 0.2 s in;
    # the two keys do not share a bucket, so it is not 0.5 s
    for key in ("x", "y"):
        assert len(starts[key]) == 3
        assert max(starts[key]) - began >= 0.17
        assert max(starts[key]) - began < 0.45


def test_keyed_rate_limit_rejects_a_bad_spec() -> None:
    with pytest.raises(TypeError):
        plait.KeyedRateLimit(10)  # type: ignore[arg-type]


def test_non_callable_middleware_is_a_config_error() -> None:
    with pytest.raises(plait.ConfigError, match="middleware"):
        plait.Engine(middleware=["log"])  # type: ignore[list-item]


async def test_the_same_keyed_limit_or_rate_limit_twice_is_taken_once() -> None:
    limits = plait.LimiterRegistry()
    limits.set_limit("echo", 1)
    keyed = plait.KeyedLimit(limits)
    paced = plait.KeyedRateLimit(plait.RateLimit(100, burst=1))

    @plait.tool
    async def echo(x: int) -> int:
        return x

    engine = plait.Engine(tools=[echo], middleware=[keyed, keyed, paced, paced])
    with anyio.fail_after(5):
        out = await engine.run(
            plait.MapReduce(plait.Var("xs"), "echo"), {"xs": range(3)}
        )
    assert out == [0, 1, 2]
    assert limits.in_use("echo") == 0
