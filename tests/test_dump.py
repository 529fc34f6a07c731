"""plait.dump: the canonical file form, and load(dump(w)) == w."""

from __future__ import annotations

import json
import math
import textwrap

import attrs
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

import _sample_tools as sample
import plait
from _documents import workflows
from plait import Call, Fn, Lit, MapReduce, Parallel, Retry, Sequential, Var, Workflow

ROUND_TRIPS = settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck)
)


def roundtrip(workflow: Workflow) -> None:
    for format in ("yaml", "json"):
        text = plait.dump(workflow, format)  # type: ignore[arg-type]
        assert plait.load(text) == workflow, text


def test_canonical_yaml() -> None:
    wf = Workflow(
        Sequential(
            MapReduce(
                Var("urls"),
                Call(sample.fetch, Var("item")),
                reduce=sample.add,
                initial=0,
                max_concurrency=8,
                name="total",
            ),
            Parallel(
                doubled=Call(
                    attrs.evolve(sample.double, name="twice", concurrency_limit=4),
                    x=Var("total"),
                ),
                greeting=Call(
                    sample.greet,
                    Fn(sample.join, Var("who"), " & co"),
                    punctuation="${not a var}",
                    timeout=2.5,
                ),
                raw=Call(
                    "search",
                    Lit("${x}"),
                    {"var": 1},
                    Lit(3),
                    Var("full name"),
                    retry=Retry(attempts=5, retry_on=(OSError, sample.Flaky)),
                ),
                on_error="collect",
            ),
        ),
        name="word lengths",
        inputs=("urls", "who"),
    )
    assert plait.dump(wf) == textwrap.dedent(
        """\
        name: word lengths
        inputs:
          - urls
          - who
        tools:
          twice:
            import: _sample_tools:double
            concurrency_limit: 4
        kind: sequential
        steps:
          - kind: map_reduce
            over: ${urls}
            map:
              kind: call
              tool: _sample_tools:fetch
              args:
                - ${item}
            reduce: _sample_tools:add
            initial: 0
            max_concurrency: 8
            name: total
          - kind: parallel
            steps:
              doubled:
                kind: call
                tool: twice
                args:
                  x: ${total}
              greeting:
                kind: call
                tool: _sample_tools:greet
                args:
                  - fn: _sample_tools:join
                    args:
                      - ${who}
                      - ' & co'
                kwargs:
                  punctuation: $${not a var}
                timeout: 2.5
              raw:
                kind: call
                tool: search
                args:
                  - lit: ${x}
                  - lit:
                      var: 1
                  - lit: 3
                  - var: full name
                retry:
                  attempts: 5
                  retry_on:
                    - OSError
                    - _sample_tools:Flaky
            on_error: collect
        """
    )
    back = plait.load(plait.dump(wf))
    # A plain mapping with a `var` key comes back as the Lit it was written as.
    raw = back.step.steps[1].steps["raw"]  # type: ignore[attr-defined]
    assert raw.args[1] == Lit({"var": 1})


def test_defaults_are_left_out() -> None:
    step = MapReduce(
        Var("xs"),
        Call("t"),
        ordered=True,
        item="item",
        on_error="raise",
    )
    assert json.loads(plait.dump(step, "json")) == {
        "kind": "map_reduce",
        "over": "${xs}",
        "map": {"kind": "call", "tool": "t"},
    }
    assert json.loads(plait.dump(Call("t", retry=Retry()), "json")) == {
        "kind": "call",
        "tool": "t",
        "retry": {},
    }


def test_arguments_positional_keyword_and_both() -> None:
    def args(step: Call) -> dict[str, object]:
        doc = json.loads(plait.dump(step, "json"))
        return {k: v for k, v in doc.items() if k in ("args", "kwargs")}

    assert args(Call("t", 1, "${x}")) == {"args": [1, "$${x}"]}
    assert args(Call("t", a=1, arguments={"name": 2})) == {"args": {"a": 1, "name": 2}}
    assert args(Call("t", 1, b=2)) == {"args": [1], "kwargs": {"b": 2}}


def test_a_bare_step_comes_back_as_a_workflow() -> None:
    step = Parallel(Call("a"), Call("b"))
    assert plait.load(plait.dump(step)) == Workflow(step)


def test_escaped_strings_and_var_forms() -> None:
    step = Call(
        "t",
        "${x}",
        "$${x}",
        "$",
        "a ${b}",
        Var("x.y.0"),
        Var("a b"),
        Var("$x"),
        [Var("x"), {"k": Var("y")}],
    )
    doc = json.loads(plait.dump(step, "json"))
    assert doc["args"] == [
        "$${x}",
        "$$${x}",
        "$",
        "a ${b}",
        "${x.y.0}",
        {"var": "a b"},
        {"var": "$x"},
        ["${x}", {"k": "${y}"}],
    ]
    roundtrip(Workflow(step))


def test_tools_written_inline_or_declared() -> None:
    quiet = attrs.evolve(sample.shout, name="quiet", timeout=None, retry=None)
    wf = Workflow(
        Parallel(
            Call(sample.double, 1),
            Call(sample.greet, "a"),
            Call(quiet, "b"),
            Call(quiet, "c"),
            Call(
                plait.Tool(sample.fetch, "get", rate_limit=plait.RateLimit(5, per=2)),
                "u",
            ),
        )
    )
    doc = yaml.safe_load(plait.dump(wf))
    assert [s["tool"] for s in doc["steps"]] == [
        "_sample_tools:double",
        "_sample_tools:greet",
        "quiet",
        "quiet",
        "get",
    ]
    assert doc["tools"] == {
        "quiet": {"import": "_sample_tools:shout", "timeout": None, "retry": None},
        "get": {"import": "_sample_tools:fetch", "rate_limit": {"rate": 5, "per": 2}},
    }
    roundtrip(wf)


def test_functions_and_exceptions_are_written_by_import_path() -> None:
    step = MapReduce(
        Fn(len, Var("xs")),
        Call("t", retry=Retry(retry_on=(plait.ToolTimeout, KeyError))),
        reduce=sample.add,
    )
    doc = json.loads(plait.dump(step, "json"))
    assert doc["over"] == {"fn": "builtins:len", "args": ["${xs}"]}
    assert doc["reduce"] == "_sample_tools:add"
    assert doc["map"]["retry"] == {"retry_on": ["plait:ToolTimeout", "KeyError"]}
    roundtrip(Workflow(step))
    predicate = Call("t", retry=Retry(retry_on=sample.is_transient))
    assert json.loads(plait.dump(predicate, "json"))["retry"] == {
        "retry_on": "_sample_tools:is_transient"
    }


@pytest.mark.parametrize(
    ("workflow", "path", "expected"),
    [
        (Call(lambda x: x), "tool", "cannot write tool '<lambda>'"),
        (Call("t", Fn(lambda x: x)), "args[0].fn", "cannot write the function"),
        (MapReduce([], Call("t"), reduce="a:b"), "reduce", "name 'a:b'"),
        (Call("t", {1, 2}), "args[0]", "cannot write a set value"),
        (Call("t", Lit(Var("x"))), "args[0].lit", "cannot write a Var inside a Lit"),
        (
            Call("t", {"var": Var("x")}),
            "args[0]",
            "a mapping with a 'var', 'lit' or 'fn' key that holds expressions",
        ),
        (Call("t", name="root"), "name", "the root step's name='root'"),
        (
            Parallel(
                Call(attrs.evolve(sample.double, name="x", timeout=1)),
                Call(attrs.evolve(sample.double, name="x", timeout=2)),
            ),
            "steps[1].tool",
            "two different tools are named 'x'",
        ),
        (
            Parallel(Call("x"), Call(attrs.evolve(sample.double, name="x"))),
            "steps[0].tool",
            "the tool name 'x' here and a plait.Tool of that name",
        ),
        (
            Retry(retry_on=lambda e: True),
            None,
            None,
        ),
    ],
)
def test_what_cannot_be_written(
    workflow: object, path: str | None, expected: str | None
) -> None:
    if isinstance(workflow, Retry):
        workflow = Call("t", retry=workflow)
        path, expected = "retry.retry_on", "cannot write the retry_on predicate"
    with pytest.raises(plait.WorkflowError) as info:
        plait.dump(workflow)  # type: ignore[arg-type]
    assert info.value.path == path
    assert expected is not None
    assert expected in info.value.message


def test_json_needs_string_keys_and_finite_numbers() -> None:
    with pytest.raises(plait.WorkflowError, match="JSON keys are strings"):
        plait.dump(Call("t", {1: "a"}), "json")
    with pytest.raises(plait.WorkflowError, match="cannot write nan as JSON"):
        plait.dump(Call("t", math.nan), "json")
    # YAML holds both.
    back = plait.load(plait.dump(Call("t", {1: "a"}, math.inf)))
    assert back.step == Call("t", {1: "a"}, math.inf)


def test_tuples_are_written_as_lists() -> None:
    back = plait.load(plait.dump(Call("t", (1, 2))))
    assert back.step == Call("t", [1, 2])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match='format must be "yaml" or "json"'):
        plait.dump(Call("t"), "toml")  # type: ignore[arg-type]
    with pytest.raises(plait.WorkflowError, match=r"expected a plait\.Workflow"):
        plait.dump("not a workflow")  # type: ignore[arg-type]


def test_yaml_line_breaks_inside_strings_survive() -> None:
    roundtrip(Workflow(Call("t", "a\x85b", "c\u2028", {"\u2029": 1})))


@ROUND_TRIPS
@given(workflows())
def test_load_dump_round_trip(workflow: Workflow) -> None:
    roundtrip(workflow)
