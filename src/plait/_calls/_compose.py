"""The composer: builds a tool's call pipeline once, from the layers it uses.

A call reads, outermost first: journal -> retry -> adaptive limit ->
middleware -> attempt (admission -> timeout -> call). Each layer is a
small function of its own module; the composer leaves out every layer the
call does not use, so a plain async tool under the engine's limit is one
coroutine: its attempt. The journal layer is there only in a run with a
journal, for a tool that has not opted out; the adaptive layer only for an
:class:`plait.Adaptive` limit; the tool's cool-down (the pause after a
push-back) only for a call with a retry policy, as a gate in its admission.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from .._concurrency._bucket import TokenBucket
from .._concurrency._cooldown import CoolDown
from .._concurrency._limits import Limiter
from .._model._errors import StepFailed
from .._model._events import EventKind
from .._model._paths import fill
from .._model._retry import Retry
from ._admission import Admission, Gated, admission
from ._attempt import (
    Attempt,
    OnFailure,
    Steps,
    async_call,
    build_attempt,
    thread_call,
)
from ._backpressure import observing, with_adaptive
from ._context import RunContext, ToolRuntime
from ._invoker import Invoker
from ._journal import counting_attempts, with_journal
from ._middleware import KeyedLimit, KeyedRateLimit, with_middleware
from ._report import CallReport
from ._retry import with_retry
from ._shared import leased, shared_admission

__all__ = ["Lean", "Pipeline", "compose", "compose_pipeline"]

_ONCE = Retry(attempts=1)


@attrs.frozen(eq=False)
class Lean:
    """A call that is only admission around an async tool, as its parts.

    A driver that runs many such calls (a map worker) awaits ``fn`` itself
    between ``steps.enter``/``steps.wait`` and ``steps.done``/``steps.fail``,
    one coroutine frame fewer than awaiting the pipeline.
    """

    fn: Callable[..., Awaitable[Any]]
    steps: Steps


@attrs.frozen(eq=False)
class Pipeline:
    """A composed call: the invoker, and its :class:`Lean` parts if it has them."""

    invoke: Invoker
    lean: Lean | None


def compose(rt: ToolRuntime, run: RunContext, **options: Any) -> Invoker:
    """The invoker of :func:`compose_pipeline` (same arguments)."""
    return compose_pipeline(rt, run, **options).invoke


def compose_pipeline(
    rt: ToolRuntime,
    run: RunContext,
    *,
    timeout: float | None,
    retry: Retry | None,
    step_errors: bool = False,
    name: str | None = None,
) -> Pipeline:
    """Build the call pipeline of ``rt.tool`` for one run.

    Args:
        timeout: per-attempt timeout (the call's, else the tool's).
        retry: retry policy (the call's, else the tool's).
        step_errors: raise a failed call's error as :class:`StepFailed` at
            the call's path, as a ``Call`` step does.
        name: what errors and events call the tool (its name by default).
    """
    tool = rt.tool
    label = tool.name if name is None else name
    report = CallReport(label, run.counters_for(label), run.events)
    finish = _finisher(report, step_errors)
    gate = _gate(rt, run, retry)
    adaptive = rt.adaptive
    layered = retry is not None or bool(run.middleware) or adaptive is not None
    limiters, buckets = _limits(rt, run)
    admit = _admission(rt, run, limiters, buckets, report)
    steps = Steps(
        admit if gate is None else Gated(admit, gate),
        report,
        None if layered else finish,
    )
    if adaptive is not None:
        steps.add_latency = observing(steps.add_latency, adaptive)
    attempt = _attempt(rt, run, steps, timeout)
    journal = run.journal if tool.journal else None
    if journal is not None:
        attempt = counting_attempts(attempt)
    if run.middleware:
        attempt = with_middleware(
            attempt,
            tool,
            run.middleware,
            limiters,
            buckets,
            *_shared_extra(run, report),
            report=report,
        )
    if adaptive is not None:
        attempt = with_adaptive(attempt, report, adaptive)
    if retry is not None:
        pipeline = Pipeline(with_retry(attempt, retry, report, finish, gate), None)
    elif layered:  # one attempt, counted and finished as a call
        pipeline = Pipeline(with_retry(attempt, _ONCE, report, finish), None)
    else:
        lean = Lean(tool.fn, steps) if tool.is_async and timeout is None else None
        if run.shared_limits is not None:
            lean = None  # a shared lease may be lost: the attempt watches for it
        pipeline = Pipeline(attempt, lean)
    if journal is not None:
        return Pipeline(with_journal(pipeline.invoke, tool, journal, report), None)
    return pipeline


def _admission(
    rt: ToolRuntime,
    run: RunContext,
    limiters: tuple[Limiter, ...],
    buckets: tuple[TokenBucket, ...],
    report: CallReport,
) -> Admission:
    """The call's admission: shared when the engine has shared limits."""
    if run.shared_limits is not None:
        shared = shared_admission(
            run.shared_limits,
            limiters,
            buckets,
            engine_limiter=run.engine_limiter,
            report=report,
            local=_local_adaptive(rt),
        )
        if shared is not None:
            return shared
    return admission(limiters, buckets, lease=_lease(rt, run))


def _shared_extra(
    run: RunContext, report: CallReport
) -> tuple[Callable[[tuple[Limiter, ...], tuple[TokenBucket, ...]], Admission], ...]:
    """How middleware-added limits are admitted, when they may be shared."""
    shared = run.shared_limits
    if shared is None:
        return ()

    def make(
        limiters: tuple[Limiter, ...], buckets: tuple[TokenBucket, ...]
    ) -> Admission:
        found = shared_admission(
            shared,
            limiters,
            buckets,
            engine_limiter=run.engine_limiter,
            report=report,
        )
        return found if found is not None else admission(limiters, buckets)

    return (make,)


def _limits(
    rt: ToolRuntime, run: RunContext
) -> tuple[tuple[Limiter, ...], tuple[TokenBucket, ...]]:
    """The limiters and buckets a call of ``rt.tool`` is under, the engine's last.

    An adaptive limit's own limiter comes first when it is not the tool's
    (under shared limits, where it stays local).
    """
    own = _local_adaptive(rt)
    limiters = tuple(x for x in (own, rt.limiter, run.engine_limiter) if x is not None)
    buckets = tuple(x for x in (rt.bucket, run.engine_bucket) if x is not None)
    return limiters, buckets


def _gate(rt: ToolRuntime, run: RunContext, retry: Retry | None) -> CoolDown | None:
    """The tool's cool-down, when its calls can be paused.

    A call without a retry policy never waits for another try, so it is
    not paused either; under keyed middleware the pause is the key's (see
    :class:`KeyedLimit`), not the tool's.
    """
    if retry is None or any(
        isinstance(m, KeyedLimit | KeyedRateLimit) for m in run.middleware
    ):
        return None
    return rt.gate


def _local_adaptive(rt: ToolRuntime) -> Limiter | None:
    """The adaptive limit's limiter, when it is a local one beside the tool's."""
    adaptive = rt.adaptive
    if adaptive is None or adaptive.limiter is rt.limiter:
        return None
    return adaptive.limiter


def _lease(rt: ToolRuntime, run: RunContext) -> Limiter | None:
    """The engine limiter, when the call may run on a slot its task keeps.

    Only an async tool, whose slots its task gives back; and not under
    middleware, which runs before the call takes its slots and may wait for
    anything: a kept slot must not wait with it.
    """
    if rt.tool.is_async and not run.middleware:
        return run.engine_limiter
    return None


def _attempt(
    rt: ToolRuntime, run: RunContext, steps: Steps, timeout: float | None
) -> Attempt:
    """The attempt of ``rt.tool``: awaited in the task, or on a worker thread."""
    tool = rt.tool
    if tool.is_async:
        call = async_call(tool.fn)
        task_releases = True
    else:
        report = steps.report

        def on_abandon(template: str, loc: tuple[int, ...], number: int) -> None:
            run.abandoned_threads += 1
            report.note(EventKind.THREAD_ABANDONED, template, loc, number)

        call = thread_call(
            tool.fn,
            run.thread_limiter,
            on_abandon,
            thread_releases=run.slots_follow_threads,
        )
        task_releases = not run.slots_follow_threads
    if run.shared_limits is not None:
        call = leased(call, steps.report)
    return build_attempt(
        call, steps, timeout=timeout, task_releases=task_releases, run_id=run.run_id
    )


def _finisher(report: CallReport, step_errors: bool) -> OnFailure:
    """What happens to a call's error once no layer will try again."""

    def failed(
        template: str, loc: tuple[int, ...], number: int, error: Exception
    ) -> None:
        report.failed(template, loc, number, error)
        if step_errors:
            raise StepFailed(fill(template, loc), error) from error

    return failed
