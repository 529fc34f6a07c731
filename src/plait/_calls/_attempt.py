"""One attempt of a tool call: admission, timeout, the call itself.

``attempt(args, kwargs, template, loc, number)`` takes the call's slots and
tokens (see :mod:`._admission`), announces the call, runs the tool (in the
task when async, on a worker thread when sync) under the per-attempt
timeout, gives the slots back and records the latency. It raises the tool's
own error; ``on_failure``, when the attempt is the whole call (no retry
around it), reports that error and may turn it into the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio

from .._concurrency._bridge import run_in_thread
from .._concurrency._limits import Limiter
from .._model._errors import ToolTimeout
from .._model._events import EventKind
from ._admission import Admission, Release
from ._report import CallReport

__all__ = ["Attempt", "Call", "OnFailure", "build_attempt"]

_perf = time.perf_counter

# (args, kwargs, release, where) -> the awaitable that runs the tool
Call = Callable[
    [tuple[Any, ...], dict[str, Any], Release, tuple[Any, ...]], Awaitable[Any]
]
OnFailure = Callable[[str, tuple[int, ...], int, Exception], None]


class Attempt(Protocol):
    def __call__(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
        number: int = 1,
        admission: Admission | None = None,
    ) -> Awaitable[Any]: ...


def async_call(fn: Callable[..., Awaitable[Any]]) -> Call:
    """Await an async tool in the calling task; the task gives the slots back."""

    def call(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        release: Release,
        where: tuple[Any, ...],
    ) -> Awaitable[Any]:
        return fn(*args, **kwargs)

    return call


def thread_call(
    fn: Callable[..., Any],
    threads: Limiter,
    on_abandon: Callable[..., None],
    *,
    thread_releases: bool,
) -> Call:
    """Run a sync tool on a worker thread.

    With ``thread_releases`` the thread gives the call's slots back when it
    really returns, so a hung tool stays counted against its limits.
    """

    def call(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        release: Release,
        where: tuple[Any, ...],
    ) -> Awaitable[Any]:
        return run_in_thread(
            fn,
            args,
            kwargs,
            release if thread_releases else _nothing,
            threads,
            on_abandon,
            where,
        )

    return call


def _nothing() -> None:
    pass


def build_attempt(
    call: Call,
    admit: Admission,
    report: CallReport,
    *,
    timeout: float | None,
    task_releases: bool,
    on_failure: OnFailure | None,
) -> Attempt:
    """Compose one attempt of a call.

    Args:
        call: how the tool runs (:func:`async_call`, :func:`thread_call`).
        admit: the slots and tokens each attempt takes.
        report: the tool's counters and events.
        timeout: seconds per attempt, or None.
        task_releases: the task gives the slots back when the attempt ends
            (else the worker thread does).
        on_failure: set when the attempt is the whole call (nothing retries
            or wraps it): the attempt then counts the call, and hands a
            failure to ``on_failure``, which may raise the error the caller
            sees. None when an outer layer does both.
    """
    counters = report.counters
    add_latency = counters.latency.add
    bus = report.bus
    note = report.note
    started_kind = EventKind.CALL_STARTED
    finished_kind = EventKind.CALL_FINISHED
    whole_call = on_failure is not None

    async def attempt(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
        number: int = 1,
        admission: Admission | None = None,
    ) -> Any:
        if whole_call:
            counters.calls += 1
        try:
            admit_now = admission or admit
            release = admit_now.try_enter()
            if release is None:
                release = await _wait(admit_now, report, template, loc, number)
            if bus.wants(started_kind):
                _announce(report, template, loc, number, release)
            # Decided as the call starts: a subscriber that joins meanwhile
            # never sees a call finish that it did not see start.
            watched = bus.wants(finished_kind)
            started = _perf()
            try:
                work = call(args, kwargs, release, (template, loc, number))
                if timeout is None:
                    result = await work
                else:
                    result = await _within(work, timeout, report, template, loc, number)
            finally:
                if task_releases:
                    release()
        except Exception as error:
            if on_failure is not None:
                on_failure(template, loc, number, error)
            raise
        elapsed = _perf() - started
        add_latency(elapsed)
        if watched:
            note(finished_kind, template, loc, number, duration=elapsed)
        return result

    return attempt


async def _wait(
    admit: Admission,
    report: CallReport,
    template: str,
    loc: tuple[int, ...],
    number: int,
) -> Release:
    """Wait for the attempt's slots and tokens, reporting a wait for a token."""
    waited = False

    def on_wait(seconds: float) -> None:
        nonlocal waited
        if not waited:  # one report per attempt, however often it waits
            waited = True
            report.rate_limited(template, loc, number, seconds)

    return await admit.enter(on_wait)


def _announce(
    report: CallReport,
    template: str,
    loc: tuple[int, ...],
    number: int,
    release: Release,
) -> None:
    """Emit ``call.started``; give the slots back if that raises.

    Only a BaseException gets out of the bus (a subscriber's
    KeyboardInterrupt, say): the slots are not the call's to release yet.
    """
    try:
        report.note(EventKind.CALL_STARTED, template, loc, number)
    except BaseException:
        release()
        raise


async def _within(
    work: Awaitable[Any],
    seconds: float,
    report: CallReport,
    template: str,
    loc: tuple[int, ...],
    number: int,
) -> Any:
    """Await ``work`` for at most ``seconds``, else raise ToolTimeout."""
    started = _perf()
    with anyio.CancelScope(deadline=anyio.current_time() + seconds):
        return await work
    # Only reached when this scope cancelled the work.
    error = ToolTimeout(report.name, seconds)
    report.timed_out(template, loc, number, _perf() - started, error)
    raise error
