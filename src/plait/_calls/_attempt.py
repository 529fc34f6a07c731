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
from ._admission import Admission, Lease, Release
from ._current import CURRENT
from ._report import CallReport

__all__ = ["Attempt", "Call", "OnFailure", "Steps", "build_attempt"]

_perf = time.perf_counter

# (args, kwargs, release, template, loc, number) -> the awaitable running the tool
Call = Callable[
    [tuple[Any, ...], dict[str, Any], Release, str, tuple[int, ...], int],
    Awaitable[Any],
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
        template: str,
        loc: tuple[int, ...],
        number: int,
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
        template: str,
        loc: tuple[int, ...],
        number: int,
    ) -> Awaitable[Any]:
        return run_in_thread(
            fn,
            args,
            kwargs,
            release if thread_releases else _nothing,
            threads,
            on_abandon,
            (template, loc, number),
        )

    return call


def _nothing() -> None:
    pass


class Steps:
    """The parts of one attempt that surround the tool: enter, done, fail.

    Both drivers of an attempt use them: the :func:`build_attempt` coroutine,
    and a map worker that awaits a plain async tool itself (one coroutine
    frame fewer between its task and the tool).
    """

    __slots__ = (
        "add_latency",
        "admit",
        "bus",
        "counters",
        "on_failure",
        "report",
        "whole_call",
    )

    def __init__(
        self, admit: Admission, report: CallReport, on_failure: OnFailure | None
    ) -> None:
        self.admit = admit
        self.report = report
        self.counters = report.counters
        self.add_latency: Callable[[float], None] = report.counters.latency.add
        self.bus = report.bus
        self.on_failure = on_failure
        self.whole_call = on_failure is not None

    def enter(
        self,
        template: str,
        loc: tuple[int, ...],
        number: int = 1,
        lease: Lease | None = None,
    ) -> Release | None:
        """Take the slots now and announce the call; None when it must wait.

        ``lease``: the calling task's (see :class:`Lease`), when it knows it.
        """
        if self.whole_call:
            self.counters.calls += 1
        release = self.admit.try_enter(lease)
        if release is not None and _STARTED in self.bus.kinds:
            _announce(self.report, template, loc, number, release)
        return release

    async def wait(
        self,
        template: str,
        loc: tuple[int, ...],
        number: int = 1,
        admit: Admission | None = None,
    ) -> Release:
        """Wait for the slots and tokens (``admit``: other limits), announce."""
        report = self.report
        waited = False

        def on_wait(seconds: float) -> None:
            nonlocal waited
            if not waited:  # one report per attempt, however often it waits
                waited = True
                report.rate_limited(template, loc, number, seconds)

        release = await (admit or self.admit).enter(on_wait)
        if _STARTED in self.bus.kinds:
            _announce(report, template, loc, number, release)
        return release

    def done(
        self, started: float, template: str, loc: tuple[int, ...], number: int = 1
    ) -> None:
        """The tool returned: record its latency and report the finish."""
        elapsed = _perf() - started
        self.add_latency(elapsed)
        if _FINISHED in self.bus.kinds:
            self.report.finished(template, loc, number, started, elapsed)

    def fail(
        self, error: Exception, template: str, loc: tuple[int, ...], number: int = 1
    ) -> None:
        """The attempt failed: report it when it was the whole call."""
        if self.on_failure is not None:
            self.on_failure(template, loc, number, error)


_STARTED = EventKind.CALL_STARTED
_FINISHED = EventKind.CALL_FINISHED


def build_attempt(
    call: Call,
    steps: Steps,
    *,
    timeout: float | None,
    task_releases: bool,
    run_id: str = "",
) -> Attempt:
    """Compose one attempt of a call from its :class:`Steps`.

    Args:
        call: how the tool runs (:func:`async_call`, :func:`thread_call`).
        steps: admission and reporting around the tool.
        timeout: seconds per attempt, or None.
        task_releases: the task gives the slots back when the attempt ends
            (else the worker thread does).
        run_id: the run's id, for :func:`plait.current_call` in the tool.
    """
    enter, wait, done, fail = steps.enter, steps.wait, steps.done, steps.fail
    set_current, reset_current = CURRENT.set, CURRENT.reset

    async def attempt(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
        number: int = 1,
        admission: Admission | None = None,
    ) -> Any:
        try:
            release = None if admission else enter(template, loc, number)
            if release is None:
                release = await wait(template, loc, number, admission)
            started = _perf()
            here = set_current((run_id, template, loc, number))
            try:
                work = call(args, kwargs, release, template, loc, number)
                if timeout is not None:
                    work = _within(work, timeout, steps.report, template, loc, number)
                result = await work
            finally:
                reset_current(here)
                if task_releases:
                    release()
        except Exception as error:
            fail(error, template, loc, number)
            raise
        done(started, template, loc, number)
        return result

    return attempt


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
        report.started(template, loc, number)
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
