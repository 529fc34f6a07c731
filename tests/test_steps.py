"""Building steps: validation with paths, reserved keywords, reprs, equality."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import pytest

import plait
from plait import Call, Fn, Lit, MapReduce, Parallel, Sequential, Var, Workflow


def add(acc: int, value: int) -> int:
    return acc + value


async def async_add(acc: int, value: int) -> int:
    return acc + value


STEP = Call("t")


def check(build: Callable[[], object], message: str, path: str) -> plait.WorkflowError:
    with pytest.raises(plait.WorkflowError) as info:
        build()
    assert message in str(info.value)
    assert info.value.path == path
    return info.value


# -- validation --------------------------------------------------------------

INVALID: list[Any] = [
    # (id, build, fragment of the message, path)
    (
        "empty-sequential",
        lambda: Sequential(),
        "Sequential needs at least one step",
        "steps",
    ),
    ("empty-parallel", lambda: Parallel(), "Parallel needs at least one step", "steps"),
    (
        "empty-parallel-dict",
        lambda: Parallel({}),
        "Parallel needs at least one step",
        "steps",
    ),
    (
        "parallel-both-forms",
        lambda: Parallel(STEP, b=STEP),
        "Parallel takes positional steps or named branches, not both",
        "steps",
    ),
    (
        "sequential-not-a-step",
        lambda: Sequential(STEP, "search"),
        "Sequential.steps[1] must be a step (Call, Sequential, Parallel or "
        "MapReduce), got 'search'",
        "steps[1]",
    ),
    (
        "parallel-positional-not-a-step",
        lambda: Parallel(STEP, 3),
        "Parallel.steps[1] must be a step",
        "steps[1]",
    ),
    (
        "parallel-named-not-a-step",
        lambda: Parallel(a=STEP, b=None),
        "Parallel.steps.b must be a step",
        "steps.b",
    ),
    (
        "parallel-dict-not-a-step",
        lambda: Parallel({"name": [STEP]}),
        "Parallel.steps.name must be a step",
        "steps.name",
    ),
    (
        "parallel-empty-branch-name",
        lambda: Parallel({"": STEP}),
        "Parallel.steps must be branch names that are non-empty str, got ''",
        "steps",
    ),
    (
        "max-concurrency-0",
        lambda: MapReduce(Var("xs"), STEP, max_concurrency=0),
        "MapReduce.max_concurrency must be an int >= 1 or None, got 0",
        "max_concurrency",
    ),
    (
        "max-concurrency-negative",
        lambda: MapReduce(Var("xs"), STEP, max_concurrency=-1),
        "MapReduce.max_concurrency must be an int >= 1 or None, got -1",
        "max_concurrency",
    ),
    (
        "max-concurrency-float",
        lambda: MapReduce(Var("xs"), STEP, max_concurrency=1.5),
        "MapReduce.max_concurrency must be an int >= 1 or None, got 1.5",
        "max_concurrency",
    ),
    (
        "max-concurrency-bool",
        lambda: MapReduce(Var("xs"), STEP, max_concurrency=True),
        "MapReduce.max_concurrency must be an int >= 1 or None, got True",
        "max_concurrency",
    ),
    (
        "reduce-not-callable",
        lambda: MapReduce(Var("xs"), STEP, reduce=3),
        "MapReduce.reduce must be a callable (acc, value) -> acc or a registered "
        "function name, got 3",
        "reduce",
    ),
    (
        "reduce-empty-name",
        lambda: MapReduce(Var("xs"), STEP, reduce=""),
        "MapReduce.reduce must be a callable",
        "reduce",
    ),
    (
        "reduce-async",
        lambda: MapReduce(Var("xs"), STEP, reduce=async_add),
        "MapReduce.reduce must be a plain (not async) function",
        "reduce",
    ),
    (
        "map-not-a-step",
        lambda: MapReduce(Var("xs"), 3),
        "MapReduce.map must be a step",
        "map",
    ),
    (
        "over-is-a-step",
        lambda: MapReduce(Call("items"), STEP),
        "MapReduce.over must be an expression (Var, Fn, Lit) or a value, not a step",
        "over",
    ),
    (
        "ordered-not-bool",
        lambda: MapReduce(Var("xs"), STEP, ordered="yes"),
        "MapReduce.ordered must be True or False, got 'yes'",
        "ordered",
    ),
    (
        "map-reduce-on-error",
        lambda: MapReduce(Var("xs"), STEP, on_error="ignore"),
        "MapReduce.on_error must be 'raise' or 'collect', got 'ignore'",
        "on_error",
    ),
    (
        "parallel-on-error",
        lambda: Parallel(STEP, on_error="skip"),
        "Parallel.on_error must be 'raise' or 'collect', got 'skip'",
        "on_error",
    ),
    (
        "item-not-identifier",
        lambda: MapReduce(Var("xs"), STEP, item="an item"),
        "MapReduce.item must be an identifier such as 'item', got 'an item'",
        "item",
    ),
    (
        "item-dotted",
        lambda: MapReduce(Var("xs"), STEP, item="a.b"),
        "MapReduce.item must be an identifier",
        "item",
    ),
    (
        "item-keyword",
        lambda: MapReduce(Var("xs"), STEP, item="class"),
        "MapReduce.item must be an identifier",
        "item",
    ),
    (
        "item-not-str",
        lambda: MapReduce(Var("xs"), STEP, item=1),
        "MapReduce.item must be an identifier",
        "item",
    ),
    (
        "call-name",
        lambda: Call("t", name="my result"),
        "Call.name must be an identifier such as 'results' or None, got 'my result'",
        "name",
    ),
    (
        "sequential-name",
        lambda: Sequential(STEP, name="1st"),
        "Sequential.name must be an identifier",
        "name",
    ),
    (
        "parallel-name",
        lambda: Parallel(STEP, name=3),
        "Parallel.name must be an identifier",
        "name",
    ),
    (
        "map-reduce-name",
        lambda: MapReduce(Var("xs"), STEP, name="a-b"),
        "MapReduce.name must be an identifier",
        "name",
    ),
    (
        "call-target-int",
        lambda: Call(3),
        "Call.target must be a tool name, an import path 'module:attr', a plait.Tool or a function, got 3",
        "target",
    ),
    (
        "call-target-empty",
        lambda: Call(""),
        "Call.target must be a tool name, an import path 'module:attr', a plait.Tool or a function, got ''",
        "target",
    ),
    (
        "call-retry",
        lambda: Call("t", retry=3),
        "Call.retry must be a plait.Retry or None, got 3",
        "retry",
    ),
    (
        "call-arguments-not-dict",
        lambda: Call("t", arguments=[("name", 1)]),
        "Call.arguments must be a dict with str keys",
        "arguments",
    ),
    (
        "call-arguments-non-str-key",
        lambda: Call("t", arguments={1: "x"}),
        "Call.arguments must be a dict with str keys",
        "arguments",
    ),
    (
        "call-arguments-given-twice",
        lambda: Call("t", limit=1, arguments={"limit": 2}),
        "Call argument 'limit' is given twice",
        "arguments",
    ),
    (
        "var-empty",
        lambda: Var(""),
        "Var.path must be a dotted path such as 'x' or 'x.field.0', got ''",
        "path",
    ),
    ("var-double-dot", lambda: Var("a..b"), "Var.path must be a dotted path", "path"),
    ("var-trailing-dot", lambda: Var("a."), "Var.path must be a dotted path", "path"),
    ("var-not-str", lambda: Var(3), "Var.path must be a dotted path", "path"),
    (
        "fn-not-callable",
        lambda: Fn(3),
        "Fn.fn must be a registered function name or a callable, got 3",
        "fn",
    ),
    ("fn-empty-name", lambda: Fn(""), "Fn.fn must be a registered function", "fn"),
    (
        "fn-async",
        lambda: Fn(async_add, 1, 2),
        "Fn.fn must be a plain (not async) function",
        "fn",
    ),
    (
        "workflow-step",
        lambda: Workflow("search"),
        "Workflow.step must be a step",
        "step",
    ),
    (
        "workflow-inputs",
        lambda: Workflow(STEP, inputs=("query", "max results")),
        "Workflow.inputs must be a tuple of identifiers",
        "inputs",
    ),
]


@pytest.mark.parametrize(
    ("build", "message", "path"),
    [pytest.param(*case[1:], id=case[0]) for case in INVALID],
)
def test_invalid_steps_are_rejected_when_built(
    build: Callable[[], object], message: str, path: str
) -> None:
    check(build, message, path)


TIMEOUT_OWNERS: list[Any] = [
    pytest.param(lambda t: Call("t", timeout=t), "Call", id="call"),
    pytest.param(lambda t: Sequential(STEP, timeout=t), "Sequential", id="sequential"),
    pytest.param(lambda t: Parallel(STEP, timeout=t), "Parallel", id="parallel"),
    pytest.param(
        lambda t: MapReduce(Var("xs"), STEP, timeout=t), "MapReduce", id="mapreduce"
    ),
]


@pytest.mark.parametrize(("build", "cls"), TIMEOUT_OWNERS)
@pytest.mark.parametrize("bad", [0, -1, -0.5, "5", math.nan, math.inf, True, [1]])
def test_timeout_must_be_a_positive_number(
    build: Callable[[object], object], cls: str, bad: object
) -> None:
    check(
        lambda: build(bad),
        f"{cls}.timeout must be a number of seconds > 0 or None, got {bad!r}",
        "timeout",
    )


@pytest.mark.parametrize(("build", "cls"), TIMEOUT_OWNERS)
def test_timeout_accepts_ints_and_floats(
    build: Callable[[object], plait.Step], cls: str
) -> None:
    assert build(2).timeout == 2
    assert build(0.25).timeout == 0.25
    assert type(build(None)).__name__ == cls


def test_workflow_error_is_a_value_error_and_shows_its_path() -> None:
    error = check(
        lambda: MapReduce(Var("xs"), STEP, max_concurrency=0),
        "MapReduce.max_concurrency",
        "max_concurrency",
    )
    assert isinstance(error, ValueError)
    assert isinstance(error, plait.PlaitError)
    assert str(error).endswith("(at max_concurrency)")


def test_valid_options_are_kept() -> None:
    step = MapReduce(
        Var("xs"),
        STEP,
        reduce="add",
        initial=Lit(0),
        max_concurrency=4,
        ordered=False,
        item="doc",
        on_error="collect",
        name="total",
        timeout=3,
    )
    assert step.over == Var("xs")
    assert step.reduce == "add"
    assert step.initial == Lit(0)
    assert (step.max_concurrency, step.ordered, step.item) == (4, False, "doc")
    assert (step.on_error, step.name, step.timeout) == ("collect", "total", 3)
    assert MapReduce(Var("xs"), STEP, reduce=add).reduce is add


# -- reserved keywords and shorthands ----------------------------------------


def test_call_options_are_not_tool_arguments() -> None:
    retry = plait.Retry(attempts=2)
    step = Call("search", Var("q"), limit=5, name="hits", timeout=2, retry=retry)
    assert step.target == "search"
    assert step.args == (Var("q"),)
    assert step.kwargs == {"limit": 5}
    assert (step.name, step.timeout, step.retry) == ("hits", 2, retry)


def test_call_reserved_names_go_to_the_tool_through_arguments() -> None:
    step = Call(
        "create_user",
        arguments={"name": "ada", "timeout": 30, "retry": "never", "arguments": []},
        role="admin",
    )
    assert step.kwargs == {
        "role": "admin",
        "name": "ada",
        "timeout": 30,
        "retry": "never",
        "arguments": [],
    }
    assert step.name is None
    assert step.timeout is None
    assert step.retry is None


def test_call_of_a_function_makes_a_tool() -> None:
    def lookup(key: str) -> str:
        return key

    step = Call(lookup, "k")
    assert isinstance(step.target, plait.Tool)
    assert step.target.fn is lookup
    assert step.tool_name == "lookup"
    assert Call("lookup").tool_name == "lookup"

    tool = plait.tool(name="find")(lookup)
    assert Call(tool).target is tool
    assert Call(tool).tool_name == "find"


def test_parallel_named_branches_form_a_dict() -> None:
    a, b = Call("a"), Call("b")
    step = Parallel(x=a, y=b, name="both", timeout=1, on_error="collect")
    assert step.steps == {"x": a, "y": b}
    assert (step.name, step.timeout, step.on_error) == ("both", 1, "collect")
    assert Parallel(a, b).steps == (a, b)


def test_parallel_reserved_branch_names_are_given_as_a_dict() -> None:
    a, b, c, d = Call("a"), Call("b"), Call("c"), Call("d")
    step = Parallel({"name": a, "timeout": b, "on_error": c}, other=d, name="p")
    assert step.steps == {"name": a, "timeout": b, "on_error": c, "other": d}
    assert step.name == "p"
    assert step.timeout is None
    assert step.on_error == "raise"


def test_parallel_branch_names_keep_their_order() -> None:
    step = Parallel(z=Call("a"), a=Call("b"), m=Call("c"))
    assert isinstance(step.steps, dict)
    assert list(step.steps) == ["z", "a", "m"]


def test_map_shorthand_is_a_call_with_the_item() -> None:
    def double(x: int) -> int:
        return 2 * x

    assert MapReduce(Var("xs"), "double").map == Call("double", Var("item"))
    assert MapReduce(Var("xs"), "double", item="n").map == Call("double", Var("n"))
    step = MapReduce(Var("xs"), double)
    assert isinstance(step.map, Call)
    assert step.map.tool_name == "double"
    assert step.map.args == (Var("item"),)


def test_workflow_defaults_and_inputs() -> None:
    wf = Workflow(STEP, name="w", inputs=["a", "b"], description="d")
    assert wf.inputs == ("a", "b")
    assert (wf.step, wf.name, wf.description) == (STEP, "w", "d")
    assert Workflow(STEP).inputs == ()


def test_var_root() -> None:
    assert Var("user.address.0").root == "user"
    assert Var("user").root == "user"


# -- reprs, freezing, equality -----------------------------------------------

NAMESPACE = {
    "Call": Call,
    "Sequential": Sequential,
    "Parallel": Parallel,
    "MapReduce": MapReduce,
    "Workflow": Workflow,
    "Var": Var,
    "Lit": Lit,
    "Fn": Fn,
}

REPR_CASES: list[Any] = [
    Call("search"),
    Call("search", Var("q"), 3, limit=5, lang=Lit("en")),
    Call("search", Var("q"), name="hits", timeout=2.5),
    Call("create_user", arguments={"name": "ada", "timeout": 3}, role="x"),
    Call("t", arguments={"not an identifier": 1}),
    Call("fetch_range", arguments={"from": 1, "to": 2}),
    Parallel({"if": Call("a"), "else": Call("b")}),
    Call("t", [Var("a"), {"k": Var("b")}], (1, 2)),
    Sequential(Call("a"), Call("b", Var("x")), name="s", timeout=1),
    Parallel(Call("a"), Call("b"), on_error="collect"),
    Parallel(left=Call("a"), right=Call("b"), name="p"),
    Parallel({"name": Call("a"), "timeout": Call("b")}),
    Parallel({"two words": Call("a")}, timeout=4),
    MapReduce(Var("xs"), "double"),
    MapReduce(
        Var("docs"),
        Sequential(Call("fetch", Var("doc")), Call("parse", Var("doc"))),
        reduce="merge",
        initial=Lit({}),
        max_concurrency=8,
        ordered=False,
        item="doc",
        on_error="collect",
        name="merged",
        timeout=60,
    ),
    MapReduce(Fn("range", 10), Call("f", Var("item")), initial=0, reduce="add"),
    Workflow(Sequential(Call("a"), Call("b")), name="w", inputs=("q",)),
    Workflow(Call("a"), description="just one call"),
    Var("x.0.name"),
    Lit(Var("x")),
    Fn("len", Var("xs")),
]


@pytest.mark.parametrize("step", REPR_CASES, ids=repr)
def test_repr_reads_like_the_code(step: object) -> None:
    text = repr(step)
    assert eval(text, dict(NAMESPACE)) == step
    assert "object at 0x" not in text


def test_repr_examples() -> None:
    assert repr(Call("search", Var("q"), limit=5)) == (
        "Call('search', Var('q'), limit=5)"
    )
    assert repr(Sequential(Call("a"), Call("b"), name="s")) == (
        "Sequential(Call('a'), Call('b'), name='s')"
    )
    assert repr(Parallel(x=Call("a"), y=Call("b"))) == (
        "Parallel(x=Call('a'), y=Call('b'))"
    )
    assert repr(Parallel({"name": Call("a")})) == "Parallel({'name': Call('a')})"
    assert repr(MapReduce(Var("xs"), "f", max_concurrency=2)) == (
        "MapReduce(over=Var('xs'), map=Call('f', Var('item')), max_concurrency=2)"
    )
    assert repr(Call("t", arguments={"name": 1})) == "Call('t', arguments={'name': 1})"


def test_repr_of_a_tool_target_names_the_tool() -> None:
    @plait.tool(name="lookup")
    def find(key: str) -> str:
        return key

    assert repr(Call(find, "k")) == "Call('lookup', 'k')"


FROZEN_CASES: list[Any] = [
    (Call("a"), "timeout", 3),
    (Call("a"), "target", "b"),
    (Sequential(Call("a")), "steps", ()),
    (Parallel(Call("a")), "on_error", "collect"),
    (MapReduce(Var("xs"), "f"), "max_concurrency", 2),
    (Workflow(Call("a")), "name", "w"),
    (Var("x"), "path", "y"),
    (Lit(1), "value", 2),
    (Fn("len"), "args", ()),
]


@pytest.mark.parametrize(("obj", "field", "value"), FROZEN_CASES, ids=repr)
def test_steps_and_expressions_are_frozen(
    obj: object, field: str, value: object
) -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(obj, field, value)


def build_tree() -> Workflow:
    return Workflow(
        Sequential(
            Call("fetch", Var("url"), retries=2, name="page"),
            Parallel(
                words=MapReduce(
                    Fn("split", Var("page")),
                    Call("count", Var("w")),
                    reduce="add",
                    initial=0,
                    item="w",
                ),
                title=Call("title", Var("page.head"), timeout=5),
            ),
        ),
        inputs=("url",),
    )


def test_steps_built_the_same_are_equal() -> None:
    assert build_tree() == build_tree()
    assert build_tree() is not build_tree()
    assert Call("a", 1, k=Var("x")) == Call("a", 1, k=Var("x"))
    assert Parallel({"name": Call("a")}) == Parallel({"name": Call("a")})
    assert Fn(add, 1) == Fn(add, 1)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (Call("a", 1), Call("a", 2)),
        (Call("a", k=1), Call("a", k=2)),
        (Call("a"), Call("a", name="x")),
        (Call("a"), Call("b")),
        (Sequential(Call("a"), Call("b")), Sequential(Call("b"), Call("a"))),
        (Parallel(Call("a")), Parallel(x=Call("a"))),
        (Parallel(Call("a")), Parallel(Call("a"), on_error="collect")),
        (MapReduce(Var("xs"), "f"), MapReduce(Var("xs"), "f", ordered=False)),
        (MapReduce(Var("xs"), "f"), MapReduce(Var("ys"), "f")),
        (Var("x"), Var("y")),
        (Lit(1), Lit(2)),
        (Var("x"), Lit(Var("x"))),
        (Fn("f", 1), Fn("g", 1)),
        (Workflow(Call("a")), Workflow(Call("a"), name="w")),
    ],
    ids=repr,
)
def test_steps_built_differently_are_not_equal(left: object, right: object) -> None:
    assert left != right
