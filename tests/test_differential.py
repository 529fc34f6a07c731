"""Differential tests: random workflows, the real engine against a reference.

Hypothesis draws workflow trees (``Sequential``, ``Parallel`` with list or
dict branches, ``MapReduce`` with every option, ``Call`` with ``Var``,
``Lit``, ``Fn`` and ``name=`` bindings, both ``on_error`` modes) and a
:class:`Plan` saying what every call does (pause, fail, or hang until its
timeout). Each case runs on the current backend and through the sequential
reference in ``tests/_reference.py``; outputs, recorded failures, raised
errors and the calls made must agree. The same runs check the invariants:
concurrency never over a limit (the engine's, a tool's, a map's, or a key's
under ``KeyedLimit`` middleware), every task and worker thread gone when the
run ends, sources closed, no file descriptors leaked.

``Engine.call_tools`` gets the same treatment: random batches of calls to
the same tools, in both error modes, parallel or one after another, against
the sequential reference.

Each example count comes from the ``plait-differential`` hypothesis profile
(``tests/conftest.py``): a quick pass by default, a soak with ``--slow``.
"""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import psutil
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import plait
from _reference import (
    TOOL_RESULTS,
    BatchCall,
    CallKey,
    Leaf,
    Outcome,
    Plan,
    Reference,
    ToolError,
    check_calls,
    check_failures,
    check_raised,
    folds,
    matches,
    num,
    reference_batch,
    signature,
)
from plait import Call, Failure, Fn, Lit, MapReduce, Parallel, Sequential, Var

DIFFERENTIAL = settings.get_profile("plait-differential")

INPUTS: dict[str, Any] = {"x": 3, "y": 10, "xs": [4, 5, 6, 7]}
NAMES = ("a", "b", "x")  # "x" shadows an input
ITEMS = ("item", "a", "x")  # "a" shadows a bound name, "x" an input
PARTS = ("0", "1", "b0")  # Var("name.part"): index, key, or a lookup error
KEYS = ("b0", "b1", "name", "on_error", "we{ird}", "two words")
TOOLS = ("inc", "mul", "inc_lim", "mul_lim")  # mul*: sync, on worker threads
TIMEOUT = 0.25  # per-call timeout; plain calls pause 3 ms at most
ENGINE_LIMITS = (1, 2, 3, 8)
HANG = 5.0  # how long a hanging call would take if its timeout never fired
# A step timeout the reference expects never to fire. Hanging calls each
# hold their tool's slot until their own timeout: a case with dozens of them
# behind a tool limit of 2 legitimately takes several seconds.
STEP_TIMEOUT = 60.0
# Retries a failing call once; the plan fails every attempt alike, so a
# failing call must run exactly twice. Hangs (ToolTimeout) are not retried.
RETRY = plait.Retry(
    attempts=2, initial_delay=0.001, jitter=False, retry_on=(ToolError,)
)
MAP_ELEMENT = re.compile(r"(?:^|\.)map\[(\d+)\]")
# How KeyedLimit middleware keys a call (see call_key) and the keys each
# kind gives. "tool:<name>" is also the engine's own key for a tool's limit
# in a shared LimiterRegistry (Engine(limiters=...)).
KEYS_OF: dict[str, tuple[str, ...]] = {
    "tool": tuple(f"tool:{t}" for t in TOOLS),
    "arg": ("arg:0", "arg:1", "arg:2"),
    "cid": ("cid:0", "cid:1"),
    "one": ("one",),
}


# -- random workflows --------------------------------------------------------


class _Ids:
    """Hands out call ids and remembers which calls have a timeout."""

    def __init__(self) -> None:
        self.last = 0
        self.timed: set[int] = set()

    def new(self, timed: bool) -> int:
        self.last += 1
        if timed:
            self.timed.add(self.last)
        return self.last


@st.composite
def exprs(draw: st.DrawFn, env: frozenset[str], depth: int = 2) -> Any:
    """An argument expression: a ``Var`` (maybe a path), a constant or ``Fn``.

    Lists, tuples and dicts hold more of them, ``Lit`` included.
    """
    names = sorted(env)
    # Mostly plain variables: a path into a value often fails its lookup,
    # which is worth testing but stops the step before its tool runs.
    kinds = ["var", "var", "var", "var", "lit", "path"]
    if depth:
        kinds += ["check", "list", "tuple", "dict"]
    kind = draw(st.sampled_from(kinds))
    if kind == "var":
        return Var(draw(st.sampled_from(names)))
    if kind == "path":
        return Var(f"{draw(st.sampled_from(names))}.{draw(st.sampled_from(PARTS))}")
    if kind == "lit":
        value = draw(st.integers(0, 50))
        return Lit(value) if draw(st.booleans()) else value
    if kind == "check":
        return Fn("check", draw(exprs(env, depth - 1)))
    if kind in ("list", "tuple"):
        size = draw(st.integers(1, 2))
        items = [draw(exprs(env, depth - 1)) for _ in range(size)]
        return items if kind == "list" else tuple(items)
    return {"b0": draw(exprs(env, depth - 1))}


@st.composite
def steps(
    draw: st.DrawFn,
    env: frozenset[str],
    depth: int,
    ids: _Ids,
    item: str | None = None,
    name: str | None = None,
) -> plait.Step:
    """A step tree of at most ``depth`` levels over the variables in ``env``.

    ``name`` binds the step in its ``Sequential``; other steps may get a
    label name that nothing reads. ``item`` is the innermost map variable.
    """
    kind = draw(
        st.sampled_from(
            # Hypothesis favours the first choice: a container, so that
            # examples are not mostly single calls.
            ["call"]
            if depth == 0
            else ["par", "seq", "map", "call", "seq", "par", "map", "par", "map"]
        )
    )
    label = name if name is not None else draw(st.sampled_from([None, None, "lbl"]))
    step_timeout = draw(st.sampled_from([None, None, None, None, STEP_TIMEOUT]))
    if kind == "call":
        tool = draw(st.sampled_from(TOOLS))
        if item is not None and draw(st.booleans()):
            # The plain map call, which a MapReduce may run with no pipeline.
            return Call(tool, Var(item), name=label)
        timed = draw(st.sampled_from([False, False, False, True]))
        cid = ids.new(timed)
        arg = draw(exprs(env))
        options: dict[str, Any] = {
            "name": label,
            "timeout": TIMEOUT if timed else None,
            "retry": draw(st.sampled_from([None, None, None, RETRY])),
        }
        form = draw(st.integers(0, 2))
        if form == 0:
            return Call(tool, arg, cid, **options)
        if form == 1:
            return Call(tool, arg, cid=cid, **options)
        return Call(tool, value=arg, cid=cid, **options)
    if kind == "seq":
        children = []
        scope = env
        for _ in range(draw(st.sampled_from([2, 1, 2, 3]))):
            bind = draw(st.sampled_from([None, *NAMES]))
            children.append(draw(steps(scope, depth - 1, ids, item, bind)))
            if bind is not None:
                scope = scope | {bind}
        return Sequential(*children, name=label, timeout=step_timeout)
    on_error = draw(st.sampled_from(["raise", "collect"]))
    if kind == "par":
        count = draw(st.sampled_from([2, 1, 2, 3, 3, 4]))
        branches = [draw(steps(env, depth - 1, ids, item)) for _ in range(count)]
        if draw(st.booleans()):
            return Parallel(
                *branches, name=label, timeout=step_timeout, on_error=on_error
            )
        keys = draw(
            st.lists(st.sampled_from(KEYS), min_size=count, max_size=count, unique=True)
        )
        return Parallel(
            dict(zip(keys, branches, strict=True)),
            name=label,
            timeout=step_timeout,
            on_error=on_error,
        )
    new_item = draw(st.sampled_from(ITEMS))
    source = draw(
        st.sampled_from(["spread", "spread", "spread", "gen", "agen", "var", "list"])
    )
    # Mostly a plain variable as the source's seed: an argument that fails
    # to evaluate fails the whole map before it starts.
    seed = draw(st.sampled_from([None, None, None, "expr"]))
    seed_expr = draw(exprs(env, 1)) if seed else Var(draw(st.sampled_from(sorted(env))))
    # A variable as the source is mostly the input list; any other may hold
    # a number, which is no iterable (a failure worth testing, but rarely).
    over: Any
    if source == "var":
        over = Var(draw(st.sampled_from(["xs", "xs", "xs", *sorted(env)])))
    elif source == "list":
        size = draw(st.integers(0, 4))
        over = [draw(exprs(env, 0)) for _ in range(size)]
    else:
        over = Fn(source, seed_expr)
    inner = env | {new_item}
    body: Any
    if depth == 1 and draw(st.booleans()):
        body = draw(st.sampled_from(TOOLS))  # shorthand for Call(tool, Var(item))
    else:
        body = draw(steps(inner, depth - 1, ids, new_item))
    reduce = draw(st.sampled_from([None, None, "plus", "cat"]))
    ordered = True if reduce == "cat" else draw(st.booleans())
    initial = None
    if reduce is not None:
        initial = draw(
            st.sampled_from(
                [None, 0, 7, Lit(5), Var(draw(st.sampled_from(sorted(env))))]
            )
        )
        if draw(st.booleans()):
            # A checked fold's outcome is only deterministic when the fold
            # order is, or when every value goes through it (an initial).
            if not ordered and initial is None:
                initial = 0
            reduce += "_checked"
    return MapReduce(
        over,
        body,
        reduce=reduce,
        initial=initial,
        max_concurrency=draw(st.sampled_from([None, 1, 2, 3])),
        ordered=ordered,
        item=new_item,
        on_error=on_error,
        name=label,
        timeout=step_timeout,
    )


def call_key(kind: str, tool: str, cid: int, n: int) -> str:
    """The key of a call ``(tool, cid, n)`` under a keyed limit of ``kind``."""
    if kind == "tool":
        return f"tool:{tool}"
    if kind == "arg":
        return f"arg:{n % 3}"
    if kind == "cid":
        return f"cid:{cid % 2}"
    return "one"


def _value_and_cid(value: Any, cid: int = 0) -> tuple[Any, int]:
    """The tools' signature: ``(value, cid=0)``."""
    return value, cid


def key_function(kind: str) -> Callable[[plait.ToolCall], str]:
    """``KeyedLimit``'s ``key``: :func:`call_key` of the call's arguments.

    The tools compute the same key from the arguments they get (middleware
    never changes them), to count the calls in flight per key.
    """

    def key(call: plait.ToolCall) -> str:
        value, cid = _value_and_cid(*call.args, **call.kwargs)
        return call_key(kind, call.name, cid, num(value))

    return key


@dataclass(frozen=True)
class Keyed:
    """``KeyedLimit`` middleware for a case: one per kind, the first outermost.

    ``limits`` are set on the registry after the engine is built; other keys
    stay unlimited. With ``shared`` the registry is also the engine's
    (``Engine(limiters=...)``), so a ``tool:<name>`` key is the very limiter
    of the tool's own limit, which a call must take once, not twice (the
    limited tools' own keys get no other limit then).
    """

    kinds: tuple[str, ...]
    limits: dict[str, int]
    shared: bool


@st.composite
def keyeds(draw: st.DrawFn) -> Keyed:
    """A random :class:`Keyed`."""
    kinds = tuple(
        draw(
            st.lists(
                st.sampled_from(sorted(KEYS_OF)), min_size=1, max_size=2, unique=True
            )
        )
    )
    shared = draw(st.booleans())
    limits: dict[str, int] = {}
    for kind in kinds:
        for key in KEYS_OF[kind]:
            if shared and key in ("tool:inc_lim", "tool:mul_lim"):
                continue
            limit = draw(st.sampled_from([None, 1, 2, 3]))
            if limit is not None:
                limits[key] = limit
    return Keyed(kinds, limits, shared)


@dataclass(frozen=True)
class Case:
    """One differential example: a workflow, a plan, and the engine's setup.

    ``copies`` runs of the workflow go at once on one engine, sharing its
    limits (the engine-wide, per-tool and keyed ones).
    """

    step: plait.Step
    plan: Plan
    engine_limit: int
    tool_limits: dict[str, int]
    middleware: bool
    events: bool
    copies: int
    keyed: Keyed | None = None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A random :class:`Case`; the plan knows which calls have a timeout."""
    ids = _Ids()
    step = draw(
        steps(frozenset(INPUTS), draw(st.sampled_from([3, 1, 2, 3, 4, 4])), ids)
    )
    plan = Plan(
        seed=draw(st.integers(0, 2**16)),
        fail_pct=draw(st.sampled_from([0, 5, 15, 40])),
        hang_pct=draw(st.sampled_from([0, 30])),
        timed=frozenset(ids.timed),
        timeout=TIMEOUT,
    )
    return Case(
        step=step,
        plan=plan,
        engine_limit=draw(st.sampled_from(ENGINE_LIMITS)),
        tool_limits={
            "inc_lim": draw(st.integers(1, 3)),
            "mul_lim": draw(st.integers(1, 3)),
        },
        middleware=draw(st.booleans()),
        events=draw(st.booleans()),
        copies=draw(st.sampled_from([1, 1, 2])),
        keyed=draw(st.one_of(st.none(), st.none(), keyeds())),
    )


def map_widths(step: plait.Step, path: str, engine_limit: int) -> dict[str, int]:
    """The width of every MapReduce in ``step``, by path with ``map[*]`` slots."""
    out: dict[str, int] = {}

    def walk(s: plait.Step, at: str) -> None:
        steps_at = f"{at}.steps" if at else "steps"
        if isinstance(s, Sequential):
            for i, c in enumerate(s.steps):
                walk(c, f"{steps_at}[{i}]")
        elif isinstance(s, Parallel):
            if isinstance(s.steps, dict):
                for k, c in s.steps.items():
                    walk(c, f"{steps_at}.{k}")
            else:
                for i, c in enumerate(s.steps):
                    walk(c, f"{steps_at}[{i}]")
        elif isinstance(s, MapReduce):
            out[at] = s.max_concurrency or engine_limit
            walk(s.map, f"{at}.map[*]" if at else "map[*]")

    walk(step, path)
    return out


# -- the real tools, instrumented --------------------------------------------


class Probe:
    """The tools, functions and middleware of one case, built from its plan.

    Every tool counts its calls by ``(tool, cid, num(value))`` (to compare
    with the reference) and its calls in flight, engine-wide and per tool,
    keeping the peaks (to check the limits). Sync tools also count the worker
    threads running tool code, which must drop to zero once a run ends. With
    ``keyed`` the tools also count their calls in flight per key
    (:func:`call_key`) of every ``KeyedLimit``. Every call's start and end go
    to ``log``, in order. The middleware, when used, counts the map elements with a call in flight
    per ``MapReduce``: never more than the map's ``max_concurrency``. Sources
    made by ``gen``/``agen`` are kept to check they were closed.
    """

    def __init__(
        self, plan: Plan, tool_limits: dict[str, int], keyed: Keyed | None = None
    ) -> None:
        self.plan = plan
        self.tool_limits = tool_limits
        self.keyed = keyed
        self.lock = threading.Lock()
        self.calls: Counter[CallKey] = Counter()
        self.log: list[tuple[str, CallKey]] = []
        self.in_flight = 0
        self.peak = 0
        self.tool_in_flight: Counter[str] = Counter()
        self.tool_peak: Counter[str] = Counter()
        self.key_in_flight: Counter[str] = Counter()
        self.key_peak: Counter[str] = Counter()
        self.threads_in_tools = 0
        self.sources: list[Iterator[Any] | AsyncIterator[Any]] = []
        self.elements: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self.width_peak: Counter[str] = Counter()
        self.events: list[plait.Event] = []

    def _limit_keys(self, key: CallKey) -> set[str]:
        """The keys of the call ``key`` under the case's keyed limits."""
        if self.keyed is None:
            return set()
        tool, cid, n = key
        return {call_key(kind, tool, cid, n) for kind in self.keyed.kinds}

    def _enter(self, key: CallKey, sync: bool) -> None:
        with self.lock:
            self.calls[key] += 1
            self.log.append(("start", key))
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.tool_in_flight[key[0]] += 1
            self.tool_peak[key[0]] = max(
                self.tool_peak[key[0]], self.tool_in_flight[key[0]]
            )
            for k in self._limit_keys(key):
                self.key_in_flight[k] += 1
                self.key_peak[k] = max(self.key_peak[k], self.key_in_flight[k])
            if sync:
                self.threads_in_tools += 1

    def _leave(self, key: CallKey, sync: bool) -> None:
        with self.lock:
            self.log.append(("end", key))
            self.in_flight -= 1
            self.tool_in_flight[key[0]] -= 1
            for k in self._limit_keys(key):
                self.key_in_flight[k] -= 1
            if sync:
                self.threads_in_tools -= 1

    def _async_tool(self, name: str) -> Callable[..., Any]:
        plan = self.plan
        result = TOOL_RESULTS[name]

        async def call(value: Any, cid: int = 0) -> int:
            n = num(value)
            outcome, pause = plan.call(name, cid, n)
            self._enter((name, cid, n), sync=False)
            try:
                if outcome == "hang":
                    await anyio.sleep(HANG)
                    raise AssertionError("a hanging call outlived its timeout")
                if pause == 1:
                    await anyio.lowlevel.checkpoint()
                elif pause >= 2:
                    await anyio.sleep((pause - 1) / 1000)
                if outcome == "fail":
                    raise ToolError(name, cid, n)
                return result(n, cid)
            finally:
                self._leave((name, cid, n), sync=False)

        return call

    def _sync_tool(self, name: str) -> Callable[..., Any]:
        plan = self.plan
        result = TOOL_RESULTS[name]

        def call(value: Any, cid: int = 0) -> int:
            n = num(value)
            outcome, pause = plan.call(name, cid, n)
            self._enter((name, cid, n), sync=True)
            try:
                if outcome == "hang":
                    # A thread cannot be killed: it stops at the next check
                    # once its call timed out.
                    end = time.monotonic() + HANG
                    while time.monotonic() < end:
                        plait.check_cancelled()
                        time.sleep(0.001)
                    raise AssertionError("a hanging call outlived its timeout")
                if pause >= 2:
                    time.sleep((pause - 1) / 1000)
                if outcome == "fail":
                    raise ToolError(name, cid, n)
                return result(n, cid)
            finally:
                self._leave((name, cid, n), sync=True)

        return call

    def tools(self, retry: plait.Retry | None = None) -> list[plait.Tool]:
        """The four tools; ``*_lim`` have a concurrency limit, ``mul*`` are sync.

        ``retry`` is the tools' own policy (``Engine.call_tools`` uses it).
        """
        return [
            plait.tool(
                name=name, concurrency_limit=self.tool_limits.get(name), retry=retry
            )(
                self._sync_tool(name)
                if name.startswith("mul")
                else self._async_tool(name)
            )
            for name in TOOLS
        ]

    def functions(self) -> dict[str, Callable[..., Any]]:
        """``check``, ``spread``, the sources ``gen``/``agen`` and the folds."""
        plan = self.plan

        def check(value: Any) -> int:
            return plan.check(num(value))

        def spread(value: Any) -> list[int]:
            return plan.spread(num(value))

        def gen(value: Any) -> Iterator[int]:
            items, error = plan.source(num(value))

            def produce() -> Iterator[int]:
                yield from items
                if error is not None:
                    raise error

            source = produce()
            self.sources.append(source)
            return source

        def agen(value: Any) -> AsyncIterator[int]:
            items, error = plan.source(num(value))

            async def produce() -> AsyncIterator[int]:
                for x in items:
                    await anyio.lowlevel.checkpoint()
                    yield x
                if error is not None:
                    raise error

            source = produce()
            self.sources.append(source)
            return source

        return {
            "check": check,
            "spread": spread,
            "gen": gen,
            "agen": agen,
            **folds(plan),
        }

    async def watch(self, call: plait.ToolCall, call_next: plait.Next) -> Any:
        """Middleware: count the map elements with a call in flight, per map."""
        places = [
            (call.path[: m.start()], int(m.group(1)))
            for m in MAP_ELEMENT.finditer(call.path)
        ]
        for where, i in places:
            self.elements[where][i] += 1
            self.width_peak[where] = max(
                self.width_peak[where], len(self.elements[where])
            )
        try:
            return await call_next(call)
        finally:
            for where, i in places:
                self.elements[where][i] -= 1
                if not self.elements[where][i]:
                    del self.elements[where][i]

    async def settle(self, seconds: float = 2.0) -> None:
        """Wait for worker threads of cancelled sync calls to leave tool code.

        plait stops waiting for a cancelled sync call at once, but the thread
        runs on until the tool returns (documented); here that is within a
        few milliseconds.
        """
        with anyio.move_on_after(seconds):
            while self.threads_in_tools:
                await anyio.sleep(0.002)

    def engine(
        self,
        engine_limit: int,
        middleware: list[plait.Middleware],
        retry: plait.Retry | None = None,
    ) -> plait.Engine:
        """An engine for these tools; the keyed limits come after ``middleware``."""
        keyed = self.keyed
        registry = plait.LimiterRegistry() if keyed is not None else None
        if keyed is not None:
            assert registry is not None
            middleware = middleware + [
                plait.KeyedLimit(registry, key_function(kind)) for kind in keyed.kinds
            ]
        engine = plait.Engine(
            tools=self.tools(retry),
            functions=self.functions(),
            max_concurrency=engine_limit,
            middleware=middleware,
            limiters=registry if keyed is not None and keyed.shared else None,
        )
        if keyed is not None:
            assert registry is not None
            for key, limit in keyed.limits.items():
                registry.set_limit(key, limit)
        return engine

    def flight_problems(self, engine_limit: int) -> list[str]:
        """Peaks over the engine's, a tool's or a key's concurrency limit."""
        problems = []
        if self.peak > engine_limit:
            problems.append(f"{self.peak} calls in flight, engine limit {engine_limit}")
        for tool, limit in self.tool_limits.items():
            if self.tool_peak[tool] > limit:
                problems.append(
                    f"{self.tool_peak[tool]} {tool} calls in flight, limit {limit}"
                )
        if self.keyed is not None:
            for key, limit in self.keyed.limits.items():
                if self.key_peak[key] > limit:
                    problems.append(
                        f"{self.key_peak[key]} calls keyed {key!r} in flight, "
                        f"keyed limit {limit}"
                    )
        return problems

    def limit_problems(self, case: Case) -> list[str]:
        """Peaks over the engine's, a tool's, a key's or a map's concurrency limit."""
        problems = self.flight_problems(case.engine_limit)
        widths = map_widths(case.step, "", case.engine_limit)
        # Concurrent copies share paths: the middleware cannot tell them apart.
        peaks = self.width_peak.items() if case.copies == 1 else ()
        for where, peak in peaks:
            width = widths[re.sub(r"map\[\d+\]", "map[*]", where)]
            if peak > width:
                problems.append(
                    f"{peak} elements of the map at {where or '<root>'} in flight, "
                    f"max_concurrency {width}"
                )
        return problems

    def event_problems(self, case: Case, ran: list[Ran]) -> list[str]:
        """Step events that contradict the run's outcome.

        Every recorded failure is also reported by a ``step.failed`` event:
        one at its path, or (for an ``over`` or ``reduce`` that failed outside
        collect mode, which are no steps of their own) one for the MapReduce
        whose error is the ``StepFailed`` naming that path. No step both
        finishes and fails (checked with one copy: two copies share paths).
        """
        if not case.events:
            return []
        failed = {e.path for e in self.events if e.kind == "step.failed"}
        failed |= {
            e.error.path
            for e in self.events
            if e.kind == "step.failed" and isinstance(e.error, plait.StepFailed)
        }
        finished = {e.path for e in self.events if e.kind == "step.finished"}
        problems = []
        for result, _ in ran:
            for failure in result.failures if result is not None else ():
                if failure.path not in failed:
                    problems.append(f"no step.failed event for {failure!r}")
        if case.copies == 1:
            both = sorted(failed & finished)
            if both:
                problems.append(f"steps both finished and failed: {both}")
        return problems

    def source_problems(self) -> list[str]:
        """Sources still open after the run (plait closes them when it stops)."""
        problems = []
        for source in self.sources:
            frame = getattr(source, "gi_frame", None) or getattr(
                source, "ag_frame", None
            )
            if frame is not None:
                problems.append(f"source {source!r} was left open")
        return problems


# -- leaks -------------------------------------------------------------------


def live_tasks(backend: str) -> int:
    """The tasks alive in the event loop now (on trio: the whole task tree)."""
    if backend == "trio":
        import trio

        root = trio.lowlevel.current_root_task()
        assert root is not None
        count = 0
        todo = [root]
        while todo:
            task = todo.pop()
            count += 1
            for nursery in task.child_nurseries:
                todo.extend(nursery.child_tasks)
        return count
    return len(asyncio.all_tasks())


def backend_name(anyio_backend: tuple[str, dict[str, Any]]) -> str:
    """``asyncio``, ``uvloop`` or ``trio``."""
    name, options = anyio_backend
    return "uvloop" if options.get("use_uvloop") else name


# Per backend: open file descriptors and threads at the first example, to
# catch slow leaks across a batch of runs.
_BASELINES: dict[str, tuple[int, int]] = {}
FD_SLACK = 8
THREAD_SLACK = 4


def resource_problems(backend: str, fds_before: int) -> list[str]:
    """File descriptors or threads left behind by a run or a batch of runs.

    Idle worker threads are not leaks: plait's pool (and AnyIO's and Trio's)
    keeps some for reuse, process-wide, so they outlive the example that
    started them. There are about as many as sync calls were ever in flight
    at once, which the largest engine limit of any example bounds; twice
    that, as a pool may start a thread while a finished one has not yet
    reported idle. A leak grows with every run and passes any such bound.
    Tool code still running is counted separately
    (:attr:`Probe.threads_in_tools`).
    """
    fds = psutil.Process().num_fds()
    threads = threading.active_count()
    first_fds, first_threads = _BASELINES.setdefault(backend, (fds_before, threads))
    problems = []
    if fds > fds_before + 2:
        problems.append(f"file descriptors: {fds_before} before the run, {fds} after")
    if fds > first_fds + FD_SLACK:
        problems.append(f"file descriptors grew from {first_fds} to {fds} over runs")
    if threads > first_threads + 2 * max(ENGINE_LIMITS) + THREAD_SLACK:
        names = Counter(t.name.split(" (")[0] for t in threading.enumerate())
        problems.append(
            f"threads grew from {first_threads} to {threads} over runs: {names}"
        )
    return problems


# -- the differential test ---------------------------------------------------


def outcome_problems(
    expected: Outcome, result: plait.RunResult | None, error: BaseException | None
) -> list[str]:
    """Differences between a run (its result, or what it raised) and the reference."""
    if error is not None:
        if expected.ok:
            return [f"raised {error!r}; expected the output {expected.value!r}"]
        return check_raised(error, expected.leaves)
    assert result is not None
    if not expected.ok:
        options = sorted(str(leaf) for leaf in expected.leaves)
        return [f"returned {result.output!r}; expected it to raise one of {options}"]
    problems = []
    if not matches(expected.value, result.output):
        problems.append(f"output {result.output!r}, expected {expected.value!r}")
    problems += check_failures(expected, result.failures)
    for failure in _failures_in(result.output):
        if failure not in result.failures:
            problems.append(f"{failure!r} is in the output but not in failures")
    return problems


def _failures_in(value: Any) -> Iterator[Failure]:
    if isinstance(value, Failure):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _failures_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _failures_in(v)


Ran = tuple[plait.RunResult | None, BaseException | None]


async def run_case(case: Case, backend: str) -> tuple[list[Ran], Probe, list[str]]:
    """Run ``case`` on the current backend.

    Returns what each copy gave (its result, or what it raised), the probe
    with the counts, and any leaks and limits exceeded.
    """
    probe = Probe(case.plan, case.tool_limits, case.keyed)
    engine = probe.engine(case.engine_limit, [probe.watch] if case.middleware else [])
    if case.events:
        engine.subscribe(probe.events.append)
    fds_before = psutil.Process().num_fds()
    tasks_before = live_tasks(backend)
    ran: list[Ran] = [(None, None)] * case.copies

    async def one(i: int) -> None:
        try:
            ran[i] = (await engine.execute(case.step, dict(INPUTS)), None)
        except (plait.StepFailed, ExceptionGroup) as raised:
            ran[i] = (None, raised)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(1, case.copies):
                tg.start_soon(one, i)
            await one(0)
    problems = []
    tasks_after = live_tasks(backend)
    if tasks_after != tasks_before:
        problems.append(f"{tasks_before} tasks before the run, {tasks_after} after")
    await probe.settle()
    if probe.threads_in_tools:
        problems.append(f"{probe.threads_in_tools} threads still run tool code")
    problems += probe.limit_problems(case)
    problems += probe.source_problems()
    problems += resource_problems(backend, fds_before)
    return ran, probe, problems


@pytest.mark.anyio
@DIFFERENTIAL
@given(case=cases())
async def test_random_workflows_match_the_reference(
    anyio_backend: tuple[str, dict[str, Any]], case: Case
) -> None:
    expected = Reference(case.plan).run(case.step, INPUTS)
    ran, probe, problems = await run_case(case, backend_name(anyio_backend))
    for result, error in ran:
        problems += outcome_problems(expected, result, error)
    problems += check_calls(expected, probe.calls, case.copies)
    problems += probe.event_problems(case, ran)
    # What the examples covered, shown by --hypothesis-show-statistics.
    event("raised" if ran[0][1] is not None else "returned")
    if ran[0][0] is not None:
        event(f"failures recorded: {min(len(ran[0][0].failures), 3)}")
    event(f"calls: {min(sum(probe.calls.values()) // 10 * 10, 100)}+")
    event(f"root: {type(case.step).__name__}")
    if case.keyed is not None:
        event(f"keyed: {'+'.join(case.keyed.kinds)}, shared={case.keyed.shared}")
        busy = [
            k for k, n in probe.key_peak.items() if n >= case.keyed.limits.get(k, 0) > 0
        ]
        event(f"a keyed limit reached: {bool(busy)}")
    assert not problems, "\n".join(problems)


# -- Engine.call_tools -------------------------------------------------------


# A batch is a flat list of calls: half the workflows' examples cover it.
CALL_TOOLS = settings(DIFFERENTIAL, max_examples=DIFFERENTIAL.max_examples // 2)


@dataclass(frozen=True)
class Batch:
    """One ``call_tools`` example: the calls, a plan and the engine's setup.

    Each call is ``(tool, value, cid, as_object)``: its kwargs are
    ``value=`` and, unless ``cid`` is None, ``cid=``; with ``as_object`` the
    registered :class:`plait.Tool` stands for its name. ``retry`` gives every
    tool :data:`RETRY` as its own policy, which ``call_tools`` uses.
    """

    calls: tuple[tuple[str, Any, int | None, bool], ...]
    plan: Plan
    parallel: bool
    collect: bool
    engine_limit: int
    tool_limits: dict[str, int]
    retry: bool
    keyed: Keyed | None

    def kwargs(self) -> list[tuple[str, dict[str, Any]]]:
        """``(tool name, kwargs)`` of every call."""
        return [
            (tool, {"value": value} if cid is None else {"value": value, "cid": cid})
            for tool, value, cid, _ in self.calls
        ]


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    """A random :class:`Batch`; no call hangs (the tools have no timeout)."""
    value = st.integers(0, 50) | st.lists(st.integers(0, 50), max_size=2)
    call = st.tuples(
        st.sampled_from(TOOLS),
        value,
        st.none() | st.integers(0, 5),
        st.sampled_from([False, False, True]),
    )
    return Batch(
        calls=tuple(draw(st.lists(call, max_size=8))),
        plan=Plan(
            seed=draw(st.integers(0, 2**16)),
            fail_pct=draw(st.sampled_from([0, 15, 40, 40])),
            hang_pct=0,
        ),
        parallel=draw(st.booleans()),
        collect=draw(st.booleans()),
        engine_limit=draw(st.sampled_from(ENGINE_LIMITS)),
        tool_limits={
            "inc_lim": draw(st.integers(1, 3)),
            "mul_lim": draw(st.integers(1, 3)),
        },
        retry=draw(st.booleans()),
        keyed=draw(st.none() | keyeds()),
    )


def batch_problems(
    batch: Batch,
    expected: list[BatchCall],
    result: list[Any] | None,
    error: BaseException | None,
    probe: Probe,
) -> list[str]:
    """Differences between a ``call_tools`` run and the reference.

    Collect mode returns every call's value, or a ``Failure`` at
    ``calls[i]`` with the call's own error, and makes every call (every
    attempt) once. Raise mode raises when some call fails: one after
    another, the first failing call, after which no call starts; in parallel,
    any of the failing calls (a group of several), and no call more often
    than the reference says. One after another, each call (attempt) ends
    before the next starts, in the batch's order.
    """
    failing = [i for i, c in enumerate(expected) if not c.ok]
    made = expected
    if failing and not batch.collect and not batch.parallel:
        made = expected[: failing[0] + 1]
    problems = []
    if failing and not batch.collect:
        if error is None:
            return [f"returned {result!r}; expected call(s) {failing} to raise"]
        allowed = failing[:1] if not batch.parallel else failing
        leaves = frozenset(Leaf(f"calls[{i}]", expected[i].error) for i in allowed)
        problems += check_raised(error, leaves)
        if not batch.parallel and not isinstance(error, plait.StepFailed):
            problems.append(f"one after another, raised a group: {error!r}")
    elif error is not None:
        return [f"raised {error!r}; expected a result"]
    else:
        assert result is not None
        if type(result) is not list or len(result) != len(expected):
            return [f"returned {result!r}; expected {len(expected)} results"]
        for i, (want, got) in enumerate(zip(expected, result, strict=True)):
            if want.ok:
                if type(got) is not type(want.value) or got != want.value:
                    problems.append(f"calls[{i}] gave {got!r}, expected {want.value!r}")
            elif not (
                isinstance(got, Failure)
                and got.path == f"calls[{i}]"
                and isinstance(got.error, ToolError)
                and signature(got.error) == want.error
            ):
                problems.append(
                    f"calls[{i}] gave {got!r}, expected a Failure at calls[{i}] "
                    f"with {want.error}"
                )
    low: Counter[CallKey] = Counter()
    high: Counter[CallKey] = Counter()
    for c in made:
        high[c.key] += c.attempts
        if batch.collect or not batch.parallel:
            low[c.key] += c.attempts
    for key in set(low) | set(high) | set(probe.calls):
        if not low[key] <= probe.calls[key] <= high[key]:
            problems.append(
                f"call {key} ran {probe.calls[key]} times, "
                f"expected {low[key]}..{high[key]}"
            )
    if not batch.parallel:
        order = [
            (edge, c.key)
            for c in made
            for _ in range(c.attempts)
            for edge in ("start", "end")
        ]
        if probe.log != order:
            problems.append(f"one after another, ran {probe.log}, expected {order}")
    return problems


@pytest.mark.anyio
@CALL_TOOLS
@given(batch=batches())
async def test_call_tools_matches_the_reference(
    anyio_backend: tuple[str, dict[str, Any]], batch: Batch
) -> None:
    backend = backend_name(anyio_backend)
    retry = RETRY if batch.retry else None
    expected = reference_batch(batch.plan, batch.kwargs(), retry)
    probe = Probe(batch.plan, batch.tool_limits, batch.keyed)
    engine = probe.engine(batch.engine_limit, [], retry)
    tools = engine.tools
    calls = [
        (tools[name] if as_object else name, kwargs)
        for (name, kwargs), (*_, as_object) in zip(
            batch.kwargs(), batch.calls, strict=True
        )
    ]
    fds_before = psutil.Process().num_fds()
    tasks_before = live_tasks(backend)
    result: list[Any] | None = None
    error: BaseException | None = None
    with anyio.fail_after(30):
        try:
            result = await engine.call_tools(
                calls,
                parallel=batch.parallel,
                on_error="collect" if batch.collect else "raise",
            )
        except (plait.StepFailed, ExceptionGroup) as raised:
            error = raised
    problems = batch_problems(batch, expected, result, error, probe)
    tasks_after = live_tasks(backend)
    if tasks_after != tasks_before:
        problems.append(f"{tasks_before} tasks before the run, {tasks_after} after")
    await probe.settle()
    if probe.threads_in_tools:
        problems.append(f"{probe.threads_in_tools} threads still run tool code")
    problems += probe.flight_problems(batch.engine_limit)
    problems += resource_problems(backend, fds_before)
    event("raised" if error is not None else "returned")
    event(f"failing calls: {min(sum(not c.ok for c in expected), 3)}")
    event(
        f"{'parallel' if batch.parallel else 'one by one'}, "
        f"{'collect' if batch.collect else 'raise'}"
    )
    assert not problems, "\n".join(problems)


# -- rate limits -------------------------------------------------------------


def rate_limit_problems(starts: list[float], spec: plait.RateLimit) -> list[str]:
    """Windows in which more calls started than the bucket allows.

    Over any window of ``w`` seconds at most ``burst + w * rate / per`` calls
    may start. ``starts`` are read on entry to an async tool, in the same
    step of the event loop as the token was taken, so they lag the token by
    microseconds (the test turns the garbage collector off, whose pauses
    could fall in between); two milliseconds of slack cover a preempted
    process without hiding a whole extra call at the rates used here (at
    most 400 a second).
    """
    times = sorted(starts)
    rate = spec.rate / spec.per
    problems = []
    for i, first in enumerate(times):
        for j in range(i, len(times)):
            window = times[j] - first
            allowed = spec.capacity + (window + 0.002) * rate + 1e-9
            if j - i + 1 > allowed:
                problems.append(
                    f"{j - i + 1} calls started within {window * 1000:.3f} ms, "
                    f"{spec!r} allows {allowed:.2f}"
                )
    return problems[:5]


rate_limits = st.builds(
    plait.RateLimit,
    rate=st.sampled_from([100.0, 200.0, 400.0]),
    per=st.sampled_from([1.0, 2.0]),
    burst=st.none() | st.integers(1, 4),
)


@pytest.mark.anyio
@DIFFERENTIAL
@given(
    engine_rate=st.none() | rate_limits,
    tool_rate=st.none() | rate_limits,
    keyed_rate=st.one_of(st.none(), st.none(), rate_limits),
    counts=st.tuples(st.integers(0, 12), st.integers(0, 12)),
    tool_limit=st.none() | st.integers(1, 3),
    engine_limit=st.integers(1, 6),
    widths=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    pauses=st.lists(st.integers(0, 2), min_size=12, max_size=12),
)
async def test_rate_limited_starts_never_exceed_the_bucket(
    anyio_backend: tuple[str, dict[str, Any]],
    engine_rate: plait.RateLimit | None,
    tool_rate: plait.RateLimit | None,
    keyed_rate: plait.RateLimit | None,
    counts: tuple[int, int],
    tool_limit: int | None,
    engine_limit: int,
    widths: tuple[int, int],
    pauses: list[int],
) -> None:
    starts: dict[str, list[float]] = {"limited": [], "plain": []}
    # Under KeyedRateLimit, keyed by the argument's parity, whatever the tool.
    keyed_starts: dict[str, list[float]] = {"even": [], "odd": []}

    def parity(call: plait.ToolCall) -> str:
        return "odd" if call.args[0] % 2 else "even"

    def make(name: str) -> Callable[[int], Any]:
        async def call(i: int) -> int:
            now = time.monotonic()
            starts[name].append(now)
            keyed_starts["odd" if i % 2 else "even"].append(now)
            if pauses[i]:
                await anyio.sleep(pauses[i] / 1000)
            return i

        return call

    limited = plait.tool(
        name="limited", rate_limit=tool_rate, concurrency_limit=tool_limit
    )(make("limited"))
    plain = plait.tool(name="plain")(make("plain"))
    engine = plait.Engine(
        tools=[limited, plain],
        max_concurrency=engine_limit,
        rate_limit=engine_rate,
        middleware=[]
        if keyed_rate is None
        else [plait.KeyedRateLimit(keyed_rate, key=parity)],
    )
    wf = Parallel(
        MapReduce(Var("a"), "limited", max_concurrency=widths[0]),
        MapReduce(Var("b"), "plain", max_concurrency=widths[1]),
    )
    inputs = {"a": list(range(counts[0])), "b": list(range(counts[1]))}
    gc.disable()
    try:
        with anyio.fail_after(30):
            out = await engine.run(wf, inputs)
    finally:
        gc.enable()
    assert out == [inputs["a"], inputs["b"]]
    problems = []
    if tool_rate is not None:
        problems += rate_limit_problems(starts["limited"], tool_rate)
    if engine_rate is not None:
        problems += rate_limit_problems(
            starts["limited"] + starts["plain"], engine_rate
        )
    if keyed_rate is not None:
        for key, times in keyed_starts.items():
            problems += [f"{key}: {p}" for p in rate_limit_problems(times, keyed_rate)]
    assert not problems, "\n".join(problems)


# -- bugs found by the differential tests, fixed -----------------------------


@pytest.mark.anyio
async def test_a_container_holding_only_lit_is_evaluated() -> None:
    async def echo(value: Any) -> Any:
        return value

    engine = plait.Engine(tools=[echo])
    # Unwrapped beside a Var (documented: containers holding expressions are
    # evaluated element by element, and Lit is an expression)...
    assert await engine.run(Call("echo", [Var("x"), Lit(1)]), {"x": 0}) == [0, 1]
    # ...so alone they must be unwrapped too, not reach the tool as Lit(1).
    assert await engine.run(Call("echo", [Lit(1)])) == [1]
    assert await engine.run(Call("echo", {"k": Lit(1)})) == {"k": 1}
    assert await engine.run(Call("echo", (Lit(1),))) == (1,)


# -- more bugs found by the differential tests, fixed -------------------------


@pytest.mark.anyio
async def test_unordered_reduce_failing_twice_at_once_raises_once() -> None:
    gate = anyio.Event()
    arrived = 0

    async def meet(x: int) -> int:
        # Every element's call returns in the same step of the event loop.
        nonlocal arrived
        arrived += 1
        if arrived == 3:
            gate.set()
        await gate.wait()
        return x

    def refuse(acc: int, x: int) -> int:
        raise ValueError(x)

    engine = plait.Engine(tools=[meet], functions={"refuse": refuse})
    wf = MapReduce(Var("xs"), "meet", reduce="refuse", initial=0, ordered=False)
    with pytest.raises(plait.StepFailed) as raised:
        await engine.run(wf, {"xs": [1, 2, 3]})
    assert raised.value.path == "reduce"
    assert isinstance(raised.value.error, ValueError)
