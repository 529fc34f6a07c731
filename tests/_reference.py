"""A plain sequential reference interpreter for plait workflows.

The differential tests (``tests/test_differential.py``) run random workflows
through :class:`plait.Engine` and through :class:`Reference`, and compare.
The reference walks the step tree one step at a time, with no concurrency,
no cancellation and no limits, so that it is obviously right; what it cannot
know (which of several concurrent failures wins the race, whether a sibling
was cancelled before it called its tool) it reports as a set of allowed
outcomes instead of one guess.

Tools, functions and generators do not decide at random whether they fail:
a :class:`Plan` maps the call's identity (tool, call id, argument) to a
behaviour, so the real run and the reference agree on what every call does.

Path format (from ``plait._model._paths`` and ``docs/explanation/semantics.md``):
the root is ``""``; children of ``Sequential`` and positional ``Parallel`` are
``steps[i]``, named branches ``steps.<key>``; a ``MapReduce`` has ``over``,
``reduce`` and, per element ``i``, ``map[i]``; parts are joined with dots.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import plait
from plait import Call, Failure, Fn, Lit, MapReduce, Parallel, Sequential, Var

__all__ = [
    "MOD",
    "TOOL_RESULTS",
    "BatchCall",
    "CallKey",
    "FailureSpec",
    "FnError",
    "Leaf",
    "Outcome",
    "Plan",
    "Reference",
    "ReduceError",
    "SourceError",
    "ToolError",
    "Trace",
    "check_calls",
    "check_failures",
    "check_raised",
    "folds",
    "matches",
    "num",
    "reference_batch",
    "signature",
]

MOD = 1009


# -- what the plan makes tools, functions and sources raise ------------------


class ToolError(Exception):
    """A tool call failed because the plan says so: ``ToolError(tool, cid, n)``."""


class FnError(Exception):
    """A function in an expression failed: ``FnError(function, n)``."""


class SourceError(Exception):
    """A generator given as ``over`` failed: ``SourceError(n, after)``."""


class ReduceError(Exception):
    """A checked reduce function refused a value: ``ReduceError(n)``."""


def num(value: Any) -> int:
    """Fold any value a step can give into an int, so every tool is total.

    A collected :class:`plait.Failure` (and the reference's stand-in for
    one) counts as 0, so values computed downstream of a failure do not
    depend on which of several possible failures it was.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value % MOD
    if isinstance(value, dict):
        return sum(num(v) for v in value.values()) % MOD
    if isinstance(value, list | tuple):
        return sum(num(v) for v in value) % MOD
    return 0


# What each tool returns for the argument ``n`` (after ``num``) and call id.
TOOL_RESULTS: dict[str, Callable[[int, int], int]] = {
    "inc": lambda n, cid: (n + cid + 1) % MOD,
    "mul": lambda n, cid: (n * 3 + cid) % MOD,
    "inc_lim": lambda n, cid: (n + 2 * cid + 5) % MOD,
    "mul_lim": lambda n, cid: (n * 5 + cid + 2) % MOD,
}

# The call's identity, as the tools count calls: (tool, call id, num(argument)).
CallKey = tuple[str, int, int]


# -- the plan ----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Decides, deterministically, what every call, function and source does.

    Everything is a function of ``seed`` and the thing's identity, hashed with
    CRC-32 (not ``hash()``, which changes between processes, so that a failing
    example replays the same way).

    Attributes:
        seed: varies the behaviours between examples.
        fail_pct: percent of calls, checks, sources and folds that fail.
        hang_pct: percent of calls with a timeout that hang until it fires.
        timed: the call ids whose ``Call`` has a ``timeout=`` (only those may
            hang: a hang with no timeout would never end).
        timeout: the ``timeout=`` those calls use.
    """

    seed: int
    fail_pct: int
    hang_pct: int
    timed: frozenset[int] = frozenset()
    timeout: float = 0.05

    def _hash(self, *parts: object) -> int:
        return zlib.crc32(repr((self.seed, *parts)).encode())

    def call(self, tool: str, cid: int, n: int) -> tuple[str, int]:
        """``(outcome, pause)`` of a call: outcome ``ok``, ``fail`` or ``hang``.

        ``pause`` is 0 (no await at all), 1 (one checkpoint) or ``k >= 2``
        (sleep ``k - 1`` milliseconds).
        """
        h = self._hash("call", tool, cid, n)
        pause = h % 5
        if cid in self.timed and (h >> 8) % 100 < self.hang_pct:
            return "hang", pause
        if (h >> 16) % 100 < self.fail_pct:
            return "fail", pause
        return "ok", pause

    def check(self, n: int) -> int:
        """The ``check`` function: ``n``, or :class:`FnError` per the plan."""
        if self._hash("check", n) % 100 < self.fail_pct:
            raise FnError("check", n)
        return n

    def items(self, n: int) -> list[int]:
        """The elements a source built from ``n`` gives: 0 to 6 distinct ints."""
        size = self._hash("size", n) % 7
        return [(n * 7 + i * 13 + 1) % MOD for i in range(size)]

    def spread(self, n: int) -> list[int]:
        """The ``spread`` function: :meth:`items`, or :class:`FnError` (rarely)."""
        if self._hash("spread", n) % 200 < self.fail_pct:
            raise FnError("spread", n)
        return self.items(n)

    def source(self, n: int) -> tuple[list[int], SourceError | None]:
        """What a generator built from ``n`` yields, and what it raises after."""
        items = self.items(n)
        h = self._hash("source", n)
        if h % 100 >= self.fail_pct:
            return items, None
        after = (h >> 8) % (len(items) + 1)
        return items[:after], SourceError(n, after)

    def reduce_fails(self, n: int) -> bool:
        """Whether a checked fold refuses the value ``n``."""
        return self._hash("reduce", n) % 100 < self.fail_pct


def _plus(acc: Any, value: Any) -> int:
    """Commutative and associative; the ``+ 1`` shows where the fold started."""
    return (num(acc) + num(value) + 1) % MOD


def _cat(acc: Any, value: Any) -> int:
    """Not commutative: the order of the fold shows in the result."""
    return (num(acc) * 31 + num(value) + 1) % MOD


def _checked(plan: Plan, fold: Callable[[Any, Any], int]) -> Callable[[Any, Any], int]:
    def checked(acc: Any, value: Any) -> int:
        if plan.reduce_fails(num(value)):
            raise ReduceError(num(value))
        return fold(acc, value)

    return checked


def folds(plan: Plan) -> dict[str, Callable[[Any, Any], int]]:
    """The reduce functions, by name; the ``_checked`` ones fail per the plan.

    ``plus`` is commutative and associative (safe with ``ordered=False``);
    ``cat`` is not (only used with ``ordered=True``).
    """
    return {
        "plus": _plus,
        "cat": _cat,
        "plus_checked": _checked(plan, _plus),
        "cat_checked": _checked(plan, _cat),
    }


# -- expected outcomes -------------------------------------------------------


def signature(error: BaseException) -> tuple[Any, ...]:
    """What identifies an error for comparison: type and arguments.

    Errors whose message is plait's own wording (a failed ``Var`` lookup, a
    non-iterable ``over``) are compared by type only.
    """
    if isinstance(error, plait.ToolTimeout):
        return ("ToolTimeout", error.tool, error.timeout)
    if isinstance(error, plait.ExpressionError | TypeError):
        return (type(error).__name__,)
    return (type(error).__name__, *error.args)


@dataclass(frozen=True)
class Leaf:
    """A failure that may surface: the failing step's path and the error."""

    path: str
    sig: tuple[Any, ...]


@dataclass(frozen=True, eq=False)
class FailureSpec:
    """What collect mode may record for one branch, element, source or fold.

    ``at`` is the path of the collecting place (``steps[1]``, ``map[3]``,
    ``over``, ``reduce``). The recorded :class:`plait.Failure` must be one of
    ``leaves`` (the innermost failing step's path and its original error) or,
    when the branch raised a group (several of its own failures won the race
    together), a failure at ``at`` whose ``ExceptionGroup`` holds two or more
    errors, each one of the leaves'.
    """

    at: str
    leaves: frozenset[Leaf]

    def accepts(self, failure: object) -> bool:
        """Whether the actual ``failure`` is one this spec allows."""
        if not isinstance(failure, Failure):
            return False
        error = failure.error
        if isinstance(error, BaseExceptionGroup):
            sigs = {leaf.sig for leaf in self.leaves}
            return (
                failure.path == self.at
                and len(error.exceptions) >= 2
                and all(signature(e) in sigs for e in error.exceptions)
            )
        return Leaf(failure.path, signature(error)) in self.leaves

    def __repr__(self) -> str:
        options = sorted(f"{leaf.path or '<root>'}:{leaf.sig}" for leaf in self.leaves)
        return f"FailureSpec(at={self.at!r}, one of {options})"


@dataclass
class Trace:
    """Tool calls made and failures recorded by a piece of a run."""

    calls: Counter[CallKey] = field(default_factory=Counter)
    failures: list[FailureSpec] = field(default_factory=list)

    def add(self, other: Trace) -> None:
        """Add ``other``'s calls and failures to these."""
        self.calls.update(other.calls)
        self.failures.extend(other.failures)


@dataclass
class Outcome:
    """What a step does, as far as a sequential walk can tell.

    Attributes:
        ok: whether the step returns (else it raises).
        value: the returned value when ``ok``; collected failures in it are
            :class:`FailureSpec` placeholders.
        leaves: when not ``ok``, every failure the step may raise (a
            ``StepFailed`` for one of them, or a group of several).
        certain: calls and recorded failures that must happen.
        possible: calls and recorded failures that may happen or not (they
            sit where a failing sibling can cancel them first).
    """

    ok: bool
    value: Any = None
    leaves: frozenset[Leaf] = frozenset()
    certain: Trace = field(default_factory=Trace)
    possible: Trace = field(default_factory=Trace)

    def uncertain(self) -> Trace:
        """Everything this outcome did, all of it made possible only."""
        out = Trace()
        out.add(self.certain)
        out.add(self.possible)
        return out


class _Nothing:
    def __repr__(self) -> str:
        return "<nothing>"


_NOTHING: Any = _Nothing()


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# -- the interpreter ---------------------------------------------------------


class Reference:
    """Evaluates a step tree sequentially, under a :class:`Plan`.

    Tools take ``(value, cid=0)`` and are looked up in :data:`TOOL_RESULTS`;
    the functions known to ``Fn`` are ``check``, ``spread``, ``gen`` and
    ``agen`` (the last two build sources that may fail part-way), and the
    reduce functions are those of :func:`folds`.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.folds = folds(plan)

    def run(self, step: plait.Step, inputs: Mapping[str, Any]) -> Outcome:
        """The outcome of running ``step`` with ``inputs``."""
        return self.step(step, dict(inputs), "")

    # -- expressions ---------------------------------------------------------
    def expr(self, expr: Any, scope: dict[str, Any]) -> Any:
        """Evaluate an expression as plait documents it; raise as plait would."""
        if isinstance(expr, Var):
            root, *parts = expr.path.split(".")
            value = scope[root]
            for part in parts:
                value = _lookup(value, part)
            return value
        if isinstance(expr, Lit):
            return expr.value
        if isinstance(expr, Fn):
            args = [self.expr(a, scope) for a in expr.args]
            if expr.fn == "check":
                return self.plan.check(num(args[0]))
            if expr.fn == "spread":
                return self.plan.spread(num(args[0]))
            raise AssertionError(f"the reference has no function {expr.fn!r}")
        if isinstance(expr, list):
            return [self.expr(e, scope) for e in expr]
        if isinstance(expr, tuple):
            return tuple(self.expr(e, scope) for e in expr)
        if isinstance(expr, dict):
            return {k: self.expr(v, scope) for k, v in expr.items()}
        return expr

    # -- steps ---------------------------------------------------------------
    def step(self, step: plait.Step, scope: dict[str, Any], path: str) -> Outcome:
        """The outcome of ``step`` at ``path`` with the variables ``scope``."""
        if isinstance(step, Call):
            return self.call(step, scope, path)
        if isinstance(step, Sequential):
            return self.sequential(step, scope, path)
        if isinstance(step, Parallel):
            return self.parallel(step, scope, path)
        assert isinstance(step, MapReduce)
        return self.map_reduce(step, scope, path)

    def call(self, step: Call, scope: dict[str, Any], path: str) -> Outcome:
        """A tool call: arguments first (their errors fail the call), then the plan.

        The call's ``retry=`` only changes how often a failing tool runs (the
        plan gives every attempt the same outcome); no tool has a retry or a
        timeout of its own.
        """
        try:
            args = [self.expr(a, scope) for a in step.args]
            kwargs = {k: self.expr(v, scope) for k, v in step.kwargs.items()}
        except Exception as error:
            return Outcome(False, leaves=frozenset({Leaf(path, signature(error))}))
        value, cid = _bind(*args, **kwargs)
        tool = step.tool_name
        n = num(value)
        done = Trace(calls=Counter({(tool, cid, n): 1}))
        outcome, _ = self.plan.call(tool, cid, n)
        if outcome == "fail":
            failed = ToolError(tool, cid, n)
            retry_on = step.retry.retry_on if step.retry is not None else ()
            if isinstance(retry_on, tuple) and isinstance(failed, retry_on):
                # Every attempt behaves the same under the plan: all fail.
                assert step.retry is not None
                done.calls[tool, cid, n] = step.retry.attempts
            leaf = Leaf(path, signature(failed))
            return Outcome(False, leaves=frozenset({leaf}), certain=done)
        if outcome == "hang":
            assert step.timeout is not None
            leaf = Leaf(path, signature(plait.ToolTimeout(tool, step.timeout)))
            return Outcome(False, leaves=frozenset({leaf}), certain=done)
        return Outcome(True, TOOL_RESULTS[tool](n, cid), certain=done)

    def sequential(self, step: Sequential, scope: dict[str, Any], path: str) -> Outcome:
        """One step after another; names bind in a copy of the scope."""
        inner = dict(scope)
        out = Outcome(True)
        for i, s in enumerate(step.steps):
            o = self.step(s, inner, f"{_child(path, 'steps')}[{i}]")
            out.certain.add(o.certain)
            out.possible.add(o.possible)
            if not o.ok:
                out.ok = False
                out.leaves = o.leaves
                return out
            out.value = o.value
            if s.name is not None:
                inner[s.name] = o.value
        return out

    def parallel(self, step: Parallel, scope: dict[str, Any], path: str) -> Outcome:
        """Every branch, one after another; a list or a dict in step order."""
        at = _child(path, "steps")
        if isinstance(step.steps, dict):
            keys: list[Any] = list(step.steps)
            branches = [(f"{at}.{k}", s) for k, s in step.steps.items()]
        else:
            keys = list(range(len(step.steps)))
            branches = [(f"{at}[{i}]", s) for i, s in enumerate(step.steps)]
        outs = [(p, self.step(s, scope, p)) for p, s in branches]
        values: list[Any] = []
        result = Outcome(True)
        if step.on_error == "collect":
            for p, o in outs:
                result.certain.add(o.certain)
                result.possible.add(o.possible)
                if o.ok:
                    values.append(o.value)
                else:
                    spec = FailureSpec(p, o.leaves)
                    result.certain.failures.append(spec)
                    values.append(spec)
        else:
            failed = [o for _, o in outs if not o.ok]
            if failed:
                # The first failure cancels the siblings: any of them may have
                # done all, some or none of its work.
                result.ok = False
                result.leaves = frozenset().union(*(o.leaves for o in failed))
                for _, o in outs:
                    result.possible.add(o.uncertain())
                return result
            for _, o in outs:
                result.certain.add(o.certain)
                result.possible.add(o.possible)
                values.append(o.value)
        if isinstance(step.steps, dict):
            result.value = dict(zip(keys, values, strict=True))
        else:
            result.value = values
        return result

    def _source(
        self, step: MapReduce, scope: dict[str, Any]
    ) -> tuple[list[Any], SourceError | None]:
        """The elements of ``over`` and the error the source ends with, if any."""
        over = step.over
        if isinstance(over, Fn) and over.fn in ("gen", "agen"):
            arg = self.expr(over.args[0], scope)
            return self.plan.source(num(arg))
        value = self.expr(over, scope)
        if isinstance(value, FailureSpec):  # a plait.Failure is not iterable
            raise TypeError("not iterable")
        return list(iter(value)), None

    def map_reduce(self, step: MapReduce, scope: dict[str, Any], path: str) -> Outcome:
        """The map step per element, in input order, then the fold."""
        over_at = _child(path, "over")
        reduce_at = _child(path, "reduce")
        map_at = _child(path, "map")
        try:
            items, source_error = self._source(step, scope)
        except Exception as error:
            return Outcome(False, leaves=frozenset({Leaf(over_at, signature(error))}))
        outs = [
            (
                f"{map_at}[{i}]",
                self.step(step.map, {**scope, step.item: x}, f"{map_at}[{i}]"),
            )
            for i, x in enumerate(items)
        ]
        fold = None if step.reduce is None else self.folds[str(step.reduce)]
        start = _NOTHING if step.initial is None else self.expr(step.initial, scope)
        result = Outcome(True)
        if step.on_error == "collect":
            values: list[Any] = []
            for p, o in outs:
                result.certain.add(o.certain)
                result.possible.add(o.possible)
                if o.ok:
                    values.append(o.value)
                else:
                    spec = FailureSpec(p, o.leaves)
                    result.certain.failures.append(spec)
                    values.append(spec)
            source_spec = None
            if source_error is not None:
                leaf = Leaf(over_at, signature(source_error))
                source_spec = FailureSpec(over_at, frozenset({leaf}))
                result.certain.failures.append(source_spec)
            if fold is None:
                result.value = values if source_spec is None else [*values, source_spec]
                return result
            acc = start
            for v in values:
                if isinstance(v, FailureSpec):
                    continue
                if acc is _NOTHING:
                    acc = v
                    continue
                try:
                    acc = fold(acc, v)
                except ReduceError as error:
                    leaf = Leaf(reduce_at, signature(error))
                    spec = FailureSpec(reduce_at, frozenset({leaf}))
                    result.certain.failures.append(spec)
            result.value = None if acc is _NOTHING else acc
            return result

        # Raise mode: any failure that may happen before the cancellation
        # reaches everything else may be the one raised.
        leaves: set[Leaf] = set()
        for _, o in outs:
            leaves |= o.leaves
        if source_error is not None:
            leaves.add(Leaf(over_at, signature(source_error)))
        acc = start
        if fold is not None:
            for _, o in outs:
                if not o.ok:
                    if step.ordered:
                        break  # nothing after a failed element is folded
                    continue
                if acc is _NOTHING:
                    acc = o.value
                    continue
                try:
                    acc = fold(acc, o.value)
                except ReduceError as error:
                    leaves.add(Leaf(reduce_at, signature(error)))
                    if step.ordered:
                        break
        if leaves:
            result.ok = False
            result.leaves = frozenset(leaves)
            for _, o in outs:
                result.possible.add(o.uncertain())
            return result
        for _, o in outs:
            result.certain.add(o.certain)
            result.possible.add(o.possible)
        if fold is None:
            result.value = [o.value for _, o in outs]
        else:
            result.value = None if acc is _NOTHING else acc
        return result


def _bind(value: Any, cid: int = 0) -> tuple[Any, int]:
    """The tools' signature: ``(value, cid=0)``."""
    return value, cid


def _lookup(value: Any, part: str) -> Any:
    """One dotted step of a ``Var`` path: key, then index, then attribute."""
    number = int(part) if part.lstrip("-").isdigit() else None
    if isinstance(value, FailureSpec):
        # A plait.Failure has no item access and (for the parts the tests
        # use) no such attribute.
        raise plait.ExpressionError(f"no {part!r}")
    if isinstance(value, Mapping):
        if part in value:
            return value[part]
        if number is not None and number in value:
            return value[number]
        raise plait.ExpressionError(f"no key {part!r}")
    if number is not None and isinstance(value, Sequence):
        try:
            return value[number]
        except IndexError:
            raise plait.ExpressionError(f"no index {number}") from None
    try:
        return getattr(value, part)
    except AttributeError:
        raise plait.ExpressionError(f"no attribute {part!r}") from None


# -- Engine.call_tools --------------------------------------------------------


@dataclass(frozen=True)
class BatchCall:
    """What one call of an ``Engine.call_tools`` batch does under a plan.

    Attributes:
        key: the call's identity, as the tools count calls.
        ok: whether it returns (else it fails after its last attempt).
        value: what it returns, when ``ok``.
        error: the signature of its error, when not ``ok``.
        attempts: how often the tool runs (all attempts fail alike).
    """

    key: CallKey
    ok: bool
    value: Any = None
    error: tuple[Any, ...] = ()
    attempts: int = 1


def reference_batch(
    plan: Plan,
    calls: Sequence[tuple[str, Mapping[str, Any]]],
    retry: plait.Retry | None = None,
) -> list[BatchCall]:
    """Each call of a batch ``(tool name, kwargs)`` on its own, in order.

    ``retry`` is the tools' own policy. The plan must make no call hang
    (``call_tools`` uses the tools' own timeouts, and these have none).
    """
    out = []
    for tool, kwargs in calls:
        value, cid = _bind(**kwargs)
        n = num(value)
        outcome, _ = plan.call(tool, cid, n)
        assert outcome != "hang", "no call of a batch may hang"
        if outcome == "ok":
            out.append(BatchCall((tool, cid, n), True, TOOL_RESULTS[tool](n, cid)))
            continue
        failed = ToolError(tool, cid, n)
        retry_on = retry.retry_on if retry is not None else ()
        attempts = (
            retry.attempts
            if retry is not None
            and isinstance(retry_on, tuple)
            and isinstance(failed, retry_on)
            else 1
        )
        out.append(
            BatchCall((tool, cid, n), False, error=signature(failed), attempts=attempts)
        )
    return out


# -- comparing a real run with the reference ---------------------------------


def matches(expected: Any, actual: Any) -> bool:
    """Whether ``actual`` (a run's output) is what ``expected`` allows.

    Containers must have the same type, length and (for dicts) key order;
    a :class:`FailureSpec` must meet a :class:`plait.Failure` it accepts.
    """
    if isinstance(expected, FailureSpec):
        return expected.accepts(actual)
    if isinstance(expected, list):
        return (
            type(actual) is list
            and len(actual) == len(expected)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, dict):
        return (
            type(actual) is dict
            and list(actual) == list(expected)
            and all(matches(v, actual[k]) for k, v in expected.items())
        )
    return type(actual) is type(expected) and actual == expected


def check_failures(outcome: Outcome, actual: Sequence[Failure]) -> list[str]:
    """Problems with ``RunResult.failures`` against the expected outcome.

    Every certain :class:`FailureSpec` must be met by exactly one recorded
    failure, and every recorded failure must meet a distinct spec, certain or
    possible. (Specs of different places accept disjoint paths, so matching
    greedily, certain specs first, is exact.)
    """
    pool = [(s, True) for s in outcome.certain.failures]
    pool += [(s, False) for s in outcome.possible.failures]
    used = [False] * len(pool)
    problems = []
    for failure in actual:
        for i, (spec, _) in enumerate(pool):
            if not used[i] and spec.accepts(failure):
                used[i] = True
                break
        else:
            problems.append(f"unexpected failure recorded: {failure!r}")
    for i, (spec, must) in enumerate(pool):
        if must and not used[i]:
            problems.append(f"failure not recorded: {spec!r}")
    return problems


def check_raised(error: BaseException, leaves: frozenset[Leaf]) -> list[str]:
    """Problems with what a failing run raised, against the allowed ``leaves``.

    It must be one ``StepFailed`` or a flat ``ExceptionGroup`` of two or
    more, each naming a step that really failed per the plan (its path and
    its original error, which is also its ``__cause__``).
    """
    problems = []
    if isinstance(error, BaseExceptionGroup):
        parts = list(error.exceptions)
        if not isinstance(error, ExceptionGroup) or len(parts) < 2:
            problems.append(f"a group needs two or more errors: {error!r}")
        paths = [getattr(e, "path", None) for e in parts]
        if len(set(paths)) != len(paths):
            problems.append(f"one path raised twice: {paths}")
    else:
        parts = [error]
    for e in parts:
        if not isinstance(e, plait.StepFailed):
            problems.append(f"not a StepFailed: {e!r}")
            continue
        if e.__cause__ is not e.error:
            problems.append(f"__cause__ is not .error: {e!r}")
        if Leaf(e.path, signature(e.error)) not in leaves:
            problems.append(f"raised a failure that cannot happen: {e!r}")
    return problems


def check_calls(
    outcome: Outcome, actual: Counter[CallKey], copies: int = 1
) -> list[str]:
    """Problems with the calls made by ``copies`` runs of one workflow.

    Each certain call runs exactly as often as the reference says (once, or
    once per attempt); a call that may have been cancelled may be missing;
    no call runs more often than the reference allows.
    """
    problems = []
    low: Counter[CallKey] = Counter()
    high: Counter[CallKey] = Counter()
    for _ in range(copies):
        low.update(outcome.certain.calls)
        high.update(outcome.certain.calls)
        high.update(outcome.possible.calls)
    for key in set(low) | set(high) | set(actual):
        if not low[key] <= actual[key] <= high[key]:
            problems.append(
                f"call {key} ran {actual[key]} times, expected {low[key]}..{high[key]}"
            )
    return problems
