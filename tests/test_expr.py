"""Expressions: Var paths, Lit, Fn, nested containers; compile and run errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import attrs
import pytest

import plait
from plait import Call, Fn, Lit, MapReduce, Parallel, Sequential, Var

pytestmark = pytest.mark.anyio


@attrs.frozen
class Address:
    city: str
    lines: tuple[str, ...]


@dataclasses.dataclass
class User:
    name: str
    address: Address
    tags: list[str]


def echo(*args: Any, **kwargs: Any) -> Any:
    """A tool that gives back what it was given."""
    if kwargs:
        return (args, kwargs)
    return args[0] if len(args) == 1 else args


async def aecho(value: Any) -> Any:
    return value


def engine(**kw: Any) -> plait.Engine:
    return plait.Engine(tools=[plait.tool(name="echo")(aecho), echo_many], **kw)


echo_many = plait.tool(name="echo_many")(echo)


async def evaluate(expr: Any, inputs: dict[str, Any], **kw: Any) -> Any:
    return await engine(**kw).run(Call("echo", expr), inputs)


USER = User(
    name="ada",
    address=Address(city="London", lines=("12 St James's Sq", "SW1")),
    tags=["admin", "ops"],
)

DATA = {
    "user": USER,
    "doc": {"meta": {"title": "T", "0": "zero-key"}, "pages": [{"n": 1}, {"n": 2}]},
    "rows": [[1, 2], [3, 4]],
    "by_id": {7: "seven"},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("doc", DATA["doc"]),
        ("doc.meta.title", "T"),
        ("doc.pages.1.n", 2),
        ("doc.pages.-1.n", 2),
        ("doc.meta.0", "zero-key"),
        ("rows.1.0", 3),
        ("by_id.7", "seven"),
        ("user.name", "ada"),
        ("user.address.city", "London"),
        ("user.address.lines.1", "SW1"),
        ("user.tags.0", "admin"),
    ],
)
async def test_var_walks_keys_indexes_and_attributes(path: str, expected: Any) -> None:
    assert await evaluate(Var(path), DATA) == expected


async def test_var_walks_attributes_of_a_mapping_free_object() -> None:
    class Point:
        def __init__(self) -> None:
            self.x = 3

        @property
        def doubled(self) -> int:
            return 2 * self.x

    assert await evaluate(Var("p.doubled"), {"p": Point()}) == 6


@pytest.mark.parametrize(
    ("path", "fragments"),
    [
        ("doc.meta.titel", ["Var('doc.meta.titel')", "no key 'titel'", "'title'"]),
        ("doc.pages.5.n", ["Var('doc.pages.5.n')", "index 5 is out of range", "2"]),
        ("rows.0.9", ["Var('rows.0.9')", "index 9"]),
        ("user.email", ["Var('user.email')", "User", "'email'"]),
        ("user.address.zip", ["Var('user.address.zip')", "'zip'"]),
        ("user.tags.first", ["Var('user.tags.first')", "'first'"]),
    ],
)
async def test_failed_lookup_is_an_expression_error(
    path: str, fragments: list[str]
) -> None:
    wf = Sequential(Call("echo", 0), Call("echo", Var(path)))
    with pytest.raises(plait.StepFailed) as info:
        await engine().run(wf, DATA)
    assert info.value.path == "steps[1]"
    error = info.value.error
    assert info.value.__cause__ is error
    assert isinstance(error, plait.ExpressionError)
    assert isinstance(error, LookupError)
    for fragment in fragments:
        assert fragment in str(error)


async def test_expression_error_in_a_keyword_argument() -> None:
    wf = Call("echo_many", 1, user=Var("user.missing"))
    with pytest.raises(plait.StepFailed) as info:
        await engine().run(wf, DATA)
    assert info.value.path == ""
    assert isinstance(info.value.error, plait.ExpressionError)
    assert "Var('user.missing')" in str(info.value)


async def test_lit_keeps_expressions_literal() -> None:
    assert await evaluate(Lit(Var("x")), {}) == Var("x")
    assert await evaluate(Lit([Var("x"), Fn("len")]), {}) == [Var("x"), Fn("len")]
    assert await evaluate(Lit({"k": Var("x.y")}), {"x": 1}) == {"k": Var("x.y")}
    assert await evaluate(Lit("$x"), {"x": 1}) == "$x"


async def test_plain_values_are_constants() -> None:
    value = {"a": [1, 2], "b": ("x", None)}
    assert await evaluate(value, {}) == value
    assert await evaluate("x", {"x": "not read"}) == "x"
    assert await evaluate(None, {}) is None


async def test_containers_holding_expressions_are_evaluated() -> None:
    expr = [
        Var("a"),
        {"k": Var("b.c"), "n": [1, Var("a"), Fn(len, Var("b"))], "const": "v"},
        (Var("a"), 2),
        Lit(Var("a")),
    ]
    result = await evaluate(expr, {"a": 10, "b": {"c": 20}})
    assert result == [10, {"k": 20, "n": [1, 10, 1], "const": "v"}, (10, 2), Var("a")]
    assert isinstance(result[2], tuple)
    assert isinstance(result[1]["n"], list)


async def test_fn_by_registered_name() -> None:
    def total(*xs: int) -> int:
        return sum(xs)

    eng = engine(functions=[total, ("upper", str.upper)])
    wf = Call("echo", [Fn("total", Var("a"), 2, Var("b.0")), Fn("upper", "x")])
    assert await eng.run(wf, {"a": 1, "b": [3]}) == [6, "X"]


async def test_functions_as_a_mapping() -> None:
    eng = engine(functions={"size": len})
    assert await eng.run(Call("echo", Fn("size", Var("xs"))), {"xs": "abc"}) == 3


async def test_fn_with_a_callable_and_nested_fns() -> None:
    seen: list[tuple[Any, ...]] = []

    def pair(*args: Any) -> tuple[Any, ...]:
        seen.append(args)
        return args

    expr = Fn(pair, Fn(len, Var("xs")), Fn(sorted, Var("xs")), [Var("n")])
    assert await evaluate(expr, {"xs": [3, 1, 2], "n": 0}) == (3, [1, 2, 3], [0])
    assert seen == [(3, [1, 2, 3], [0])]


async def test_fn_is_evaluated_once_per_use() -> None:
    calls = []

    def tick() -> int:
        calls.append(1)
        return len(calls)

    wf = MapReduce([10, 20, 30], Call("echo", Fn(tick)), max_concurrency=1)
    assert await engine().run(wf) == [1, 2, 3]


async def test_fn_raising_is_a_step_failure_with_the_original_error() -> None:
    def bad(x: int) -> int:
        raise ArithmeticError(f"bad {x}")

    wf = Parallel(a=Call("echo", 1), b=Call("echo", Fn(bad, Var("x"))))
    with pytest.raises(plait.StepFailed) as info:
        await engine().run(wf, {"x": 5})
    assert info.value.path == "steps.b"
    assert isinstance(info.value.error, ArithmeticError)
    assert str(info.value.error) == "bad 5"


# -- compile-time checks -----------------------------------------------------


def counting_engine(**kw: Any) -> tuple[plait.Engine, list[Any]]:
    ran: list[Any] = []

    @plait.tool(name="echo")
    async def echo_tool(*args: Any, **kwargs: Any) -> Any:
        ran.append(args)
        return args

    return plait.Engine(tools=[echo_tool], **kw), ran


@pytest.mark.parametrize(
    ("step", "inputs", "name", "path"),
    [
        (
            Sequential(Call("echo", 1), Call("echo", Var("qurey"))),
            {"query": 1},
            "qurey",
            "steps[1].args[0]",
        ),
        (
            Sequential(Call("echo", 1), Call("echo", k=Var("nope.x"))),
            {},
            "nope",
            "steps[1].args.k",
        ),
        (
            Call("echo", [1, {"k": Var("missing")}]),
            {},
            "missing",
            "args[0][1].k",
        ),
        (
            Call("echo", Fn(len, Var("gone"))),
            {},
            "gone",
            "args[0].args[0]",
        ),
        (MapReduce(Var("itemz"), "echo"), {"items": []}, "itemz", "over"),
        (
            MapReduce(Var("xs"), "echo", reduce=max, initial=Var("start")),
            {"xs": []},
            "start",
            "initial",
        ),
        (
            Parallel(a=Call("echo", 1), b=Call("echo", Var("y"))),
            {"x": 1},
            "y",
            "steps.b.args[0]",
        ),
    ],
)
async def test_unknown_variable_is_rejected_before_anything_runs(
    step: plait.Step, inputs: dict[str, Any], name: str, path: str
) -> None:
    eng, ran = counting_engine()
    with pytest.raises(plait.WorkflowError) as info:
        await eng.run(step, inputs)
    assert not isinstance(info.value, plait.UnknownTool)
    assert info.value.path == path
    assert f"unknown variable {name!r}" in str(info.value)
    assert f"(at {path})" in str(info.value)
    assert ran == []


async def test_unknown_variable_suggests_a_close_name() -> None:
    eng, _ = counting_engine()
    with pytest.raises(plait.WorkflowError) as info:
        await eng.run(Call("echo", Var("qurey.text")), {"query": {}, "limit": 1})
    message = str(info.value)
    assert "did you mean 'query'?" in message
    assert "Var('qurey.text')" in message
    assert "limit, query" in message


async def test_unknown_function_is_rejected_before_anything_runs() -> None:
    eng, ran = counting_engine(functions={"length": len})
    wf = Sequential(Call("echo", 1), Call("echo", 2, n=Fn("lenght", Var("x"))))
    with pytest.raises(plait.WorkflowError) as info:
        await eng.run(wf, {"x": []})
    assert info.value.path == "steps[1].args.n"
    assert "unknown function 'lenght'" in str(info.value)
    assert "did you mean 'length'?" in str(info.value)
    assert ran == []
