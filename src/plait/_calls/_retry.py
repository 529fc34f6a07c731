"""Retrying a call: how long to sleep before the next attempt, if at all."""

from __future__ import annotations

import math

import anyio

from .._model._retry import Retry

__all__ = ["next_delay"]


def next_delay(
    policy: Retry, failed_attempts: int, error: BaseException
) -> float | None:
    """Seconds to sleep before the next attempt, or None to give up now.

    Gives up when ``error`` is not retried, the attempts are used up, or the
    sleep would run past the enclosing deadline (it would only end in a
    cancellation hiding the real error). Call it in the task that retries.
    """
    if failed_attempts >= policy.attempts or not policy.should_retry(error):
        return None
    delay = policy.delay(failed_attempts)
    deadline = anyio.current_effective_deadline()
    if deadline != math.inf and anyio.current_time() + delay >= deadline:
        return None
    return delay
