"""Per-tool counters and latency percentiles, in bounded memory.

A run of a million calls must not keep a million latencies, so latencies go
into a log-scale histogram (about 1% relative resolution, a fixed 3,200
buckets); percentiles are read from it.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["LatencyHistogram", "RunStats", "ToolCounters", "ToolStats"]

# A latency's bucket is floor(log2(seconds) * _PER_DOUBLING), shifted so that
# 2**_LOG_MIN s (about 1 ns) is bucket 0: 64 buckets per doubling, each 1.1%
# wide, up to 2**_LOG_MAX s (about 12 days); anything outside goes to the
# first or the last bucket.
_PER_DOUBLING = 64
_LOG_MIN = -30
_LOG_MAX = 20
_BUCKETS = (_LOG_MAX - _LOG_MIN) * _PER_DOUBLING
_SHIFT = float(-_LOG_MIN * _PER_DOUBLING)
_SMALLEST = 2.0**_LOG_MIN
_log2 = math.log2


def _bucket_middle(k: int) -> float:
    return math.pow(2.0, (k + 0.5 - _SHIFT) / _PER_DOUBLING)


class LatencyHistogram:
    """Counts of latencies in log-spaced buckets (about 1% wide)."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0

    def add(
        self,
        seconds: float,
        _log2: Any = _log2,
        _per: float = _PER_DOUBLING,
        _shift: float = _SHIFT,
        _smallest: float = _SMALLEST,
    ) -> None:
        """Record one latency (seconds).

        Runs once per call: the module constants are bound as defaults (fast
        local reads).
        """
        self.count += 1
        self.total += seconds
        if seconds > _smallest:
            try:
                self.counts[int(_log2(seconds) * _per + _shift)] += 1
            except IndexError:  # beyond 2**_LOG_MAX seconds
                self.counts[-1] += 1
        else:
            self.counts[0] += 1

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100), or None with no data.

        The value is the middle of the bucket holding the sample of rank
        ``q / 100 * (count - 1)``, so it is within about 1% of that sample.
        """
        if not self.count:
            return None
        rank = q / 100.0 * (self.count - 1)
        seen = 0
        for k, n in enumerate(self.counts):
            if n:
                seen += n
                if seen > rank:
                    return _bucket_middle(k)
        raise AssertionError("unreachable: counts add up to count")

    @property
    def mean(self) -> float | None:
        """The mean latency, or None with no data."""
        return self.total / self.count if self.count else None

    def merge(self, other: LatencyHistogram) -> None:
        """Add the latencies ``other`` recorded (a remote chunk's) to these."""
        counts = self.counts
        for k, n in enumerate(other.counts):
            if n:
                counts[k] += n
        self.count += other.count
        self.total += other.total

    def __getstate__(self) -> tuple[int, float, dict[int, int]]:
        # Pickled sparse: a chunk's few dozen buckets, not all 3,200.
        return self.count, self.total, {k: n for k, n in enumerate(self.counts) if n}

    def __setstate__(self, state: tuple[int, float, dict[int, int]]) -> None:
        self.count, self.total, used = state
        self.counts = [0] * _BUCKETS
        for k, n in used.items():
            self.counts[k] = n


class ToolCounters:
    """The live counters of one tool during one run."""

    __slots__ = (
        "calls",
        "failures",
        "key_limits",
        "latency",
        "limit",
        "pushed_back",
        "rate_limited",
        "retries",
        "timeouts",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.retries = 0
        self.timeouts = 0
        self.rate_limited = 0
        self.latency = LatencyHistogram()
        self.pushed_back = 0
        self.limit: int | None = None
        self.key_limits: dict[str, int] = {}

    def merge(self, other: ToolCounters) -> None:
        """Add what ``other`` counted (a remote chunk's calls) to these.

        ``limit`` and ``key_limits`` stay this one's: an adaptive limit is
        each engine's own.
        """
        self.calls += other.calls
        self.failures += other.failures
        self.retries += other.retries
        self.timeouts += other.timeouts
        self.rate_limited += other.rate_limited
        self.pushed_back += other.pushed_back
        self.latency.merge(other.latency)

    def snapshot(self) -> ToolStats:
        lat = self.latency
        return ToolStats(
            calls=self.calls,
            failures=self.failures,
            retries=self.retries,
            timeouts=self.timeouts,
            rate_limited=self.rate_limited,
            p50=lat.percentile(50),
            p95=lat.percentile(95),
            p99=lat.percentile(99),
            mean=lat.mean,
            pushed_back=self.pushed_back,
            limit=self.limit,
            key_limits=dict(self.key_limits),
        )


@attrs.frozen
class ToolStats:
    """What one tool did during a run.

    Attributes:
        calls: calls made (a retried call counts once).
        failures: calls that failed after their last attempt.
        retries: attempts after the first.
        timeouts: attempts that hit their timeout.
        rate_limited: attempts that had to wait for a rate-limit token.
        p50: the median latency of successful attempts in seconds (about
            1% resolution), None when there were none.
        p95: the 95th percentile latency, likewise.
        p99: the 99th percentile latency, likewise.
        mean: the mean latency of successful attempts, likewise.
        pushed_back: attempts the service pushed back
            (:class:`plait.RateLimited`).
        limit: the tool's :class:`plait.Adaptive` concurrency limit at the
            end of the run; None for a fixed limit.
        key_limits: under a :class:`plait.KeyedLimit` with an ``adaptive``
            limit, the live limit of each key this tool's calls went
            through, at the end of the run (a key several tools share shows
            the same value in each).
    """

    calls: int
    failures: int
    retries: int
    timeouts: int
    rate_limited: int
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    pushed_back: int = 0
    limit: int | None = None
    key_limits: dict[str, int] = attrs.field(factory=dict)


@attrs.frozen
class RunStats:
    """Statistics of one run: ``tools`` maps tool names to :class:`ToolStats`.

    Attributes:
        tools: the :class:`ToolStats` of every tool the run called, by name.
        duration: seconds the run took, from its first step to its end.
    """

    tools: dict[str, ToolStats]
    duration: float

    @property
    def calls(self) -> int:
        """Tool calls made in the run."""
        return sum(t.calls for t in self.tools.values())

    @property
    def failures(self) -> int:
        """Tool calls that failed in the run."""
        return sum(t.failures for t in self.tools.values())
