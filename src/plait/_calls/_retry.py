"""The retry layer: attempts again after a transient error, backing off."""

from __future__ import annotations

import math
from typing import Any

import anyio

from .._concurrency._cooldown import CoolDown
from .._model._errors import RateLimited
from .._model._retry import Retry
from ._admission import drop_idle_lease
from ._attempt import Attempt, OnFailure
from ._backpressure import push_back
from ._invoker import Invoker
from ._report import CallReport

__all__ = ["next_delay", "with_retry"]


def next_delay(
    policy: Retry,
    failed_attempts: int,
    error: BaseException,
    gate: CoolDown | None = None,
) -> float | None:
    """Seconds to sleep before the next attempt, or None to give up now.

    Gives up when ``error`` is not retried, the attempts are used up, or the
    sleep would run past the enclosing deadline (it would only end in a
    cancellation hiding the real error). The sleep lasts at least the
    ``retry_after`` of a :class:`RateLimited` and the pause of ``gate``
    (the tool's cool-down). Call it in the task that retries.
    """
    if failed_attempts >= policy.attempts or not policy.should_retry(error):
        return None
    delay = policy.delay(failed_attempts)
    if isinstance(error, RateLimited):
        if error.retry_after is not None and error.retry_after > delay:
            delay = error.retry_after
        if gate is not None:
            delay = max(delay, gate.remaining())
    deadline = anyio.current_effective_deadline()
    if deadline != math.inf and anyio.current_time() + delay >= deadline:
        return None
    return delay


def with_retry(
    attempt: Attempt,
    policy: Retry,
    report: CallReport,
    on_give_up: OnFailure,
    gate: CoolDown | None = None,
) -> Invoker:
    """Retry ``attempt`` under ``policy``; ``on_give_up`` gets the last error.

    No slot is held while backing off (the task's kept slot, if any, is let
    go first), and a backoff that would pass the deadline is not started.
    ``gate``: the tool's cool-down: a push-back pauses it (see
    :func:`push_back`), and the backoff waits it out.
    """
    counters = report.counters

    async def invoke(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
    ) -> Any:
        counters.calls += 1
        number = 1
        while True:
            try:
                return await attempt(args, kwargs, template, loc, number)
            except Exception as error:
                if isinstance(error, RateLimited):
                    push_back(error, report, gate, policy, template, loc, number)
                delay = next_delay(policy, number, error, gate)
                if delay is None:
                    on_give_up(template, loc, number, error)
                    raise
                report.retried(template, loc, number, error, delay)
            drop_idle_lease()
            await anyio.sleep(delay)
            number += 1

    return invoke
