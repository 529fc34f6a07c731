"""Instrumented fake agents for the ``plait.agents`` tests.

Every agent records what it saw on a :class:`Gauge` (how many agents ran at
once, in which order they started and finished, on which thread), so the
tests can prove limits, order and overlap instead of guessing them from
timings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

BACKENDS = ("asyncio", "uvloop", "trio")
HANG = 10.0  # a hanging agent's own limit, far beyond every test's timeout


class Boom(Exception):
    """An agent's ordinary failure, retried by no default policy."""


class Gauge:
    """Counts agents running at once, from the loop and from worker threads.

    A gauge with a ``parent`` counts into it too, so that one run can be
    watched as a whole and per kind of agent (threads, say) at once.
    """

    def __init__(self, parent: Gauge | None = None) -> None:
        self._cond = threading.Condition()
        self.parent = parent
        self.running = 0
        self.peak = 0
        self.started: list[Any] = []
        self.finished: list[Any] = []

    def enter(self, key: Any = None) -> int:
        """Count one more agent running; returns how many run now."""
        if self.parent is not None:
            self.parent.enter(key)
        with self._cond:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append(key)
            self._cond.notify_all()
            return self.running

    def leave(self, key: Any = None) -> None:
        with self._cond:
            self.running -= 1
            self.finished.append(key)
            self._cond.notify_all()
        if self.parent is not None:
            self.parent.leave(key)

    def wait_until(self, predicate: Callable[[], bool], limit: float = 5.0) -> bool:
        """Block this thread until ``predicate()`` holds (False after ``limit``)."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout=limit)

    async def await_until(
        self, predicate: Callable[[], bool], limit: float = 5.0
    ) -> bool:
        """Wait on the loop until ``predicate()`` holds (False after ``limit``)."""
        with anyio.move_on_after(limit):
            while not predicate():
                await anyio.sleep(0.001)
            return True
        return False

    def reached(self, n: int) -> Callable[[], bool]:
        """A predicate: ``n`` agents have run at once."""
        return lambda: self.peak >= n


class SyncAgent:
    """A blocking agent: sleeps ``delay`` seconds, returns ``(name, task)``.

    With ``rendezvous=n`` it first waits (up to 5 s) until ``n`` agents of
    its gauge have run at once, which proves that ``n`` can run at once.
    With ``fail=True`` it raises :class:`Boom` (kept as ``error``).
    """

    def __init__(
        self,
        name: str,
        delay: float = 0.0,
        gauge: Gauge | None = None,
        *,
        rendezvous: int = 0,
        fail: bool = False,
    ) -> None:
        self.name = name
        self.delay = delay
        self.gauge = gauge or Gauge()
        self.rendezvous = rendezvous
        self.fail = fail
        self.calls = 0
        self.error: Boom | None = None
        self._lock = threading.Lock()

    def count_call(self) -> None:
        with self._lock:
            self.calls += 1

    def run(self, task: Any) -> Any:
        self.count_call()
        self.gauge.enter(self.name)
        try:
            if self.rendezvous:
                self.gauge.wait_until(self.gauge.reached(self.rendezvous))
            time.sleep(self.delay)
            if self.fail:
                self.error = Boom(f"{self.name} failed")
                raise self.error
            return (self.name, task)
        finally:
            self.gauge.leave(self.name)


class AsyncAgent(SyncAgent):
    """The same agent with ``async def run``, running on the event loop."""

    cancelled = False

    async def run(self, task: Any) -> Any:
        self.count_call()
        self.gauge.enter(self.name)
        try:
            if self.rendezvous:
                await self.gauge.await_until(self.gauge.reached(self.rendezvous))
            await anyio.sleep(self.delay)
            if self.fail:
                self.error = Boom(f"{self.name} failed")
                raise self.error
            return (self.name, task)
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        finally:
            self.gauge.leave(self.name)


class ArunAgent(AsyncAgent):
    """An agent with an ``arun`` coroutine method (and a ``run`` never used)."""

    async def arun(self, task: Any) -> Any:
        return await AsyncAgent.run(self, task)

    def run(self, task: Any) -> Any:
        raise AssertionError("arun() must win over run()")


class CoroutineAgent(AsyncAgent):
    """A sync ``run`` that hands back a coroutine doing the work."""

    def run(self, task: Any) -> Awaitable[Any]:
        return AsyncAgent.run(self, task)


class HangingAgent:
    """A blocking agent that waits on ``release`` (set by every test at its end)."""

    def __init__(self, release: threading.Event, name: str = "hanger") -> None:
        self.name = name
        self.release = release
        self.entered = threading.Event()
        self.returned = threading.Event()

    def run(self, task: Any) -> str:
        self.entered.set()
        try:
            self.release.wait(HANG)
            return "late"
        finally:
            self.returned.set()


class FlakyAgent:
    """Fails with ``error`` on its first ``failures`` calls, then answers."""

    def __init__(self, failures: int, error: Callable[[], Exception]) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def run(self, task: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return ("flaky", task, self.calls)


def returns_once_released(hanger: HangingAgent) -> bool:
    """The hanger's thread returned after the release, or it never started.

    A call that times out before a worker thread takes it up never runs:
    on a loaded machine that can happen to a hanger with a short timeout.
    """
    return not hanger.entered.is_set() or hanger.returned.wait(5)
