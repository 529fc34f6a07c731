"""The thread bridge: sync tools on worker threads, timeouts and abandoned threads."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import anyio
import pytest

import plait

pytestmark = pytest.mark.anyio


class Gauge:
    """Counts tool bodies running at once, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.started = 0
        self.finished = 0

    def enter(self) -> None:
        with self._lock:
            self.started += 1
            self.running += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self._lock:
            self.running -= 1
            self.finished += 1


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.01)


async def test_sync_tools_run_on_worker_threads() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    @plait.tool
    def where() -> int:
        seen.append(threading.get_ident())
        return threading.get_ident()

    @plait.tool
    async def where_async() -> int:
        return threading.get_ident()

    engine = plait.Engine(tools=[where, where_async])
    out = await engine.run(
        plait.Parallel(
            plait.Call("where"), plait.Call("where"), plait.Call(where_async)
        )
    )
    assert out[0] != loop_thread
    assert out[1] != loop_thread
    assert seen == out[:2] or seen == out[1::-1]
    # async tools run in the calling task, on the loop's thread
    assert out[2] == loop_thread


async def test_sync_tool_never_blocks_the_loop() -> None:
    @plait.tool
    def blocking() -> str:
        time.sleep(0.3)
        return "slept"

    engine = plait.Engine(tools=[blocking])
    ticks: list[float] = []
    result: list[str] = []

    async def ticker(stop: anyio.Event) -> None:
        while not stop.is_set():
            ticks.append(anyio.current_time())
            await anyio.sleep(0.01)

    async def work(stop: anyio.Event) -> None:
        result.append(await engine.run(plait.Call("blocking")))
        stop.set()

    stop = anyio.Event()
    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker, stop)
        tg.start_soon(work, stop)
    elapsed = anyio.current_time() - started

    assert result == ["slept"]
    assert elapsed >= 0.29
    # a blocked loop would show one gap of about 0.3 s and a handful of ticks
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= 8
    assert max(gaps) < 0.15


async def test_sync_tool_errors_propagate_from_the_thread() -> None:
    @plait.tool
    def broken(x: int) -> int:
        raise ValueError(f"bad {x}")

    engine = plait.Engine(tools=[broken])
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Sequential(plait.Call("broken", 3)))
    assert info.value.path == "steps[0]"
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "bad 3"


async def test_sync_tool_finishing_before_its_timeout_succeeds() -> None:
    @plait.tool(timeout=2)
    def quick(x: int) -> int:
        time.sleep(0.01)
        return x * 2

    engine = plait.Engine(tools=[quick])
    assert await engine.run(plait.Call("quick", 21)) == 42
    assert engine.abandoned_threads == 0


async def test_sync_timeout_fails_fast_and_abandons_the_thread() -> None:
    gauge = Gauge()

    @plait.tool(timeout=0.1)
    def stuck() -> None:
        gauge.enter()
        try:
            time.sleep(1)
        finally:
            gauge.leave()

    engine = plait.Engine(tools=[stuck])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    started = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Sequential(plait.Call("stuck")))
    elapsed = anyio.current_time() - started

    assert elapsed < 0.6
    cause = info.value.__cause__
    assert isinstance(cause, plait.ToolTimeout)
    assert isinstance(cause, TimeoutError)
    assert info.value.path == "steps[0]"
    # the thread is still sleeping: it was abandoned, not killed
    assert gauge.running == 1
    assert engine.abandoned_threads == 1
    abandoned = [e for e in events if e.kind is plait.EventKind.THREAD_ABANDONED]
    assert [(e.path, e.tool, e.attempt) for e in abandoned] == [
        ("steps[0]", "stuck", 1)
    ]
    await wait_until(lambda: gauge.finished == 1)


async def test_abandoned_threads_keep_their_slots() -> None:
    gauge = Gauge()

    @plait.tool(concurrency_limit=2, timeout=0.1)
    def hang(seconds: float) -> float:
        gauge.enter()
        try:
            time.sleep(seconds)
        finally:
            gauge.leave()
        return seconds

    engine = plait.Engine(tools=[hang])
    events: list[plait.Event] = []
    engine.subscribe(events.append)
    wf = plait.Parallel(
        *[plait.Call("hang", 0.5) for _ in range(5)], on_error="collect"
    )
    result = await engine.execute(wf)

    assert gauge.peak == 2
    assert gauge.started == 5
    assert len(result.output) == 5
    for i, value in enumerate(result.output):
        assert isinstance(value, plait.Failure)
        assert isinstance(value.error, plait.ToolTimeout)
        assert value.path == f"steps[{i}]"
    assert engine.abandoned_threads == 5
    abandoned = [e for e in events if e.kind is plait.EventKind.THREAD_ABANDONED]
    assert sorted(e.path for e in abandoned) == [f"steps[{i}]" for i in range(5)]
    assert {e.tool for e in abandoned} == {"hang"}
    assert result.stats.tools["hang"].timeouts == 5

    # once the threads really return, the slots are free again
    await wait_until(lambda: gauge.finished == 5)
    with anyio.fail_after(2):
        assert await engine.run(
            plait.Parallel(plait.Call("hang", 0.0), plait.Call("hang", 0.0))
        ) == [0.0, 0.0]
    assert gauge.peak == 2
    assert engine.abandoned_threads == 5


async def test_a_later_call_waits_for_the_abandoned_thread() -> None:
    gauge = Gauge()

    @plait.tool(concurrency_limit=1, timeout=0.1)
    def hang(seconds: float) -> str:
        gauge.enter()
        try:
            time.sleep(seconds)
        finally:
            gauge.leave()
        return "done"

    engine = plait.Engine(tools=[hang])
    started = anyio.current_time()
    with pytest.raises(plait.StepFailed):
        await engine.run(plait.Call("hang", 0.5))
    assert anyio.current_time() - started < 0.4
    # the hung thread still holds the only slot: the next call waits for it
    assert await engine.run(plait.Call("hang", 0.0)) == "done"
    elapsed = anyio.current_time() - started
    assert elapsed >= 0.45
    assert gauge.peak == 1
    assert gauge.finished == 2


async def test_check_cancelled_stops_a_cooperative_sync_tool() -> None:
    started: list[float] = []
    stopped: list[tuple[float, BaseException | None]] = []
    loops = 0

    @plait.tool(timeout=0.1)
    def crunch() -> str:
        nonlocal loops
        started.append(time.monotonic())
        try:
            for _ in range(500):
                plait.check_cancelled()
                loops += 1
                time.sleep(0.01)
        except BaseException as exc:
            stopped.append((time.monotonic(), exc))
            raise
        stopped.append((time.monotonic(), None))
        return "finished"

    engine = plait.Engine(tools=[crunch])
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("crunch"))
    assert isinstance(info.value.__cause__, plait.ToolTimeout)

    await wait_until(lambda: bool(stopped))
    when, exc = stopped[0]
    # the loop ended with an exception soon after the timeout, not after 5 s
    assert exc is not None
    assert not isinstance(exc, Exception)  # a cancellation, not an error
    assert when - started[0] < 1.0
    assert loops < 100


async def test_check_cancelled_does_not_stop_a_call_that_is_not_cancelled() -> None:
    @plait.tool(timeout=5)
    def crunch(n: int) -> int:
        total = 0
        for i in range(n):
            plait.check_cancelled()
            total += i
        return total

    engine = plait.Engine(tools=[crunch])
    assert await engine.run(plait.Call("crunch", 100)) == sum(range(100))


def test_check_cancelled_is_a_no_op_outside_plait() -> None:
    @plait.tool(timeout=0.01)
    def crunch(n: int) -> int:
        for _ in range(n):
            plait.check_cancelled()
        return n

    assert crunch(10) == 10
    plait.check_cancelled()

    results: list[object] = []

    def in_thread() -> None:
        try:
            plait.check_cancelled()
            results.append("ok")
        except BaseException as exc:
            results.append(exc)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert results == ["ok"]


async def test_check_cancelled_is_a_no_op_in_the_event_loop() -> None:
    @plait.tool
    async def polite() -> str:
        plait.check_cancelled()
        return "ok"

    assert await plait.Engine().run(plait.Call(polite)) == "ok"


async def test_sync_concurrency_is_not_capped_by_the_default_thread_pool() -> None:
    gauge = Gauge()

    @plait.tool
    def nap(i: int) -> int:
        gauge.enter()
        try:
            time.sleep(0.2)
        finally:
            gauge.leave()
        return i

    engine = plait.Engine(tools=[nap], max_concurrency=100)
    wf = plait.MapReduce(plait.Var("xs"), plait.Call("nap", plait.Var("item")))
    # The first run may spend a while starting 64 threads on a busy machine;
    # the second one finds them idle in the pool and shows the overlap.
    assert await engine.run(wf, {"xs": list(range(64))}) == list(range(64))
    assert gauge.peak == 64
    gauge.peak = 0
    started = anyio.current_time()
    out = await engine.run(wf, {"xs": list(range(64))})
    elapsed = anyio.current_time() - started

    assert out == list(range(64))
    # capped at anyio's 40 threads the peak would be 40, in two rounds of 0.2 s
    assert gauge.peak == 64
    assert elapsed < 3 * 0.2


async def test_sync_tool_threads_obey_max_concurrency() -> None:
    gauge = Gauge()

    @plait.tool
    def nap(i: int) -> int:
        gauge.enter()
        try:
            time.sleep(0.02)
        finally:
            gauge.leave()
        return i

    engine = plait.Engine(tools=[nap], max_concurrency=3)
    wf = plait.Parallel(*[plait.Call("nap", i) for i in range(12)])
    assert await engine.run(wf) == list(range(12))
    assert gauge.peak == 3


async def test_cancelled_run_abandons_sync_threads_and_frees_slots() -> None:
    gauge = Gauge()

    @plait.tool(concurrency_limit=1)
    def hang(seconds: float) -> str:
        gauge.enter()
        try:
            time.sleep(seconds)
        finally:
            gauge.leave()
        return "done"

    engine = plait.Engine(tools=[hang])
    with anyio.move_on_after(0.1) as scope:
        await engine.run(plait.Call("hang", 0.3))
    assert scope.cancelled_caught
    assert gauge.running == 1
    assert engine.abandoned_threads == 1
    await wait_until(lambda: gauge.finished == 1)
    with anyio.fail_after(2):
        assert await engine.run(plait.Call("hang", 0.0)) == "done"


# -- awaitables returned by sync tools, Cancelled, daemon threads, contextvars -----


async def test_a_sync_tool_returning_a_coroutine_has_it_awaited_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    where: list[str] = []

    @plait.tool
    def deferred(x: int) -> object:
        where.append("thread" if threading.get_ident() != loop_thread else "loop")

        async def later() -> int:
            where.append("loop" if threading.get_ident() == loop_thread else "thread")
            await anyio.sleep(0)
            return x * 2

        return later()

    engine = plait.Engine(tools=[deferred])
    out = await engine.run(plait.Call("deferred", 21))
    assert out == 42
    assert where == ["thread", "loop"]


async def test_a_returned_coroutine_runs_while_the_tool_slot_is_held() -> None:
    gauge = Gauge()

    @plait.tool(concurrency_limit=1)
    def deferred(i: int) -> object:
        async def later() -> int:
            gauge.enter()
            try:
                await anyio.sleep(0.1)
            finally:
                gauge.leave()
            return i

        return later()

    engine = plait.Engine(tools=[deferred])
    started = anyio.current_time()
    out = await engine.run(
        plait.Parallel(plait.Call("deferred", 1), plait.Call("deferred", 2))
    )
    elapsed = anyio.current_time() - started
    assert out == [1, 2]
    assert gauge.peak == 1  # the second call waited for the first one's coroutine
    assert gauge.finished == 2
    assert elapsed >= 0.19


async def test_a_returned_coroutine_runs_under_the_tool_timeout() -> None:
    cancelled: list[bool] = []

    @plait.tool(timeout=0.1)
    def deferred() -> object:
        async def later() -> str:
            try:
                await anyio.sleep(10)
            except anyio.get_cancelled_exc_class():
                cancelled.append(True)
                raise
            return "late"

        return later()

    started = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await plait.Engine(tools=[deferred]).run(plait.Call("deferred"))
    assert anyio.current_time() - started < 2.0
    assert isinstance(info.value.__cause__, plait.ToolTimeout)
    assert cancelled == [True]


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_plait_run_awaits_a_returned_coroutine_on_each_backend(backend: str) -> None:
    @plait.tool
    def deferred(x: int) -> object:
        async def later() -> int:
            await anyio.sleep(0.001)
            return x + 1

        return later()

    assert (
        plait.run(plait.Call("deferred", 41), tools=[deferred], backend=backend) == 42
    )


async def test_check_cancelled_raises_cancelled_a_base_exception() -> None:
    from plait._concurrency._bridge import Cancelled

    caught: list[BaseException] = []
    swallowed: list[Exception] = []

    @plait.tool(timeout=0.05)
    def crunch() -> str:
        try:
            for _ in range(1000):
                try:
                    plait.check_cancelled()
                except Exception as exc:  # must not catch the cancellation
                    swallowed.append(exc)
                time.sleep(0.005)
        except BaseException as exc:
            caught.append(exc)
            raise
        return "finished"

    with pytest.raises(plait.StepFailed) as info:
        await plait.Engine(tools=[crunch]).run(plait.Call("crunch"))
    assert isinstance(info.value.__cause__, plait.ToolTimeout)
    await wait_until(lambda: bool(caught))
    assert swallowed == []
    assert type(caught[0]) is Cancelled
    assert isinstance(caught[0], BaseException)
    assert not isinstance(caught[0], Exception)
    assert issubclass(Cancelled, BaseException)
    assert not issubclass(Cancelled, Exception)


def test_worker_threads_are_daemons_so_a_hung_tool_does_not_block_exit() -> None:
    script = textwrap.dedent(
        """
        import threading, time
        import plait

        @plait.tool(timeout=0.2)
        def hang() -> None:
            time.sleep(60)

        try:
            plait.run(plait.Call("hang"), tools=[hang], backend="asyncio")
        except plait.StepFailed as exc:
            assert isinstance(exc.__cause__, plait.ToolTimeout), exc
        workers = [t for t in threading.enumerate() if t.name == "plait worker"]
        assert workers and all(t.daemon for t in workers), workers
        print("timed out")
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "timed out"
    assert elapsed < 15  # the tool hangs for 60 s


async def test_context_variables_of_the_caller_are_seen_by_sync_tools() -> None:
    import contextvars

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[str] = []

    @plait.tool
    def which() -> str:
        seen.append(request_id.get("unset"))
        request_id.set("changed in the tool")  # a copy: the caller keeps its own
        return request_id.get()

    engine = plait.Engine(tools=[which])
    token = request_id.set("req-42")
    try:
        out = await engine.run(plait.Parallel(plait.Call("which"), plait.Call("which")))
        assert request_id.get() == "req-42"
    finally:
        request_id.reset(token)
    assert seen == ["req-42", "req-42"]
    assert out == ["changed in the tool", "changed in the tool"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_worker_threads_of_its_own() -> None:
    # The parent's idle workers do not exist in a child: without the pool's
    # after-fork reset the child's first sync call would wait forever.
    script = textwrap.dedent(
        """
        import os, sys
        import plait

        def work(x):
            return x * 2

        assert plait.run(plait.Call(work, 1), tools=[work], backend="asyncio") == 2
        pid = os.fork()
        if pid == 0:
            ok = plait.run(plait.Call(work, 2), tools=[work], backend="asyncio") == 4
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], timeout=30, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


async def test_a_thread_limit_runs_queued_calls_back_to_back() -> None:
    # Calls over a bounded thread limit queue behind it; the thread that
    # finishes one takes the next itself, never more than the limit at once.
    from plait._concurrency._bridge import run_in_thread
    from plait._concurrency._limits import Limiter

    gauge = Gauge()
    threads = Limiter(2)
    released: list[int] = []
    workers: set[int] = set()

    def work(i: int) -> int:
        gauge.enter()
        workers.add(threading.get_ident())
        time.sleep(0.005)
        gauge.leave()
        return i * 10

    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await run_in_thread(
            work, (i,), {}, lambda: released.append(i), threads
        )

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert results == {i: i * 10 for i in range(20)}
    assert gauge.peak == 2
    assert len(workers) <= 2
    assert sorted(released) == list(range(20))
    assert threads.borrowed == 0


async def test_a_call_cancelled_in_the_thread_queue_never_runs() -> None:
    from plait._concurrency._bridge import run_in_thread
    from plait._concurrency._limits import Limiter

    threads = Limiter(1)
    ran: list[str] = []
    released: list[str] = []
    gate = threading.Event()

    def blocker() -> None:
        gate.wait(5)
        ran.append("blocker")

    def queued() -> None:
        ran.append("queued")

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            run_in_thread, blocker, (), {}, lambda: released.append("blocker"), threads
        )
        await anyio.sleep(0.05)
        with anyio.move_on_after(0.05):
            await run_in_thread(
                queued, (), {}, lambda: released.append("queued"), threads
            )
        assert released == ["queued"]  # given back at once: it never started
        gate.set()
    assert ran == ["blocker"]
    assert sorted(released) == ["blocker", "queued"]
    assert threads.borrowed == 0
