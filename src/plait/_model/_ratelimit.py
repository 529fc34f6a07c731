"""Token-bucket rate limits: the spec, :class:`RateLimit`.

Its live bucket is :class:`plait._concurrency._bucket.TokenBucket`.
"""

from __future__ import annotations

import attrs

from ._validate import COUNT, number

__all__ = ["RateLimit"]


@attrs.frozen
class RateLimit:
    """At most ``rate`` calls per ``per`` seconds, with bursts of ``burst``.

    A token bucket: it holds up to ``burst`` tokens (``rate`` when ``burst``
    is None, and never less than one), refills at ``rate / per`` tokens a
    second, and every call (every attempt of a retried call) takes one. Over
    any window of ``w`` seconds at most ``burst + w * rate / per`` calls
    start, whatever else the calls wait for. Waiters are served first come,
    first served.

    A ``RateLimit`` is only a description; each engine, tool or key gets its
    own bucket from it.
    """

    rate: float = attrs.field(validator=number())
    per: float = attrs.field(default=1.0, validator=number())
    burst: int | None = attrs.field(default=None, validator=COUNT.or_none())

    @property
    def capacity(self) -> float:
        """How many tokens the bucket holds when full."""
        return float(self.burst) if self.burst is not None else max(1.0, self.rate)
