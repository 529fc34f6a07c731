"""Retry policy: which errors are retried, and how long to wait between tries."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs

from ._errors import RateLimited
from ._validate import BOOL, COUNT, fail, number

__all__ = ["Retry", "RetryOn"]

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _check_retry_on(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, tuple):
        if all(isinstance(t, type) and issubclass(t, Exception) for t in value):
            return
    elif callable(value) and not isinstance(value, type):
        return
    fail(
        inst,
        attr.name,
        "a tuple of Exception subclasses or a predicate (exception) -> bool",
        value,
    )


def _to_tuple(value: Any) -> Any:
    if isinstance(value, type):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


@attrs.frozen(kw_only=True)
class Retry:
    """How a tool call is retried.

    Args:
        attempts: every try counts, the first one included; ``attempts=1``
            means no retry.
        backoff: the delay grows by this factor after each failed attempt.
        initial_delay: the delay (seconds) before the second attempt.
        max_delay: a cap on the delay before any attempt.
        jitter: "full jitter": sleep a uniformly random time between zero and
            the computed delay, so that many failing callers do not retry in
            lockstep.
        retry_on: exception types that are retried, or a predicate
            ``(exception) -> bool``. By default transient errors are retried:
            ``OSError`` (connection errors), ``TimeoutError`` (which
            includes :class:`plait.ToolTimeout`) and
            :class:`plait.RateLimited` (a service pushed back). Only ``Exception``
            subclasses are ever retried: cancellation, ``KeyboardInterrupt``
            and ``SystemExit`` always propagate.

    Each attempt takes its own rate-limit token and its own concurrency slot;
    no slot is held while sleeping between attempts, and a retry that would
    sleep past the enclosing deadline raises the last error at once instead.
    After a :class:`plait.RateLimited` the wait is at least its
    ``retry_after``, and the tool's other calls wait with it.
    """

    attempts: int = attrs.field(default=3, validator=COUNT)
    backoff: float = attrs.field(
        default=2.0, validator=number(minimum=1.0, strict=False)
    )
    initial_delay: float = attrs.field(
        default=0.1, validator=number(minimum=0.0, strict=False)
    )
    max_delay: float = attrs.field(
        default=30.0, validator=number(minimum=0.0, strict=False)
    )
    jitter: bool = attrs.field(default=True, validator=BOOL)
    retry_on: RetryOn = attrs.field(
        default=(OSError, TimeoutError, RateLimited),
        converter=_to_tuple,
        validator=_check_retry_on,
    )

    def should_retry(self, error: BaseException) -> bool:
        """Whether ``error`` is one this policy retries."""
        if not isinstance(error, Exception):
            return False
        if isinstance(self.retry_on, tuple):
            return isinstance(error, self.retry_on)
        return bool(self.retry_on(error))

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` tries have failed."""
        try:
            grown = self.initial_delay * self.backoff ** (failed_attempts - 1)
        except OverflowError:
            # A huge backoff power times a zero initial delay is still zero.
            grown = self.max_delay if self.initial_delay else 0.0
        base = min(self.max_delay, grown)
        return random.uniform(0.0, base) if self.jitter else base
