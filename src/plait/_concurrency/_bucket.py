"""The live token bucket of a :class:`plait.RateLimit`, and how calls wait on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio

from .._model._ratelimit import RateLimit
from ._limits import Limiter

__all__ = ["TokenBucket", "commit", "pace", "release_gates"]


class TokenBucket:
    """The live state of one :class:`RateLimit`; thread-safe, loop-agnostic.

    A token is only ever taken at the instant the call it pays for starts,
    and never handed back: that is what makes the promise about call *start*
    times hold, even when a call must also wait for a concurrency slot or for
    other buckets, or is cancelled while it waits.

    Waiting is first come, first served: the ``gate`` (a one-slot
    :class:`Limiter`) lets one caller at a time wait for the next token,
    the others queue on it and are woken in turn, so a freed token never
    wakes a herd. See :func:`pace` and :func:`take_tokens`.
    """

    __slots__ = (
        "_lock",
        "_stamp",
        "_tokens",
        "capacity",
        "gate",
        "name",
        "rate",
        "spec",
    )

    def __init__(self, spec: RateLimit, name: str = "") -> None:
        self.spec = spec
        # What shared limits call this bucket (``tool:search``, ``engine``).
        self.name = name
        self.rate = spec.rate / spec.per
        self.capacity = spec.capacity
        self.gate = Limiter(1, "rate limit gate")
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<TokenBucket {self.spec!r} tokens={self.tokens:.2f}>"

    def _refill_locked(self) -> float:
        now = time.monotonic()
        tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._tokens = tokens
        self._stamp = now
        return tokens

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        with self._lock:
            return self._refill_locked()

    def wait_time(self) -> float:
        """Seconds until a token is available (0.0: one is available now)."""
        with self._lock:
            missing = 1.0 - self._refill_locked()
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def _take_locked(self) -> None:
        self._tokens = max(0.0, self._tokens - 1.0)

    def take(self) -> None:
        """Take a token now; only for the holder of ``gate`` after :func:`pace`."""
        with self._lock:
            self._refill_locked()
            self._take_locked()

    async def acquire(self) -> float:
        """Wait for a token and take it; return the seconds waited."""
        waited = await pace((self,))
        commit((self,))
        return waited

    def acquire_sync(self) -> float:
        """Blocking :meth:`acquire` for plain threads."""
        self.gate.acquire_blocking()
        waited = 0.0
        try:
            while (wait := self.wait_time()) > 0.0:
                time.sleep(wait)
                waited += wait
            self.take()
        finally:
            self.gate.release()
        return waited


# Float rounding can leave a bucket a hair under one token after sleeping for
# exactly the computed time; that much is not worth another sleep.
_EPSILON = 1e-9


async def pace(
    buckets: tuple[TokenBucket, ...],
    on_wait: Callable[[float], None] | None = None,
) -> float:
    """Hold every bucket's gate and wait until each has a token; take none.

    On return the caller holds all the gates and must end with
    :func:`commit` (take the tokens, at the instant its call starts) or
    :func:`release_gates`, with no checkpoint in between. Returns the
    seconds spent waiting for tokens; ``on_wait(seconds)`` is called before
    the first sleep.
    """
    held = 0
    try:
        for bucket in buckets:
            if not bucket.gate.try_acquire():
                await bucket.gate.acquire()
            held += 1
        waited = 0.0
        while (wait := max(b.wait_time() for b in buckets)) > 0.0:
            if not waited and on_wait is not None:
                on_wait(wait)
            await anyio.sleep(wait)
            waited += wait
    except BaseException:
        release_gates(buckets[:held])
        raise
    return waited


def commit(buckets: tuple[TokenBucket, ...]) -> None:
    """Take one token of each bucket and let the next waiter through."""
    for bucket in buckets:
        bucket.take()
    release_gates(buckets)


def release_gates(buckets: tuple[TokenBucket, ...]) -> None:
    """Give up a :func:`pace` without taking tokens."""
    for bucket in buckets:
        bucket.gate.release()
