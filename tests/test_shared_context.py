"""SharedContext: an async-safe shared dict with an atomic modify, and its sync view."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

from plait.agents import AgentLoop, SharedContext, SyncContext

pytestmark = pytest.mark.anyio


async def test_get_set_update_pop_snapshot() -> None:
    initial = {"a": 1}
    ctx = SharedContext(initial)
    initial["a"] = 99  # the context holds its own copy
    assert await ctx.get("a") == 1
    assert await ctx.get("missing") is None
    assert await ctx.get("missing", "fallback") == "fallback"

    await ctx.set("b", [2])
    await ctx.update({"c": 3}, d=4)
    await ctx.update(e=5)
    assert await ctx.snapshot() == {"a": 1, "b": [2], "c": 3, "d": 4, "e": 5}

    assert await ctx.pop("e") == 5
    assert await ctx.pop("e", "gone") == "gone"
    with pytest.raises(KeyError):
        await ctx.pop("e")
    assert sorted(await ctx.snapshot()) == ["a", "b", "c", "d"]
    assert repr(ctx) == "<SharedContext keys=['a', 'b', 'c', 'd']>"
    assert isinstance(ctx.sync, SyncContext)
    assert await SharedContext().snapshot() == {}


async def test_snapshot_is_a_copy() -> None:
    ctx = SharedContext({"a": 1, "items": [1]})
    snap = await ctx.snapshot()
    snap["a"] = 2
    snap["new"] = True
    del snap["items"]
    assert await ctx.snapshot() == {"a": 1, "items": [1]}
    assert await ctx.snapshot() is not await ctx.snapshot()


async def test_modify_sync_and_async_fns() -> None:
    ctx = SharedContext({"n": 1})
    assert await ctx.modify("n", lambda n: n + 1) == 2

    async def double(n: int) -> int:
        await anyio.sleep(0)
        return n * 2

    assert await ctx.modify("n", double) == 4
    # A sync fn handing back an awaitable has it awaited.
    assert await ctx.modify("n", lambda n: double(n)) == 8
    assert await ctx.modify("fresh", lambda xs: [*xs, "x"], default=[]) == ["x"]
    assert await ctx.snapshot() == {"n": 8, "fresh": ["x"]}


async def test_modify_a_missing_key_without_default() -> None:
    ctx = SharedContext()
    with pytest.raises(KeyError, match="'counter'") as info:
        await ctx.modify("counter", lambda n: n + 1)
    assert "default=" in str(info.value)
    assert await ctx.snapshot() == {}


async def test_modify_changes_nothing_when_fn_raises() -> None:
    ctx = SharedContext({"n": 1})

    def bad(n: int) -> int:
        raise ValueError("no")

    async def bad_later(n: int) -> int:
        await anyio.sleep(0)
        raise ValueError("not either")

    with pytest.raises(ValueError, match="no"):
        await ctx.modify("n", bad)
    with pytest.raises(ValueError, match="not either"):
        await ctx.modify("n", bad_later)
    with pytest.raises(ValueError, match="no"):
        await ctx.modify("new", bad, default=0)
    assert await ctx.snapshot() == {"n": 1}
    assert await ctx.modify("n", lambda n: n + 1) == 2  # the lock was released


async def test_modify_cancelled_midway_changes_nothing() -> None:
    ctx = SharedContext({"n": 1})

    async def slow(n: int) -> int:
        await anyio.sleep(10)
        return n + 1

    with anyio.move_on_after(0.02):
        await ctx.modify("n", slow)
    assert await ctx.get("n") == 1
    await ctx.set("n", 5)  # the lock was released
    assert await ctx.get("n") == 5


async def test_concurrent_modify_loses_no_update() -> None:
    ctx = SharedContext({"n": 0})

    async def increment(n: int) -> int:
        await anyio.sleep(0)  # another task would run here, given the chance
        return n + 1

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(ctx.modify, "n", increment)
    assert await ctx.get("n") == 100


async def test_get_then_set_loses_updates() -> None:
    # What modify prevents: the same race without it (the test above would
    # catch it).
    ctx = SharedContext({"n": 0})

    async def increment() -> None:
        n = await ctx.get("n")
        await anyio.sleep(0)
        await ctx.set("n", n + 1)

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(increment)
    assert await ctx.get("n") < 100


async def test_modify_excludes_readers_while_fn_awaits() -> None:
    ctx = SharedContext({"n": 0})
    inside = anyio.Event()
    seen: list[int] = []

    async def slow(n: int) -> int:
        inside.set()
        await anyio.sleep(0.03)
        return n + 1

    async def reader() -> None:
        await inside.wait()
        seen.append(await ctx.get("n"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ctx.modify, "n", slow)
        tg.start_soon(reader)
    assert seen == [1]


def appending(entry: Any) -> Callable[[list[Any]], list[Any]]:
    return lambda log: [*log, entry]


async def test_sync_view_from_worker_threads_with_async_modifies() -> None:
    ctx = SharedContext({"n": 0, "log": []})

    def worker(name: str) -> None:
        for i in range(50):
            ctx.sync.modify("n", lambda n: n + 1)
            ctx.sync.modify("log", appending((name, i)))
        ctx.sync.set(name, True)
        ctx.sync.update({f"{name}-done": True})

    async def bump(n: int) -> int:
        await anyio.sleep(0)
        return n + 1

    async with anyio.create_task_group() as tg:
        for t in range(4):
            tg.start_soon(anyio.to_thread.run_sync, worker, f"t{t}")
        for _ in range(100):
            tg.start_soon(ctx.modify, "n", bump)
    snap = await ctx.snapshot()
    assert snap["n"] == 4 * 50 + 100
    assert len(snap["log"]) == 4 * 50
    for t in range(4):
        mine = [i for name, i in snap["log"] if name == f"t{t}"]
        assert mine == list(range(50))
        assert snap[f"t{t}"] is True
        assert snap[f"t{t}-done"] is True


async def test_blocking_agents_share_a_context_through_the_sync_view() -> None:
    ctx = SharedContext({"seen": 0})

    def agent(i: int) -> int:
        assert ctx.sync.get("seen") >= 0
        return int(ctx.sync.modify("seen", lambda n: n + 1))

    loop = AgentLoop(max_concurrency=8)
    results = await loop.run_all([(f"a{i}", agent, (i,)) for i in range(40)])
    assert all(r.success for r in results)
    assert sorted(r.output for r in results) == list(range(1, 41))
    assert await ctx.get("seen") == 40


async def test_sync_view_refuses_the_event_loop_thread() -> None:
    ctx = SharedContext({"a": 1})
    calls: list[Callable[[], Any]] = [
        lambda: ctx.sync.get("a"),
        lambda: ctx.sync.set("a", 2),
        lambda: ctx.sync.update(a=2),
        lambda: ctx.sync.pop("a"),
        lambda: ctx.sync.snapshot(),
        lambda: ctx.sync.modify("a", lambda n: n + 1),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match=r"SharedContext\.sync cannot be used"):
            call()
    assert await ctx.snapshot() == {"a": 1}
    assert await ctx.modify("a", lambda n: n + 1) == 2  # the lock is free


def test_sync_view_without_an_event_loop() -> None:
    ctx = SharedContext({"n": 1})
    sync = ctx.sync
    assert sync.get("n") == 1
    assert sync.get("missing", 0) == 0
    sync.set("s", "x")
    sync.update({"u": 1}, v=2)
    assert sync.modify("n", lambda n: n + 1) == 2
    assert sync.modify("list", lambda xs: [*xs, 1], default=[]) == [1]
    snap = sync.snapshot()
    snap["n"] = 100
    assert sync.snapshot() == {"n": 2, "s": "x", "u": 1, "v": 2, "list": [1]}
    assert sync.pop("v") == 2
    assert sync.pop("v", None) is None
    with pytest.raises(KeyError):
        sync.pop("v")
    with pytest.raises(KeyError, match="'nope'"):
        sync.modify("nope", lambda n: n)

    def bad(n: int) -> int:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        sync.modify("n", bad)
    assert sync.get("n") == 2


def test_sync_modify_refuses_an_async_fn() -> None:
    ctx = SharedContext({"n": 1})

    async def later(n: int) -> int:
        return n + 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match="needs a sync fn"):
            ctx.sync.modify("n", later)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert ctx.sync.get("n") == 1


def test_sync_view_from_plain_threads() -> None:
    ctx = SharedContext({"n": 0})

    def worker() -> None:
        for _ in range(200):
            ctx.sync.modify("n", lambda n: n + 1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert ctx.sync.get("n") == 800


async def test_values_of_any_type_round_trip() -> None:
    ctx = SharedContext()
    value: Any = object()
    await ctx.set("obj", value)
    assert await ctx.get("obj") is value
    assert (await ctx.snapshot())["obj"] is value
