"""Limits shared across engines and processes on a real Redis server.

Engines in one test stand for processes: each has its own RedisLimits (its
own connections, client id, renewal thread), as separate processes would.
The tests marked "processes" start real ones (tests/_shared_worker.py).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plait
from plait import Call, Engine, MapReduce, Parallel, RateLimit, Retry, Var
from plait.redis import RedisLimits

WORKER = str(Path(__file__).with_name("_shared_worker.py"))


def _ns() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def _limits(url: str, n: int, **kw: float) -> Iterator[list[RedisLimits]]:
    """``n`` RedisLimits on one namespace, as ``n`` processes would have them."""
    namespace = _ns()
    made = [RedisLimits(url, namespace=namespace, **kw) for _ in range(n)]
    try:
        yield made
    finally:
        for limits in made:
            limits.close()


class Peak:
    """Counts calls in flight across engines and keeps the highest count."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def enter(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await anyio.sleep(seconds)
        finally:
            self.now -= 1


def _map(tool: str, n: int, width: int = 10) -> MapReduce:
    return MapReduce(Var("xs"), Call(tool, Var("item")), max_concurrency=width)


# -- in one process, on every backend -----------------------------------------


@pytest.mark.anyio
async def test_engines_share_a_concurrency_limit(redis_url: str) -> None:
    peak = Peak()

    @plait.tool(concurrency_limit=3)
    async def work(i: int) -> int:
        await peak.enter(0.02)
        return i

    with _limits(redis_url, 2) as (a, b):
        engines = [Engine(tools=[work], shared_limits=x) for x in (a, b)]
        async with anyio.create_task_group() as tg:
            for engine in engines:
                tg.start_soon(engine.run, _map("work", 12), {"xs": list(range(12))})
    assert 2 <= peak.peak <= 3


@pytest.mark.anyio
async def test_keyed_limits_and_the_engine_rate_are_shared(redis_url: str) -> None:
    peak = Peak()

    @plait.tool
    async def ask(agent: str) -> str:
        await peak.enter(0.02)
        return agent

    registry = plait.LimiterRegistry()
    registry.set_limit("alice", 2)
    keyed = plait.KeyedLimit(registry, key=lambda c: c.kwargs["agent"])
    per_agent = plait.KeyedRateLimit(RateLimit(1000), key=lambda c: c.kwargs["agent"])
    with _limits(redis_url, 2) as pair:
        engines = [
            Engine(
                tools=[ask],
                shared_limits=x,
                middleware=[keyed, per_agent],
                rate_limit=RateLimit(1000),
            )
            for x in pair
        ]
        step = MapReduce(Var("xs"), Call("ask", agent=Var("item")), max_concurrency=8)
        async with anyio.create_task_group() as tg:
            for engine in engines:
                tg.start_soon(engine.run, step, {"xs": ["alice"] * 8})
    assert 1 <= peak.peak <= 2


@pytest.mark.anyio
async def test_a_busy_slot_consumes_no_token(redis_url: str) -> None:
    # Two tokens a minute and one slot: if waiting for the slot cost a token,
    # the second call would wait a minute, far past the deadline.
    @plait.tool(concurrency_limit=1, rate_limit=RateLimit(1, per=60, burst=2))
    async def slow(i: int) -> int:
        await anyio.sleep(0.3)
        return i

    with _limits(redis_url, 2) as (a, b):
        engines = [Engine(tools=[slow], shared_limits=x) for x in (a, b)]
        out: list[int] = []

        async def one(engine: Engine, i: int) -> None:
            out.append(await engine.run(Call("slow", i), deadline=20))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, engines[0], 1)
            tg.start_soon(one, engines[1], 2)
        assert sorted(out) == [1, 2]
        # Both tokens are gone now: a third call must wait for a token.
        with anyio.move_on_after(0.5) as scope:
            await engines[0].run(Call("slow", 3))
        assert scope.cancelled_caught


@pytest.mark.anyio
async def test_a_client_clock_off_by_5_s_changes_nothing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[float] = []

    @plait.tool(rate_limit=RateLimit(5, burst=1))
    async def tick(i: int) -> int:
        starts.append(anyio.current_time())
        return i

    with _limits(redis_url, 2) as (a, b):
        fast = Engine(tools=[tick], shared_limits=a)
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 5.0)
        monkeypatch.setattr(time, "time_ns", lambda: int((real_time() + 5.0) * 1e9))
        slow = Engine(tools=[tick], shared_limits=b)
        async with anyio.create_task_group() as tg:
            for engine in (fast, slow):
                tg.start_soon(engine.run, _map("tick", 4, 4), {"xs": list(range(4))})
    starts.sort()
    # 8 calls at 5 a second from one token: 7 intervals of 0.2 s at least.
    assert starts[-1] - starts[0] >= 7 * 0.2 * 0.9


@pytest.mark.anyio
async def test_a_stored_limit_wins_and_a_conflict_is_reported(redis_url: str) -> None:
    peak = Peak()

    def tool_with(limit: int) -> plait.Tool:
        async def guarded(i: int) -> int:
            await peak.enter(0.02)
            return i

        return plait.tool(name="guarded", concurrency_limit=limit)(guarded)

    with _limits(redis_url, 2) as (a, b):
        conflicts: list[plait.Event] = []
        e1 = Engine(tools=[tool_with(2)], shared_limits=a)
        e2 = Engine(tools=[tool_with(4)], shared_limits=b)
        for e in (e1, e2):
            e.subscribe(conflicts.append, ["limits.conflict"])
        async with anyio.create_task_group() as tg:
            for engine in (e1, e2):
                tg.start_soon(engine.run, _map("guarded", 8), {"xs": list(range(8))})
        assert conflicts
        assert conflicts[0].tool == "guarded"
        assert "set_limit" in str(conflicts[0].error)
        assert peak.peak <= 4

        peak.peak = 0
        await anyio.to_thread.run_sync(a.set_limit, "tool:guarded", 1)
        async with anyio.create_task_group() as tg:
            for engine in (e1, e2):
                tg.start_soon(engine.run, _map("guarded", 6), {"xs": list(range(6))})
        assert peak.peak == 1


@pytest.mark.anyio
async def test_a_lost_lease_cancels_its_call_with_lease_lost(redis_url: str) -> None:
    import redis

    started = anyio.Event()

    @plait.tool(concurrency_limit=1)
    async def long(i: int) -> int:
        started.set()
        await anyio.sleep(30)
        return i

    with _limits(redis_url, 1, lease_ttl=0.6) as (limits,):
        engine = Engine(tools=[long], shared_limits=limits)
        lost: list[plait.Event] = []
        engine.subscribe(lost.append, ["call.lease_lost"])
        client = redis.Redis.from_url(redis_url)

        async def drop_lease() -> None:
            await started.wait()
            key = f"{{{limits.namespace}}}:slot:tool:long"
            await anyio.to_thread.run_sync(client.delete, key)

        begun = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(drop_lease)
            with pytest.raises(plait.StepFailed) as info:
                await engine.run(Call("long", 1, retry=Retry(attempts=1)))
        client.close()
    assert isinstance(info.value.error, plait.LeaseLost)
    assert isinstance(info.value.error, OSError)
    assert anyio.current_time() - begun < 10
    assert [e.tool for e in lost] == ["long"]


@pytest.mark.anyio
async def test_a_timed_out_sync_tool_keeps_its_shared_slot(redis_url: str) -> None:
    # The first call times out at 0.1 s but its thread runs 0.6 s: the other
    # engine's call must not start before that thread has returned.
    spans: list[tuple[str, float, float]] = []

    @plait.tool(concurrency_limit=1)
    def blocking(tag: str, seconds: float) -> str:
        start = time.monotonic()
        time.sleep(seconds)
        spans.append((tag, start, time.monotonic()))
        return tag

    with _limits(redis_url, 2) as (a, b):
        e1 = Engine(tools=[blocking], shared_limits=a)
        e2 = Engine(tools=[blocking], shared_limits=b)
        with pytest.raises(plait.StepFailed):
            await e1.run(
                Call("blocking", "first", 0.6, timeout=0.1, retry=Retry(attempts=1))
            )
        assert await e2.run(Call("blocking", "second", 0.0)) == "second"
        await anyio.sleep(0.1)
    first = next(s for s in spans if s[0] == "first")
    second = next(s for s in spans if s[0] == "second")
    assert second[1] >= first[2]


@pytest.mark.anyio
async def test_redis_stopped_mid_run_gives_limit_backend_unavailable() -> None:
    from _servers import redis_server

    @plait.tool(concurrency_limit=2)
    async def step(i: int) -> int:
        await anyio.sleep(0.05)
        return i

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_server())
        limits = RedisLimits(url, namespace=_ns(), lease_ttl=1.0, timeout=1.0)
        stack.callback(limits.close)
        engine = Engine(tools=[step], shared_limits=limits)
        assert await engine.run(Call("step", 1)) == 1
        server = stack.pop_all()
        await anyio.to_thread.run_sync(server.close)  # stops redis-server
        begun = anyio.current_time()
        result = await engine.execute(
            MapReduce(
                Var("xs"),
                Call("step", Var("item"), retry=Retry(attempts=2, initial_delay=0.01)),
                on_error="collect",
            ),
            {"xs": [1, 2, 3]},
        )
        assert anyio.current_time() - begun < 20
        limits.close()
    assert len(result.failures) == 3
    for failure in result.failures:
        assert isinstance(failure.error, plait.LimitBackendUnavailable)
        assert isinstance(failure.error, OSError)


@pytest.mark.anyio
async def test_a_server_that_never_answers_is_unavailable_not_a_hang() -> None:
    import socket

    @plait.tool(concurrency_limit=1)
    async def step() -> int:
        return 1

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # accepts connections, never answers
        port = silent.getsockname()[1]
        limits = RedisLimits(
            f"redis://127.0.0.1:{port}/0", namespace=_ns(), timeout=0.3
        )
        engine = Engine(tools=[step], shared_limits=limits)
        begun = anyio.current_time()
        with pytest.raises(plait.StepFailed) as info:
            await engine.run(Call("step", retry=Retry(attempts=1)))
        elapsed = anyio.current_time() - begun
        limits.close()
    assert isinstance(info.value.error, plait.LimitBackendUnavailable)
    assert elapsed < 10


@pytest.mark.anyio
async def test_after_a_restart_running_calls_lose_their_leases_and_retry() -> None:
    started = anyio.Event()
    tries = []

    @plait.tool(concurrency_limit=1)
    async def long() -> int:
        tries.append(1)
        if len(tries) == 1:
            started.set()
            await anyio.sleep(30)
        return len(tries)

    from _servers import restartable_redis_server

    with restartable_redis_server() as (url, restart):
        limits = RedisLimits(url, namespace=_ns(), lease_ttl=1.5, timeout=1.0)
        engine = Engine(tools=[long], shared_limits=limits)
        lost: list[plait.Event] = []
        engine.subscribe(lost.append, ["call.lease_lost"])

        async def restart_when_running() -> None:
            await started.wait()
            await anyio.to_thread.run_sync(restart)

        begun = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(restart_when_running)
            retry = Retry(attempts=5, initial_delay=0.05)
            assert await engine.run(Call("long", retry=retry)) == 2
        assert anyio.current_time() - begun < 20
        limits.close()
    assert [e.tool for e in lost] == ["long"]


# -- configuration ------------------------------------------------------------


def test_redis_limits_pickles_as_its_configuration(redis_url: str) -> None:
    limits = RedisLimits(redis_url, namespace="acme", lease_ttl=3.0, timeout=2.0)
    copy = pickle.loads(pickle.dumps(limits))
    assert (copy.url, copy.namespace, copy.lease_ttl, copy.timeout) == (
        redis_url,
        "acme",
        3.0,
        2.0,
    )
    assert repr(copy) == f"RedisLimits({redis_url!r}, namespace='acme', lease_ttl=3)"
    assert copy == limits
    assert hash(copy) == hash(limits)
    assert copy != RedisLimits(redis_url, namespace="other")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "localhost"}, r"RedisLimits\.url must be a redis:// URL"),
        ({"namespace": ""}, r"RedisLimits\.namespace must be a non-empty str"),
        ({"namespace": "{x}"}, "without braces"),
        ({"lease_ttl": 0}, r"RedisLimits\.lease_ttl must be a number of seconds > 0"),
        ({"timeout": float("inf")}, r"RedisLimits\.timeout must be"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], message: str) -> None:
    args = {"url": "redis://127.0.0.1:1/0", **kwargs}
    url = args.pop("url")
    with pytest.raises(plait.ConfigError, match=message):
        RedisLimits(url, **args)  # type: ignore[arg-type]


def test_the_new_errors_pickle_and_are_os_errors() -> None:
    for error in (plait.LeaseLost("search"), plait.LimitBackendUnavailable("gone")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert isinstance(copy, OSError)
        assert isinstance(copy, plait.PlaitError)


def test_engine_refuses_a_shared_limits_that_is_not_one() -> None:
    with pytest.raises(plait.ConfigError, match=r"Engine\.shared_limits"):
        Engine(shared_limits="redis://x")  # type: ignore[arg-type]


def test_set_limit_refuses_a_bad_limit(redis_url: str) -> None:
    limits = RedisLimits(redis_url, namespace=_ns())
    with pytest.raises(plait.ConfigError, match="set_limit limit must be"):
        limits.set_limit("tool:x", -1)
    limits.close()


def test_importing_plait_does_not_import_redis() -> None:
    code = "import sys, plait, plait.redis; print('redis' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# -- the invariant ------------------------------------------------------------

_counter = itertools.count()


@settings(max_examples=8, deadline=None)
@given(
    limit=st.integers(1, 4),
    calls=st.lists(st.floats(0.0, 0.02), min_size=1, max_size=12),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_shared_limits_are_never_exceeded(
    redis_url: str, limit: int, calls: list[float], backend: str
) -> None:
    peak = Peak()

    @plait.tool(name="bounded", concurrency_limit=limit)
    async def bounded(seconds: float) -> float:
        await peak.enter(seconds)
        return seconds

    async def main() -> None:
        with _limits(redis_url, 3) as trio_of:
            engines = [Engine(tools=[bounded], shared_limits=x) for x in trio_of]
            async with anyio.create_task_group() as tg:
                for engine in engines:
                    tg.start_soon(
                        engine.run, _map("bounded", len(calls)), {"xs": calls}
                    )

    anyio.run(main, backend=backend)
    assert peak.peak <= limit


# -- in several processes -------------------------------------------------------


def _workers(args: list[list[str]]) -> list[str]:
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, *a], stdout=subprocess.PIPE, text=True
        )
        for a in args
    ]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        outs.append(out)
    return outs


def test_processes_share_a_rate_limit(redis_url: str) -> None:
    namespace = _ns()
    outs = _workers([["rate", redis_url, namespace, "3"] for _ in range(4)])
    stamps = sorted(float(x) for out in outs for x in out.split())
    assert all(out.split() for out in outs)  # every process made calls
    j = 0
    for i, start in enumerate(stamps):
        while j < len(stamps) and stamps[j] < start + 1.0:
            j += 1
        assert j - i <= 20 + 5, f"{j - i} calls in the second from {start}"
    allowed = 5 + 20 * (stamps[-1] - stamps[0])
    assert len(stamps) >= 0.7 * allowed


def test_processes_share_a_concurrency_limit(redis_url: str) -> None:
    namespace = _ns()
    outs = _workers([["slots", redis_url, namespace, "30"] for _ in range(3)])
    events = []
    for out in outs:
        for line in out.splitlines():
            start, end = map(float, line.split())
            events += [(start, 1), (end, -1)]
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at one instant
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    assert len(events) == 2 * 90
    assert 2 <= peak <= 4


def test_a_killed_holders_slot_comes_back_within_its_lease(redis_url: str) -> None:
    namespace, ttl = _ns(), 1.5
    holder = subprocess.Popen(
        [sys.executable, WORKER, "hold", redis_url, namespace, str(ttl)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

    @plait.tool(name="one", concurrency_limit=1)
    async def one() -> float:
        return time.monotonic()

    async def main() -> float:
        limits = RedisLimits(redis_url, namespace=namespace, lease_ttl=ttl)
        try:
            result: float = await Engine(tools=[one], shared_limits=limits).run(
                Call("one"), deadline=30
            )
            return result
        finally:
            limits.close()

    got = anyio.run(main)
    # lease_ttl plus one renewal interval, plus slack for a loaded machine.
    assert got - killed <= ttl + ttl / 3 + 1.0


@pytest.mark.anyio
async def test_parallel_calls_under_one_engine_share_the_door(redis_url: str) -> None:
    peak = Peak()

    @plait.tool(concurrency_limit=2)
    async def w(i: int) -> int:
        await peak.enter(0.01)
        return i

    with _limits(redis_url, 1) as (limits,):
        engine = Engine(tools=[w], shared_limits=limits)
        out = await engine.run(Parallel(*[Call("w", i) for i in range(6)]))
    assert out == list(range(6))
    assert peak.peak == 2
