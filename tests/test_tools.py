"""@plait.tool, Tool objects and their registration on an Engine."""

from __future__ import annotations

import anyio
import pytest

import plait

pytestmark = pytest.mark.anyio


# -- the decorator -----------------------------------------------------------


def test_bare_decorator_on_sync_function() -> None:
    @plait.tool
    def add(a: int, b: int) -> int:
        return a + b

    assert isinstance(add, plait.Tool)
    assert add.name == "add"
    assert add.is_async is False
    assert add.concurrency_limit is None
    assert add.timeout is None
    assert add.retry is None
    assert add.rate_limit is None
    assert add(2, 3) == 5
    assert add(a=1, b=1) == 2


async def test_bare_decorator_on_async_function() -> None:
    @plait.tool
    async def fetch(x: int) -> int:
        await anyio.sleep(0)
        return x * 10

    assert isinstance(fetch, plait.Tool)
    assert fetch.name == "fetch"
    assert fetch.is_async is True
    assert await fetch(4) == 40


def test_decorator_with_options_on_sync_function() -> None:
    retry = plait.Retry(attempts=5)
    rate = plait.RateLimit(3, per=2.0)

    @plait.tool(
        name="lookup",
        concurrency_limit=4,
        timeout=2.5,
        retry=retry,
        rate_limit=rate,
    )
    def find(key: str) -> str:
        return key.upper()

    assert isinstance(find, plait.Tool)
    assert find.name == "lookup"
    assert find.concurrency_limit == 4
    assert find.timeout == 2.5
    assert find.retry is retry
    assert find.rate_limit is rate
    assert find.is_async is False
    assert find("abc") == "ABC"


async def test_decorator_with_options_on_async_function() -> None:
    @plait.tool(concurrency_limit=2, timeout=1)
    async def slow(x: int) -> int:
        await anyio.sleep(0)
        return x + 1

    assert slow.name == "slow"
    assert slow.is_async is True
    assert slow.concurrency_limit == 2
    assert slow.timeout == 1
    assert await slow(1) == 2


def test_decorator_with_empty_options_is_like_bare() -> None:
    @plait.tool()
    def f() -> int:
        return 7

    assert isinstance(f, plait.Tool)
    assert f.name == "f"
    assert f() == 7


def test_tool_keeps_the_function() -> None:
    def original(x: int) -> int:
        return x

    t = plait.tool(original)
    assert t.fn is original
    assert t(3) == 3


def test_async_callable_object_is_async() -> None:
    class Agent:
        async def __call__(self, x: int) -> int:
            return x

    t = plait.tool(name="agent")(Agent())
    assert t.is_async is True
    assert t.name == "agent"


def test_tool_repr_shows_name_and_options() -> None:
    @plait.tool(concurrency_limit=3)
    def thing() -> None:
        pass

    text = repr(thing)
    assert "thing" in text
    assert "concurrency_limit=3" in text


# -- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"concurrency_limit": 0}, "concurrency_limit"),
        ({"concurrency_limit": -3}, "concurrency_limit"),
        ({"concurrency_limit": 1.5}, "concurrency_limit"),
        ({"concurrency_limit": True}, "concurrency_limit"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "10"}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"retry": "x"}, "retry"),
        ({"retry": 3}, "retry"),
        ({"rate_limit": 5}, "rate_limit"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_options_raise_workflow_error_naming_the_field(
    options: dict[str, object], field: str
) -> None:
    def f() -> None:
        pass

    with pytest.raises(plait.WorkflowError) as info:
        plait.tool(**options)(f)  # type: ignore[call-overload]
    assert info.value.path == field
    assert field in str(info.value)
    assert isinstance(info.value, plait.PlaitError)


def test_tool_of_a_non_callable_is_rejected() -> None:
    with pytest.raises(plait.WorkflowError, match="fn"):
        plait.tool(42)  # type: ignore[call-overload]


# -- registration ------------------------------------------------------------


def test_engine_registers_tools_by_name() -> None:
    @plait.tool
    def a() -> int:
        return 1

    @plait.tool(name="bee")
    async def b() -> int:
        return 2

    engine = plait.Engine(tools=[a, b])
    assert engine.tools == {"a": a, "bee": b}


def test_engine_accepts_plain_functions() -> None:
    def double(x: int) -> int:
        return 2 * x

    engine = plait.Engine(tools=[double])
    assert set(engine.tools) == {"double"}
    registered = engine.tools["double"]
    assert isinstance(registered, plait.Tool)
    assert registered.fn is double


async def test_plain_function_tool_runs_by_name() -> None:
    def double(x: int) -> int:
        return 2 * x

    async def triple(x: int) -> int:
        await anyio.sleep(0)
        return 3 * x

    engine = plait.Engine(tools=[double, triple])
    wf = plait.Parallel(plait.Call("double", 5), plait.Call("triple", 5))
    assert await engine.run(wf) == [10, 15]


def test_duplicate_tool_names_are_a_config_error() -> None:
    @plait.tool
    def search() -> None:
        pass

    @plait.tool(name="search")
    def other() -> None:
        pass

    with pytest.raises(plait.ConfigError, match="search"):
        plait.Engine(tools=[search, other])


def test_duplicate_plain_function_names_are_a_config_error() -> None:
    def f() -> int:
        return 1

    g = f

    with pytest.raises(plait.ConfigError, match="'f'"):
        plait.Engine(tools=[f, g])


def test_non_callable_tool_is_a_config_error() -> None:
    with pytest.raises(plait.ConfigError):
        plait.Engine(tools=["search"])  # type: ignore[list-item]


def test_register_after_construction() -> None:
    engine = plait.Engine()

    def ping() -> str:
        return "pong"

    t = engine.register(ping)
    assert isinstance(t, plait.Tool)
    assert engine.tools == {"ping": t}
    with pytest.raises(plait.ConfigError):
        engine.register(ping)


async def test_call_with_unregistered_tool_object_works() -> None:
    @plait.tool
    async def adhoc(x: int) -> int:
        await anyio.sleep(0)
        return x + 100

    @plait.tool
    def adhoc_sync(x: int) -> int:
        return x - 100

    engine = plait.Engine()
    assert await engine.run(plait.Call(adhoc, 1)) == 101
    assert await engine.run(plait.Call(adhoc_sync, 1)) == -99
    # a plain function as a Call target is made a tool too
    assert await engine.run(plait.Call(abs, -5)) == 5
    assert engine.tools == {}


async def test_call_with_the_registered_tool_object_works() -> None:
    @plait.tool
    async def echo(x: int) -> int:
        await anyio.sleep(0)
        return x

    engine = plait.Engine(tools=[echo])
    assert await engine.run(plait.Call(echo, 9)) == 9


async def test_unregistered_tool_limit_still_applies() -> None:
    running = 0
    peak = 0

    @plait.tool(concurrency_limit=2)
    async def limited(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.02)
        running -= 1
        return x

    engine = plait.Engine()
    wf = plait.MapReduce(plait.Var("xs"), plait.Call(limited, plait.Var("item")))
    assert await engine.run(wf, {"xs": list(range(8))}) == list(range(8))
    assert peak == 2


async def test_different_tool_under_a_registered_name_is_rejected() -> None:
    @plait.tool(name="search")
    async def search_a(q: str) -> str:
        return "a"

    @plait.tool(name="search")
    async def search_b(q: str) -> str:
        return "b"

    ran = False

    @plait.tool
    async def first() -> None:
        nonlocal ran
        ran = True

    engine = plait.Engine(tools=[search_a, first])
    wf = plait.Sequential(plait.Call("first"), plait.Call(search_b, "q"))
    with pytest.raises(plait.WorkflowError) as info:
        await engine.run(wf)
    assert "search" in str(info.value)
    assert info.value.path == "steps[1]"
    # rejected before any tool ran
    assert ran is False


async def test_same_function_with_other_options_is_a_different_tool() -> None:
    async def search(q: str) -> str:
        return q

    registered = plait.tool(search)
    stricter = plait.tool(timeout=1)(search)
    engine = plait.Engine(tools=[registered])
    with pytest.raises(plait.WorkflowError):
        await engine.run(plait.Call(stricter, "q"))


async def test_unknown_tool_name_is_rejected_before_running() -> None:
    @plait.tool
    async def search(q: str) -> str:
        return q

    engine = plait.Engine(tools=[search])
    with pytest.raises(plait.UnknownTool) as info:
        await engine.run(
            plait.Sequential(plait.Call("search", "x"), plait.Call("serch"))
        )
    assert info.value.path == "steps[1]"
    assert "did you mean 'search'" in str(info.value)
    assert isinstance(info.value, plait.WorkflowError)
