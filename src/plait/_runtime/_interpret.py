"""The interpreter: compiles a step tree into nested async closures and runs it.

Compiling first means every tool, function and variable name is checked
before any tool runs, and that the per-element work of a ``MapReduce`` is a
few closure calls: no tree walk, no string formatting, no per-item
allocation beyond the element's scope.

A node is ``async (scope, loc) -> value``: ``scope`` is the dict of
variables visible to the step, ``loc`` the indexes of the map elements the
step runs under (they fill the ``{}`` slots of the node's path template, see
:mod:`plait._model._paths`). Task-group rules: each ``Parallel`` and
``MapReduce`` run owns exactly one task group, and every task it starts ends
before the step returns or raises.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from .._calls._pipeline import (
    DirectCall,
    Invoker,
    RunContext,
    ToolRuntime,
    build_invoker,
    direct_call,
)
from .._concurrency._groups import raise_collapsed
from .._concurrency._limits import Limiter
from .._model._errors import StepFailed, StepTimeout, WorkflowError
from .._model._events import EventBus, EventKind
from .._model._expr import Evaluator, Var, compile_expr, did_you_mean
from .._model._paths import child, fill, index, key
from .._model._results import Failure
from .._model._steps import Call, MapReduce, Parallel, Sequential, Step

__all__ = ["Compiler", "Node", "to_failure"]

Scope = dict[str, Any]
Node = Callable[[Scope, tuple[int, ...]], Awaitable[Any]]
ToolLookup = Callable[[Call, str], ToolRuntime]

_perf = time.perf_counter

# How many elements past the next one to fold an ordered reduce may pull,
# as a multiple of the map's concurrency.
WINDOW_FACTOR = 2
# A map worker yields to the event loop at least once per this many elements,
# even when its tool never does.
CHECKPOINT_EVERY = 64


def to_failure(error: BaseException, path: str) -> Failure:
    """The :class:`Failure` for ``error`` raised by the step at ``path``."""
    if isinstance(error, StepFailed):
        return Failure(error.error, error.path)
    if isinstance(error, StepTimeout):
        return Failure(error, error.path)
    if isinstance(error, BaseExceptionGroup):
        inner = [to_failure(e, path).error for e in error.exceptions]
        return Failure(ExceptionGroup(str(error.message), inner), path)  # type: ignore[type-var]
    return Failure(error, path)


class Compiler:
    """Compiles steps for one run of one engine."""

    def __init__(
        self,
        run: RunContext,
        tools: ToolLookup,
        functions: Mapping[str, Callable[..., Any]],
        max_concurrency: int,
    ) -> None:
        self.run = run
        self.tools = tools
        self.functions = functions
        self.max_concurrency = max_concurrency
        self._invokers: dict[tuple[int, float | None, Any], Invoker] = {}

    # -- entry ---------------------------------------------------------------
    def compile(self, step: Step, template: str, env: frozenset[str]) -> Node:
        """Check ``step`` and compile it; ``template`` is its path template."""
        if isinstance(step, Call):
            node = self._call(step, template, env)
        elif isinstance(step, Sequential):
            node = self._sequential(step, template, env)
        elif isinstance(step, Parallel):
            node = self._parallel(step, template, env)
        elif isinstance(step, MapReduce):
            node = self._map_reduce(step, template, env)
        else:  # pragma: no cover - the step classes reject anything else
            raise WorkflowError(f"not a step: {step!r}", _plain(template))
        if step.timeout is not None and not isinstance(step, Call):
            node = _with_timeout(node, template, step.timeout)
        return self._with_events(node, template, type(step).__name__)

    def _with_events(self, node: Node, template: str, kind: str) -> Node:
        bus = self.run.events
        if not bus.active:
            # Step events go to those subscribed when the run starts; with
            # nobody listening a step runs with no wrapper at all.
            return node

        async def watched(scope: Scope, loc: tuple[int, ...]) -> Any:
            path = fill(template, loc)
            bus.emit_new(EventKind.STEP_STARTED, path, step=kind)
            started = anyio.current_time()
            try:
                value = await node(scope, loc)
            except Exception as error:
                bus.emit_new(
                    EventKind.STEP_FAILED,
                    path,
                    step=kind,
                    error=error,
                    duration=anyio.current_time() - started,
                )
                raise
            bus.emit_new(
                EventKind.STEP_FINISHED,
                path,
                step=kind,
                duration=anyio.current_time() - started,
            )
            return value

        return watched

    def _expr(self, expr: Any, env: frozenset[str], template: str) -> Evaluator:
        return compile_expr(expr, env, self.functions, _plain(template))

    # -- Call ----------------------------------------------------------------
    def _call(self, step: Call, template: str, env: frozenset[str]) -> Node:
        rt = self.tools(step, _plain(template))
        tool = rt.tool
        timeout = step.timeout if step.timeout is not None else tool.timeout
        retry = step.retry if step.retry is not None else tool.retry
        cache_key = (id(rt), timeout, retry)
        invoker = self._invokers.get(cache_key)
        if invoker is None:
            invoker = build_invoker(
                rt, self.run, timeout=timeout, retry=retry, step_errors=True
            )
            self._invokers[cache_key] = invoker
        args_at = child(template, "args")
        arg_evs = [
            self._expr(a, env, index(args_at, i)) for i, a in enumerate(step.args)
        ]
        kw_evs = [
            (k, self._expr(v, env, key(args_at, k))) for k, v in step.kwargs.items()
        ]

        # Plain functions returning the invoker's coroutine, which raises
        # StepFailed itself: a call step adds no coroutine of its own.
        if len(arg_evs) == 1 and not kw_evs:
            only = arg_evs[0]

            def call_one(scope: Scope, loc: tuple[int, ...]) -> Awaitable[Any]:
                try:
                    arg = only(scope)
                except Exception as error:
                    raise StepFailed(fill(template, loc), error) from error
                return invoker((arg,), {}, template, loc)

            return call_one

        def call(scope: Scope, loc: tuple[int, ...]) -> Awaitable[Any]:
            try:
                args = tuple([ev(scope) for ev in arg_evs])
                kwargs = {k: ev(scope) for k, ev in kw_evs}
            except Exception as error:
                raise StepFailed(fill(template, loc), error) from error
            return invoker(args, kwargs, template, loc)

        return call

    # -- Sequential ----------------------------------------------------------
    def _sequential(self, step: Sequential, template: str, env: frozenset[str]) -> Node:
        pairs: list[tuple[Node, str | None]] = []
        for i, s in enumerate(step.steps):
            pairs.append(
                (self.compile(s, index(child(template, "steps"), i), env), s.name)
            )
            if s.name is not None:
                env = env | {s.name}
        # No step sees the last step's name, and binding it would write into
        # the enclosing scope, which is not copied when nothing else binds.
        pairs[-1] = (pairs[-1][0], None)
        binds = any(b is not None for _, b in pairs)

        async def sequential(scope: Scope, loc: tuple[int, ...]) -> Any:
            if binds:
                scope = dict(scope)
            value = None
            for node, bind in pairs:
                value = await node(scope, loc)
                if bind is not None:
                    scope[bind] = value
            return value

        return sequential

    # -- Parallel ------------------------------------------------------------
    def _parallel(self, step: Parallel, template: str, env: frozenset[str]) -> Node:
        steps_at = child(template, "steps")
        names: list[str] | None
        if isinstance(step.steps, dict):
            names = list(step.steps)
            templates = [key(steps_at, k) for k in names]
            steps = list(step.steps.values())
        else:
            names = None
            templates = [index(steps_at, i) for i in range(len(step.steps))]
            steps = list(step.steps)
        nodes = [self.compile(s, t, env) for s, t in zip(steps, templates, strict=True)]
        collect = step.on_error == "collect"
        failures = self.run.failures

        async def parallel(scope: Scope, loc: tuple[int, ...]) -> Any:
            results: list[Any] = [None] * len(nodes)

            async def branch(i: int) -> None:
                if not collect:
                    results[i] = await nodes[i](scope, loc)
                    return
                try:
                    results[i] = await nodes[i](scope, loc)
                except Exception as error:
                    failure = to_failure(error, fill(templates[i], loc))
                    failures.append(failure)
                    results[i] = failure

            try:
                async with anyio.create_task_group() as tg:
                    for i in range(1, len(nodes)):
                        tg.start_soon(branch, i)
                    await branch(0)
            except BaseExceptionGroup as group:
                raise_collapsed(group)
            if names is None:
                return results
            return dict(zip(names, results, strict=True))

        return parallel

    # -- MapReduce -----------------------------------------------------------
    def _direct(self, step: MapReduce) -> DirectCall | None:
        """The map step as a :class:`DirectCall`, when it is that simple.

        That is ``Call(tool, Var(item))`` with a trivial pipeline, and no
        subscriber for step events (whose hooks a direct call would skip).
        """
        call = step.map
        if (
            self.run.events.active
            or not isinstance(call, Call)
            or call.kwargs
            or call.args != (Var(step.item),)
        ):
            return None
        rt = self.tools(call, "")
        timeout = call.timeout if call.timeout is not None else rt.tool.timeout
        retry = call.retry if call.retry is not None else rt.tool.retry
        return direct_call(rt, self.run, timeout=timeout, retry=retry)

    def _map_reduce(self, step: MapReduce, template: str, env: frozenset[str]) -> Node:
        over_at = child(template, "over")
        reduce_at = child(template, "reduce")
        initial_at = child(template, "initial")
        over = self._expr(step.over, env, over_at)
        map_node = self.compile(
            step.map, child(template, "map") + "[{}]", env | {step.item}
        )
        reduce_fn: Callable[[Any, Any], Any] | None
        if isinstance(step.reduce, str):
            try:
                reduce_fn = self.functions[step.reduce]
            except KeyError:
                raise WorkflowError(
                    f"unknown function {step.reduce!r} for MapReduce.reduce"
                    f"{did_you_mean(step.reduce, self.functions)}; register it with "
                    "Engine(functions=...)",
                    _plain(reduce_at),
                ) from None
        else:
            reduce_fn = step.reduce
        initial = (
            None if step.initial is None else self._expr(step.initial, env, initial_at)
        )
        spec = _MapSpec(
            map_node=map_node,
            reduce_fn=reduce_fn,
            item=step.item,
            workers=step.max_concurrency or self.max_concurrency,
            ordered=step.ordered,
            collect=step.on_error == "collect",
            item_template=child(template, "map") + "[{}]",
            over_template=over_at,
            reduce_template=reduce_at,
            failures=self.run.failures,
            events=self.run.events,
            direct=self._direct(step),
        )

        async def map_reduce(scope: Scope, loc: tuple[int, ...]) -> Any:
            try:
                source = over(scope)
            except Exception as error:
                raise StepFailed(fill(over_at, loc), error) from error
            try:
                start = initial(scope) if initial is not None else _NOTHING
            except Exception as error:
                raise StepFailed(fill(initial_at, loc), error) from error
            return await _MapRun(spec, scope, loc, source, start).run()

        return map_reduce


def _plain(template: str) -> str:
    """A template with no slots filled, for compile-time errors."""
    return template.replace("[{}]", "[*]").replace("{{", "{").replace("}}", "}")


def _with_timeout(node: Node, template: str, seconds: float) -> Node:
    async def timed(scope: Scope, loc: tuple[int, ...]) -> Any:
        with anyio.CancelScope(deadline=anyio.current_time() + seconds):
            return await node(scope, loc)
        # Only reached when this scope swallowed its own cancellation.
        raise StepTimeout(fill(template, loc), seconds)

    return timed


class _Nothing:
    def __repr__(self) -> str:
        return "<nothing>"


_NOTHING: Any = _Nothing()


@attrs.frozen
class _MapSpec:
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
    direct: DirectCall | None


class _Lease:
    """An engine slot a map worker keeps between direct calls.

    Keeping the slot saves two lock operations per element; it is dropped as
    soon as anyone else waits for a slot, and whenever the worker is about to
    wait for something other than its tool (input, the reduce window, a
    checkpoint), so a held slot always means a call in flight or about to
    start.
    """

    __slots__ = ("held", "limiter")

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.held = False

    async def take(self) -> None:
        if not self.limiter.try_acquire():
            await self.limiter.acquire()
        self.held = True

    def drop(self) -> None:
        if self.held:
            self.held = False
            self.limiter.release()


class _MapRun:
    """The state of one run of one MapReduce step."""

    def __init__(
        self,
        spec: _MapSpec,
        scope: Scope,
        loc: tuple[int, ...],
        source: Any,
        start: Any,
    ) -> None:
        self.spec = spec
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

    async def run(self) -> Any:
        spec = self.spec
        source = self.source
        workers = spec.workers
        if hasattr(source, "__aiter__"):
            self.async_iter = source.__aiter__()
            self.pull_lock = anyio.Lock(fast_acquire=True)
        else:
            try:
                self.sync_iter = iter(source)
            except TypeError:
                error = TypeError(
                    "MapReduce.over must give an iterable or an async iterable, "
                    f"got {type(source).__name__}"
                )
                raise StepFailed(fill(spec.over_template, self.loc), error) from error
            if hasattr(source, "__len__"):
                workers = max(1, min(workers, len(source)))
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
        return None if self.acc is _NOTHING else self.acc

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

    async def worker(self) -> None:
        """Pull elements and run the map step on each until the input ends."""
        direct = self.spec.direct
        # Not a helper coroutine: every await of the tool would pass through
        # one more frame.
        lease = None if direct is None else _Lease(direct.limiter)
        spec = self.spec
        scope = self.scope
        loc = self.loc
        item = spec.item
        map_node = spec.map_node
        collect = spec.collect
        keep = spec.reduce_fn is None
        results = self.results
        sync_iter = self.sync_iter
        windowed = self.window != math.inf
        if direct is not None:
            fn = direct.fn
            counters = direct.counters
            add_latency = counters.latency.add
            bus = direct.bus
            # The limiter's queue itself: its truth is the cheapest "does
            # anyone wait?" (read-only here; the limiter changes it).
            queue = direct.limiter._waiters
        since_checkpoint = 0
        try:
            while not self.exhausted:
                if windowed and self.pulled >= self.next_fold + self.window:
                    if lease is not None:
                        lease.drop()
                    await self._wait_for_window()
                    if self.exhausted:  # another worker met the end meanwhile
                        return
                if sync_iter is not None:
                    # Inline: a coroutine call per element would cost as much as
                    # the rest of this loop.
                    try:
                        element = next(sync_iter)
                    except Exception as error:
                        self._input_ended(error)
                        return
                else:
                    if lease is not None:
                        lease.drop()
                    ok, element = await self._pull()
                    if not ok:
                        return
                i = self.pulled
                self.pulled = i + 1
                if keep:
                    results.append(None)
                if lease is not None and not bus.active:
                    # The map step is Call(tool, Var(item)) with nothing around
                    # the call: do it here, with no coroutine layer in between.
                    counters.calls += 1
                    if not lease.held:
                        await lease.take()
                    started = _perf()
                    try:
                        value = await fn(element)
                    except Exception as error:
                        lease.drop()
                        path = fill(spec.item_template, (*loc, i))
                        direct.failed(path, error)  # type: ignore[union-attr]
                        if not collect:
                            raise StepFailed(path, error) from error
                        value = Failure(error, path)
                        spec.failures.append(value)
                    else:
                        add_latency(_perf() - started)
                        if queue:
                            lease.drop()
                else:
                    if lease is not None:
                        lease.drop()
                    here = (*loc, i) if loc else (i,)
                    item_scope = scope.copy()
                    item_scope[item] = element
                    try:
                        value = await map_node(item_scope, here)
                    except Exception as error:
                        if not collect:
                            raise
                        value = to_failure(error, fill(spec.item_template, here))
                        spec.failures.append(value)
                if keep:
                    results[i] = value
                else:
                    self._deliver(i, value)
                since_checkpoint += 1
                if since_checkpoint >= CHECKPOINT_EVERY:
                    since_checkpoint = 0
                    if lease is not None:
                        lease.drop()
                    await anyio.lowlevel.checkpoint()
        finally:
            if lease is not None:
                lease.drop()

    def _deliver(self, i: int, value: Any) -> None:
        if not self.spec.ordered:
            self._fold(value)
            return
        if i != self.next_fold:
            self.pending[i] = value
            return
        self._fold(value)
        nxt = i + 1
        pending = self.pending
        while nxt in pending:
            self._fold(pending.pop(nxt))
            nxt += 1
        self.next_fold = nxt
        if self.window_open is not None:
            self.window_open.set()
            self.window_open = None

    def _fold(self, value: Any) -> None:
        if isinstance(value, Failure) or self.fold_failed:
            return
        if self.acc is _NOTHING:
            self.acc = value
            return
        try:
            self.acc = self.spec.reduce_fn(self.acc, value)  # type: ignore[misc]
        except Exception as error:
            path = fill(self.spec.reduce_template, self.loc)
            if not self.spec.collect:
                self.fold_failed = True
                raise StepFailed(path, error) from error
            self.spec.failures.append(Failure(error, path))
            self.spec.events.emit_new(
                EventKind.STEP_FAILED, path, step="MapReduce", error=error
            )
