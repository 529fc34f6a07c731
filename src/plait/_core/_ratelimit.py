"""Token-bucket rate limits: the spec (:class:`RateLimit`) and its live bucket."""

from __future__ import annotations

import threading
import time

import anyio
import attrs

from ._validate import number, optional_count

__all__ = ["RateLimit", "TokenBucket"]


@attrs.frozen
class RateLimit:
    """At most ``rate`` calls per ``per`` seconds, with bursts of ``burst``.

    A token bucket: it holds up to ``burst`` tokens (``rate`` when ``burst``
    is None, and never less than one), refills at ``rate / per`` tokens a
    second, and every call (every attempt of a retried call) takes one. Over
    any window of ``w`` seconds at most ``burst + w * rate / per`` calls
    start. Waiters are served first come, first served.

    A ``RateLimit`` is only a description; each engine, tool or key gets its
    own bucket from it.
    """

    rate: float = attrs.field(validator=number())
    per: float = attrs.field(default=1.0, validator=number())
    burst: int | None = attrs.field(default=None, validator=optional_count(minimum=1))

    @property
    def capacity(self) -> float:
        """How many tokens the bucket holds when full."""
        return float(self.burst) if self.burst is not None else max(1.0, self.rate)


class TokenBucket:
    """The live state of one :class:`RateLimit`; thread-safe, loop-agnostic.

    Tokens are *reserved*: :meth:`reserve` takes a token at once, going into
    debt when the bucket is empty, and returns how long the caller must wait
    for that token to be earned. Waiters therefore queue in arrival order and
    each sleeps exactly once, with no thundering herd when a token frees up.
    A caller that gives up (cancelled, or handing its turn back) calls
    :meth:`refund`.
    """

    __slots__ = ("_lock", "_stamp", "_tokens", "capacity", "rate", "spec")

    def __init__(self, spec: RateLimit) -> None:
        self.spec = spec
        self.rate = spec.rate / spec.per
        self.capacity = spec.capacity
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> float:
        now = time.monotonic()
        tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return tokens

    def reserve(self) -> float:
        """Take one token; return the seconds to wait before using it (0.0: now)."""
        with self._lock:
            tokens = self._refill() - 1.0
            self._tokens = tokens
        return 0.0 if tokens >= 0.0 else -tokens / self.rate

    def refund(self) -> None:
        """Give back a token taken by :meth:`reserve` and not used."""
        with self._lock:
            self._tokens = min(self.capacity, self._refill() + 1.0)

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while callers wait in debt)."""
        with self._lock:
            return self._refill_peek()

    def _refill_peek(self) -> float:
        elapsed = time.monotonic() - self._stamp
        return min(self.capacity, self._tokens + elapsed * self.rate)

    async def acquire(self) -> float:
        """Wait for a token and take it; return how long the wait was."""
        wait = self.reserve()
        if wait:
            try:
                await anyio.sleep(wait)
            except BaseException:
                self.refund()
                raise
        return wait

    def acquire_sync(self) -> float:
        """Blocking :meth:`acquire` for plain threads."""
        wait = self.reserve()
        if wait:
            try:
                time.sleep(wait)
            except BaseException:
                self.refund()
                raise
        return wait
