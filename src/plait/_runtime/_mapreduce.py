"""The MapReduce runner: a pool of workers over a lazy input, folding in order.

``max_concurrency`` workers pull elements from the input one at a time
(an async input under a lock), run the compiled map step on each, and hand
the value to the fold, which applies ``reduce`` in input order (or as values
come, when unordered) and keeps only the values that wait for an earlier
one. Memory stays O(workers): an ordered fold lets workers pull at most
``WINDOW_FACTOR * workers`` elements past the next one to fold.

Each worker keeps its engine slot between calls while nobody else waits for
one (see :mod:`plait._calls._admission`), and lets it go before it waits for
input, for the window or for a checkpoint.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel
import attrs

from .._calls._admission import drop_idle_lease, lease_slots
from .._calls._attempt import Steps
from .._calls._current import CURRENT
from .._concurrency._groups import raise_collapsed
from .._concurrency._limits import Limiter
from .._model._errors import JournalError, StepFailed
from .._model._events import EventBus, EventKind, emit_step_end
from .._model._paths import fill
from .._model._results import Failure
from ._arguments import Evaluate
from ._failures import to_failure

__all__ = ["NOTHING", "MapRun", "MapSpec", "Node", "Scope", "run_map"]

Scope = dict[str, Any]
Node = Callable[[Scope, tuple[int, ...]], Awaitable[Any]]

# How many elements past the next one to fold an ordered reduce may pull,
# as a multiple of the map's concurrency.
WINDOW_FACTOR = 2
# The workers yield to the event loop at least once per this many elements
# (at every multiple of it), even when their tool never does. A power of two.
CHECKPOINT_EVERY = 64
_CHECKPOINT_MASK = CHECKPOINT_EVERY - 1

_perf = time.perf_counter
_STEP_STARTED = EventKind.STEP_STARTED


class _Nothing:
    def __repr__(self) -> str:
        return "<nothing>"


NOTHING: Any = _Nothing()


@attrs.frozen
class MapSpec:
    """What a compiled MapReduce needs at run time."""

    map_node: Node
    reduce_fn: Callable[[Any, Any], Any] | None
    item: str
    workers: int
    ordered: bool
    collect: bool
    item_template: str
    over_template: str
    reduce_template: str
    failures: list[Failure]
    events: EventBus
    engine_limiter: Limiter
    lean: tuple[LeanCall, ...] | None
    run_id: str = ""
    # Someone listens to step events. The compiler then makes a lean chain
    # of one call only, whose Call step events the worker emits itself, as
    # the compiled node's wrapper would.
    step_events: bool = False


class LeanCall(NamedTuple):
    """One lean call of a map step: the worker awaits the tool itself.

    A map step is a chain of them: one call, or a ``Sequential`` of calls
    whose values are bound to their ``bind`` names for the next ones.
    """

    fn: Callable[..., Awaitable[Any]]
    steps: Steps
    arguments: Evaluate
    template: str
    bind: str | None = None


class _MapRun:
    """The state of one run of one MapReduce step."""

    def __init__(
        self,
        spec: MapSpec,
        scope: Scope,
        loc: tuple[int, ...],
        source: Any,
        start: Any,
    ) -> None:
        self.spec = spec
        self.ordered = spec.ordered
        self.reduce_fn: Callable[[Any, Any], Any] = spec.reduce_fn  # type: ignore[assignment]
        self.scope = scope
        self.loc = loc
        self.source = source
        self.acc = start
        self.pulled = 0
        self.exhausted = False
        self.results: list[Any] = []
        self.pending: dict[int, Any] = {}
        self.next_fold = 0
        # A reduce that raised in raise mode ends the step: values delivered
        # by workers the cancellation has not reached yet are not folded (a
        # second fold could raise a second, identical error).
        self.fold_failed = False
        self.window_open: anyio.Event | None = None
        self.sync_iter: Iterator[Any] | None = None
        self.async_iter: AsyncIterator[Any] | None = None
        self.pull_lock: anyio.Lock | None = None
        self.window = math.inf
        if spec.reduce_fn is not None and spec.ordered:
            self.window = WINDOW_FACTOR * spec.workers

    def open_source(self) -> None:
        """Start iterating ``over``: an async iterator, else a sync one.

        Raises:
            StepFailed: ``over`` gave neither, at the step's ``over`` path.
        """
        source = self.source
        if hasattr(source, "__aiter__"):
            self.async_iter = source.__aiter__()
            return
        try:
            self.sync_iter = iter(source)
        except TypeError:
            error = TypeError(
                "MapReduce.over must give an iterable or an async iterable, "
                f"got {type(source).__name__}"
            )
            raise StepFailed(fill(self.spec.over_template, self.loc), error) from error

    async def run(self) -> Any:
        spec = self.spec
        source = self.source
        workers = spec.workers
        self.open_source()
        if self.async_iter is not None:
            self.pull_lock = anyio.Lock(fast_acquire=True)
        elif hasattr(source, "__len__"):
            workers = max(1, min(workers, len(source)))
        # This task's kept slot (an outer map's) must not wait on the workers.
        drop_idle_lease()
        try:
            if workers == 1:
                await self.worker()
            else:
                try:
                    async with anyio.create_task_group() as tg:
                        for _ in range(workers - 1):
                            tg.start_soon(self.worker)
                        await self.worker()
                except BaseExceptionGroup as group:
                    raise_collapsed(group)
        finally:
            await self._close_source()
        if spec.reduce_fn is None:
            return self.results
        return None if self.acc is NOTHING else self.acc

    async def _close_source(self) -> None:
        # Close the generator behind the input too: an iterable whose
        # __iter__ is a generator function hands back a fresh generator.
        iterators = (self.source, self.sync_iter, self.async_iter)
        for it in iterators:
            if inspect.isgenerator(it):
                it.close()
        # Not shielded: when the step is being cancelled (a deadline, the
        # caller's scope) an async generator's cleanup is cancelled with it,
        # as any other code of the step is; it must not hold the run.
        for it in iterators:
            if inspect.isasyncgen(it):
                await it.aclose()

    async def _pull(self) -> tuple[bool, Any]:
        """The next element of an async input, or ``(False, None)`` at its end."""
        try:
            assert self.async_iter is not None
            assert self.pull_lock is not None
            async with self.pull_lock:
                # Other workers pulled while this one waited for the lock.
                await self._wait_for_window()
                if self.exhausted:
                    return False, None
                return True, await self.async_iter.__anext__()
        except Exception as error:
            self._input_ended(error)
            return False, None

    def _input_ended(self, error: Exception) -> None:
        """Pulling raised ``error``: the input ended, or failed."""
        self.exhausted = True
        if isinstance(error, StopIteration | StopAsyncIteration):
            return
        path = fill(self.spec.over_template, self.loc)
        if not self.spec.collect:
            raise StepFailed(path, error) from error
        failure = Failure(error, path)
        self.spec.failures.append(failure)
        self.spec.events.emit_new(
            EventKind.STEP_FAILED, path, step="MapReduce", error=error
        )
        if self.spec.reduce_fn is None:
            self.results.append(failure)

    async def _wait_for_window(self) -> None:
        while self.pulled >= self.next_fold + self.window:
            if self.window_open is None:
                self.window_open = anyio.Event()
            await self.window_open.wait()

    async def _next_waiting(self) -> tuple[bool, Any]:
        """The next element when getting it may wait (window, async input).

        ``(False, None)`` when the input ended, or another worker met its
        end while this one waited for the window.
        """
        if self.window != math.inf:
            await self._wait_for_window()
            if self.exhausted:
                return False, None
        if self.sync_iter is None:
            return await self._pull()
        try:
            return True, next(self.sync_iter)
        except Exception as error:
            self._input_ended(error)
            return False, None

    async def worker(self) -> None:
        """Pull elements and run the map step on each until the input ends."""
        # One frame, not a loop in a helper coroutine: every await of the
        # tool passes through each frame between the task and the tool.
        with lease_slots(self.spec.engine_limiter) as lease:
            spec, scope, loc, results = self.spec, self.scope, self.loc, self.results
            item, map_node, lean = spec.item, spec.map_node, spec.lean
            watched = binds = False
            if lean is not None:
                watched = spec.step_events
                binds = any(call.bind is not None for call in lean)
                bus = spec.events
                run_id = spec.run_id
                set_current, reset_current = CURRENT.set, CURRENT.reset
                own_scope = scope.copy()
            keep = spec.reduce_fn is None
            sync_iter = self.sync_iter
            windowed = self.window != math.inf
            while not self.exhausted:
                if sync_iter is None or (
                    windowed and self.pulled >= self.next_fold + self.window
                ):
                    lease.drop()
                    ok, element = await self._next_waiting()
                    if not ok:
                        return
                else:
                    # Inline: a coroutine call per element would cost as much
                    # as the rest of this loop.
                    try:
                        element = next(sync_iter)
                    except Exception as error:
                        self._input_ended(error)
                        return
                i = self.pulled
                self.pulled = i + 1
                if keep:
                    results.append(None)
                here = (*loc, i) if loc else (i,)
                try:
                    if lean is None:
                        item_scope = scope.copy()
                        item_scope[item] = element
                        value = await map_node(item_scope, here)
                    else:
                        # The lean calls' own attempts, driven here (see
                        # Steps): no coroutine frame between task and tool.
                        # Arguments are read at once: without binds the
                        # scope can be reused; with them each element needs
                        # its own (a bind may shadow an outer name).
                        if watched:
                            path = fill(lean[0].template, here)
                            bus.emit_new(_STEP_STARTED, path, step="Call")
                            step_started = _perf()
                        if binds:
                            own_scope = scope.copy()
                        own_scope[item] = element
                        for fn, steps, arguments, template, bind in lean:
                            try:
                                args, kwargs = arguments(own_scope)
                            except Exception as error:
                                at = fill(template, here)
                                raise StepFailed(at, error) from error
                            release = steps.enter(template, here, 1, lease)
                            if release is None:
                                release = await steps.wait(template, here)
                            started = _perf()
                            current = set_current((run_id, template, here, 1))
                            try:
                                value = await fn(*args, **kwargs)
                            except Exception as error:
                                steps.fail(error, template, here)
                                raise
                            finally:
                                reset_current(current)
                                release()
                            steps.done(started, template, here)
                            if bind is not None:
                                own_scope[bind] = value
                        if watched:
                            emit_step_end(bus, path, "Call", step_started)
                except Exception as error:
                    if watched:
                        emit_step_end(bus, path, "Call", step_started, error)
                    # A journal's refusal ends the run, in collect mode too.
                    if not spec.collect or isinstance(error, JournalError):
                        raise
                    value = self._keep_failure(error, here)
                if keep:
                    results[i] = value
                else:
                    self._deliver(i, value)
                if not i & _CHECKPOINT_MASK:
                    lease.drop()
                    await anyio.lowlevel.checkpoint()

    def _keep_failure(self, error: Exception, here: tuple[int, ...]) -> Failure:
        """An element's map step failed in collect mode: its Failure."""
        failure = to_failure(error, fill(self.spec.item_template, here))
        self.spec.failures.append(failure)
        return failure

    def _deliver(self, i: int, value: Any) -> None:
        """Fold element ``i``'s value now, or keep it until its turn comes."""
        if not self.ordered:
            self._fold(value)
        elif i != self.next_fold:
            self.pending[i] = value
        else:
            fold = self._fold
            fold(value)
            i += 1
            pending = self.pending
            if pending:
                while i in pending:
                    fold(pending.pop(i))
                    i += 1
            self.next_fold = i
            if self.window_open is not None:
                self.window_open.set()
                self.window_open = None

    def _fold(self, value: Any) -> None:
        if isinstance(value, Failure) or self.fold_failed:
            return
        acc = self.acc
        if acc is NOTHING:
            self.acc = value
            return
        try:
            self.acc = self.reduce_fn(acc, value)
        except Exception as error:
            self._fold_failed(error)

    def _fold_failed(self, error: Exception) -> None:
        """The reduce raised: the step fails, or the failure is kept."""
        path = fill(self.spec.reduce_template, self.loc)
        if not self.spec.collect:
            self.fold_failed = True
            raise StepFailed(path, error) from error
        self.spec.failures.append(Failure(error, path))
        self.spec.events.emit_new(
            EventKind.STEP_FAILED, path, step="MapReduce", error=error
        )


# The remote runner (_remote.py) feeds this fold with chunks' values.
MapRun = _MapRun


async def run_map(
    spec: MapSpec, scope: Scope, loc: tuple[int, ...], source: Any, start: Any
) -> Any:
    """Run one MapReduce step over ``source``; ``start`` is the fold's start."""
    return await _MapRun(spec, scope, loc, source, start).run()
