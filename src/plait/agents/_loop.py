"""AgentLoop: bounded, retried, timed agent invocations with latency statistics.

The loop is for code that already runs in an event loop (any backend) and
calls agents one by one, in batches, as they complete, or as streams. Every
invocation goes through plait's call pipeline, the one workflow calls take,
under the loop's own limit and threads:

* at most ``max_concurrency`` attempts run at once; the slot is taken per
  attempt and given back while a retry backs off;
* ``timeout`` bounds the whole invocation, every attempt and backoff
  included, from the moment its first attempt starts (``attempt_timeout``
  bounds each attempt on its own);
* ``attempts`` in a result is the real number of tries;
* blocking callables run on worker threads, and a thread that outlives its
  timeout keeps its slot until it returns.

What the result tells of the attempts (how many, when the first started,
how long the last took) the loop learns from the pipeline's events, on an
event bus of its own, each invocation under a path of its own.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, Literal

import anyio
import attrs
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._calls._context import RunContext
from .._concurrency._limits import Limiter
from .._concurrency._wakeup import running_async_library
from .._model._errors import ConfigError, ToolTimeout
from .._model._events import Event, EventBus, EventKind
from .._model._paths import index
from .._model._retry import Retry
from .._model._stats import LatencyHistogram
from .._model._tools import is_async_callable
from .._model._validate import (
    BOOL,
    COUNT,
    check_seconds,
    count,
    instance_of,
    optional_number,
)
from ._adapt import entry_point
from ._pipelines import AgentPipelines

__all__ = ["AgentLoop", "AsCompleted", "InvocationResult", "percentile"]

_perf = time.perf_counter
Task = tuple[Any, ...]

_STARTED = EventKind.CALL_STARTED
#: The events of an attempt that failed, retried or not. One that returns
#: ends when the invocation does: no event is needed (nor built) for it.
_FAILED = (EventKind.CALL_RETRIED, EventKind.CALL_FAILED)


@attrs.frozen
class InvocationResult:
    """The outcome of one :meth:`AgentLoop.run_one`.

    Attributes:
        agent_id: the id given to :meth:`AgentLoop.run_one`.
        success: whether an attempt returned.
        output: what the successful attempt returned (None on failure).
        error: the exception of the last attempt, or a
            :class:`plait.ToolTimeout` when the invocation's timeout expired;
            None on success.
        latency_ms: duration of the last attempt (the successful one on
            success), milliseconds.
        attempts: how many attempts started.
        total_ms: from the start of the first attempt to the result,
            backoff and waits for a slot between attempts included.
    """

    agent_id: str
    success: bool
    output: Any = None
    error: BaseException | None = None
    latency_ms: float = 0.0
    attempts: int = 0
    total_ms: float = 0.0


def percentile(ordered: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted ``ordered``, interpolated.

    A helper for latencies you keep yourself: linear interpolation between
    the two nearest ranks (the usual definition, numpy's default), so the
    median of ``[1, 2, 3, 4]`` is 2.5. :meth:`AgentLoop.latency_stats` does
    not keep every latency; it reads the engine's bounded histogram.
    """
    if not ordered:
        raise ValueError("percentile of no data")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be between 0 and 100, got {q!r}")
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class _Recent:
    """Latency statistics of the latest latencies, in bounded memory.

    Two of the engine's :class:`LatencyHistogram` take every latency, each
    started afresh once it holds ``size`` of them, half a cycle apart; the
    fuller one is read. So the statistics cover at most the latest ``size``
    latencies and, once that many were recorded, at least the latest half.
    """

    __slots__ = ("_older", "_size", "_younger")

    def __init__(self, size: int) -> None:
        self._size = size
        self._older = LatencyHistogram()
        self._younger = LatencyHistogram()

    def add(self, seconds: float) -> None:
        older = self._older
        if older.count == self._size:
            older = self._older = LatencyHistogram()
        older.add(seconds)
        if older.count == self._size // 2 + 1:
            self._younger = LatencyHistogram()
        self._younger.add(seconds)

    def stats(self) -> dict[str, float]:
        hist = max(self._older, self._younger, key=lambda h: h.count)
        if not hist.count:
            return {
                "p50_ms": 0.0,
                "p95_ms": 0.0,
                "p99_ms": 0.0,
                "mean_ms": 0.0,
                "count": 0,
            }
        return {
            "p50_ms": _ms(hist.percentile(50)),
            "p95_ms": _ms(hist.percentile(95)),
            "p99_ms": _ms(hist.percentile(99)),
            "mean_ms": _ms(hist.mean),
            "count": hist.count,
        }


def _ms(seconds: float | None) -> float:
    assert seconds is not None  # the histogram is not empty
    return seconds * 1000.0


class _Invocation:
    """What the pipeline's events told of one invocation so far."""

    __slots__ = ("attempts", "began", "ended", "first", "running", "scope", "timeout")

    def __init__(self, scope: anyio.CancelScope, timeout: float | None) -> None:
        self.scope = scope
        self.timeout = timeout
        self.attempts = 0
        self.first = self.began = self.ended = 0.0
        self.running = False

    def attempt_started(self, number: int) -> None:
        self.began = now = _perf()
        self.attempts = number
        self.running = True
        if number == 1:
            self.first = now
            if self.timeout is not None:
                # The invocation's time starts with its first attempt, not
                # with its wait for a slot.
                self.scope.deadline = anyio.current_time() + self.timeout

    def attempt_failed(self) -> None:
        self.ended = _perf()
        self.running = False

    def latency(self, now: float) -> float:
        """Seconds of the last attempt; one that returned or was cut short ends now."""
        if not self.attempts:
            return 0.0
        return (now if self.running else self.ended) - self.began


_RETRY = instance_of(Retry).or_none()
_ATTEMPT_TIMEOUT = optional_number()


def _new_retry(inst: AgentLoop, attr: attrs.Attribute[Any], value: Any) -> Any:
    """A new retry policy: the pipelines are built again."""
    _RETRY(inst, attr, value)
    inst._pipelines = inst._pipelines_with(value, inst.attempt_timeout)
    return value


def _new_attempt_timeout(
    inst: AgentLoop, attr: attrs.Attribute[Any], value: Any
) -> Any:
    """A new attempt timeout: the pipelines are built again."""
    _ATTEMPT_TIMEOUT(inst, attr, value)
    inst._pipelines = inst._pipelines_with(inst.retry, value)
    return value


@attrs.define(eq=False, repr=False)
class AgentLoop:
    """Runs agent invocations with a concurrency limit, timeouts and retries.

    Args:
        max_concurrency: attempts in flight at once (changeable later).
        timeout: seconds for a whole invocation, retries included, or None.
        retry: a :class:`plait.Retry`; ``None`` for one attempt. By default
            three attempts, retrying only transient errors (``OSError``,
            ``TimeoutError``, :class:`plait.RateLimited`).
        collect_metrics: record latencies for :meth:`latency_stats`.
        attempt_timeout: seconds per attempt (raising
            :class:`plait.ToolTimeout`, which the default retry retries), or
            None.
        max_samples: how many of the latest latencies (of each kind)
            :meth:`latency_stats` covers at most.

    Works on asyncio, uvloop and Trio; one loop may be shared by tasks of
    several event loops and threads.
    """

    _max_concurrency: int = attrs.field(
        default=10, validator=COUNT, alias="max_concurrency"
    )
    timeout: float | None = attrs.field(default=300.0, validator=optional_number())
    retry: Retry | None = attrs.field(
        factory=Retry, validator=_RETRY, on_setattr=_new_retry
    )
    collect_metrics: bool = attrs.field(default=True, validator=BOOL)
    attempt_timeout: float | None = attrs.field(
        default=None,
        kw_only=True,
        validator=_ATTEMPT_TIMEOUT,
        on_setattr=_new_attempt_timeout,
    )
    max_samples: int = attrs.field(
        default=100_000,
        kw_only=True,
        validator=count(minimum=1),
    )
    _limiter: Limiter = attrs.field(init=False)
    _run: RunContext = attrs.field(init=False)
    _pipelines: AgentPipelines = attrs.field(init=False)
    # Invocations running now, by the path their pipeline's events carry.
    _live: dict[str, _Invocation] = attrs.field(init=False, factory=dict)
    _paths: itertools.count[int] = attrs.field(init=False, factory=itertools.count)
    _attempt_ms: _Recent = attrs.field(init=False)
    _total_ms: _Recent = attrs.field(init=False)

    @_limiter.default
    def _make_limiter(self) -> Limiter:
        # Defaults are built before validators run: check first, so that the
        # error names the field rather than the limiter.
        COUNT.check_field(self, "max_concurrency", self._max_concurrency)
        return Limiter(self._max_concurrency, "AgentLoop")

    @_run.default
    def _make_run(self) -> RunContext:
        events = EventBus()
        events.subscribe(self._follow, kinds=(_STARTED, *_FAILED))
        return RunContext(
            events=events,
            engine_limiter=self._limiter,
            engine_bucket=None,
            middleware=(),
            # Threads are bounded by the loop's slots: each attempt holds one,
            # and a blocking attempt past its timeout keeps it until its
            # thread returns.
            thread_limiter=Limiter(None, "AgentLoop threads"),
            slots_follow_threads=True,
        )

    @_pipelines.default
    def _make_pipelines(self) -> AgentPipelines:
        return self._pipelines_with(self.retry, self.attempt_timeout)

    def _pipelines_with(
        self, retry: Retry | None, attempt_timeout: float | None
    ) -> AgentPipelines:
        return AgentPipelines(self._run, timeout=attempt_timeout, retry=retry)

    @_attempt_ms.default
    def _make_attempt_ms(self) -> _Recent:
        return _Recent(self.max_samples)

    @_total_ms.default
    def _make_total_ms(self) -> _Recent:
        return _Recent(self.max_samples)

    def __repr__(self) -> str:
        return (
            f"AgentLoop(max_concurrency={self._max_concurrency}, "
            f"timeout={self.timeout!r}, retry={self.retry!r}, "
            f"in_flight={self.in_flight})"
        )

    @property
    def max_concurrency(self) -> int:
        """Attempts in flight at once; may be changed while the loop runs."""
        return self._max_concurrency

    @max_concurrency.setter
    def max_concurrency(self, value: int) -> None:
        COUNT.check_field(self, "max_concurrency", value)
        self._limiter.total = value
        self._max_concurrency = value

    @property
    def in_flight(self) -> int:
        """Attempts running now (slots held, by threads that timed out too)."""
        return self._limiter.borrowed

    @property
    def abandoned_threads(self) -> int:
        """Blocking attempts whose thread still ran when the loop stopped waiting."""
        return self._run.abandoned_threads

    # -- one invocation ------------------------------------------------------
    async def run_one(
        self, agent_id: str, fn: Any, /, *args: Any, **kwargs: Any
    ) -> InvocationResult:
        """Run ``fn(*args, **kwargs)`` with the loop's limit, timeout and retry.

        ``fn`` is an async or sync callable, or an agent (its ``arun`` or
        ``run`` method is called). Sync ones run on a worker thread. Errors
        do not propagate: they are in the result. Cancellation does.
        """
        entry = entry_point(fn, f"fn of {agent_id!r}")
        invoke = self._pipelines.get(agent_id, is_async_callable(entry))
        path = str(next(self._paths))
        output: Any = None
        error: BaseException | None = None
        started = _perf()
        with anyio.CancelScope() as scope:
            invocation = self._live[path] = _Invocation(scope, self.timeout)
            try:
                output = await invoke((entry, *args), kwargs, path, ())
            except Exception as exc:
                error = exc
            finally:
                del self._live[path]
        if scope.cancelled_caught:
            # Only the invocation's timeout cancels this scope.
            assert invocation.timeout is not None
            error = ToolTimeout(agent_id, invocation.timeout)
        now = _perf()
        latency = invocation.latency(now)
        total = now - (invocation.first if invocation.attempts else started)
        if self.collect_metrics:
            if error is None:
                self._attempt_ms.add(latency)
            self._total_ms.add(total)
        return InvocationResult(
            agent_id,
            error is None,
            output if error is None else None,
            error,
            latency * 1000.0,
            invocation.attempts,
            total * 1000.0,
        )

    def _follow(self, event: Event) -> None:
        """Note the start of an attempt, or its failure, in its invocation."""
        invocation = self._live.get(event.path)
        if invocation is None:
            return
        if event.kind is _STARTED:
            assert event.attempt is not None
            invocation.attempt_started(event.attempt)
        else:
            invocation.attempt_failed()

    # -- many invocations ----------------------------------------------------
    @staticmethod
    def _check_tasks(
        tasks: Iterable[Task],
    ) -> list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]]:
        if isinstance(tasks, str | bytes) or not isinstance(tasks, Iterable):
            raise ConfigError(
                f"tasks must be a list of (agent_id, fn, args, kwargs) tuples, got {tasks!r}"
            )
        checked = []
        for i, item in enumerate(tasks):
            where = index("tasks", i)
            if not isinstance(item, tuple | list) or not 2 <= len(item) <= 4:
                raise ConfigError(
                    f"{where} must be an (agent_id, fn, args, kwargs) tuple "
                    f"(args and kwargs may be left out), got {item!r}"
                )
            agent_id, fn, *rest = item
            args = rest[0] if rest else ()
            kwargs = rest[1] if len(rest) > 1 else {}
            if not isinstance(args, tuple | list):
                raise ConfigError(f"{where} args must be a tuple, got {args!r}")
            if not isinstance(kwargs, dict):
                raise ConfigError(f"{where} kwargs must be a dict, got {kwargs!r}")
            entry_point(fn, f"{where} fn")
            checked.append((str(agent_id), fn, tuple(args), kwargs))
        return checked

    async def run_all(self, tasks: Iterable[Task]) -> list[InvocationResult]:
        """Run every ``(agent_id, fn, args, kwargs)`` at once; results in order."""
        checked = self._check_tasks(tasks)
        results: list[Any] = [None] * len(checked)

        async def one(i: int) -> None:
            agent_id, fn, args, kwargs = checked[i]
            results[i] = await self.run_one(agent_id, fn, *args, **kwargs)

        async with anyio.create_task_group() as tg:
            for i in range(len(checked)):
                tg.start_soon(one, i)
        return results

    def as_completed(self, tasks: Iterable[Task]) -> AsCompleted:
        """Run the tasks at once; their results in the order they finish.

        Use it as ``async with loop.as_completed(tasks) as results: async for
        result in results: ...``: the invocations start when the block is
        entered, belong to a task group of the caller's task, and leaving
        the block early cancels the ones still running. The tasks are
        checked at once, before anything runs.
        """
        return AsCompleted(self, self._check_tasks(tasks))

    # -- streams ---------------------------------------------------------------
    async def stream(
        self,
        agent_id: str,
        stream_fn: Callable[..., Any],
        /,
        *args: Any,
        chunk_timeout: float | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[Any, None]:
        """Relay the chunks of ``stream_fn(*args, **kwargs)``, an async iterator.

        The stream holds one slot from its first chunk request to its end.
        ``timeout`` bounds the whole stream and ``chunk_timeout`` the wait
        for each chunk; either raises :class:`plait.ToolTimeout`. Streams are
        never retried (chunks already relayed cannot be taken back).
        Leaving the ``async for`` early closes ``stream_fn``'s iterator and
        frees the slot (at once under ``contextlib.aclosing``, else when
        the generator is collected, on the next turn of the loop).
        """
        chunk_timeout = check_seconds(chunk_timeout, "chunk_timeout")
        limiter = self._limiter
        await limiter.acquire()
        source: Any = None
        try:
            started = _perf()
            now = anyio.current_time()
            end = math.inf if self.timeout is None else now + self.timeout
            source = stream_fn(*args, **kwargs)
            if not isinstance(source, AsyncIterator):
                if not hasattr(source, "__aiter__"):
                    raise ConfigError(
                        f"stream_fn of {agent_id!r} must return an async iterator "
                        f"(an async generator, say), got {source!r}"
                    )
                source = source.__aiter__()
            while True:
                gap = (
                    math.inf
                    if chunk_timeout is None
                    else anyio.current_time() + chunk_timeout
                )
                with anyio.CancelScope(deadline=min(end, gap)) as scope:
                    try:
                        chunk = await source.__anext__()
                    except StopAsyncIteration:
                        break
                if scope.cancelled_caught:
                    if end <= gap:
                        assert self.timeout is not None
                        raise ToolTimeout(agent_id, self.timeout)
                    assert chunk_timeout is not None
                    raise ToolTimeout(agent_id, chunk_timeout)
                # No cancel scope is open here: the consumer's code runs
                # between chunks, and may close this generator from any task.
                yield chunk
            if self.collect_metrics:
                seconds = _perf() - started
                self._attempt_ms.add(seconds)
                self._total_ms.add(seconds)
        finally:
            # The slot first: nothing below may keep it held.
            limiter.release()
            aclose = getattr(source, "aclose", None)
            # Closed by a finalizer after its event loop ended, the source is
            # left to its own finalizer: nothing can be awaited here then.
            if aclose is not None and running_async_library() is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

    # -- metrics ---------------------------------------------------------------
    def latency_stats(
        self, which: Literal["attempt", "total"] = "attempt"
    ) -> dict[str, float]:
        """Latency percentiles: ``p50_ms``, ``p95_ms``, ``p99_ms``, ``mean_ms``, ``count``.

        Args:
            which: ``"attempt"``: the successful attempt of each successful
                invocation (and each finished stream); ``"total"``: every
                invocation, failed ones included, from its first attempt to
                its result.

        The latencies go into the same log-scale histogram as the engine's
        per-tool statistics, so memory stays bounded however long the loop
        lives: a percentile is within about 1% of the recorded latency at
        rank ``q / 100 * (count - 1)`` (rounded down), and ``mean_ms`` is
        exact. They cover at most the latest ``max_samples`` latencies (and
        at least the latest half of that once that many were recorded).
        All zero when nothing was recorded.
        """
        if which == "attempt":
            return self._attempt_ms.stats()
        if which == "total":
            return self._total_ms.stats()
        raise ConfigError(f'which must be "attempt" or "total", got {which!r}')

    def reset_metrics(self) -> None:
        """Forget every recorded latency."""
        self._attempt_ms = _Recent(self.max_samples)
        self._total_ms = _Recent(self.max_samples)


class AsCompleted:
    """The results of :meth:`AgentLoop.as_completed`, in the order they finish.

    ``async with loop.as_completed(tasks) as results: async for r in
    results: ...`` hands over each result as soon as it finishes. The
    invocations start when the block is entered and belong to a task group
    of the caller's task; leaving the block (after a ``break``, say, or on
    an error or a cancellation) cancels the ones still running and waits
    for them to end.

    Iterating it without ``async with`` raises :class:`RuntimeError`:
    nothing could own invocations that go on running while the loop body
    runs (a task group held open across a ``yield`` corrupts the caller's
    cancel scopes when the loop is left early).
    """

    __slots__ = ("_left", "_loop", "_receive", "_send", "_state", "_tasks", "_tg")

    def __init__(
        self,
        loop: AgentLoop,
        tasks: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]],
    ) -> None:
        self._loop = loop
        self._tasks = tasks
        self._left = len(tasks)
        # "new", then "open" (inside async with), then "closed".
        self._state = "new"
        self._tg: TaskGroup | None = None
        self._send: MemoryObjectSendStream[InvocationResult] | None = None
        self._receive: MemoryObjectReceiveStream[InvocationResult] | None = None

    async def __aenter__(self) -> AsCompleted:
        if self._state != "new":
            raise RuntimeError("as_completed() results can be entered only once")
        send, receive = anyio.create_memory_object_stream[InvocationResult](math.inf)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg, self._send, self._receive = tg, send, receive
        self._state = "open"
        run_one = self._loop.run_one

        async def one(
            agent_id: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> None:
            send.send_nowait(await run_one(agent_id, fn, *args, **kwargs))

        for agent_id, fn, args, kwargs in self._tasks:
            tg.start_soon(one, agent_id, fn, args, kwargs)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        self._state = "closed"
        if tg is None:
            return None
        self._tg = None
        tg.cancel_scope.cancel()
        try:
            # The invocations never raise; an error of the block's own must
            # propagate as it is, not wrapped in an exception group.
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                return await tg.__aexit__(exc_type, exc, tb)
            await tg.__aexit__(None, None, None)
        finally:
            assert self._send is not None
            assert self._receive is not None
            self._send.close()
            self._receive.close()
        return None

    async def aclose(self) -> None:
        """Cancel the invocations still running and wait for them to end."""
        await self.__aexit__(None, None, None)

    def __aiter__(self) -> AsCompleted:
        if self._state == "new":
            raise _not_entered()
        return self

    async def __anext__(self) -> InvocationResult:
        if self._state == "new":
            raise _not_entered()
        if self._state != "open" or self._left == 0:
            raise StopAsyncIteration
        assert self._receive is not None
        result = await self._receive.receive()
        self._left -= 1
        return result


def _not_entered() -> RuntimeError:
    return RuntimeError(
        "AgentLoop.as_completed() must be entered before it is iterated, so "
        "that a task group of your task owns the invocations: write "
        "`async with loop.as_completed(tasks) as results: async for result "
        "in results: ...`"
    )
