"""The engine: registered tools and functions, limits, and the entry points."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import anyio

from .._calls._compose import compose
from .._calls._context import RunContext, ToolRuntime
from .._calls._durable import RunJournal
from .._calls._middleware import Middleware
from .._calls._shared import SharedLimits
from .._concurrency._adaptive import AdaptiveLimit
from .._concurrency._bucket import TokenBucket
from .._concurrency._limits import Limiter, LimiterRegistry
from .._journal._codec import args_digest
from .._journal._protocol import Journal
from .._model._backpressure import Adaptive
from .._model._errors import (
    ConfigError,
    JournalError,
    StepTimeout,
    UnknownTool,
    WorkflowError,
)
from .._model._events import EventBus, EventKind, Subscriber, Subscription
from .._model._expr import did_you_mean
from .._model._fingerprint import fingerprint
from .._model._imports import ImportPath, import_tool
from .._model._paths import index
from .._model._ratelimit import RateLimit
from .._model._results import RunResult
from .._model._stats import RunStats
from .._model._steps import Call, Step, Workflow
from .._model._tools import Tool
from .._model._validate import (
    CALLABLE,
    Rule,
    check_count,
    check_seconds,
    instance_of,
    one_of,
)
from ._batch import PreparedCall, run_calls
from ._compiler import Compiler
from ._executor import Executor
from ._resources import run_resources

__all__ = ["Engine"]

ToolSpec = Tool | Callable[..., Any]
FunctionSpec = Callable[..., Any] | tuple[str, Callable[..., Any]]


_RATE_LIMIT = instance_of(RateLimit).or_none()
_REGISTRY = instance_of(LimiterRegistry).or_none()
_SHARED = instance_of(
    SharedLimits, "shared-limits backend such as plait.redis.RedisLimits"
).or_none()
_ON_ERROR = one_of("raise", "collect")
_RUN_ID = Rule("a non-empty str", lambda v: isinstance(v, str) and bool(v)).or_none()


class Engine:
    """Runs workflows: owns the tools, the functions and the limits.

    Args:
        tools: tools (or plain functions, made tools with default options)
            that workflows call by name. Two tools with one name are an error.
        functions: pure functions for ``Fn(...)`` and ``MapReduce.reduce``:
            callables (registered under ``__name__``), ``(name, callable)``
            pairs, or a mapping of names to callables.
        max_concurrency: tool calls in flight at once across the engine, and
            the default width of a ``MapReduce``.
        rate_limit: a :class:`plait.RateLimit` on every tool call of the
            engine.
        middleware: wrappers around every attempt of every tool call (see
            :class:`plait.Middleware`).
        limiters: a :class:`plait.LimiterRegistry` holding the per-tool
            concurrency limits (key ``tool:<name>``), to share them with
            other engines, threads or event loops. By default the engine
            keeps its own.
        executor: where the elements of ``MapReduce(..., remote=True)``
            steps run, such as a :class:`plait.dask.DaskExecutor`; without
            one they run locally.
        shared_limits: limits held by a server for every engine, process
            and machine that uses it, such as
            :class:`plait.redis.RedisLimits`: every tool's
            ``concurrency_limit`` and ``rate_limit``, the engine's
            ``rate_limit`` and the :class:`plait.KeyedLimit` /
            :class:`plait.KeyedRateLimit` limits then hold across all of
            them; ``max_concurrency`` stays this engine's own.
        journal: a journal of the engine's runs (:class:`plait.SqliteJournal`,
            :class:`plait.PostgresJournal` or another :class:`plait.Journal`):
            every finished call of a journaled tool is recorded, and running
            a workflow again with the same ``run_id`` answers the calls that
            succeeded from it. None (the default) costs nothing.

    An engine may run several workflows at once, from one event loop; they
    share its limits. It works on asyncio, uvloop and Trio, inside the
    caller's own task groups.
    """

    def __init__(
        self,
        tools: Iterable[ToolSpec] = (),
        functions: Iterable[FunctionSpec] | Mapping[str, Callable[..., Any]] = (),
        max_concurrency: int = 100,
        rate_limit: RateLimit | None = None,
        middleware: Sequence[Middleware] = (),
        limiters: LimiterRegistry | None = None,
        executor: Executor | None = None,
        shared_limits: SharedLimits | None = None,
        journal: Journal | None = None,
    ) -> None:
        self._max_concurrency = check_count(max_concurrency, "Engine.max_concurrency")
        _RATE_LIMIT.check(rate_limit, "Engine.rate_limit")
        _REGISTRY.check(limiters, "Engine.limiters")
        _SHARED.check(shared_limits, "Engine.shared_limits")
        for i, mw in enumerate(middleware):
            CALLABLE.check(mw, f"Engine.middleware[{i}]")
        self.rate_limit = rate_limit
        self.middleware: tuple[Middleware, ...] = tuple(middleware)
        self.limiters = limiters
        self.executor = _check_executor(executor)
        self.shared_limits = shared_limits
        if journal is not None and not isinstance(journal, Journal):
            raise ConfigError(
                "Engine.journal must be a plait.SqliteJournal, a "
                "plait.PostgresJournal or another plait.Journal, got "
                f"{journal!r}"
            )
        self.journal = journal
        self.events = EventBus()
        self._limiter = Limiter(max_concurrency, "engine")
        self._bucket = (
            TokenBucket(rate_limit, "engine") if rate_limit is not None else None
        )
        self._tools: dict[str, ToolRuntime] = {}
        self._adhoc: dict[str, ToolRuntime] = {}
        self._functions: dict[str, Callable[..., Any]] = {}
        self.abandoned_threads = 0
        # Bounds the worker threads of every run when set (a Dask worker's
        # engine shares one per process); else each run has an unbounded one.
        self._thread_limiter: Limiter | None = None
        for t in tools:
            self.register(t)
        items = functions.items() if isinstance(functions, Mapping) else functions
        for f in items:
            self.register_function(f)

    def __repr__(self) -> str:
        return f"<Engine tools={sorted(self._tools)} max_concurrency={self.max_concurrency}>"

    @property
    def max_concurrency(self) -> int:
        """Tool calls in flight at once across the engine.

        May be changed at any time, runs in progress included: lowering it
        lets no new call start until fewer than the new limit are in
        flight. It is also the default width of ``MapReduce`` steps of runs
        that start afterwards.
        """
        return self._max_concurrency

    @max_concurrency.setter
    def max_concurrency(self, value: int) -> None:
        self._max_concurrency = check_count(value, "Engine.max_concurrency")
        self._limiter.total = value

    # -- registration --------------------------------------------------------
    @property
    def tools(self) -> dict[str, Tool]:
        """The registered tools by name."""
        return {name: rt.tool for name, rt in self._tools.items()}

    @property
    def functions(self) -> dict[str, Callable[..., Any]]:
        """The registered functions by name."""
        return dict(self._functions)

    def register(self, tool: ToolSpec) -> Tool:
        """Register a tool (or a function, made a tool); return the tool."""
        if not isinstance(tool, Tool) and not callable(tool):
            raise ConfigError(
                f"tools must be plait.Tool objects or functions, got {tool!r}"
            )
        t = Tool.of(tool)
        if t.name in self._tools:
            raise ConfigError(
                f"tool name {t.name!r} is registered twice; give one of them another "
                "name with @plait.tool(name=...)"
            )
        self._tools[t.name] = self._runtime(t)
        return t

    def register_function(self, fn: FunctionSpec) -> None:
        """Register a pure function for ``Fn`` and ``MapReduce.reduce``."""
        if isinstance(fn, tuple) and len(fn) == 2 and isinstance(fn[0], str):
            name, f = fn
        else:
            name, f = getattr(fn, "__name__", None), fn  # type: ignore[assignment]
        if not isinstance(name, str) or not name or not callable(f):
            raise ConfigError(
                "functions must be callables with a __name__, (name, callable) pairs "
                f"or a mapping of names to callables, got {fn!r}"
            )
        if name in self._functions:
            raise ConfigError(f"function name {name!r} is registered twice")
        self._functions[name] = f

    def _runtime(self, tool: Tool) -> ToolRuntime:
        limit = tool.concurrency_limit
        adaptive = limit if isinstance(limit, Adaptive) else None
        # Under shared limits an adaptive limit stays local: the server holds
        # its max, and a limiter of this engine's own follows the service.
        shared_adaptive = adaptive is not None and self.shared_limits is not None
        if isinstance(limit, Adaptive):
            fixed: int | None = limit.max if shared_adaptive else limit.initial
        else:
            fixed = limit
        limiter: Limiter | None = None
        if self.limiters is not None:
            limiter = self.limiters.limiter(f"tool:{tool.name}")
            if fixed is not None:
                limiter.total = fixed
        elif fixed is not None:
            limiter = Limiter(fixed, f"tool:{tool.name}")
        bucket = None
        if tool.rate_limit is not None:
            bucket = TokenBucket(tool.rate_limit, f"tool:{tool.name}")
        rt = ToolRuntime(tool, limiter, bucket)
        if adaptive is not None and limiter is not None:
            if shared_adaptive:
                local = Limiter(adaptive.initial, f"tool:{tool.name} (adaptive)")
                rt.adaptive = AdaptiveLimit(adaptive, local)
            else:
                rt.adaptive = AdaptiveLimit(adaptive, limiter)
        return rt

    def _lookup(self, target: str | Tool, path: str) -> ToolRuntime:
        if isinstance(target, ImportPath):  # Call("pkg.mod:fn") in code: import it
            target = import_tool(target, path)
        if isinstance(target, str):
            try:
                return self._tools[target]
            except KeyError:
                known = ", ".join(sorted(self._tools)) or "none"
                raise UnknownTool(
                    f"unknown tool {target!r}{did_you_mean(target, self._tools)}; "
                    f"registered tools: {known}",
                    path,
                ) from None
        registered = self._tools.get(target.name)
        if registered is not None:
            if registered.tool == target:
                return registered
            raise WorkflowError(
                f"tool {target.name!r} in this step is not the tool registered under "
                "that name; rename one of them",
                path,
            )
        rt = self._adhoc.get(target.name)
        if rt is None or rt.tool != target:
            rt = self._adhoc[target.name] = self._runtime(target)
        return rt

    # -- events --------------------------------------------------------------
    def subscribe(
        self, fn: Subscriber, kinds: Iterable[EventKind | str] | None = None
    ) -> Subscription:
        """Call ``fn(event)`` for every :class:`plait.Event` (of ``kinds``).

        See :meth:`plait.EventBus.subscribe`.
        """
        return self.events.subscribe(fn, kinds)

    # -- running -------------------------------------------------------------
    def _new_run(
        self, run_id: str | None = None, journal: RunJournal | None = None
    ) -> RunContext:
        run = RunContext(
            events=self.events,
            engine_limiter=self._limiter,
            engine_bucket=self._bucket,
            middleware=self.middleware,
            # By default no bound of its own: the tools' and the engine's
            # limits bound the threads (see docs/explanation/design.md).
            thread_limiter=(
                Limiter(None, "worker threads")
                if self._thread_limiter is None
                else self._thread_limiter
            ),
            shared_limits=self.shared_limits,
            journal=journal,
            journal_store=self.journal,
        )
        if run_id is not None:
            run.run_id = run_id
        return run

    def _stats(self, run: RunContext, started: float) -> RunStats:
        return RunStats(
            tools={name: c.snapshot() for name, c in run.counters.items()},
            duration=time.perf_counter() - started,
        )

    async def execute(
        self,
        workflow: Workflow | Step,
        inputs: Mapping[str, Any] | None = None,
        *,
        deadline: float | None = None,
        run_id: str | None = None,
    ) -> RunResult:
        """Run ``workflow`` and return its output, failures and statistics.

        Args:
            workflow: a :class:`plait.Workflow` or a bare step.
            inputs: the run's variables, read with ``Var("name")``.
            deadline: seconds from now for the whole run; past it every step
                is cancelled and :class:`plait.StepTimeout` raised.
            run_id: the run's id (``RunResult.run_id``); a new one if None.
                With a journal, an id that ran before resumes that run: its
                successful calls are answered from the journal.

        Raises:
            WorkflowError: the workflow refers to unknown tools, functions or
                variables, or the inputs do not match ``Workflow.inputs``;
                raised before any tool runs.
            StepFailed: a step failed in raise mode (an ``ExceptionGroup`` of
                them when several failed at once).
            StepTimeout: a step timeout or the deadline expired.
            JournalError: with a journal, ``run_id`` holds another workflow's
                run or runs elsewhere now (before any tool runs), a call's
                arguments differ from the journaled ones, or the journal
                could not be written.
        """
        step, scope = self._prepare(workflow, inputs)
        deadline = check_seconds(deadline, "deadline")
        _RUN_ID.check(run_id, "run_id")
        run = self._new_run(run_id)
        root = self._compile(run, step, scope)
        if self.journal is None:
            return await self._execute(run, root, scope, deadline)
        # The journal layer is composed when a call step is compiled: compile
        # again, now that the run has its journal (the first compile checked
        # the workflow before the run was claimed).
        name = (workflow.name or "") if isinstance(workflow, Workflow) else ""
        run.journal = await RunJournal.open(
            self.journal, run.run_id, name, fingerprint(workflow, _digest(scope))
        )
        status = "failed"
        try:
            root = self._compile(run, step, scope)
            result = await self._execute(run, root, scope, deadline)
            status = "finished"
            return result
        except anyio.get_cancelled_exc_class():
            status = "cancelled"
            raise
        except BaseExceptionGroup as group:
            # Calls that met the journal's refusal at once (every worker of
            # a map reading one chunk): the refusal is the error to fix.
            refused = group.subgroup(JournalError)
            if refused is None:
                raise
            raise _first(refused) from None
        finally:
            await _close_journal(run.journal, status)

    def _compile(
        self, run: RunContext, step: Step, scope: dict[str, Any]
    ) -> Callable[[dict[str, Any], tuple[int, ...]], Any]:
        return Compiler(
            run,
            self._call_lookup,
            self._functions,
            self.max_concurrency,
            executor=self.executor,
        ).compile(step, "", frozenset(scope))

    async def _execute(
        self,
        run: RunContext,
        root: Callable[[dict[str, Any], tuple[int, ...]], Any],
        scope: dict[str, Any],
        deadline: float | None,
    ) -> RunResult:
        started = time.perf_counter()
        until = math.inf if deadline is None else anyio.current_time() + deadline
        try:
            async with run_resources():
                with anyio.CancelScope(deadline=until) as cancel:
                    output = await root(scope, ())
            if cancel.cancelled_caught:
                assert deadline is not None  # nothing else cancels this scope
                raise StepTimeout("", deadline, deadline=True)
            return RunResult(
                output,
                tuple(run.failures),
                self._stats(run, started),
                run_id=run.run_id,
            )
        finally:
            # Counted however the run ends: threads abandoned by a failed or
            # cancelled run are the ones that matter most.
            self.abandoned_threads += run.abandoned_threads

    async def run(
        self,
        workflow: Workflow | Step,
        inputs: Mapping[str, Any] | None = None,
        *,
        deadline: float | None = None,
        run_id: str | None = None,
    ) -> Any:
        """Run ``workflow`` and return its output; see :meth:`execute`."""
        result = await self.execute(workflow, inputs, deadline=deadline, run_id=run_id)
        return result.output

    def _call_lookup(self, call: Call, path: str) -> ToolRuntime:
        return self._lookup(call.target, path)

    def _prepare(
        self, workflow: Workflow | Step, inputs: Mapping[str, Any] | None
    ) -> tuple[Step, dict[str, Any]]:
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, Mapping) or not all(
            isinstance(k, str) for k in inputs
        ):
            raise WorkflowError(
                f"inputs must be a dict with str keys, got {inputs!r}", "inputs"
            )
        if isinstance(workflow, Workflow):
            step = workflow.step
            if workflow.inputs:
                missing = [n for n in workflow.inputs if n not in inputs]
                extra = sorted(set(inputs) - set(workflow.inputs))
                if missing:
                    raise WorkflowError(
                        f"missing input {missing[0]!r}; the workflow needs "
                        f"{', '.join(workflow.inputs)}",
                        "inputs",
                    )
                if extra:
                    raise WorkflowError(
                        f"unexpected input {extra[0]!r}"
                        f"{did_you_mean(extra[0], workflow.inputs)}; the workflow takes "
                        f"{', '.join(workflow.inputs)}",
                        "inputs",
                    )
        elif isinstance(workflow, Step):
            step = workflow
        else:
            raise WorkflowError(
                f"expected a plait.Workflow or a step, got {type(workflow).__name__}"
            )
        return step, dict(inputs)

    async def call_tools(
        self,
        calls: Iterable[tuple[str | Tool, Mapping[str, Any]]],
        parallel: bool = True,
        *,
        on_error: Literal["raise", "collect"] = "raise",
    ) -> list[Any]:
        """Run one agent's batch of tool calls; the results come back in order.

        Args:
            calls: ``(tool name or Tool, kwargs)`` pairs, as an LLM response
                with several tool calls gives them.
            parallel: run them at once (each still under its limits), or one
                after another.
            on_error: ``"raise"``: the first failure cancels the others and
                raises :class:`plait.StepFailed` with path ``calls[i]``;
                ``"collect"``: failed calls become :class:`plait.Failure`.
        """
        _ON_ERROR.check(on_error, "Engine.call_tools on_error")
        run = self._new_run()
        prepared: list[PreparedCall] = []
        for i, pair in enumerate(calls):
            path = index("calls", i)
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise WorkflowError(
                    f"each call must be a (tool, kwargs) pair, got {pair!r}", path
                )
            target, kwargs = pair
            if not isinstance(kwargs, Mapping):
                raise WorkflowError(f"kwargs must be a dict, got {kwargs!r}", path)
            rt = self._lookup(
                target if isinstance(target, str) else Tool.of(target), path
            )
            invoker = compose(rt, run, timeout=rt.tool.timeout, retry=rt.tool.retry)
            prepared.append(PreparedCall(invoker, (), dict(kwargs), path))
        try:
            async with run_resources():
                return await run_calls(
                    len(prepared),
                    prepared.__getitem__,
                    collect=on_error == "collect",
                    width=None if parallel else 1,
                )
        finally:
            self.abandoned_threads += run.abandoned_threads


def _check_executor(executor: Executor | None) -> Executor | None:
    if executor is not None and not all(
        hasattr(executor, a) for a in ("limits", "prepare", "session")
    ):
        raise ConfigError(
            "Engine.executor must be an executor such as "
            f"plait.dask.DaskExecutor(), got {executor!r}"
        )
    return executor


def _digest(inputs: dict[str, Any]) -> bytes | None:
    """A digest of a run's inputs, or None when they cannot be encoded."""
    try:
        return args_digest("inputs", (), inputs)
    except (TypeError, ValueError):
        return None


def _first(group: BaseExceptionGroup[JournalError]) -> JournalError:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, JournalError)
    return error


async def _close_journal(journal: RunJournal, status: str) -> None:
    """Commit a run's journal as the run ends.

    A journal error is raised only when the run itself succeeded: a run's
    own error says more than the journal's.
    """
    try:
        await journal.close(status)
    except Exception:
        if status == "finished":
            raise
