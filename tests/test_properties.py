"""Property tests: random workflows against a plain sequential reference.

Hypothesis does not combine with anyio's pytest plugin on async tests, so
these are sync tests that start each backend themselves with ``anyio.run``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plait
from plait import Call, Failure, Fn, MapReduce, Parallel, Sequential, Var

BACKENDS = [
    pytest.param("asyncio", {}, id="asyncio"),
    pytest.param("asyncio", {"use_uvloop": True}, id="uvloop"),
    pytest.param("trio", {}, id="trio"),
]

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MOD = 1009
INPUTS = {"x": 3, "y": 10}
NAMES = ("a", "b", "x")  # "x" shadows an input
ITEMS = ("item", "a")  # "a" shadows a bound name


# -- the tools and functions, shared by the engine and the reference ---------


def num(value: Any) -> int:
    """Fold any value a step can give into an int, so every tool is total."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return sum(num(v) for v in value.values()) % MOD
    if isinstance(value, list | tuple):
        return sum(num(v) for v in value) % MOD
    return 0


def inc_ref(value: Any, k: int, delay: float = 0.0) -> int:
    return (num(value) + k) % MOD


def mul_ref(value: Any, k: int) -> int:
    return (num(value) * k) % MOD


async def inc(value: Any, k: int, delay: float = 0.0) -> int:
    if delay:
        await anyio.sleep(delay)
    else:
        await anyio.lowlevel.checkpoint()
    return inc_ref(value, k)


def spread(value: Any) -> list[int]:
    n = num(value)
    return [(n + i) % MOD for i in range(n % 4)]


def plus(acc: Any, value: Any) -> int:
    return (num(acc) + num(value)) % MOD


def cat(acc: Any, value: Any) -> int:
    """Not commutative: the order of the fold shows in the result."""
    return (num(acc) * 31 + num(value)) % MOD


FUNCTIONS = {"spread": spread, "plus": plus, "cat": cat}
REFERENCE_TOOLS: dict[str, Callable[..., Any]] = {"inc": inc_ref, "mul": mul_ref}


def make_engine() -> plait.Engine:
    # "mul" is sync: it runs on worker threads.
    return plait.Engine(
        tools=[inc, plait.tool(name="mul")(mul_ref)], functions=FUNCTIONS
    )


# -- the reference interpreter -----------------------------------------------


def ref_expr(expr: Any, scope: dict[str, Any]) -> Any:
    if isinstance(expr, Var):
        return scope[expr.path]
    if isinstance(expr, Fn):
        fn = FUNCTIONS[expr.fn] if isinstance(expr.fn, str) else expr.fn
        return fn(*(ref_expr(a, scope) for a in expr.args))
    return expr


def reference(step: plait.Step, scope: dict[str, Any]) -> Any:
    """Evaluate ``step`` one thing at a time, with no concurrency at all."""
    if isinstance(step, Call):
        args = [ref_expr(a, scope) for a in step.args]
        kwargs = {k: ref_expr(v, scope) for k, v in step.kwargs.items()}
        return REFERENCE_TOOLS[step.tool_name](*args, **kwargs)
    if isinstance(step, Sequential):
        inner = dict(scope)
        value = None
        for s in step.steps:
            value = reference(s, inner)
            if s.name is not None:
                inner[s.name] = value
        return value
    if isinstance(step, Parallel):
        if isinstance(step.steps, dict):
            return {k: reference(s, scope) for k, s in step.steps.items()}
        return [reference(s, scope) for s in step.steps]
    assert isinstance(step, MapReduce)
    values = [
        reference(step.map, {**scope, step.item: x}) for x in ref_expr(step.over, scope)
    ]
    if step.reduce is None:
        return values
    fold = FUNCTIONS[step.reduce] if isinstance(step.reduce, str) else step.reduce
    if step.initial is not None:
        return functools.reduce(fold, values, ref_expr(step.initial, scope))
    return functools.reduce(fold, values) if values else None


# -- random workflows --------------------------------------------------------


@st.composite
def workflows(
    draw: st.DrawFn, env: frozenset[str], depth: int, name: str | None = None
) -> plait.Step:
    kinds = ["call"] if depth == 0 else ["call", "sequential", "parallel", "map"]
    kind = draw(st.sampled_from(kinds))
    source = Var(draw(st.sampled_from(sorted(env))))
    if kind == "call":
        k = draw(st.integers(-5, 5))
        if draw(st.booleans()):
            return Call("mul", source, k, name=name)
        delay = draw(st.sampled_from([0.0, 0.0, 0.001, 0.003]))
        return Call("inc", source, k=k, delay=delay, name=name)
    if kind == "sequential":
        steps = []
        scope = env
        for _ in range(draw(st.integers(1, 3))):
            bind = draw(st.sampled_from([None, *NAMES]))
            steps.append(draw(workflows(scope, depth - 1, bind)))
            if bind is not None:
                scope = scope | {bind}
        return Sequential(*steps, name=name)
    if kind == "parallel":
        count = draw(st.integers(1, 3))
        branches = [draw(workflows(env, depth - 1)) for _ in range(count)]
        if draw(st.booleans()):
            return Parallel(*branches, name=name)
        return Parallel({f"b{i}": b for i, b in enumerate(branches)}, name=name)
    item = draw(st.sampled_from(ITEMS))
    reduce = draw(st.sampled_from([None, "plus", "cat"]))
    ordered = True if reduce != "plus" else draw(st.booleans())
    initial = draw(st.sampled_from([None, 0, 7])) if reduce else None
    return MapReduce(
        Fn("spread", source),
        draw(workflows(env | {item}, depth - 1)),
        reduce=reduce,
        initial=initial,
        max_concurrency=draw(st.integers(1, 3)),
        ordered=ordered,
        item=item,
        name=name,
    )


@pytest.mark.parametrize(("backend", "options"), BACKENDS)
@settings(SETTINGS, max_examples=60)
@given(step=workflows(frozenset(INPUTS), depth=3))
def test_random_workflows_match_the_reference(
    backend: str, options: dict[str, Any], step: plait.Step
) -> None:
    expected = reference(step, dict(INPUTS))

    async def main() -> Any:
        with anyio.fail_after(20):
            return await make_engine().run(step, dict(INPUTS))

    assert anyio.run(main, backend=backend, backend_options=options) == expected


# -- MapReduce against map and fold ------------------------------------------


def fold_ordered(acc: list[int], value: int) -> list[int]:
    return [*acc, value]


items = st.lists(st.integers(0, 1000), max_size=30)
delays = st.lists(st.sampled_from([0.0, 0.0, 0.0005, 0.001, 0.002]), min_size=30)


@pytest.mark.parametrize(("backend", "options"), BACKENDS)
@SETTINGS
@given(
    xs=items,
    delay=delays,
    width=st.integers(1, 8),
    reduce=st.booleans(),
    use_generator=st.booleans(),
)
def test_map_reduce_matches_map_and_fold(
    backend: str,
    options: dict[str, Any],
    xs: list[int],
    delay: list[float],
    width: int,
    reduce: bool,
    use_generator: bool,
) -> None:
    in_flight = peak = 0

    async def work(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await anyio.sleep(delay[i])
        finally:
            in_flight -= 1
        return xs[i] * 3 + 1

    wf = MapReduce(
        Var("indexes"),
        "work",
        reduce=fold_ordered if reduce else None,
        initial=plait.Lit([]) if reduce else None,
        max_concurrency=width,
    )
    indexes = range(len(xs))
    source = (i for i in indexes) if use_generator else list(indexes)

    async def main() -> Any:
        with anyio.fail_after(20):
            return await plait.Engine(tools=[work]).run(wf, {"indexes": source})

    out = anyio.run(main, backend=backend, backend_options=options)
    assert out == [x * 3 + 1 for x in xs]
    assert peak <= width


@pytest.mark.parametrize(("backend", "options"), BACKENDS)
@SETTINGS
@given(
    xs=items,
    delay=delays,
    width=st.integers(1, 8),
    failing=st.sets(st.integers(0, 29), max_size=8),
    reduce=st.sampled_from([None, "ordered", "unordered"]),
)
def test_map_reduce_collect_mode_with_random_failures(
    backend: str,
    options: dict[str, Any],
    xs: list[int],
    delay: list[float],
    width: int,
    failing: set[int],
    reduce: str | None,
) -> None:
    async def work(i: int) -> int:
        await anyio.sleep(delay[i])
        if i in failing:
            raise KeyError(i)
        return xs[i]

    wf = MapReduce(
        Var("indexes"),
        "work",
        reduce=None if reduce is None else (lambda a, b: a + b),
        initial=0 if reduce else None,
        ordered=reduce != "unordered",
        max_concurrency=width,
        on_error="collect",
    )

    async def main() -> plait.RunResult:
        with anyio.fail_after(20):
            engine = plait.Engine(tools=[work])
            return await engine.execute(wf, {"indexes": range(len(xs))})

    result = anyio.run(main, backend=backend, backend_options=options)
    failed = sorted(i for i in failing if i < len(xs))
    expected_failures = [Failure(KeyError(i), f"map[{i}]") for i in failed]
    assert sorted(result.failures, key=lambda f: int(f.path[4:-1])) == (
        expected_failures
    )
    if reduce is None:
        assert result.output == [
            Failure(KeyError(i), f"map[{i}]") if i in failing else x
            for i, x in enumerate(xs)
        ]
    else:
        assert result.output == sum(x for i, x in enumerate(xs) if i not in failing)


@pytest.mark.parametrize(("backend", "options"), BACKENDS)
@SETTINGS
@given(
    size=st.integers(1, 20),
    delay=delays,
    width=st.integers(1, 8),
    failing=st.sets(st.integers(0, 19), min_size=1, max_size=5),
)
def test_map_reduce_raise_mode_reports_only_failing_items(
    backend: str,
    options: dict[str, Any],
    size: int,
    delay: list[float],
    width: int,
    failing: set[int],
) -> None:
    failing = {i for i in failing if i < size} or {size - 1}

    async def work(i: int) -> int:
        await anyio.sleep(delay[i])
        if i in failing:
            raise KeyError(i)
        return i

    wf = MapReduce(Var("indexes"), "work", max_concurrency=width)

    async def main() -> BaseException:
        with anyio.fail_after(20):
            try:
                await plait.Engine(tools=[work]).run(wf, {"indexes": range(size)})
            except (plait.StepFailed, ExceptionGroup) as error:
                return error
        raise AssertionError("the run should have failed")

    error = anyio.run(main, backend=backend, backend_options=options)
    raised = list(error.exceptions) if isinstance(error, ExceptionGroup) else [error]
    assert raised
    for e in raised:
        assert isinstance(e, plait.StepFailed)
        assert isinstance(e.__cause__, KeyError)
        assert e.path == f"map[{e.__cause__.args[0]}]"
        assert e.__cause__.args[0] in failing
