"""What a run has done so far, counted from the engine's events.

The progress display and the summary of ``plait run`` read a
:class:`RunTracker`. It is filled by an event subscriber but lives outside
the event loop, so that after Ctrl-C, which ends the loop, the summary can
still say what finished.

Steps outside every map run at most once per run, so their paths are known
before the run starts: each has a :class:`StepProgress`. Steps inside a
map's per-element step run once per element; they are not tracked one by
one but count towards the ``MapReduce`` that holds them: its elements done
and failed, and the retries and rate-limit waits of their calls.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from .._model._errors import WorkflowError
from .._model._events import Event, EventKind
from .._model._expr import Fn, compile_expr
from .._model._paths import child, index
from .._model._stats import ToolCounters
from .._model._steps import Call, MapReduce, Parallel, Sequential, Step, Workflow

__all__ = ["KINDS", "RunTracker", "State", "StepProgress"]

#: The file-form names of the step classes, as ``plait show`` prints them.
KINDS = {
    "Call": "call",
    "Sequential": "sequential",
    "Parallel": "parallel",
    "MapReduce": "map_reduce",
}

# The first map element in a path: "steps[1]" owns "steps[1].map[7].steps[0]".
_MAP_ELEMENT = re.compile(r"(?:^|\.)map\[\d+\]")
# A map's per-element step itself: "steps[1].map[7]", "map[7]".
_ELEMENT_STEP = re.compile(r"(?:(.*)\.)?map\[\d+\]")


class State(enum.Enum):
    """Where a tracked step is."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class StepProgress:
    """The progress of one step outside every map.

    Attributes:
        path: the step's path (``""`` for the root).
        kind: ``call``, ``sequential``, ``parallel`` or ``map_reduce``.
        label: the tool of a call (or of a map's call), else the step's name.
        parent: the enclosing step's progress, None for the root.
        total: the parts to do: elements of a map (when ``over`` has a
            length), steps of a sequential, branches of a parallel.
        done, failed: parts finished and parts failed.
        retries, waits, call_failures: of the tool calls inside the step.
        error: the error a failed step raised.
    """

    __slots__ = (
        "call_failures",
        "depth",
        "done",
        "ended",
        "error",
        "failed",
        "kind",
        "label",
        "parent",
        "path",
        "retries",
        "started",
        "state",
        "total",
        "waits",
    )

    def __init__(
        self,
        path: str,
        kind: str,
        label: str,
        parent: StepProgress | None,
        total: int | None,
    ) -> None:
        self.path = path
        self.kind = kind
        self.label = label
        self.parent = parent
        self.depth: int = 0 if parent is None else parent.depth + 1
        self.total = total
        self.state = State.WAITING
        self.started: float | None = None
        self.ended: float | None = None
        self.error: BaseException | None = None
        self.done = 0
        self.failed = 0
        self.retries = 0
        self.waits = 0
        self.call_failures = 0

    def __repr__(self) -> str:
        return f"<StepProgress {self.path or '<root>'} {self.kind} {self.state.value}>"

    @property
    def unit(self) -> str | None:
        """What ``done`` counts: ``items``, ``steps``, ``branches`` or None."""
        return {
            "map_reduce": "items",
            "sequential": "steps",
            "parallel": "branches",
        }.get(self.kind)

    def elapsed(self, now: float) -> float:
        """Seconds the step has run (until it ended, or until ``now``)."""
        if self.started is None:
            return 0.0
        return (self.ended if self.ended is not None else now) - self.started

    def rate(self, now: float) -> float | None:
        """Parts finished per second, for a map; None before the first second."""
        elapsed = self.elapsed(now)
        if self.kind != "map_reduce" or elapsed <= 0.0:
            return None
        return (self.done + self.failed) / elapsed

    def eta(self, now: float) -> float | None:
        """Seconds left at the current rate, when the total is known."""
        rate = self.rate(now)
        if self.total is None or not rate:
            return None
        return max(0.0, self.total - self.done - self.failed) / rate


@attrs.define
class _Walk:
    """Builds the :class:`StepProgress` records of a step tree."""

    steps: dict[str, StepProgress] = attrs.field(factory=dict)

    def step(self, step: Step, path: str, parent: StepProgress | None) -> None:
        kind = KINDS[type(step).__name__]
        label = step.name or ""
        total: int | None = None
        children: list[tuple[Step, str]] = []
        if isinstance(step, Call):
            label = step.tool_name
        elif isinstance(step, Sequential):
            steps_at = child(path, "steps")
            children = [(s, index(steps_at, i)) for i, s in enumerate(step.steps)]
        elif isinstance(step, Parallel):
            steps_at = child(path, "steps")
            if isinstance(step.steps, dict):
                children = [(s, child(steps_at, k)) for k, s in step.steps.items()]
            else:
                children = [(s, index(steps_at, i)) for i, s in enumerate(step.steps)]
        elif isinstance(step, MapReduce) and isinstance(step.map, Call):
            label = step.name or step.map.tool_name
        if children:
            total = len(children)
        progress = StepProgress(path, kind, label, parent, total)
        self.steps[path] = progress
        for s, p in children:
            self.step(s, p, progress)


class RunTracker:
    """Counts what a run did, from its events; call it as a subscriber.

    Args:
        workflow: the workflow that will run.
        clock: the clock of :attr:`plait.Event.time` (``time.monotonic``).
    """

    def __init__(
        self, workflow: Workflow, clock: Callable[[], float] = time.monotonic
    ) -> None:
        walk = _Walk()
        walk.step(workflow.step, "", None)
        self.steps = walk.steps
        self.clock = clock
        self.tools: dict[str, ToolCounters] = {}
        self.in_flight: set[tuple[str, int | None]] = set()
        self.abandoned_threads = 0
        self.started: float | None = None
        self.ended: float | None = None

    # -- the run ------------------------------------------------------------
    def instrument(self, workflow: Workflow, inputs: Iterable[str]) -> Workflow:
        """``workflow`` with each tracked map measuring the length of its input.

        The events do not say how many elements a ``MapReduce`` will take.
        Wrapping ``over`` in ``Fn(measure, over)`` reads it: ``measure``
        notes ``len()`` of the value, when it has one, and returns the value
        unchanged, so the run is the same: errors in ``over`` keep their
        path, and generators are still consumed lazily. An ``over`` that
        does not compile against ``inputs`` (the names of the run's inputs)
        and the names bound before it is left as it is, for the engine to
        report with its usual path.
        """
        env = frozenset(inputs)
        return attrs.evolve(workflow, step=self._instrument(workflow.step, "", env))

    def _instrument(self, step: Step, path: str, env: frozenset[str]) -> Step:
        if isinstance(step, MapReduce):
            try:
                compile_expr(step.over, env, {}, child(path, "over"))
            except WorkflowError:
                return step
            return attrs.evolve(step, over=Fn(self._measure(path), step.over))
        if isinstance(step, Sequential):
            steps_at = child(path, "steps")
            steps = []
            for i, s in enumerate(step.steps):
                steps.append(self._instrument(s, index(steps_at, i), env))
                if s.name is not None:
                    env = env | {s.name}
            return Sequential(*steps, name=step.name, timeout=step.timeout)
        if isinstance(step, Parallel):
            steps_at = child(path, "steps")
            options: dict[str, Any] = {
                "name": step.name,
                "timeout": step.timeout,
                "on_error": step.on_error,
            }
            if isinstance(step.steps, dict):
                branches = {
                    k: self._instrument(s, child(steps_at, k), env)
                    for k, s in step.steps.items()
                }
                return Parallel(branches, **options)
            return Parallel(
                *(
                    self._instrument(s, index(steps_at, i), env)
                    for i, s in enumerate(step.steps)
                ),
                **options,
            )
        return step

    def _measure(self, path: str) -> Callable[[Any], Any]:
        progress = self.steps[path]

        def measure(over: Any) -> Any:
            try:
                progress.total = len(over)
            except Exception:  # no length (a generator), or a broken __len__
                progress.total = None
            return over

        measure.__name__ = measure.__qualname__ = "measure_input"
        return measure

    def start(self) -> None:
        """The run starts now."""
        self.started = self.clock()

    def stop(self) -> None:
        """The run ended now, however it ended."""
        if self.ended is None:
            self.ended = self.clock()

    def elapsed(self, now: float | None = None) -> float:
        """Seconds since :meth:`start`, until :meth:`stop`."""
        if self.started is None:
            return 0.0
        end = self.ended if self.ended is not None else (now or self.clock())
        return end - self.started

    # -- reading ------------------------------------------------------------
    def __iter__(self) -> Iterator[StepProgress]:
        """Every tracked step, in the order of the tree."""
        return iter(self.steps.values())

    def running(self) -> list[StepProgress]:
        """The tracked steps running now, in the order of the tree."""
        return [s for s in self.steps.values() if s.state is State.RUNNING]

    @property
    def calls(self) -> int:
        """Tool calls started so far (a retried call counts once)."""
        return sum(t.calls for t in self.tools.values())

    @property
    def failures(self) -> int:
        """Tool calls that failed after their last attempt."""
        return sum(t.failures for t in self.tools.values())

    @property
    def retries(self) -> int:
        """Attempts after the first."""
        return sum(t.retries for t in self.tools.values())

    @property
    def waits(self) -> int:
        """Attempts that waited for a rate-limit token."""
        return sum(t.rate_limited for t in self.tools.values())

    @property
    def pushed_back(self) -> int:
        """Attempts the service pushed back (:class:`plait.RateLimited`)."""
        return sum(t.pushed_back for t in self.tools.values())

    def limits(self) -> dict[str, int]:
        """The current adaptive concurrency limits of those that moved.

        By tool (``api``), and by tool and key under a :class:`plait.KeyedLimit`
        (``api[alice]``).
        """
        found = {}
        for name, t in self.tools.items():
            if t.limit is not None:
                found[name] = t.limit
            for key, limit in t.key_limits.items():
                found[f"{name}[{key}]"] = limit
        return found

    # -- the subscriber -----------------------------------------------------
    def __call__(self, event: Event) -> None:
        """Count one event (a quick, synchronous engine subscriber)."""
        kind = event.kind
        path = event.path
        if kind is EventKind.STEP_STARTED:
            progress = self.steps.get(path)
            if progress is not None:
                progress.state = State.RUNNING
                progress.started = event.time
            return
        if kind is EventKind.STEP_FINISHED or kind is EventKind.STEP_FAILED:
            self._step_ended(event, kind is EventKind.STEP_FINISHED)
            return
        tool = self.tools.get(event.tool or "")
        if tool is None:
            tool = self.tools[event.tool or ""] = ToolCounters()
        attempt = (path, event.attempt)
        if kind is EventKind.CALL_STARTED:
            if event.attempt == 1:
                tool.calls += 1
            self.in_flight.add(attempt)
        elif kind is EventKind.CALL_FINISHED:
            self.in_flight.discard(attempt)
            if event.duration is not None:
                tool.latency.add(event.duration)
        elif kind is EventKind.CALL_FAILED:
            self.in_flight.discard(attempt)
            tool.failures += 1
            for progress in self._owners(path):
                progress.call_failures += 1
        elif kind is EventKind.CALL_RETRIED:
            self.in_flight.discard(attempt)
            tool.retries += 1
            for progress in self._owners(path):
                progress.retries += 1
        elif kind is EventKind.CALL_RATE_LIMITED:
            tool.rate_limited += 1
            for progress in self._owners(path):
                progress.waits += 1
        elif kind is EventKind.CALL_TIMED_OUT:
            self.in_flight.discard(attempt)
            tool.timeouts += 1
        elif kind is EventKind.THREAD_ABANDONED:
            self.abandoned_threads += 1
        elif kind is EventKind.CALL_PUSHED_BACK:
            tool.pushed_back += 1
        elif kind is EventKind.LIMIT_CHANGED and event.limit is not None:
            if event.key is None:
                tool.limit = event.limit
            else:
                tool.key_limits[event.key] = event.limit

    def _step_ended(self, event: Event, ok: bool) -> None:
        progress = self.steps.get(event.path)
        if progress is not None:
            progress.state = State.DONE if ok else State.FAILED
            progress.ended = event.time
            if not ok:
                progress.error = event.error
            owner = progress.parent
        else:
            element = _ELEMENT_STEP.fullmatch(event.path)
            if element is None:
                return
            owner = self.steps.get(element.group(1) or "")
        if owner is None:
            return
        if ok:
            owner.done += 1
        else:
            owner.failed += 1

    def _owners(self, path: str) -> Iterator[StepProgress]:
        """The tracked steps a call at ``path`` is inside, innermost first."""
        element = _MAP_ELEMENT.search(path)
        progress = self.steps.get(path[: element.start()] if element else path)
        while progress is not None:
            yield progress
            progress = progress.parent
