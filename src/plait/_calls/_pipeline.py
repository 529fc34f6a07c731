"""The tool-call pipeline: retry( middleware( rate limit -> slot -> timeout -> call )).

A pipeline is built once per tool and per set of overrides when a run starts,
and leaves out every layer the tool does not use, so a plain async tool
under the engine's limit costs two lock operations and two clock reads per
call.

Admission (rate-limit tokens, then concurrency slots) keeps two promises.
No slot is held while waiting for a token, unless the call first had to wait
for its slot. And calls never *start* faster than a bucket allows: tokens are
taken only at the instant the call starts, never earlier and never handed
back (see :func:`_admit`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs

from .._concurrency._bridge import run_in_thread
from .._concurrency._bucket import TokenBucket, commit, pace, release_gates
from .._concurrency._limits import Limiter
from .._model._errors import ConfigError, StepFailed, ToolTimeout
from .._model._events import EventBus, EventKind
from .._model._paths import fill
from .._model._results import Failure
from .._model._retry import Retry
from .._model._stats import ToolCounters
from .._model._tools import Tool
from ._middleware import Middleware, ToolCall, chain
from ._retry import next_delay

__all__ = [
    "DirectCall",
    "Invoker",
    "RunContext",
    "ToolRuntime",
    "build_invoker",
    "direct_call",
]

# (args, kwargs, path template, element indexes) -> result
Invoker = Callable[
    [tuple[Any, ...], dict[str, Any], str, tuple[int, ...]], Awaitable[Any]
]

_perf = time.perf_counter


@attrs.define(eq=False)
class ToolRuntime:
    """The engine-lifetime state of one tool: its limiter and its bucket."""

    tool: Tool
    limiter: Limiter | None
    bucket: TokenBucket | None


@attrs.define(eq=False)
class RunContext:
    """What one run shares between its steps and pipelines."""

    events: EventBus
    engine_limiter: Limiter
    engine_bucket: TokenBucket | None
    middleware: tuple[Middleware, ...]
    thread_limiter: Limiter
    # Whether a sync call's slots stay held by its thread until it returns
    # (the engine: limits stay true however a tool hangs), or are given back
    # when the call times out or is cancelled, leaving only the thread limit
    # to count the running thread (the agents' batch: agents the run waits on).
    slots_follow_threads: bool = True
    counters: dict[str, ToolCounters] = attrs.field(factory=dict)
    failures: list[Failure] = attrs.field(factory=list)
    abandoned_threads: int = 0

    def counters_for(self, name: str) -> ToolCounters:
        try:
            return self.counters[name]
        except KeyError:
            return self.counters.setdefault(name, ToolCounters())


def _try_slots(limiters: tuple[Limiter, ...]) -> bool:
    """Take a slot of every limiter now, or none of them."""
    for i, lim in enumerate(limiters):
        if not lim.try_acquire():
            for held in limiters[:i]:
                held.release()
            return False
    return True


async def _take_slots(limiters: tuple[Limiter, ...]) -> None:
    """Take a slot of every limiter, in order, waiting as needed."""
    held = 0
    try:
        for lim in limiters:
            if not lim.try_acquire():
                await lim.acquire()
            held += 1
    except BaseException:
        for lim in limiters[:held]:
            lim.release()
        raise


async def _admit(
    buckets: tuple[TokenBucket, ...],
    limiters: tuple[Limiter, ...],
    on_wait: Callable[[float], None],
) -> None:
    """Take a token of every bucket and a slot of every limiter.

    Tokens are waited for first, holding no slot; they are taken only once
    the slots are held too, at the instant the call starts. When the slots
    are busy the call gives up its place at the buckets, waits for the slots,
    then waits for tokens again while holding them (only when both limits are
    saturated at once).
    """
    if not buckets:
        await _take_slots(limiters)
        return
    await pace(buckets, on_wait)
    if _try_slots(limiters):
        commit(buckets)
        return
    release_gates(buckets)
    await _take_slots(limiters)
    try:
        await pace(buckets, on_wait)
    except BaseException:
        for lim in limiters:
            lim.release()
        raise
    commit(buckets)


def _nothing() -> None:
    pass


def _release_all(limiters: tuple[Limiter, ...]) -> Callable[[], None]:
    def release() -> None:
        for lim in limiters:
            lim.release()

    return release


@attrs.frozen(eq=False)
class DirectCall:
    """What a map worker needs to call a plain tool itself, with no pipeline.

    Only for an async tool with no retry, timeout, rate limit, own limit or
    middleware: then the pipeline is just "hold an engine slot, call, count",
    which a ``MapReduce`` worker can do inline, keeping its slot from one
    element to the next while nobody else waits for one (see
    :meth:`plait._runtime._interpret._MapRun.worker`).
    """

    fn: Callable[..., Awaitable[Any]]
    limiter: Limiter
    counters: ToolCounters
    bus: EventBus
    name: str

    def failed(self, path: str, error: Exception) -> None:
        """Count a failed call and report it."""
        _report_failure(self.counters, self.bus, self.name, path, 1, error)


def _report_failure(
    counters: ToolCounters,
    bus: EventBus,
    tool: str,
    path: str,
    attempt: int,
    error: Exception,
) -> None:
    """Count a call that failed after its last attempt, and report it."""
    counters.failures += 1
    bus.emit_new(EventKind.CALL_FAILED, path, tool=tool, attempt=attempt, error=error)


def direct_call(
    rt: ToolRuntime,
    run: RunContext,
    *,
    timeout: float | None,
    retry: Retry | None,
) -> DirectCall | None:
    """A :class:`DirectCall` when the tool's pipeline would be trivial, else None."""
    tool = rt.tool
    if (
        not tool.is_async
        or timeout is not None
        or retry is not None
        or run.middleware
        or rt.limiter is not None
        or rt.bucket is not None
        or run.engine_bucket is not None
    ):
        return None
    return DirectCall(
        tool.fn, run.engine_limiter, run.counters_for(tool.name), run.events, tool.name
    )


def build_invoker(
    rt: ToolRuntime,
    run: RunContext,
    *,
    timeout: float | None,
    retry: Retry | None,
    step_errors: bool = False,
) -> Invoker:
    """Build the call pipeline of ``rt.tool`` for one run.

    Args:
        timeout: per-attempt timeout (the call's, else the tool's).
        retry: retry policy (the call's, else the tool's).
        step_errors: raise a failed call's error as :class:`StepFailed` at
            the call's path, as a ``Call`` step does, so that the step needs
            no coroutine of its own around the call.
    """
    tool = rt.tool
    fn = tool.fn
    name = tool.name
    bus = run.events
    counters = run.counters_for(name)
    latency = counters.latency
    limiters = tuple(x for x in (rt.limiter, run.engine_limiter) if x is not None)
    buckets = tuple(x for x in (rt.bucket, run.engine_bucket) if x is not None)
    thread_limiter = run.thread_limiter

    def note(
        kind: EventKind,
        template: str,
        loc: tuple[int, ...],
        number: int,
        **fields: Any,
    ) -> None:
        bus.emit_new(kind, fill(template, loc), tool=name, attempt=number, **fields)

    def announce(
        template: str,
        loc: tuple[int, ...],
        number: int,
        held: tuple[Limiter, ...],
    ) -> None:
        """Emit ``call.started``; give the ``held`` slots back if that raises.

        Only a BaseException gets out of the bus (a subscriber's
        KeyboardInterrupt, say): the slots are not the call's to release
        yet, so they are released here.
        """
        try:
            note(EventKind.CALL_STARTED, template, loc, number)
        except BaseException:
            for lim in held:
                lim.release()
            raise

    release = _release_all(limiters)
    sync = not tool.is_async
    # Whether the thread gives the call's slots back (else the task does).
    thread_releases = sync and run.slots_follow_threads
    only = limiters[0] if len(limiters) == 1 else None
    # With neither retry nor middleware an attempt is the whole call and does
    # the call's bookkeeping itself: one coroutine per call, not three.
    single = retry is None and not run.middleware

    def on_abandon(template: str, loc: tuple[int, ...], number: int) -> None:
        run.abandoned_threads += 1
        note(EventKind.THREAD_ABANDONED, template, loc, number)

    # -- one attempt: admission, timeout, call -------------------------------
    async def attempt(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
        number: int = 1,
        extra_buckets: tuple[TokenBucket, ...] = (),
        extra_limiters: tuple[Limiter, ...] = (),
    ) -> Any:
        if single:
            counters.calls += 1
        try:
            lims = limiters
            bks = buckets
            if extra_limiters or extra_buckets:
                # The same limiter or bucket twice (one middleware listed
                # twice, a key equal to a tool's own) is taken once.
                lims = tuple(dict.fromkeys(lims + extra_limiters))
                bks = tuple(dict.fromkeys(bks + extra_buckets))
            if bks:
                rate_limited = False

                def on_wait(seconds: float) -> None:
                    nonlocal rate_limited
                    if rate_limited:
                        return
                    rate_limited = True
                    counters.rate_limited += 1
                    note(
                        EventKind.CALL_RATE_LIMITED,
                        template,
                        loc,
                        number,
                        duration=seconds,
                    )

                await _admit(bks, lims, on_wait)
            elif only is not None and lims is limiters:
                if not only.try_acquire():
                    await only.acquire()
            else:
                await _take_slots(lims)
            if bus.active:
                announce(template, loc, number, lims)
            started = _perf()
            try:
                work = (
                    run_in_thread(
                        fn,
                        args,
                        kwargs,
                        (release if lims is limiters else _release_all(lims))
                        if thread_releases
                        else _nothing,
                        thread_limiter,
                        on_abandon,
                        (template, loc, number),
                    )
                    if sync
                    else fn(*args, **kwargs)
                )
                if timeout is None:
                    result = await work
                else:
                    with anyio.CancelScope(
                        deadline=anyio.current_time() + timeout
                    ) as scope:
                        result = await work
                    if scope.cancelled_caught:
                        counters.timeouts += 1
                        error = ToolTimeout(name, timeout)
                        if bus.active:
                            note(
                                EventKind.CALL_TIMED_OUT,
                                template,
                                loc,
                                number,
                                duration=_perf() - started,
                                error=error,
                            )
                        raise error
            finally:
                if not thread_releases:
                    if only is not None and lims is limiters:
                        only.release()
                    else:
                        for lim in lims:
                            lim.release()
        except Exception as error:
            if not single:
                raise
            failed(template, loc, number, error)
            if step_errors:
                raise StepFailed(fill(template, loc), error) from error
            raise
        elapsed = _perf() - started
        latency.add(elapsed)
        if bus.active:
            note(
                EventKind.CALL_FINISHED,
                template,
                loc,
                number,
                duration=elapsed,
            )
        return result

    # -- middleware, per attempt ---------------------------------------------
    if run.middleware:

        async def core(c: ToolCall) -> Any:
            if c.tool is not tool:
                raise ConfigError(
                    f"middleware replaced ToolCall.tool ({tool.name!r} with "
                    f"{c.tool.name!r}); a middleware may change the arguments, "
                    "not the tool"
                )
            return await attempt(
                c.args,
                c.kwargs,
                _literal(c.path),
                (),
                c.attempt,
                c.buckets,
                c.limiters,
            )

        handler = chain(run.middleware, core)

        async def one_try(
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            template: str,
            loc: tuple[int, ...],
            number: int,
        ) -> Any:
            return await handler(
                ToolCall(tool, args, kwargs, fill(template, loc), number)
            )

    else:
        one_try = attempt

    # -- retry ---------------------------------------------------------------
    def failed(
        template: str, loc: tuple[int, ...], number: int, error: Exception
    ) -> None:
        _report_failure(counters, bus, name, fill(template, loc), number, error)

    if only is not None and direct_call(rt, run, timeout=timeout, retry=retry):
        # The common case (an async tool under the engine's limit alone, no
        # retry, timeout, rate limit or middleware) gets an attempt with every
        # other layer left out; a map worker may even call it directly.
        lim = only
        add_latency = latency.add

        async def plain(
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            template: str,
            loc: tuple[int, ...],
        ) -> Any:
            counters.calls += 1
            if not lim.try_acquire():
                await lim.acquire()
            if bus.active:
                announce(template, loc, 1, limiters)
            started = _perf()
            try:
                result = await fn(*args, **kwargs)
            except Exception as error:
                failed(template, loc, 1, error)
                if step_errors:
                    raise StepFailed(fill(template, loc), error) from error
                raise
            finally:
                lim.release()
            elapsed = _perf() - started
            add_latency(elapsed)
            if bus.active:
                note(
                    EventKind.CALL_FINISHED,
                    template,
                    loc,
                    1,
                    duration=elapsed,
                )
            return result

        return plain

    if single:
        return attempt

    if retry is None:

        async def invoke(
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            template: str,
            loc: tuple[int, ...],
        ) -> Any:
            counters.calls += 1
            try:
                return await one_try(args, kwargs, template, loc, 1)
            except Exception as error:
                failed(template, loc, 1, error)
                raise

        return _raising_step_failed(invoke) if step_errors else invoke

    policy = retry

    async def invoke_with_retry(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
    ) -> Any:
        counters.calls += 1
        number = 1
        while True:
            try:
                return await one_try(args, kwargs, template, loc, number)
            except Exception as error:
                delay = next_delay(policy, number, error)
                if delay is None:
                    failed(template, loc, number, error)
                    raise
                counters.retries += 1
                if bus.active:
                    note(
                        EventKind.CALL_RETRIED,
                        template,
                        loc,
                        number,
                        error=error,
                        delay=delay,
                    )
            await anyio.sleep(delay)
            number += 1

    if step_errors:
        return _raising_step_failed(invoke_with_retry)
    return invoke_with_retry


def _raising_step_failed(invoker: Invoker) -> Invoker:
    """``invoker``, raising a failed call's error as :class:`StepFailed`."""

    async def invoke(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
    ) -> Any:
        try:
            return await invoker(args, kwargs, template, loc)
        except Exception as error:
            raise StepFailed(fill(template, loc), error) from error

    return invoke


def _literal(path: str) -> str:
    """A finished path as a template with no slots."""
    return path.replace("{", "{{").replace("}", "}}")
