"""AgentLoop: bounded, retried, timed agent invocations with latency statistics.

The loop is for code that already runs in an event loop (any backend) and
calls agents one by one, in batches, as they complete, or as streams:

* at most ``max_concurrency`` attempts run at once; the slot is taken per
  attempt and given back while a retry backs off;
* ``timeout`` bounds the whole invocation, every attempt and backoff
  included, from the moment its first attempt starts (``attempt_timeout``
  bounds each attempt on its own);
* ``attempts`` in a result is the real number of tries;
* blocking callables run on worker threads, and a thread that outlives its
  timeout keeps its slot until it returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from types import TracebackType
from typing import Any, Literal

import anyio
import attrs
import sniffio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._calls._retry import next_delay
from .._concurrency._bridge import run_in_thread
from .._concurrency._limits import Limiter
from .._concurrency._wakeup import running_async_library
from .._model._errors import ConfigError, ToolTimeout
from .._model._paths import index
from .._model._retry import Retry
from .._model._tools import is_async_callable
from .._model._validate import check_seconds, count, fail, optional_number
from ._adapt import entry_point

__all__ = ["AgentLoop", "InvocationResult", "percentile"]

_perf = time.perf_counter
Task = tuple[Any, ...]


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

    Linear interpolation between the two nearest ranks (the usual
    definition, numpy's default): the median of ``[1, 2, 3, 4]`` is 2.5.
    """
    if not ordered:
        raise ValueError("percentile of no data")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be between 0 and 100, got {q!r}")
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _stats(samples: Iterable[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "count": 0}
    return {
        "p50_ms": percentile(ordered, 50),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        "mean_ms": math.fsum(ordered) / len(ordered),
        "count": len(ordered),
    }


def _check_retry(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, Retry):
        fail(inst, attr.name, "a plait.Retry or None", value)


def _check_max_concurrency(inst: Any, attr: object, value: Any) -> None:
    # The field is private behind a property: name the public one.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        fail(inst, "max_concurrency", "an int >= 1", value)


def _check_bool(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        fail(inst, attr.name, "True or False", value)


@attrs.define(eq=False, repr=False)
class AgentLoop:
    """Runs agent invocations with a concurrency limit, timeouts and retries.

    Args:
        max_concurrency: attempts in flight at once (changeable later).
        timeout: seconds for a whole invocation, retries included, or None.
        retry: a :class:`plait.Retry`; ``None`` for one attempt. By default
            three attempts, retrying only transient errors (``OSError``,
            ``TimeoutError``).
        collect_metrics: record latencies for :meth:`latency_stats`.
        attempt_timeout: seconds per attempt (raising
            :class:`plait.ToolTimeout`, which the default retry retries), or
            None.
        max_samples: how many of the latest latencies
            :meth:`latency_stats` keeps (of each kind), so that a loop that
            lives as long as its service has bounded memory.

    Works on asyncio, uvloop and Trio; one loop may be shared by tasks of
    several event loops and threads.
    """

    _max_concurrency: int = attrs.field(
        default=10, validator=_check_max_concurrency, alias="max_concurrency"
    )
    timeout: float | None = attrs.field(default=300.0, validator=optional_number())
    retry: Retry | None = attrs.field(factory=Retry, validator=_check_retry)
    collect_metrics: bool = attrs.field(default=True, validator=_check_bool)
    attempt_timeout: float | None = attrs.field(
        default=None, kw_only=True, validator=optional_number()
    )
    max_samples: int = attrs.field(
        default=100_000, kw_only=True, validator=count(minimum=1)
    )
    _limiter: Limiter = attrs.field(init=False)
    # Threads are bounded by the loop's own slots: each attempt holds one.
    _threads: Limiter = attrs.field(
        init=False, factory=lambda: Limiter(None, "AgentLoop threads")
    )
    _attempt_ms: deque[float] = attrs.field(init=False)
    _total_ms: deque[float] = attrs.field(init=False)
    abandoned_threads: int = attrs.field(init=False, default=0)

    @_attempt_ms.default
    def _make_attempt_ms(self) -> deque[float]:
        return deque(maxlen=self.max_samples)

    @_total_ms.default
    def _make_total_ms(self) -> deque[float]:
        return deque(maxlen=self.max_samples)

    @_limiter.default
    def _make_limiter(self) -> Limiter:
        # Defaults are built before validators run: check first, so that the
        # error names the field rather than the limiter.
        _check_max_concurrency(self, None, self._max_concurrency)
        return Limiter(self._max_concurrency, "AgentLoop")

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
        _check_max_concurrency(self, None, value)
        self._limiter.total = value
        self._max_concurrency = value

    @property
    def in_flight(self) -> int:
        """Attempts running now (slots held, by threads that timed out too)."""
        return self._limiter.borrowed

    # -- one invocation ------------------------------------------------------
    async def run_one(
        self, agent_id: str, fn: Any, /, *args: Any, **kwargs: Any
    ) -> InvocationResult:
        """Run ``fn(*args, **kwargs)`` with the loop's limit, timeout and retry.

        ``fn`` is an async or sync callable, or an agent (its ``arun`` or
        ``run`` method is called). Sync ones run on a worker thread. Errors
        do not propagate: they are in the result. Cancellation does.
        """
        call = entry_point(fn, f"fn of {agent_id!r}")
        is_async = is_async_callable(call)
        limiter = self._limiter
        started = first = _perf()
        attempts = 0
        error: BaseException | None = None
        attempt_ms = 0.0
        output: Any = None
        success = False
        # Whether the timeout, if it expires, cuts an attempt (not a backoff).
        in_attempt = False
        with anyio.CancelScope() as scope:
            while True:
                await limiter.acquire()
                if attempts == 0:
                    first = _perf()
                    if self.timeout is not None:
                        scope.deadline = anyio.current_time() + self.timeout
                attempts += 1
                began = _perf()
                in_attempt = True
                try:
                    output = await self._attempt(call, is_async, args, kwargs, agent_id)
                except Exception as exc:
                    in_attempt = False
                    attempt_ms = (_perf() - began) * 1000.0
                    error = exc
                    delay = (
                        None
                        if self.retry is None
                        else next_delay(self.retry, attempts, exc)
                    )
                    if delay is None:
                        break
                    await anyio.sleep(delay)
                    continue
                attempt_ms = (_perf() - began) * 1000.0
                success = True
                error = None
                break
        if scope.cancelled_caught:
            assert self.timeout is not None  # nothing else cancels this scope
            success = False
            output = None
            if in_attempt:
                attempt_ms = (_perf() - began) * 1000.0
            error = ToolTimeout(agent_id, self.timeout)
        total_ms = (_perf() - (first if attempts else started)) * 1000.0
        if self.collect_metrics:
            if success:
                self._attempt_ms.append(attempt_ms)
            self._total_ms.append(total_ms)
        return InvocationResult(
            agent_id, success, output, error, attempt_ms, attempts, total_ms
        )

    async def _attempt(
        self,
        call: Callable[..., Any],
        is_async: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        agent_id: str,
    ) -> Any:
        """One attempt, holding the slot already taken; gives it back."""
        limiter = self._limiter
        deadline = (
            math.inf
            if self.attempt_timeout is None
            else anyio.current_time() + self.attempt_timeout
        )
        with anyio.CancelScope(deadline=deadline) as scope:
            if is_async:
                try:
                    result = await call(*args, **kwargs)
                finally:
                    limiter.release()
            else:
                result = await run_in_thread(
                    call,
                    args,
                    kwargs,
                    limiter.release,
                    self._threads,
                    self._abandoned,
                )
        if scope.cancelled_caught:
            assert self.attempt_timeout is not None
            raise ToolTimeout(agent_id, self.attempt_timeout)
        return result

    def _abandoned(self) -> None:
        self.abandoned_threads += 1

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

        ``async with loop.as_completed(tasks) as results: async for result
        in results:`` gets each result as soon as it finishes, and leaving
        the block early cancels the invocations still running. A plain
        ``async for result in loop.as_completed(tasks)`` gets them in the
        same order once all have finished (see :class:`AsCompleted`).
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
                ms = (_perf() - started) * 1000.0
                self._attempt_ms.append(ms)
                self._total_ms.append(ms)
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

        Percentiles interpolate linearly between ranks, over the latest
        ``max_samples`` latencies; all zero when nothing was recorded.
        """
        if which == "attempt":
            return _stats(self._attempt_ms)
        if which == "total":
            return _stats(self._total_ms)
        raise ConfigError(f'which must be "attempt" or "total", got {which!r}')

    def reset_metrics(self) -> None:
        """Forget every recorded latency."""
        self._attempt_ms.clear()
        self._total_ms.clear()


class AsCompleted:
    """The results of :meth:`AgentLoop.as_completed`, in the order they finish.

    Both forms hand over each result as soon as it finishes:

    * ``async with loop.as_completed(tasks) as results: async for r in
      results: ...``: the invocations belong to a task group of the
      caller's own task. Leaving the block, after a ``break`` say, cancels
      the ones still running and waits for them to end.
    * a plain ``async for r in loop.as_completed(tasks)``: nothing in the
      caller's task could own invocations that run while the loop body
      runs (a task group held open across a ``yield`` corrupts the
      caller's cancel scopes when the loop is left early), so they run in
      a task group of a runner task of their own, which this object
      owns. Leaving the loop early drops the object, which cancels the
      runner at once; ``aclose()`` also waits for it to end. Cancelling
      the caller while it waits for a result cancels the runner too.
    """

    __slots__ = (
        "_left",
        "_loop",
        "_receive",
        "_runner",
        "_send",
        "_state",
        "_tasks",
        "_tg",
    )

    def __init__(
        self,
        loop: AgentLoop,
        tasks: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]],
    ) -> None:
        self._loop = loop
        self._tasks = tasks
        self._left = len(tasks)
        # "new", then "open" (inside async with) or "streaming" (plain
        # async for), then "closed".
        self._state = "new"
        self._tg: TaskGroup | None = None
        self._send: MemoryObjectSendStream[InvocationResult] | None = None
        self._receive: MemoryObjectReceiveStream[InvocationResult] | None = None
        self._runner: _Runner | None = None

    def _start_all(self, tg: TaskGroup, put: Callable[[InvocationResult], Any]) -> None:
        _start_all(self._loop, self._tasks, tg, put)

    async def __aenter__(self) -> AsCompleted:
        if self._state != "new":
            raise RuntimeError(
                "as_completed() results can be entered once, before iterating them"
            )
        send, receive = anyio.create_memory_object_stream[InvocationResult](math.inf)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg, self._send, self._receive = tg, send, receive
        self._state = "open"
        self._start_all(tg, send.send_nowait)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        if tg is None:
            self._state = "closed"
            return None
        self._tg = None
        self._state = "closed"
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
        if self._runner is not None:
            self._state = "closed"
            await self._runner.stop()
            return
        await self.__aexit__(None, None, None)

    def __del__(self) -> None:
        # Dropped mid-iteration (a `break` out of a plain `async for`).
        if self._runner is not None:
            self._runner.cancel()

    def __aiter__(self) -> AsCompleted:
        return self

    async def __anext__(self) -> InvocationResult:
        if self._state == "new":
            # A plain `async for`: the invocations get a runner of their own.
            self._runner = _Runner(self._loop, self._tasks)
            self._receive = self._runner.receive
            self._state = "streaming"
        if self._state not in ("open", "streaming") or self._left == 0:
            self._finish()
            raise StopAsyncIteration
        assert self._receive is not None
        try:
            result = await self._receive.receive()
        except anyio.EndOfStream:
            # The runner ended early: only a BaseException from an
            # invocation (KeyboardInterrupt, say) does that.
            self._finish()
            if self._runner is not None and self._runner.error is not None:
                raise self._runner.error from None
            raise StopAsyncIteration from None
        except BaseException:
            self._finish()
            raise
        self._left -= 1
        return result

    def _finish(self) -> None:
        """The plain form is over: stop the runner (it may still be needed)."""
        if self._state == "streaming":
            self._state = "closed"
            assert self._runner is not None
            self._runner.cancel()


class _Runner:
    """Runs :class:`AsCompleted`'s invocations in a task that no task group owns.

    Its lifetime is the iteration's: the :class:`AsCompleted` cancels it
    when the iteration ends, is cancelled or is dropped. It holds no
    reference to the :class:`AsCompleted`, so dropping that object is
    enough to stop it.
    """

    __slots__ = ("_finished", "_scope", "_task", "_thread", "error", "receive")

    def __init__(
        self,
        loop: AgentLoop,
        tasks: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]],
    ) -> None:
        send, self.receive = anyio.create_memory_object_stream[InvocationResult](
            math.inf
        )
        self._scope = scope = anyio.CancelScope()
        self._finished = finished = anyio.Event()
        self._thread = threading.get_ident()
        self.error: BaseException | None = None

        async def run() -> None:
            try:
                with scope:
                    async with anyio.create_task_group() as tg:
                        _start_all(loop, tasks, tg, send.send_nowait)
            except BaseException as exc:  # handed to the iterating task
                self.error = _first_leaf(exc)
            finally:
                send.close()
                finished.set()

        self._task = _spawn(run)

    def cancel(self) -> None:
        """Cancel the invocations still running; returns at once."""
        self.receive.close()
        if threading.get_ident() != self._thread:
            return  # collected on another thread: it runs to its end
        with contextlib.suppress(RuntimeError):  # its loop is gone, and the task
            self._scope.cancel()

    async def stop(self) -> None:
        """Cancel the invocations still running and wait for them to end."""
        self.cancel()
        await self._finished.wait()


def _start_all(
    loop: AgentLoop,
    tasks: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]],
    tg: TaskGroup,
    put: Callable[[InvocationResult], Any],
) -> None:
    """Start every invocation in ``tg``; each result goes to ``put``."""
    run_one = loop.run_one

    async def one(
        agent_id: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        put(await run_one(agent_id, fn, *args, **kwargs))

    for agent_id, fn, args, kwargs in tasks:
        tg.start_soon(one, agent_id, fn, args, kwargs)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _spawn(fn: Callable[[], Awaitable[None]]) -> object:
    """Start ``fn()`` as a task of the running loop that no task group owns.

    Only for a runner whose lifetime an object manages itself; it runs in a
    copy of the caller's context variables.
    """
    context = contextvars.copy_context()
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.spawn_system_task(fn, context=context)
    import asyncio

    # The loop keeps only a weak reference to its tasks: the caller keeps it.
    return asyncio.get_running_loop().create_task(fn(), context=context)  # type: ignore[arg-type]
