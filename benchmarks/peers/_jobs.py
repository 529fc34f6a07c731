"""The six jobs of the peer suite: sizes, workloads and the checks of answers.

Standard library only: this module is imported by the job runner in every
peer's own virtual environment, where neither plait nor anyio may exist.
"""

from __future__ import annotations

import bisect
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: Job key -> its title in the table.
JOBS: dict[str, str] = {
    "blocking": "blocking agents, outputs in input order",
    "async": "async agents, outputs in input order",
    "fanout": "trivial async calls with keyword arguments, fanned out and summed",
    "rate": "calls under a token-bucket rate limit",
    "failfast": "one call fails among pending siblings",
    "memory": "peak RSS growth over lazily produced items",
}
TASK = "rates"


@dataclass(frozen=True)
class Sizes:
    """How big each job is; :data:`FULL` is the issue's, :data:`SMOKE` tiny."""

    agents: int = 1000
    agent_s: float = 0.01
    agent_width: int = 64
    calls: int = 100_000
    call_width: int = 100
    rated_calls: int = 10_000
    rate: int = 500
    pending: int = 1000
    sibling_s: float = 2.0
    lazy_items: int = 1_000_000

    def to_json(self) -> dict[str, Any]:
        """The sizes as a JSON-ready dict."""
        return asdict(self)


FULL = Sizes()
SMOKE = Sizes(
    agents=24,
    agent_s=0.002,
    agent_width=8,
    calls=400,
    call_width=10,
    rated_calls=120,
    rate=100,
    pending=20,
    sibling_s=1.0,
    lazy_items=2000,
)


class Boom(Exception):
    """The one failure of the fail-fast job."""


BOOM = "the one failing call"


# Agents ---------------------------------------------------------------------


def agent_output(n: int, task: str) -> str:
    """What agent ``n`` answers: a string, as a language model's answer is."""
    return f"agent-{n}: {task}"


class BlockingAgent:
    """An agent whose ``run`` blocks its thread, like a sync HTTP client."""

    def __init__(self, n: int, seconds: float) -> None:
        self.agent_name = f"agent-{n}"
        self.n = n
        self.seconds = seconds

    def run(self, task: str) -> str:
        """Wait on the "network", then answer."""
        time.sleep(self.seconds)
        return agent_output(self.n, task)


class AsyncAgent:
    """An agent whose ``run`` awaits ``sleep``, like an async HTTP client."""

    def __init__(
        self, n: int, seconds: float, sleep: Callable[[float], Awaitable[Any]]
    ) -> None:
        self.agent_name = f"agent-{n}"
        self.n = n
        self.seconds = seconds
        self._sleep = sleep

    async def run(self, task: str) -> str:
        """Await the "network", then answer."""
        await self._sleep(self.seconds)
        return agent_output(self.n, task)


def expected_outputs(agents: int) -> list[str]:
    """The agents' outputs in input order."""
    return [agent_output(n, TASK) for n in range(agents)]


def check_outputs(outputs: Any, expected: Sequence[Any]) -> str | None:
    """None when ``outputs`` are ``expected`` in order, else what is wrong."""
    outputs = list(outputs) if outputs is not None else []
    awaitables = [o for o in outputs if inspect.isawaitable(o)]
    for o in awaitables:
        if inspect.iscoroutine(o):
            o.close()  # never awaited: silence the warning, keep the verdict
    if awaitables:
        return f"{len(awaitables)} un-awaited coroutines returned as results"
    if any("coroutine object" in str(o) for o in outputs):
        return "coroutines returned as strings"
    if len(outputs) != len(expected):
        return f"{len(outputs)} results for {len(expected)} inputs"
    if outputs == list(expected):
        return None
    if sorted(map(str, outputs)) == sorted(map(str, expected)):
        return "results out of input order"
    return "results differ from the agents' outputs"


# Calls ----------------------------------------------------------------------


def expected_sum(n: int) -> int:
    """The sum of ``call(x=i)`` for ``i`` in ``range(n)``: calls double."""
    return 2 * (n * (n - 1) // 2)


def check_sum(total: Any, n: int) -> str | None:
    """None when ``total`` is the sum of the ``n`` calls, else what is wrong."""
    if inspect.iscoroutine(total):
        total.close()
        return "an un-awaited coroutine returned as the sum"
    if isinstance(total, int):
        if total == expected_sum(n):
            return None
        return f"sum {total}, expected {expected_sum(n)}"
    if "coroutine object" in repr(total)[:2000]:
        return "coroutines returned as strings"
    return f"{type(total).__name__} returned instead of the sum"


def lazy_items(n: int) -> Iterator[int]:
    """``range(n)`` produced one at a time, as a file or an API would."""
    yield from range(n)


class StartLog:
    """Start times of the rate-limited calls (``time.monotonic``)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def record(self) -> None:
        """Note that a call starts now (list.append is atomic: thread-safe)."""
        self.starts.append(time.monotonic())

    def max_in_window(self, width: float = 1.0) -> int:
        """The most starts in any window of ``width`` seconds."""
        starts = sorted(self.starts)
        return max(
            (bisect.bisect_left(starts, t + width) - i for i, t in enumerate(starts)),
            default=0,
        )

    def steady_rate(self, settle: float = 1.0) -> float:
        """Starts per second after the first ``settle`` s (the burst) is spent."""
        starts = sorted(self.starts)
        if len(starts) < 2:
            return 0.0
        begin = starts[0] + settle
        if starts[-1] <= begin:  # all in the burst: use the whole run
            begin = starts[0]
        later = len(starts) - bisect.bisect_right(starts, begin)
        return later / (starts[-1] - begin) if starts[-1] > begin else float("inf")


def check_rate(log: StartLog, total: Any, n: int, rate: int) -> str | None:
    """None when all ``n`` calls ran and no 1 s window beat rate + burst."""
    wrong = check_sum(total, n)
    if wrong:
        return wrong
    if len(log.starts) != n:
        return f"{len(log.starts)} calls started for {n}"
    most = log.max_in_window()
    if most > 2 * rate:  # a bucket of `rate` tokens refilled at `rate`/s
        return f"{most} calls in one 1 s window, limit + burst is {2 * rate}"
    return None


# Fail-fast ------------------------------------------------------------------


class Siblings:
    """Counts the siblings of the failing call, and when the last one stops.

    Every sibling calls :meth:`enter` first, :meth:`ran_out` if it reaches
    its natural end, and :meth:`leave` in a ``finally``. The failing call
    waits for :meth:`all_started` and then calls :meth:`fail`. Whoever
    runs the job calls :meth:`caught` where the error first reaches it.
    """

    def __init__(self, pending: int) -> None:
        self.pending = pending
        self._lock = threading.Lock()
        self.started = 0
        self.running = 0
        self.ran_to_end = 0
        self.failed_at: float | None = None
        self.caught_at: float | None = None
        self.running_when_caught: int | None = None
        self.error: BaseException | None = None
        self.last_left_at: float | None = None

    def enter(self) -> None:
        """A sibling starts."""
        with self._lock:
            self.started += 1
            self.running += 1

    def ran_out(self) -> None:
        """A sibling reached its natural end: nobody stopped it."""
        with self._lock:
            self.ran_to_end += 1

    def leave(self) -> None:
        """A sibling is gone, stopped or not."""
        with self._lock:
            self.running -= 1
            if self.running == 0:
                self.last_left_at = time.perf_counter()

    def all_started(self) -> bool:
        """Whether every sibling is running (the failing call waits for it)."""
        return self.started >= self.pending

    def fail(self) -> Boom:
        """Note the first failure's moment; the caller raises what it returns."""
        if self.failed_at is None:  # a retried call fails more than once
            self.failed_at = time.perf_counter()
        return Boom(BOOM)

    def caught(self, error: BaseException | None) -> None:
        """The error reached the code that started the job."""
        if self.caught_at is None:
            self.caught_at = time.perf_counter()
            self.running_when_caught = self.running
            self.error = error

    def wait_stopped(self, limit: float) -> None:
        """Wait (up to ``limit`` s) for the siblings that are still running."""
        deadline = time.perf_counter() + limit
        while self.running > 0 and time.perf_counter() < deadline:
            time.sleep(0.001)

    def verdict(self) -> str | None:
        """None when the error arrived and every sibling had been stopped."""
        if self.failed_at is None:
            return "the failing call never ran"
        if self.caught_at is None or self.error is None:
            return "no error reached the caller"
        if self.ran_to_end:
            return f"{self.ran_to_end} siblings ran to their end, not stopped"
        if self.running_when_caught:
            return f"{self.running_when_caught} siblings still running at the error"
        if not _caused_by_boom(self.error):
            return f"the caller got {type(self.error).__name__}, not the failure"
        return None

    def seconds(self) -> tuple[float, float]:
        """(failure -> caller has the error, failure -> every sibling gone)."""
        assert self.failed_at is not None
        caught = (self.caught_at or self.failed_at) - self.failed_at
        left = (self.last_left_at or time.perf_counter()) - self.failed_at
        return caught, max(left, 0.0)


async def sibling(
    siblings: Siblings, seconds: float, sleep: Callable[[float], Awaitable[Any]]
) -> int:
    """An async sibling: waits ``seconds`` unless it is cancelled first."""
    siblings.enter()
    try:
        await sleep(seconds)
        siblings.ran_out()
        return 0
    finally:
        siblings.leave()


async def failing(siblings: Siblings, sleep: Callable[[float], Awaitable[Any]]) -> int:
    """The async call that fails, once every sibling is running."""
    while not siblings.all_started():
        await sleep(0.001)
    raise siblings.fail()


def blocking_sibling(siblings: Siblings, seconds: float) -> int:
    """A sibling on a thread: nothing can stop ``time.sleep``."""
    siblings.enter()
    try:
        time.sleep(seconds)
        siblings.ran_out()
        return 0
    finally:
        siblings.leave()


def blocking_failing(siblings: Siblings) -> int:
    """The blocking call that fails, once every sibling is running."""
    while not siblings.all_started():
        time.sleep(0.001)
    raise siblings.fail()


def _caused_by_boom(error: BaseException | None) -> bool:
    """Whether ``error`` is, wraps or groups a :class:`Boom`, or names it."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Boom) or BOOM in str(e):  # or wraps it as text
            return True
        stack += [e.__cause__, e.__context__]
        stack += list(getattr(e, "exceptions", ()))
    return False


# Memory ---------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def rss_kb(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the reset) of this process, kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")
