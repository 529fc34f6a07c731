"""Per-tool counters and latency percentiles, in bounded memory.

A run of a million calls must not keep a million latencies, so latencies go
into a log-scale histogram (about 1% relative resolution, a few hundred
buckets at most); percentiles are read from it.
"""

from __future__ import annotations

import math

import attrs

__all__ = ["LatencyHistogram", "RunStats", "ToolCounters", "ToolStats"]

_SCALE = 100.0  # buckets per factor e: bucket width is 1% of the value
_FLOOR = 1e-7  # latencies below 100 ns share one bucket


class LatencyHistogram:
    """Counts of latencies in log-spaced buckets."""

    __slots__ = ("buckets", "count", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = 0.0

    def add(self, seconds: float) -> None:
        """Record one latency (seconds)."""
        self.count += 1
        self.total += seconds
        if seconds < self.minimum:
            self.minimum = seconds
        if seconds > self.maximum:
            self.maximum = seconds
        k = math.floor(math.log(max(seconds, _FLOOR)) * _SCALE)
        buckets = self.buckets
        buckets[k] = buckets.get(k, 0) + 1

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100), or None with no data."""
        if not self.count:
            return None
        rank = q / 100.0 * (self.count - 1)
        seen = 0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen > rank:
                middle = math.exp((k + 0.5) / _SCALE)
                return min(max(middle, self.minimum), self.maximum)
        return self.maximum

    @property
    def mean(self) -> float | None:
        """The mean latency, or None with no data."""
        return self.total / self.count if self.count else None


class ToolCounters:
    """The live counters of one tool during one run."""

    __slots__ = ("calls", "failures", "latency", "rate_limited", "retries", "timeouts")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.retries = 0
        self.timeouts = 0
        self.rate_limited = 0
        self.latency = LatencyHistogram()

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
        p50, p95, p99, mean: latency of successful attempts in seconds
            (about 1% resolution), None when there were none.
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


@attrs.frozen
class RunStats:
    """Statistics of one run: ``tools`` maps tool names to :class:`ToolStats`."""

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
