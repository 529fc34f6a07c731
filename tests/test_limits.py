"""Concurrency limits: Limiter, LimiterRegistry, and the limits an Engine enforces.

Limits are observed from the outside: holders bump a counter under a lock and
the tests compare its peak with the limit; order is observed with sequence
numbers, and "did it wait" with short sleeps.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plait

pytestmark = pytest.mark.anyio

BACKENDS = [
    pytest.param("asyncio", {}, id="asyncio"),
    pytest.param("asyncio", {"use_uvloop": True}, id="uvloop"),
    pytest.param("trio", {}, id="trio"),
]

# Deadlock guard for the tests that wait on threads or on other tasks.
PATIENCE = 10.0


class Peak:
    """Counts holders at once, from any thread; remembers the highest count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.entered = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.entered += 1
            self.peak = max(self.peak, self.now)

    def exit(self) -> None:
        with self._lock:
            self.now -= 1


async def wait_until(predicate: Callable[[], bool], timeout: float = PATIENCE) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.001)


async def settle() -> None:
    """Give every other task (and cross-thread wake-up) time to run."""
    await anyio.sleep(0.05)


# -- Limiter and LimiterRegistry basics -----------------------------------------


async def test_set_and_get_limit_and_in_use() -> None:
    reg = plait.LimiterRegistry()
    assert reg.get_limit("k") is None
    reg.set_limit("k", 2)
    assert reg.get_limit("k") == 2
    assert reg.in_use("k") == 0
    await reg.acquire("k")
    assert reg.in_use("k") == 1
    async with reg.limit("k"):
        assert reg.in_use("k") == 2
    assert reg.in_use("k") == 1
    reg.release("k")
    assert reg.in_use("k") == 0
    reg.set_limit("k", None)
    assert reg.get_limit("k") is None


async def test_limit_context_releases_on_error() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 1)
    seen = []

    async def fail_inside() -> None:
        async with reg.limit("k"):
            seen.append(reg.in_use("k"))
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_inside()
    assert seen == [1]
    assert reg.in_use("k") == 0


async def test_unlimited_key_counts_holders_and_admits_everyone() -> None:
    reg = plait.LimiterRegistry()
    for _ in range(50):
        await reg.acquire("free")
    assert reg.in_use("free") == 50
    assert reg.get_limit("free") is None
    # A limit set later accounts for the holders already in.
    reg.set_limit("free", 49)
    got = anyio.Event()

    async def late() -> None:
        await reg.acquire("free")
        got.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(late)
        await settle()
        assert not got.is_set()
        reg.release("free")
        await settle()
        assert not got.is_set(), "50 holders - 1 = 49 is not under the limit 49"
        reg.release("free")
        await wait_until(got.is_set)
    assert reg.in_use("free") == 49
    for _ in range(49):
        reg.release("free")
    assert reg.in_use("free") == 0


def test_limit_sync_from_plain_threads() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 2)
    peak = Peak()

    def worker() -> None:
        for _ in range(10):
            with reg.limit_sync("k"):
                peak.enter()
                time.sleep(0.001)
                peak.exit()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PATIENCE)
    assert not any(t.is_alive() for t in threads)
    assert peak.entered == 60
    assert peak.peak == 2
    assert reg.in_use("k") == 0


def test_limit_sync_blocks_until_released() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 1)
    got_at: list[float] = []

    def waiter() -> None:
        with reg.limit_sync("k"):
            got_at.append(time.monotonic())

    with reg.limit_sync("k"):
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.1)
        assert not got_at
        released_at = time.monotonic()
    t.join(PATIENCE)
    assert len(got_at) == 1
    assert got_at[0] >= released_at
    assert reg.in_use("k") == 0


async def test_limit_sync_from_a_worker_thread() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 1)

    def in_thread() -> int:
        with reg.limit_sync("k"):
            return reg.in_use("k")

    assert await anyio.to_thread.run_sync(in_thread) == 1
    assert reg.in_use("k") == 0


async def test_acquire_sync_in_a_running_loop_raises() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("my-key", 1)
    with pytest.raises(RuntimeError) as info:
        reg.acquire_sync("my-key")
    message = str(info.value)
    assert "'my-key'" in message
    assert "await" in message
    assert "acquire" in message
    with pytest.raises(RuntimeError, match="my-key"), reg.limit_sync("my-key"):
        pass
    assert reg.in_use("my-key") == 0


def test_release_more_than_acquired_raises() -> None:
    lim = plait.Limiter(2, name="db")
    lim.acquire_blocking()
    lim.release()
    with pytest.raises(RuntimeError, match="db"):
        lim.release()
    assert lim.borrowed == 0

    reg = plait.LimiterRegistry()
    with pytest.raises(RuntimeError):
        reg.release("never-taken")
    assert reg.in_use("never-taken") == 0


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (-1, plait.ConfigError),
        (-math.inf, plait.ConfigError),
        (1.5, TypeError),
        ("x", TypeError),
        (True, TypeError),
        (math.nan, TypeError),
    ],
)
def test_invalid_limits_raise(bad: object, error: type[Exception]) -> None:
    # A wrong type is a TypeError, a negative number a ConfigError (a
    # ValueError), as anyio and Trio raise for their capacity limiters.
    with pytest.raises(error) as info:
        plait.Limiter(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)

    reg = plait.LimiterRegistry()
    reg.set_limit("k", 3)
    with pytest.raises(error) as info:
        reg.set_limit("k", bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)
    assert "'k'" in str(info.value)
    assert reg.get_limit("k") == 3, "a rejected limit must leave the old one"

    lim = plait.Limiter(1)
    with pytest.raises(error):
        lim.total = bad  # type: ignore[assignment]
    assert lim.total == 1


def test_valid_limit_values() -> None:
    assert plait.Limiter(None).total == math.inf
    assert plait.Limiter(math.inf).total == math.inf
    assert plait.Limiter(3).total == 3
    assert plait.Limiter(3.0).total == 3
    assert plait.Limiter(0).total == 0  # paused
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 0)
    assert reg.get_limit("k") == 0


# -- changing limits while in use --------------------------------------------------


async def test_lowering_a_limit_lets_nobody_in_until_under_it() -> None:
    # Regression: lowered to 1 while 2 hold, a third must wait for *both*.
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 2)
    await reg.acquire("k")
    await reg.acquire("k")
    reg.set_limit("k", 1)
    assert reg.in_use("k") == 2
    got = anyio.Event()

    async def third() -> None:
        async with reg.limit("k"):
            got.set()
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(third)
        await settle()
        assert not got.is_set()
        reg.release("k")
        assert reg.in_use("k") == 1
        await settle()
        assert not got.is_set(), "one holder left is not under the new limit of 1"
        assert not reg.limiter("k").try_acquire()
        reg.release("k")
        await wait_until(got.is_set)
        assert reg.in_use("k") == 1
    assert reg.in_use("k") == 0


def test_lowering_a_limit_blocks_threads_too() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 3)
    for _ in range(3):
        reg.acquire_sync("k")
    reg.set_limit("k", 1)
    got = threading.Event()

    def fourth() -> None:
        with reg.limit_sync("k"):
            got.set()

    t = threading.Thread(target=fourth)
    t.start()
    reg.release("k")
    reg.release("k")
    assert not got.wait(0.1)
    reg.release("k")
    assert got.wait(PATIENCE)
    t.join(PATIENCE)
    assert reg.in_use("k") == 0


async def test_raising_a_limit_admits_waiters_at_once() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 1)
    await reg.acquire("k")
    inside = Peak()
    release_all = anyio.Event()

    async def waiter() -> None:
        async with reg.limit("k"):
            inside.enter()
            await release_all.wait()
            inside.exit()

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(waiter)
        await wait_until(lambda: reg.limiter("k").waiting == 3)
        assert inside.entered == 0
        reg.set_limit("k", 4)  # no release: the raise alone lets them in
        await wait_until(lambda: inside.entered == 3)
        assert reg.in_use("k") == 4
        release_all.set()
    reg.release("k")
    assert reg.in_use("k") == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 1)
    await reg.acquire("k")
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with reg.limit("k"):
            order.append(i)
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(waiter, i)
            await wait_until(lambda i=i: reg.limiter("k").waiting == i + 1)
        reg.release("k")
    assert order == list(range(8))
    assert reg.in_use("k") == 0


async def test_a_released_slot_goes_to_the_waiter_not_a_newcomer() -> None:
    lim = plait.Limiter(1, name="k")
    await lim.acquire()
    got = anyio.Event()

    async def waiter() -> None:
        await lim.acquire()
        got.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_until(lambda: lim.waiting == 1)
        lim.release()
        # The slot was handed to the queued task, even though it has not run yet.
        assert not lim.try_acquire()
        await wait_until(got.is_set)
    assert lim.borrowed == 1
    lim.release()


# -- cancellation and cross-thread wake-ups ----------------------------------------


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 1)
    await reg.acquire("k")
    with anyio.move_on_after(0.05) as scope:
        await reg.acquire("k")
    assert scope.cancelled_caught
    assert reg.in_use("k") == 1
    assert reg.limiter("k").waiting == 0
    reg.release("k")
    assert reg.in_use("k") == 0
    # Others still get in, and a limit of 1 still admits exactly one.
    with anyio.fail_after(PATIENCE):
        async with reg.limit("k"):
            assert reg.in_use("k") == 1
            assert not reg.limiter("k").try_acquire()
    assert reg.in_use("k") == 0


async def test_the_engines_queued_acquire_waits_in_order_and_leaks_nothing() -> None:
    # The engine's own wait for a slot, after a failed try_acquire: no
    # checkpoint when a slot is free, first come first served when not, and
    # a waiter cancelled in the queue leaves it holding nothing.
    limiter = plait.Limiter(1)
    ran: list[str] = []

    async def sibling() -> None:
        ran.append("sibling")

    async with anyio.create_task_group() as tg:
        tg.start_soon(sibling)
        await limiter._acquire_queued()
        assert ran == [], "a free slot is taken without yielding"
    assert limiter.borrowed_tokens == 1
    order: list[str] = []

    async def waiter(tag: str, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope():
            await limiter._acquire_queued()
            order.append(tag)
            limiter.release()

    doomed = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "a")
        await wait_until(lambda: limiter.waiting == 1)
        tg.start_soon(waiter, "b", doomed)
        await wait_until(lambda: limiter.waiting == 2)
        tg.start_soon(waiter, "c")
        await wait_until(lambda: limiter.waiting == 3)
        doomed.cancel()
        await wait_until(lambda: limiter.waiting == 2)
        limiter.release()
    assert order == ["a", "c"]
    assert limiter.borrowed_tokens == 0
    assert limiter.waiting == 0


async def test_cancelled_waiter_in_the_middle_of_the_queue() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 1)
    await reg.acquire("k")
    order: list[str] = []

    async def waiter(tag: str) -> None:
        async with reg.limit("k"):
            order.append(tag)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "a")
        await wait_until(lambda: reg.limiter("k").waiting == 1)
        middle = anyio.CancelScope()

        async def cancelled_waiter() -> None:
            with middle:
                await waiter("b")

        tg.start_soon(cancelled_waiter)
        await wait_until(lambda: reg.limiter("k").waiting == 2)
        tg.start_soon(waiter, "c")
        await wait_until(lambda: reg.limiter("k").waiting == 3)
        middle.cancel()
        await wait_until(lambda: reg.limiter("k").waiting == 2)
        reg.release("k")
    assert order == ["a", "c"]
    assert reg.in_use("k") == 0


async def test_many_cancelled_waiters_leak_nothing() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 2)
    peak = Peak()
    done = 0

    async def holder(i: int) -> None:
        nonlocal done
        # Timeouts race with grants: some waiters are cancelled just as
        # their slot is handed over, and must give it back.
        with anyio.move_on_after(0.001 * (i % 7)):
            async with reg.limit("k"):
                peak.enter()
                try:
                    await anyio.sleep(0.001)
                finally:
                    peak.exit()
        done += 1

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(holder, i)
    assert done == 200
    assert peak.peak <= 2
    assert reg.in_use("k") == 0
    assert reg.limiter("k").waiting == 0
    # Both slots are really free.
    await reg.acquire("k")
    await reg.acquire("k")
    assert not reg.limiter("k").try_acquire()
    reg.release("k")
    reg.release("k")


async def test_release_from_another_thread_wakes_an_async_waiter() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 1)
    await reg.acquire("k")
    released = threading.Event()

    def release_later() -> None:
        time.sleep(0.05)
        released.set()
        reg.release("k")

    t = threading.Thread(target=release_later)
    t.start()
    try:
        with anyio.fail_after(PATIENCE):
            await reg.acquire("k")
        assert released.is_set()
        assert reg.in_use("k") == 1
    finally:
        t.join(PATIENCE)
    reg.release("k")


async def test_async_release_wakes_a_blocked_thread() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("k", 1)
    await reg.acquire("k")
    got = threading.Event()

    def blocked() -> None:
        with reg.limit_sync("k"):
            got.set()

    t = threading.Thread(target=blocked)
    t.start()
    await wait_until(lambda: reg.limiter("k").waiting == 1)
    assert not got.is_set()
    reg.release("k")
    await wait_until(got.is_set)
    t.join(PATIENCE)
    assert reg.in_use("k") == 0


@pytest.mark.parametrize("limit", [1, 3])
def test_one_key_shared_by_several_event_loops_and_threads(limit: int) -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("shared", limit)
    peak = Peak()
    errors: list[BaseException] = []
    finished: list[str] = []
    rounds = 8

    async def task() -> None:
        for _ in range(rounds):
            async with reg.limit("shared"):
                peak.enter()
                await anyio.sleep(0.001)
                peak.exit()

    def sync_holder() -> None:
        for _ in range(rounds):
            with reg.limit_sync("shared"):
                peak.enter()
                time.sleep(0.001)
                peak.exit()

    async def loop_main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(task)
            # A worker thread of this loop, blocking on the same key.
            tg.start_soon(anyio.to_thread.run_sync, sync_holder)

    def loop_thread(backend: str, options: dict[str, Any], tag: str) -> None:
        try:
            anyio.run(loop_main, backend=backend, backend_options=options)
            finished.append(tag)
        except BaseException as error:  # reported by the assertions below
            errors.append(error)

    def plain_thread(tag: str) -> None:
        try:
            sync_holder()
            finished.append(tag)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=loop_thread, args=("asyncio", {}, "asyncio")),
        threading.Thread(
            target=loop_thread, args=("asyncio", {"use_uvloop": True}, "uvloop")
        ),
        threading.Thread(target=loop_thread, args=("trio", {}, "trio")),
        threading.Thread(target=plain_thread, args=("plain-1",)),
        threading.Thread(target=plain_thread, args=("plain-2",)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "deadlock between loops"
    assert not errors
    assert sorted(finished) == ["asyncio", "plain-1", "plain-2", "trio", "uvloop"]
    assert peak.entered == (3 * 5 + 2) * rounds
    assert peak.peak <= limit
    assert reg.in_use("shared") == 0
    assert reg.limiter("shared").waiting == 0


@pytest.mark.parametrize("limit", [1, 2])
def test_waiters_cancelled_on_every_loop_while_threads_release(limit: int) -> None:
    # Timeouts on three loops race with grants from the loops' own tasks and
    # from plain threads: cancelled waiters are skipped or give their slot
    # back, and no slot is lost or handed out twice.
    lim = plait.Limiter(limit, "shared")
    peak = Peak()
    errors: list[BaseException] = []
    rounds = 40

    async def task(i: int) -> None:
        for j in range(rounds):
            with anyio.move_on_after(0.0005 * ((i + j) % 4)):
                async with lim:
                    peak.enter()
                    try:
                        await anyio.sleep(0.0005)
                    finally:
                        peak.exit()

    async def loop_main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(task, i)

    def loop_thread(backend: str, options: dict[str, Any]) -> None:
        try:
            anyio.run(loop_main, backend=backend, backend_options=options)
        except BaseException as error:  # reported by the assertions below
            errors.append(error)

    def plain_thread() -> None:
        try:
            for _ in range(rounds):
                lim.acquire_blocking()
                peak.enter()
                time.sleep(0.0005)
                peak.exit()
                lim.release()
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=loop_thread, args=("asyncio", {})),
        threading.Thread(target=loop_thread, args=("asyncio", {"use_uvloop": True})),
        threading.Thread(target=loop_thread, args=("trio", {})),
        threading.Thread(target=plain_thread),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock between loops"
    assert not errors
    assert peak.peak <= limit
    assert peak.entered >= rounds  # the plain thread's, at least
    assert lim.borrowed_tokens == 0
    assert lim.statistics().tasks_waiting == 0
    # Every slot is really free.
    for _ in range(limit):
        assert lim.try_acquire()
    assert not lim.try_acquire()


# -- limits in the engine ----------------------------------------------------------


def make_tool(peak: Peak, *, sync: bool, name: str, **options: Any) -> plait.Tool:
    """A tool that holds ``peak`` for 2 ms per call and returns its argument."""
    if sync:

        def body(x: Any) -> Any:
            peak.enter()
            try:
                time.sleep(0.002)
                return x
            finally:
                peak.exit()

    else:

        async def body(x: Any) -> Any:
            peak.enter()
            try:
                await anyio.sleep(0.002)
                return x
            finally:
                peak.exit()

    return plait.tool(name=name, **options)(body)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_tool_concurrency_limit_is_never_exceeded(sync: bool) -> None:
    peak = Peak()
    t = make_tool(peak, sync=sync, name="t", concurrency_limit=3)
    engine = plait.Engine(tools=[t])
    wf = plait.MapReduce(
        plait.Var("xs"), plait.Call("t", plait.Var("item")), max_concurrency=20
    )
    assert await engine.run(wf, {"xs": list(range(30))}) == list(range(30))
    assert peak.entered == 30
    assert peak.peak == 3


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_engine_max_concurrency_is_never_exceeded(sync: bool) -> None:
    a, b = Peak(), Peak()
    both = Peak()

    def counted(p: Peak, name: str) -> plait.Tool:
        inner = make_tool(p, sync=sync, name=name)
        if sync:

            def fn(x: Any) -> Any:
                both.enter()
                try:
                    return inner.fn(x)
                finally:
                    both.exit()

        else:

            async def fn(x: Any) -> Any:
                both.enter()
                try:
                    return await inner.fn(x)
                finally:
                    both.exit()

        return plait.tool(name=name)(fn)

    engine = plait.Engine(tools=[counted(a, "a"), counted(b, "b")], max_concurrency=4)
    # The map is wider than the engine, so only the engine's limit holds it back.
    wf = plait.MapReduce(
        plait.Var("xs"),
        plait.Parallel(plait.Call("a", plait.Var("item")), plait.Call("b", 0)),
        max_concurrency=16,
    )
    await engine.run(wf, {"xs": list(range(16))})
    assert a.entered == b.entered == 16
    assert both.peak == 4


@pytest.mark.parametrize(("backend", "options"), BACKENDS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_property_limits_hold_for_random_workloads(
    backend: str, options: dict[str, Any], data: st.DataObject
) -> None:
    engine_limit = data.draw(st.integers(1, 6), label="max_concurrency")
    n_tools = data.draw(st.integers(1, 3), label="tools")
    limits = [
        data.draw(st.none() | st.integers(1, 6), label=f"limit{i}")
        for i in range(n_tools)
    ]
    syncs = [data.draw(st.booleans(), label=f"sync{i}") for i in range(n_tools)]
    targets = data.draw(
        st.lists(st.integers(0, n_tools - 1), min_size=1, max_size=30), label="calls"
    )
    width = data.draw(st.none() | st.integers(1, 12), label="map width")

    overall = Peak()
    peaks = [Peak() for _ in range(n_tools)]
    seen: list[tuple[int, int]] = []

    def tool_for(i: int) -> plait.Tool:
        def record(x: int) -> None:
            seen.append((i, x))

        if syncs[i]:

            def fn(x: int) -> int:
                overall.enter()
                peaks[i].enter()
                record(x)
                time.sleep(0.001)
                peaks[i].exit()
                overall.exit()
                return x * 10 + i

        else:

            async def fn(x: int) -> int:
                overall.enter()
                peaks[i].enter()
                record(x)
                await anyio.sleep(0.001)
                peaks[i].exit()
                overall.exit()
                return x * 10 + i

        return plait.tool(name=f"t{i}", concurrency_limit=limits[i])(fn)

    engine = plait.Engine(
        tools=[tool_for(i) for i in range(n_tools)], max_concurrency=engine_limit
    )
    calls = [plait.Call(f"t{i}", x) for x, i in enumerate(targets)]
    wf = plait.Parallel(
        plait.Parallel(*calls),
        plait.MapReduce(
            plait.Var("xs"),
            plait.Call("t0", plait.Var("item")),
            max_concurrency=width,
        ),
    )
    xs = list(range(100, 100 + len(targets)))

    async def main() -> Any:
        return await engine.run(wf, {"xs": xs})

    out = anyio.run(main, backend=backend, backend_options=options)
    assert out == [
        [x * 10 + i for x, i in enumerate(targets)],
        [x * 10 for x in xs],
    ]
    expected = [(i, x) for x, i in enumerate(targets)] + [(0, x) for x in xs]
    assert sorted(seen) == sorted(expected), "every call ran exactly once"
    assert overall.peak <= engine_limit
    for i, limit in enumerate(limits):
        assert peaks[i].peak <= (limit or engine_limit)


async def test_shared_registry_shares_tool_limits_between_engines() -> None:
    reg = plait.LimiterRegistry()
    peak = Peak()
    inside: list[int] = []

    @plait.tool(concurrency_limit=2)
    async def work(x: int) -> int:
        peak.enter()
        inside.append(reg.in_use("tool:work"))
        await anyio.sleep(0.01)
        peak.exit()
        return x

    e1 = plait.Engine(tools=[work], limiters=reg)
    e2 = plait.Engine(tools=[work], limiters=reg)
    assert reg.get_limit("tool:work") == 2
    wf = plait.Parallel(*[plait.Call("work", i) for i in range(6)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(e1.run, wf)
        tg.start_soon(e2.run, wf)
    assert peak.entered == 12
    assert peak.peak == 2
    assert all(1 <= n <= 2 for n in inside)
    assert reg.in_use("tool:work") == 0


async def test_without_a_shared_registry_each_engine_has_its_own_limit() -> None:
    peak = Peak()

    @plait.tool(concurrency_limit=2)
    async def work(x: int) -> int:
        peak.enter()
        await anyio.sleep(0.02)
        peak.exit()
        return x

    e1 = plait.Engine(tools=[work])
    e2 = plait.Engine(tools=[work])
    wf = plait.Parallel(*[plait.Call("work", i) for i in range(6)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(e1.run, wf)
        tg.start_soon(e2.run, wf)
    assert peak.peak == 4


async def test_registry_limit_applies_to_a_tool_without_its_own() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("tool:plain", 1)
    peak = Peak()
    engine = plait.Engine(
        tools=[make_tool(peak, sync=False, name="plain")], limiters=reg
    )
    await engine.run(plait.Parallel(*[plait.Call("plain", i) for i in range(5)]))
    assert peak.entered == 5
    assert peak.peak == 1


async def test_engine_limit_shared_with_threads_through_the_registry() -> None:
    # A plain thread holding the tool's key keeps the engine's calls out.
    reg = plait.LimiterRegistry()
    peak = Peak()
    engine = plait.Engine(
        tools=[make_tool(peak, sync=False, name="t", concurrency_limit=1)],
        limiters=reg,
    )
    held = threading.Event()
    let_go = threading.Event()

    def outsider() -> None:
        with reg.limit_sync("tool:t"):
            held.set()
            let_go.wait(PATIENCE)

    thread = threading.Thread(target=outsider)
    thread.start()
    try:
        await anyio.to_thread.run_sync(held.wait, PATIENCE)
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run, plait.Call("t", 1))
            await settle()
            assert peak.entered == 0
            let_go.set()
    finally:
        let_go.set()
        thread.join(PATIENCE)
    assert peak.entered == 1


async def test_keyed_limit_middleware_limits_each_key() -> None:
    reg = plait.LimiterRegistry()
    reg.set_limit("a", 1)
    reg.set_limit("b", 2)
    peaks = {"a": Peak(), "b": Peak()}

    @plait.tool
    async def ask(agent: str, i: int) -> int:
        peaks[agent].enter()
        await anyio.sleep(0.005)
        peaks[agent].exit()
        return i

    engine = plait.Engine(
        tools=[ask],
        middleware=[plait.KeyedLimit(reg, key=lambda call: call.kwargs["agent"])],
    )
    wf = plait.Parallel(
        *[plait.Call("ask", agent=agent, i=i) for i in range(6) for agent in "ab"]
    )
    await engine.run(wf)
    assert peaks["a"].entered == peaks["b"].entered == 6
    assert peaks["a"].peak == 1
    assert peaks["b"].peak == 2
    assert reg.in_use("a") == reg.in_use("b") == 0


def test_engine_rejects_bad_limits() -> None:
    for bad in (0, -1, 1.5, True, "x"):
        with pytest.raises(plait.ConfigError, match="max_concurrency"):
            plait.Engine(max_concurrency=bad)  # type: ignore[arg-type]
        with pytest.raises(plait.WorkflowError, match="concurrency_limit"):
            plait.tool(concurrency_limit=bad)(lambda: None)  # type: ignore[arg-type]


def test_a_grant_racing_a_cancelled_waiter_and_a_closed_loop_returns_the_slot_once(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: tuple[str, dict[str, Any]]
) -> None:
    # Thread T grants the async waiter, then wakes it slowly; meanwhile the
    # waiter is cancelled and its loop closes, so the wake-up fails. The slot
    # must come back exactly once.
    from plait._concurrency import _wakeup

    backend, options = anyio_backend
    waiter_class = _wakeup.TrioWaiter if backend == "trio" else _wakeup.AsyncioWaiter
    wake = waiter_class.wake

    def slow_wake(self: _wakeup.Waiter) -> bool:
        if threading.current_thread() is thread:
            time.sleep(0.5)
        return wake(self)  # type: ignore[arg-type]

    monkeypatch.setattr(waiter_class, "wake", slow_wake)
    lim = plait.Limiter(1, "x")
    lim.acquire_blocking()

    def releaser() -> None:
        time.sleep(0.2)
        lim.release()

    thread = threading.Thread(target=releaser)
    thread.start()

    async def cancelled_waiter() -> None:
        with anyio.move_on_after(0.3):
            await lim.acquire()

    anyio.run(cancelled_waiter, backend=backend, backend_options=options)
    lim.acquire_blocking()  # a new, legitimate holder
    thread.join()
    assert lim.borrowed == 1
    assert not lim.try_acquire()
    lim.release()
