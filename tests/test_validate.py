"""One rule per kind of value, one message per rule, wherever it is checked."""

from __future__ import annotations

import math
from typing import Any

import anyio
import attrs
import pytest

import plait
from plait import Call, MapReduce, Parallel, RateLimit, Retry, Sequential, Var
from plait._model._tools import CONCURRENCY_LIMIT
from plait._model._validate import (
    COUNT,
    SECONDS,
    Rule,
    check_count,
    check_optional_count,
    check_seconds,
    field_rule,
    one_of,
    show_value,
)

# (step class, document of one step with the option, how Python builds it)
OPTIONS: list[tuple[str, Any, dict[str, Any], Any]] = [
    (
        "max_concurrency",
        0,
        {"kind": "map_reduce", "over": [], "map": {"kind": "call", "tool": "t"}},
        lambda v: MapReduce(Var("xs"), Call("t"), max_concurrency=v),
    ),
    (
        "max_concurrency",
        2.5,
        {"kind": "map_reduce", "over": [], "map": {"kind": "call", "tool": "t"}},
        lambda v: MapReduce(Var("xs"), Call("t"), max_concurrency=v),
    ),
    (
        "ordered",
        "yes",
        {"kind": "map_reduce", "over": [], "map": {"kind": "call", "tool": "t"}},
        lambda v: MapReduce(Var("xs"), Call("t"), ordered=v),
    ),
    (
        "item",
        "class",
        {"kind": "map_reduce", "over": [], "map": {"kind": "call", "tool": "t"}},
        lambda v: MapReduce(Var("xs"), Call("t"), item=v),
    ),
    (
        "on_error",
        "colect",
        {"kind": "map_reduce", "over": [], "map": {"kind": "call", "tool": "t"}},
        lambda v: MapReduce(Var("xs"), Call("t"), on_error=v),
    ),
    (
        "on_error",
        "ignore",
        {"kind": "parallel", "steps": [{"kind": "call", "tool": "t"}]},
        lambda v: Parallel(Call("t"), on_error=v),
    ),
    (
        "timeout",
        0,
        {"kind": "sequential", "steps": [{"kind": "call", "tool": "t"}]},
        lambda v: Sequential(Call("t"), timeout=v),
    ),
    ("timeout", -1.5, {"kind": "call", "tool": "t"}, lambda v: Call("t", timeout=v)),
]


@pytest.mark.parametrize(
    ("key", "value", "document", "build"),
    OPTIONS,
    ids=[f"{d['kind']}.{k}={v!r}" for k, v, d, _ in OPTIONS],
)
def test_a_document_and_code_get_the_same_message(
    key: str, value: object, document: dict[str, Any], build: Any
) -> None:
    with pytest.raises(plait.WorkflowError) as built:
        build(value)
    doc = {"kind": "sequential", "steps": [{**document, key: value}]}
    with pytest.raises(plait.WorkflowError) as loaded:
        plait.load(doc)
    (problem,) = loaded.value.errors
    assert problem.message == built.value.message
    assert problem.path == f"steps[0].{key}"
    assert built.value.path == key


def test_a_document_problem_keeps_its_line() -> None:
    with pytest.raises(plait.WorkflowError) as info:
        plait.load("kind: call\ntool: t\ntimeout: 0\n")
    (problem,) = info.value.errors
    assert (problem.line, problem.path) == (3, "timeout")
    assert (
        problem.message == "Call.timeout must be a number of seconds > 0 or None, got 0"
    )


def test_the_rule_table_is_what_the_fields_use() -> None:
    assert field_rule(MapReduce, "max_concurrency") == COUNT.or_none()
    assert field_rule(Call, "timeout") == SECONDS.or_none()
    assert field_rule(plait.Tool, "concurrency_limit") == CONCURRENCY_LIMIT
    assert field_rule(Retry, "attempts") == COUNT
    assert field_rule(RateLimit, "burst") == COUNT.or_none()
    assert field_rule(MapReduce, "over") is None


def test_messages() -> None:
    assert COUNT.message("Engine.max_concurrency", 0) == (
        "Engine.max_concurrency must be an int >= 1, got 0"
    )
    assert (
        COUNT.or_none().message("X.y", "3")
        == "X.y must be an int >= 1 or None, got '3'"
    )
    assert one_of("raise", "collect").message("P.on_error", "colect") == (
        "P.on_error must be 'raise' or 'collect', got 'colect' (did you mean 'collect'?)"
    )


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "2", None, [1]])
def test_count(value: object) -> None:
    assert not COUNT.ok(value)
    with pytest.raises(plait.ConfigError, match=r"^n must be an int >= 1, got "):
        check_count(value, "n")


def test_counts_that_pass() -> None:
    assert check_count(1, "n") == 1
    assert check_count(0, "n", minimum=0) == 0
    assert check_optional_count(None, "n") is None
    assert check_optional_count(10**30, "n") == 10**30


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, 10**400, True, "1"])
def test_seconds(value: object) -> None:
    with pytest.raises(
        plait.ConfigError, match=r"^deadline must be a number of seconds > 0 or None"
    ):
        check_seconds(value, "deadline")


def test_seconds_that_pass() -> None:
    assert check_seconds(None, "t") is None
    assert check_seconds(2, "t") == 2.0
    assert isinstance(check_seconds(2, "t"), float)


def test_engine_settings_use_the_rules() -> None:
    with pytest.raises(
        plait.ConfigError, match=r"^Engine\.max_concurrency must be an int >= 1, got 0$"
    ):
        plait.Engine(max_concurrency=0)
    engine = plait.Engine()
    with pytest.raises(
        plait.ConfigError, match=r"^deadline must be a number of seconds"
    ):
        anyio.run(lambda: engine.run(Call("t"), deadline=math.inf))


def test_huge_ints_in_messages() -> None:
    huge = 10**5000
    with pytest.raises(plait.WorkflowError) as info:
        Call("t", timeout=huge)
    assert info.value.message == (
        "Call.timeout must be a number of seconds > 0 or None, got an int of "
        f"{huge.bit_length()} bits"
    )


def test_long_values_are_cut_short() -> None:
    assert show_value("x" * 200) == repr("x" * 200)[:77] + "..."
    assert len(show_value(list(range(1000)))) == 80


def test_a_rule_names_the_public_argument_of_a_private_field() -> None:
    @attrs.define
    class Box:
        _size: int = attrs.field(validator=COUNT)

    with pytest.raises(plait.WorkflowError) as info:
        Box(0)
    assert info.value.message == "Box.size must be an int >= 1, got 0"
    assert info.value.path == "size"


def test_rules_are_data() -> None:
    rule = Rule("an even int", lambda v: isinstance(v, int) and v % 2 == 0)
    assert rule.ok(2)
    assert not rule.ok(3)
    assert not rule.ok(None)
    assert rule.or_none().ok(None)
    assert repr(rule) == "Rule(expected='an even int', optional=False)"
