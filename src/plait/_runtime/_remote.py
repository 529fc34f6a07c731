"""Remote maps, the coordinator's side: chunks out, values folded in order.

A ``MapReduce(..., remote=True)`` on an engine with an ``executor`` runs
its elements elsewhere, in chunks (see :mod:`plait._runtime._executor`).
The coordinator keeps everything that makes the step the same step as
locally: it pulls ``over`` lazily, one chunk at a time, with at most the
session's ``window`` of chunks in flight; it folds the values itself, with
the local runner's fold (in input order, or as chunks come when unordered),
so a reduce holds at most ``window`` chunks of values; it gives failures and
events their coordinator paths (``map[i]``, ``i`` counted over the whole
input) and re-emits the chunks' events on the engine's bus.

Compiling a remote map (:func:`remote_runner`) checks it before the run:
its limits (:mod:`plait._runtime._remote_limits`) and, through the
executor's ``prepare``, that it can run there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import attrs

from .._calls._context import RunContext, ToolRuntime
from .._journal._protocol import Journal
from .._journal._sqlite import SqliteJournal
from .._model._errors import ConfigError, JournalError, StepFailed, StepTimeout
from .._model._expr import Fn, Lit, Var
from .._model._paths import fill
from .._model._results import Failure
from .._model._steps import Call, MapReduce, Parallel, Sequential, Step
from .._model._tools import Tool
from ._executor import (
    CHUNK_VAR,
    ChunkOutcome,
    ChunkPlace,
    ChunkSession,
    Executor,
    RemoteTask,
)
from ._mapreduce import NOTHING, MapRun, MapSpec, Scope
from ._remote_limits import check_remote_limits

__all__ = ["remote_runner"]

Runner = Callable[[MapSpec, Scope, tuple[int, ...], Any, Any], Awaitable[Any]]
ToolLookup = Callable[[Call, str], ToolRuntime]

# The element part at the head of a path inside a chunk step.
_ELEMENT = re.compile(r"map\[(\d+)\]")


@attrs.frozen
class RemoteMap:
    """A compiled remote map: its executor and what it prepared."""

    executor: Executor
    prepared: object
    names: tuple[str, ...]
    template: str
    #: The coordinator's run: its id and journal go with every chunk.
    run: RunContext


def remote_runner(
    step: MapReduce,
    template: str,
    *,
    executor: Executor,
    run: RunContext,
    lookup: ToolLookup,
    functions: Mapping[str, Callable[..., Any]],
    workers: int,
    plain: str,
) -> Runner:
    """Check and prepare ``step`` for ``executor``; the runner of its runs.

    ``step`` has compiled locally already, so every name in it is known.
    ``plain`` is its path for messages.

    Raises:
        ConfigError: a limit of its tools would not hold on the executor.
        WorkflowError: it cannot run on the executor.
    """
    rewrite = _Rewrite(lookup, functions, plain)
    body = rewrite.step(step.map, plain + ".map")
    check_remote_limits(
        rewrite.tools.values(),
        registry_limited=rewrite.limited,
        engine_rate_limited=run.engine_bucket is not None,
        mode=executor.limits,
        shared=run.shared_limits is not None,
        path=plain,
    )
    check_remote_journal(run.journal_store, plain)
    chunk_step = MapReduce(
        Var(CHUNK_VAR),
        body,
        max_concurrency=workers,
        item=step.item,
        on_error=step.on_error,
    )
    names = tuple(sorted(_free_names(step.map) - {step.item, CHUNK_VAR}))
    task = RemoteTask(
        step=chunk_step,
        names=names,
        path=plain,
        tools=tuple(rewrite.tools.values()),
        event_kinds=frozenset(run.events.kinds),
        rate_limit=None if run.engine_bucket is None else run.engine_bucket.spec,
        shared_limits=run.shared_limits,
        journal=run.journal_store,
    )
    remote = RemoteMap(executor, executor.prepare(task), names, template, run)

    async def run_remote(
        spec: MapSpec, scope: Scope, loc: tuple[int, ...], source: Any, start: Any
    ) -> Any:
        return await _RemoteRun(remote, spec, scope, loc, source, start).run()

    return run_remote


def check_remote_journal(journal: Journal | None, path: str) -> None:
    """Refuse a journal that the workers of a remote map cannot write.

    A ``SqliteJournal`` is a file on the coordinator's disk, locked by the
    coordinator while its run goes on: workers on other machines cannot
    open it, and workers on the same machine would wait on its lock.

    Raises:
        ConfigError: naming the journal and the remote map step.
    """
    if isinstance(journal, SqliteJournal):
        raise ConfigError(
            f"the remote map at {path} cannot journal its calls in {journal!r}: "
            "its workers cannot write a SQLite file the coordinator holds; use "
            "plait.PostgresJournal(dsn) (a server every worker reaches), or "
            "run the map locally (remote=False, or an Engine without executor)"
        )


class _RemoteRun(MapRun):
    """One run of a remote map: the local fold, fed by chunks."""

    def __init__(
        self,
        remote: RemoteMap,
        spec: MapSpec,
        scope: Scope,
        loc: tuple[int, ...],
        source: Any,
        start: Any,
    ) -> None:
        super().__init__(spec, scope, loc, source, start)
        self.remote = remote

    async def run(self) -> Any:
        spec = self.spec
        self.open_source()
        values = {n: self.scope[n] for n in self.remote.names if n in self.scope}
        run = self.remote.run
        journal = None if run.journal is None else run.journal.journal
        place = ChunkPlace(
            run_id=run.run_id,
            item_template=spec.item_template,
            loc=self.loc,
            journal=journal,
        )
        try:
            async with self.remote.executor.session(
                self.remote.prepared, values, place
            ) as session:
                await self._drive(session)
        finally:
            await self._close_source()
        if spec.reduce_fn is None:
            return self.results
        return None if self.acc is NOTHING else self.acc

    async def _drive(self, session: ChunkSession) -> None:
        """Keep ``window`` chunks in flight; take each as it completes."""
        size, window = session.chunk_size, session.window
        starts: dict[int, int] = {}  # chunk number -> index of its first element
        number = 0
        # An ordered fold waits for the earliest chunk: chunks done after it
        # count against the window until they are folded.
        ahead = window * size if self.window != math.inf else math.inf
        while True:
            while (
                len(starts) < window
                and not self.exhausted
                and self.pulled - self.next_fold < ahead
            ):
                first = self.pulled
                chunk = await self._pull_chunk(size)
                if chunk:
                    starts[number] = first
                    try:
                        session.submit(number, chunk)
                    except Exception as error:  # the elements do not pickle...
                        raise self._failed(error) from error
                    number += 1
            if not starts:
                return
            try:
                completed = await session.completed()
            except Exception as error:  # a chunk's task itself failed
                raise self._failed(error) from error
            for done, outcome in completed:
                self._take(starts.pop(done), outcome)

    def _failed(self, error: BaseException) -> StepFailed:
        """The executor failed: the remote map step fails, at its own path."""
        return StepFailed(fill(self.remote.template, self.loc), error)

    async def _pull_chunk(self, size: int) -> list[Any]:
        """Up to ``size`` elements; fewer when the input ends (or fails)."""
        chunk: list[Any] = []
        try:
            if self.sync_iter is not None:
                it: Iterator[Any] = self.sync_iter
                for _ in range(size):
                    chunk.append(next(it))
            else:
                assert self.async_iter is not None
                for _ in range(size):
                    chunk.append(await self.async_iter.__anext__())
        except Exception as error:
            self._grow(len(chunk))
            self._input_ended(error)
            return chunk
        self._grow(len(chunk))
        return chunk

    def _grow(self, count: int) -> None:
        self.pulled += count
        if self.spec.reduce_fn is None:
            self.results.extend([None] * count)

    def _take(self, first: int, outcome: ChunkOutcome) -> None:
        """Fold (or keep) the values of the chunk starting at element ``first``."""
        counters_for = self.remote.run.counters_for
        for name, counters in outcome.counters.items():
            counters_for(name).merge(counters)
        events = self.spec.events
        for event in outcome.events:
            moved = self._relocate(event.path, first)
            if moved is not None:
                events.emit(attrs.evolve(event, path=moved))
        if outcome.error is not None:
            if isinstance(outcome.error, JournalError):
                # The journal's refusal ends the run as locally.
                raise self._relocate_refusal(outcome.error, first)
            error = self._relocate_error(outcome.error, first)
            if error is outcome.error:
                raise self._failed(error) from error
            raise error
        if outcome.values is None:
            raise self._failed(
                RuntimeError("a chunk of the remote map was stopped by its worker")
            )
        keep = self.spec.reduce_fn is None
        failures = self.spec.failures
        for j, value in enumerate(outcome.values):
            if isinstance(value, Failure):
                path = self._relocate(value.path, first)
                value = Failure(value.error, path if path is not None else value.path)
                failures.append(value)
            if keep:
                self.results[first + j] = value
            else:
                self._deliver(first + j, value)

    def _relocate(self, path: str, first: int) -> str | None:
        """A chunk step's path as the coordinator's; None for the chunk itself."""
        match = _ELEMENT.match(path)
        if match is None:
            return None
        here = (*self.loc, first + int(match[1]))
        return fill(self.spec.item_template, here) + path[match.end() :]

    def _relocate_refusal(self, error: JournalError, first: int) -> JournalError:
        """A worker's journal refusal, at the call's coordinator path."""
        path = self._relocate(error.path, first) if error.path else None
        if path is None:
            return error
        message = str(error).replace(f" at {error.path} ", f" at {path} ")
        return JournalError(message, error.run_id, path)

    def _relocate_error(self, error: BaseException, first: int) -> BaseException:
        """What a chunk raised, with coordinator paths (itself when it has none)."""
        if isinstance(error, StepFailed | StepTimeout):
            path = self._relocate(error.path, first)
            if path is None:
                return error
            if isinstance(error, StepTimeout):
                return StepTimeout(path, error.timeout, error.deadline)
            return StepFailed(path, error.error)
        if isinstance(error, BaseExceptionGroup):
            inner = [self._relocate_error(e, first) for e in error.exceptions]
            return error.derive(inner)
        return error


class _Rewrite:
    """The map step with its tools and functions as objects, for the wire.

    A registered tool or function is known on the coordinator by its name;
    on a worker it is found by its import path, which the object gives.
    """

    def __init__(
        self,
        lookup: ToolLookup,
        functions: Mapping[str, Callable[..., Any]],
        plain: str,
    ) -> None:
        self.lookup = lookup
        self.functions = functions
        self.plain = plain
        self.tools: dict[str, Tool] = {}
        self.limited: set[str] = set()

    def step(self, step: Step, path: str) -> Step:
        options: dict[str, Any] = {"name": step.name, "timeout": step.timeout}
        if isinstance(step, Call):
            runtime = self.lookup(step, path)
            tool = runtime.tool
            self.tools[tool.name] = tool
            if (
                tool.concurrency_limit is None
                and runtime.limiter is not None
                and math.isfinite(runtime.limiter.total)
            ):
                # A limit set only in the engine's LimiterRegistry holds in
                # this process only; the workers know the tool's own limit.
                self.limited.add(tool.name)
            return Call(
                tool,
                *(self.value(a) for a in step.args),
                retry=step.retry,
                arguments={k: self.value(v) for k, v in step.kwargs.items()},
                **options,
            )
        if isinstance(step, Sequential):
            return Sequential(
                *(self.step(s, f"{path}.steps[{i}]") for i, s in enumerate(step.steps)),
                **options,
            )
        if isinstance(step, Parallel):
            if isinstance(step.steps, dict):
                branches: Any = {
                    k: self.step(s, f"{path}.steps.{k}") for k, s in step.steps.items()
                }
                return Parallel(branches, on_error=step.on_error, **options)
            return Parallel(
                *(self.step(s, f"{path}.steps[{i}]") for i, s in enumerate(step.steps)),
                on_error=step.on_error,
                **options,
            )
        assert isinstance(step, MapReduce)
        reduce = step.reduce
        if isinstance(reduce, str):
            reduce = self.functions[reduce]
        return MapReduce(
            self.value(step.over),
            self.step(step.map, f"{path}.map[*]"),
            reduce,
            None if step.initial is None else self.value(step.initial),
            step.max_concurrency,
            step.ordered,
            step.item,
            step.on_error,
            remote=step.remote,
            **options,
        )

    def value(self, value: Any) -> Any:
        if isinstance(value, Fn):
            fn = self.functions[value.fn] if isinstance(value.fn, str) else value.fn
            return Fn(fn, *(self.value(a) for a in value.args))
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.value(v) for v in value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value


def _free_names(step: Step) -> set[str]:
    """The variables ``step`` may read (a superset: names it binds too)."""
    names: set[str] = set()

    def value(v: Any) -> None:
        if isinstance(v, Var):
            names.add(v.path.split(".", 1)[0])
        elif isinstance(v, Fn):
            for a in v.args:
                value(a)
        elif isinstance(v, list | tuple):
            for a in v:
                value(a)
        elif isinstance(v, dict) and not isinstance(v, Lit):
            for a in v.values():
                value(a)

    def walk(s: Step) -> None:
        if isinstance(s, Call):
            value(s.args)
            value(s.kwargs)
        elif isinstance(s, Sequential):
            for c in s.steps:
                walk(c)
        elif isinstance(s, Parallel):
            for c in s.steps.values() if isinstance(s.steps, dict) else s.steps:
                walk(c)
        elif isinstance(s, MapReduce):
            value(s.over)
            value(s.initial)
            walk(s.map)

    walk(step)
    return names
