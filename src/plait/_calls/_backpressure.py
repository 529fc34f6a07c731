"""What a call does when the service pushes back (:class:`plait.RateLimited`).

Two parts, each composed only where it is used:

* :func:`push_back`, called by the retry layer (the outermost, so it also
  sees a ``RateLimited`` that a middleware made from a client library's own
  error): it counts and reports the push-back, and pauses the tool's calls
  (its :class:`CoolDown`) for the ``retry_after`` the service asked for,
  else for the retry's own backoff. It costs nothing until a call fails.
* :func:`with_adaptive`, a layer between the retry layer and the
  middleware for a tool whose limit is :class:`plait.Adaptive`: it tells
  the limit's controller how each attempt ended, so that it shrinks on a
  push-back and grows while calls succeed; :func:`observing` hands the
  controller each successful attempt's latency (the tool's own time, not
  its wait for a slot), so that it shrinks when latency climbs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._concurrency._adaptive import AdaptiveLimit
from .._concurrency._cooldown import CoolDown
from .._model._errors import RateLimited
from .._model._events import EventKind
from .._model._retry import Retry
from ._admission import Admission
from ._attempt import Attempt
from ._report import CallReport

__all__ = ["observing", "pause_for", "push_back", "with_adaptive"]


def pause_for(error: RateLimited, policy: Retry | None, failed_attempts: int) -> float:
    """How long the tool pauses after ``error``: what the service asked, else backoff."""
    if error.retry_after is not None:
        return error.retry_after
    return policy.delay(failed_attempts) if policy is not None else 0.0


def push_back(
    error: RateLimited,
    report: CallReport,
    gate: CoolDown | None,
    policy: Retry | None,
    template: str,
    loc: tuple[int, ...],
    number: int,
) -> None:
    """Count and report a push-back, and pause the tool's calls (``gate``)."""
    report.counters.pushed_back += 1
    if error.retry_after_ignored:
        report.note(EventKind.RETRY_AFTER_IGNORED, template, loc, number, error=error)
    pause = 0.0
    if gate is not None:
        pause = pause_for(error, policy, number)
        gate.cool(pause)
    report.note(
        EventKind.CALL_PUSHED_BACK, template, loc, number, error=error, delay=pause
    )


def observing(
    add_latency: Callable[[float], None], control: AdaptiveLimit
) -> Callable[[float], None]:
    """``add_latency`` (the tool's latency counter), telling ``control`` too."""
    observe = control.observe

    def add(seconds: float) -> None:
        add_latency(seconds)
        observe(seconds)

    return add


def with_adaptive(
    attempt: Attempt, report: CallReport, control: AdaptiveLimit
) -> Attempt:
    """Steer ``control`` (an adaptive limit) by how the attempts of ``attempt`` end."""
    counters = report.counters
    counters.limit = control.value

    def changed(
        limit: int | None, template: str, loc: tuple[int, ...], number: int
    ) -> None:
        if limit is not None:
            counters.limit = limit
            report.note(EventKind.LIMIT_CHANGED, template, loc, number, limit=limit)

    async def adapted(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
        number: int = 1,
        admission: Admission | None = None,
    ) -> Any:
        try:
            result = await attempt(args, kwargs, template, loc, number, admission)
        except RateLimited:
            changed(control.pushed_back(), template, loc, number)
            raise
        changed(control.succeeded(), template, loc, number)
        return result

    return adapted
