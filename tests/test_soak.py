"""Soak: a million calls through retry, a rate limit and collect mode.

A ``MapReduce`` in collect mode over ``PLAIT_SOAK_N`` elements (1,000,000 by
default) calls a tool with a ``Retry`` and a ``RateLimit`` (high enough that
it only shapes, never throttles). A seeded plan makes some elements fail:
a few transiently (retried until they succeed), a few on every attempt, a
few with an error that is not retried. At the end every element must be
accounted for exactly once: its value, or a ``Failure`` with its own path
and error, after exactly the attempts the plan says. The test prints the
throughput and the process's peak RSS.

Skipped unless pytest runs with ``--slow``; ``tox -e soak`` runs it as
``pytest --slow tests/test_soak.py -s``. ``PLAIT_SOAK_N`` and
``PLAIT_SOAK_SEED`` change the size and the failures.
"""

from __future__ import annotations

import os
import random
import resource
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import plait

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

N = int(os.environ.get("PLAIT_SOAK_N", "1000000"))
SEED = int(os.environ.get("PLAIT_SOAK_SEED", "1123"))
WIDTH = 200
ATTEMPTS = 3
# Per element: how likely each kind of failure is.
TRANSIENT = 0.03  # fails 1 or 2 times, then succeeds
EXHAUSTED = 0.001  # fails every attempt: a Failure(ConnectionError)
PERMANENT = 0.002  # a ValueError, not retried: a Failure(ValueError)


class Plan:
    """Which elements fail, how, and how often each was attempted."""

    def __init__(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        # element -> failed attempts before success; ATTEMPTS: never succeeds
        self.transient: dict[int, int] = {}
        self.permanent: set[int] = set()
        for i in range(n):
            r = rng.random()
            if r < TRANSIENT:
                self.transient[i] = rng.randint(1, ATTEMPTS - 1)
            elif r < TRANSIENT + EXHAUSTED:
                self.transient[i] = ATTEMPTS
            elif r < TRANSIENT + EXHAUSTED + PERMANENT:
                self.permanent.add(i)
        self.attempts = bytearray(n)

    async def work(self, i: int) -> int:
        await anyio.lowlevel.checkpoint()  # as any real I/O does
        self.attempts[i] += 1
        if i in self.transient and self.attempts[i] <= self.transient[i]:
            raise ConnectionError(f"element {i}, attempt {self.attempts[i]}")
        if i in self.permanent:
            raise ValueError(f"element {i} is bad")
        return 2 * i

    def expected_attempts(self, i: int) -> int:
        if i in self.transient:
            return min(self.transient[i] + 1, ATTEMPTS)
        return 1


class PeakRss:
    """Samples this process's RSS from a thread, keeping the peak."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.before = self.peak = self._process.memory_info().rss

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


MB = 1024 * 1024


async def test_a_million_calls_through_retry_rate_limit_and_collect_mode(
    anyio_backend: Any,
) -> None:
    pytest.importorskip("psutil")
    plan = Plan(N, SEED)
    work = plait.tool(
        name="work",
        retry=plait.Retry(attempts=ATTEMPTS, initial_delay=0.001, max_delay=0.01),
        rate_limit=plait.RateLimit(1_000_000, burst=10_000),
    )(plan.work)
    engine = plait.Engine(tools=[work], max_concurrency=WIDTH)
    wf = plait.MapReduce(
        plait.Var("xs"),
        plait.Call("work", plait.Var("item")),
        on_error="collect",
        max_concurrency=WIDTH,
    )

    with PeakRss() as rss:
        started = time.perf_counter()
        result = await engine.execute(wf, {"xs": range(N)})
        elapsed = time.perf_counter() - started

    # Every element exactly once, in place, after exactly its planned attempts.
    output = result.output
    assert len(output) == N
    failed = {i for i, k in plan.transient.items() if k >= ATTEMPTS} | plan.permanent
    for i, value in enumerate(output):
        if i in failed:
            assert isinstance(value, plait.Failure), (i, value)
            assert value.path == f"map[{i}]"
            kind = ValueError if i in plan.permanent else ConnectionError
            assert type(value.error) is kind, (i, value)
        else:
            assert value == 2 * i, (i, value)
        assert plan.attempts[i] == plan.expected_attempts(i), i
    paths = [f.path for f in result.failures]
    assert len(paths) == len(set(paths)) == len(failed)
    assert set(paths) == {f"map[{i}]" for i in failed}
    stats = result.stats.tools["work"]
    calls = sum(plan.attempts)
    assert stats.calls == N
    assert stats.retries == calls - N
    assert stats.failures == len(failed)
    assert engine._limiter.borrowed == 0

    backend = anyio_backend[0] + ("+uvloop" if anyio_backend[1] else "")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB
    print(
        f"\nsoak {backend}: {N:,} elements, {calls:,} calls "
        f"({stats.retries:,} retries, {len(failed):,} failures) in {elapsed:.1f} s: "
        f"{calls / elapsed:,.0f} calls/s; RSS {rss.before / MB:.0f} MB before, "
        f"peak {rss.peak / MB:.0f} MB (+{(rss.peak - rss.before) / MB:.0f} MB), "
        f"process max {maxrss:.0f} MB",
        flush=True,
    )
