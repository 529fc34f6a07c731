"""The compiler: turns a step tree into nested async nodes, checked before anything runs.

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

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from .._calls._admission import drop_idle_lease
from .._calls._compose import Pipeline, compose_pipeline
from .._calls._context import RunContext, ToolRuntime
from .._concurrency._groups import raise_collapsed
from .._model._errors import JournalError, StepFailed, StepTimeout, WorkflowError
from .._model._events import EventKind, emit_step_end
from .._model._expr import Evaluator, compile_expr, did_you_mean
from .._model._paths import child, fill, index, key
from .._model._steps import Call, MapReduce, Parallel, Sequential, Step
from ._arguments import Evaluate, arguments
from ._executor import Executor
from ._failures import to_failure
from ._mapreduce import NOTHING, LeanCall, MapSpec, Node, Scope, run_map
from ._remote import remote_runner

__all__ = ["Compiler", "Node"]

ToolLookup = Callable[[Call, str], ToolRuntime]

_perf = time.perf_counter

_STEP_EVENTS = (EventKind.STEP_STARTED, EventKind.STEP_FINISHED, EventKind.STEP_FAILED)


class Compiler:
    """Compiles steps for one run of one engine."""

    def __init__(
        self,
        run: RunContext,
        tools: ToolLookup,
        functions: Mapping[str, Callable[..., Any]],
        max_concurrency: int,
        executor: Executor | None = None,
    ) -> None:
        self.run = run
        self.executor = executor
        self.tools = tools
        self.functions = functions
        self.max_concurrency = max_concurrency
        self._pipelines: dict[tuple[int, float | None, Any], Pipeline] = {}
        self._evaluators: dict[tuple[int, str], Evaluate] = {}
        bus = run.events
        self._step_events = any(bus.wants(kind) for kind in _STEP_EVENTS)

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
        if not self._step_events:
            # Step events go to those subscribed when the run starts; with
            # nobody listening to them a step runs with no wrapper at all.
            return node

        async def watched(scope: Scope, loc: tuple[int, ...]) -> Any:
            path = fill(template, loc)
            bus.emit_new(EventKind.STEP_STARTED, path, step=kind)
            started = _perf()
            try:
                value = await node(scope, loc)
            except Exception as error:
                emit_step_end(bus, path, kind, started, error)
                raise
            emit_step_end(bus, path, kind, started)
            return value

        return watched

    def _expr(self, expr: Any, env: frozenset[str], template: str) -> Evaluator:
        return compile_expr(expr, env, self.functions, _plain(template))

    # -- Call ----------------------------------------------------------------
    def _pipeline(self, step: Call, template: str) -> Pipeline:
        """The call pipeline of ``step``, one per tool, timeout and retry."""
        rt = self.tools(step, _plain(template))
        tool = rt.tool
        timeout = step.timeout if step.timeout is not None else tool.timeout
        retry = step.retry if step.retry is not None else tool.retry
        cache_key = (id(rt), timeout, retry)
        pipeline = self._pipelines.get(cache_key)
        if pipeline is None:
            pipeline = compose_pipeline(
                rt, self.run, timeout=timeout, retry=retry, step_errors=True
            )
            self._pipelines[cache_key] = pipeline
        return pipeline

    def _arguments(self, step: Call, template: str, env: frozenset[str]) -> Evaluate:
        """``scope -> (args, kwargs)`` for ``step``, its expressions compiled once.

        A map's call step asks twice (for its node and for the worker's lean
        drive): the second time gets the first one's function.
        """
        cache_key = (id(step), template)
        evaluate = self._evaluators.get(cache_key)
        if evaluate is None:
            evaluate = self._evaluators[cache_key] = self._compile_arguments(
                step, template, env
            )
        return evaluate

    def _compile_arguments(
        self, step: Call, template: str, env: frozenset[str]
    ) -> Evaluate:
        args_at = child(template, "args")
        arg_evs = [
            self._expr(a, env, index(args_at, i)) for i, a in enumerate(step.args)
        ]
        kw_evs = [
            (k, self._expr(v, env, key(args_at, k))) for k, v in step.kwargs.items()
        ]
        return arguments(arg_evs, kw_evs)

    def _call(self, step: Call, template: str, env: frozenset[str]) -> Node:
        invoker = self._pipeline(step, template).invoke
        evaluate = self._arguments(step, template, env)

        # A plain function returning the invoker's coroutine, which raises
        # StepFailed itself: a call step adds no coroutine of its own.
        def call(scope: Scope, loc: tuple[int, ...]) -> Awaitable[Any]:
            try:
                args, kwargs = evaluate(scope)
            except Exception as error:
                raise StepFailed(fill(template, loc), error) from error
            return invoker(args, kwargs, template, loc)

        return call

    def _lean_map(
        self, step: MapReduce, template: str, env: frozenset[str]
    ) -> tuple[LeanCall, ...] | None:
        """The map step as :class:`LeanCall` s, when it is made of lean calls.

        A call with a lean pipeline is one; a ``Sequential`` of such calls
        (with no timeout of its own) is a chain of them, each binding its
        name, unless someone listens to step events. With step-event
        subscribers the worker emits a single call's step events itself, as
        :meth:`_with_events` does around the step's node (see
        ``MapSpec.step_events``).
        """
        body = step.map
        parts: list[tuple[Step, str, frozenset[str], str | None]]
        if isinstance(body, Call):
            parts = [(body, template, env, None)]
        elif (
            isinstance(body, Sequential)
            and body.timeout is None
            and not self._step_events
        ):
            parts = list(_sequence_parts(body, template, env))
        else:
            return None
        chain = []
        for call, at, seen, bind in parts:
            if not isinstance(call, Call):
                return None
            lean = self._pipeline(call, at).lean
            if lean is None:
                return None
            arguments = self._arguments(call, at, seen)
            chain.append(LeanCall(lean.fn, lean.steps, arguments, at, bind))
        return tuple(chain)

    # -- Sequential ----------------------------------------------------------
    def _sequential(self, step: Sequential, template: str, env: frozenset[str]) -> Node:
        pairs = [
            (self.compile(s, at, seen), bind)
            for s, at, seen, bind in _sequence_parts(step, template, env)
        ]
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
                except JournalError:
                    raise  # the journal refused the run: not a step's failure
                except Exception as error:
                    failure = to_failure(error, fill(templates[i], loc))
                    failures.append(failure)
                    results[i] = failure

            drop_idle_lease()
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
        spec = MapSpec(
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
            engine_limiter=self.run.engine_limiter,
            lean=self._lean_map(
                step, child(template, "map") + "[{}]", env | {step.item}
            ),
            step_events=self._step_events,
            run_id=self.run.run_id,
        )

        runner: Callable[..., Awaitable[Any]] = run_map
        if step.remote and self.executor is not None:
            runner = remote_runner(
                step,
                template,
                executor=self.executor,
                run=self.run,
                lookup=self.tools,
                functions=self.functions,
                workers=spec.workers,
                plain=_plain(template),
            )

        async def map_reduce(scope: Scope, loc: tuple[int, ...]) -> Any:
            try:
                source = over(scope)
            except Exception as error:
                raise StepFailed(fill(over_at, loc), error) from error
            try:
                start = initial(scope) if initial is not None else NOTHING
            except Exception as error:
                raise StepFailed(fill(initial_at, loc), error) from error
            return await runner(spec, scope, loc, source, start)

        return map_reduce


def _sequence_parts(
    step: Sequential, template: str, env: frozenset[str]
) -> list[tuple[Step, str, frozenset[str], str | None]]:
    """Each step of ``step``: its path template, the names it sees, its bind.

    A step sees the names of the steps before it. No step sees the last
    step's name, so it binds none: binding it would write into the enclosing
    scope, which is not copied when nothing else binds.
    """
    parts: list[tuple[Step, str, frozenset[str], str | None]] = []
    steps_at = child(template, "steps")
    for i, s in enumerate(step.steps):
        parts.append((s, index(steps_at, i), env, s.name))
        if s.name is not None:
            env = env | {s.name}
    last, at, seen, _ = parts[-1]
    parts[-1] = (last, at, seen, None)
    return parts


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
