"""plait.load: the file form, its checks, line-numbered errors, and fuzzing."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _sample_tools as sample
import plait
from _documents import SAMPLE_YAML, any_data, workflows
from plait import Call, Fn, Lit, MapReduce, Parallel, Sequential, Var, Workflow

pytestmark = pytest.mark.anyio

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck)
)
# Random text and values are cheap to load: try many more of them.
FUZZ_MORE = settings(FUZZ, max_examples=500)


def load_errors(source: Any) -> plait.WorkflowError:
    with pytest.raises(plait.WorkflowError) as info:
        plait.load(source)
    error = info.value
    assert error.errors, "load errors list their problems"
    return error


def problems(source: Any) -> list[tuple[int | None, str, str]]:
    """``(line, path, message)`` of each problem load finds in ``source``."""
    return [(e.line, e.path, e.message) for e in load_errors(source).errors]


def only_problem(source: Any) -> plait.WorkflowError:
    error = load_errors(source)
    assert len(error.errors) == 1, str(error)
    return error.errors[0]


def yaml_doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# -- sources ------------------------------------------------------------------


def test_every_source_gives_the_same_workflow(tmp_path: Path) -> None:
    data = yaml.safe_load(SAMPLE_YAML)
    as_json = json.dumps(data, indent=2)
    (tmp_path / "wf.yaml").write_text(SAMPLE_YAML)
    (tmp_path / "wf.YML").write_text(SAMPLE_YAML)
    (tmp_path / "wf.json").write_text(as_json)
    (tmp_path / "wf.txt").write_text(as_json)
    expected = plait.load(data)
    assert isinstance(expected, Workflow)
    for source in [
        SAMPLE_YAML,
        as_json,
        str(tmp_path / "wf.yaml"),
        tmp_path / "wf.YML",
        str(tmp_path / "wf.json"),
        tmp_path / "wf.txt",
    ]:
        assert plait.load(source) == expected


def test_sample_document_builds_the_expected_steps() -> None:
    wf = plait.load(SAMPLE_YAML)
    assert wf.name == "word lengths"
    assert wf.inputs == ("urls", "who")
    seq = wf.step
    assert isinstance(seq, Sequential)
    mr, par = seq.steps
    assert isinstance(mr, MapReduce)
    assert mr.over == Var("urls")
    assert mr.map == Call(plait.Tool.of(sample.fetch), Var("item"))
    assert mr.reduce is sample.add
    assert (mr.initial, mr.max_concurrency, mr.name) == (0, 8, "total")
    assert isinstance(par, Parallel)
    assert par.on_error == "collect"
    assert isinstance(par.steps, dict)
    twice = par.steps["doubled"]
    assert isinstance(twice, Call)
    assert isinstance(twice.target, plait.Tool)
    assert twice.target.fn is sample.double.fn
    assert twice.target.name == "twice"
    assert twice.target.concurrency_limit == 4
    assert twice.target.timeout == 10
    assert twice.target.retry == plait.Retry(
        attempts=5, backoff=1.5, retry_on=(OSError, sample.Flaky)
    )
    assert twice.target.rate_limit == plait.RateLimit(20, per=1)
    assert twice.kwargs == {"x": Var("total")}
    assert par.steps["greeting"] == Call(
        plait.Tool.of(sample.greet),
        Fn(sample.join, Var("who"), " & co"),
        punctuation="${not a var}",
        timeout=2.5,
    )
    loud = par.steps["loud"]
    assert isinstance(loud, Call)
    # A decorated tool keeps its options and takes the declared name.
    assert loud.target == plait.Tool(
        sample.shout.fn,
        "loud",
        concurrency_limit=2,
        timeout=5.0,
        retry=plait.Retry(attempts=2),
    )


def test_json_text_is_read_as_json_and_yaml_flow_style_as_yaml() -> None:
    assert plait.load('{"kind": "call", "tool": "t", "args": [1e3]}') == Workflow(
        Call("t", 1000.0)
    )
    # YAML 1.1 reads 1e3 as a string; flow-style YAML is not JSON.
    assert plait.load("{kind: call, tool: t, args: [1e3]}") == Workflow(
        Call("t", "1e3")
    )


def test_a_path_like_string_that_does_not_exist_is_a_missing_file() -> None:
    error = only_problem("no/such/workflow.yaml")
    assert error.message == "no such file: no/such/workflow.yaml"


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"kind: call\ntool: \xff\n")
    assert "not UTF-8" in only_problem(path).message


@pytest.mark.parametrize("source", [None, 3, ["kind", "call"], b"kind: call"])
def test_a_source_of_the_wrong_type(source: object) -> None:
    assert "plait.load takes a mapping" in only_problem(source).message


@pytest.mark.parametrize("text", ["", "# just a comment\n"])
def test_an_empty_document(text: str) -> None:
    assert "the document is empty" in only_problem(text).message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "3\n"])
def test_a_document_that_is_not_a_mapping(text: str) -> None:
    error = only_problem(text)
    assert error.message.startswith("a workflow document must be a mapping")
    assert error.path == ""


# -- the document -------------------------------------------------------------


def test_a_bare_step_document_is_a_workflow_without_metadata() -> None:
    assert plait.load({"kind": "call", "tool": "t"}) == Workflow(Call("t"))


def test_every_kind_of_step() -> None:
    doc = yaml_doc(
        """
        kind: sequential
        timeout: 30
        steps:
          - {kind: call, tool: a, args: [1, 2], kwargs: {k: 3}, name: first}
          - {kind: call, tool: b, args: {name: x, timeout: 2}, timeout: 1}
          - kind: parallel
            steps: [{kind: call, tool: a}, {kind: call, tool: b}]
          - kind: parallel
            on_error: collect
            steps: {name: {kind: call, tool: a}, "odd key": {kind: call, tool: b}}
          - kind: map_reduce
            over: [1, 2, 3]
            map: {kind: call, tool: a, args: ["${x}"]}
            reduce: total
            initial: {lit: 0}
            max_concurrency: 2
            ordered: false
            item: x
            on_error: collect
            name: folded
        """
    )
    assert plait.load(doc) == Workflow(
        Sequential(
            Call("a", 1, 2, k=3, name="first"),
            Call("b", arguments={"name": "x", "timeout": 2}, timeout=1),
            Parallel(Call("a"), Call("b")),
            Parallel({"name": Call("a"), "odd key": Call("b")}, on_error="collect"),
            MapReduce(
                [1, 2, 3],
                Call("a", Var("x")),
                reduce="total",
                initial=Lit(0),
                max_concurrency=2,
                ordered=False,
                item="x",
                on_error="collect",
                name="folded",
            ),
            timeout=30,
        )
    )


def test_expressions_and_literals() -> None:
    doc = {
        "kind": "call",
        "tool": "t",
        "args": [
            "${x}",
            "${x.field.0}",
            "$${x}",
            "$$${x}",
            "$",
            "costs $5",
            "hello ${x}",
            {"var": "user.full name"},
            {"lit": "${x}"},
            {"lit": {"var": "not an expression"}},
            {"fn": "len", "args": ["${xs}"]},
            {"fn": "now"},
            {"fn": "_sample_tools:join", "args": [{"a": "${x}"}, ["${y}", 1]]},
            {"plain": {"nested": ["${z}"]}},
            [None, True, 1.5],
        ],
    }
    assert plait.load(doc).step == Call(
        "t",
        Var("x"),
        Var("x.field.0"),
        "${x}",
        "$${x}",
        "$",
        "costs $5",
        "hello ${x}",
        Var("user.full name"),
        Lit("${x}"),
        Lit({"var": "not an expression"}),
        Fn("len", Var("xs")),
        Fn("now"),
        Fn(sample.join, {"a": Var("x")}, [Var("y"), 1]),
        {"plain": {"nested": [Var("z")]}},
        [None, True, 1.5],
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${x", "is not a variable reference"),
        ("${a}${b}", "is not a variable reference"),
        ("${}", "is not a variable reference"),
        ("${a..b}", "is not a variable reference"),
        ({"var": "a..b"}, "var must be a dotted variable path"),
        ({"var": 3}, "var must be a dotted variable path"),
        ({"var": "x", "lit": 1}, "is not an expression"),
        ({"var": "x", "default": 1}, "unknown key 'default' in a {var: ...}"),
        ({"fn": "f", "arg": [1]}, "(did you mean 'args'?)"),
        ({"fn": "f", "args": 1}, "args must be a list"),
        ({"fn": 3}, "fn must be the name of a registered function"),
        ({"fn": "${f}"}, "expressions such as '${f}' are not allowed here"),
    ],
)
def test_bad_expressions(value: object, expected: str) -> None:
    error = only_problem({"kind": "call", "tool": "t", "args": [value]})
    assert expected in error.message
    assert error.path.startswith("args[0]")


def test_step_options_are_checked() -> None:
    found = problems(
        {
            "kind": "map_reduce",
            "over": [],
            "map": {"kind": "call", "tool": "t", "name": "1x", "timeout": 0},
            "reduce": 7,
            "max_concurrency": 0,
            "ordered": "yes",
            "item": "class",
            "on_error": "ignore",
            "timeout": True,
        }
    )
    # Each option is checked by its field's rule in the step class, with the
    # message that building the step in Python gives (values as the document
    # writes them).
    assert found == [
        (
            None,
            "max_concurrency",
            "MapReduce.max_concurrency must be an int >= 1 or None, got 0",
        ),
        (None, "ordered", "MapReduce.ordered must be True or False, got 'yes'"),
        (
            None,
            "item",
            "MapReduce.item must be an identifier such as 'item', got 'class'",
        ),
        (
            None,
            "on_error",
            "MapReduce.on_error must be 'raise' or 'collect', got 'ignore'",
        ),
        (
            None,
            "timeout",
            "MapReduce.timeout must be a number of seconds > 0 or None, got true",
        ),
        (
            None,
            "map.name",
            "Call.name must be an identifier such as 'results' or None, got '1x'",
        ),
        (
            None,
            "map.timeout",
            "Call.timeout must be a number of seconds > 0 or None, got 0",
        ),
        (
            None,
            "reduce",
            "reduce must be the name of a registered function or an import path "
            "'module:attr', got 7",
        ),
    ]


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 10**400, "5", -1])
def test_bad_timeouts(timeout: object) -> None:
    error = only_problem({"kind": "call", "tool": "t", "timeout": timeout})
    assert error.path == "timeout"


def test_unknown_keys_name_a_close_match() -> None:
    found = problems(
        yaml_doc(
            """
            kind: sequential
            stesp: []
            steps:
              - {kind: call, tool: t, agrs: [1]}
              - {kind: call, tool: t, over: [1]}
              - {kind: call, tool: t, inputs: [x]}
              - {kind: call, tool: t, retry: {atempts: 2}}
            """
        )
    )
    assert [(line, path) for line, path, _ in found] == [
        (2, "stesp"),
        (4, "steps[0].agrs"),
        (5, "steps[1].over"),
        (6, "steps[2].inputs"),
        (7, "steps[3].retry.atempts"),
    ]
    messages = [m for _, _, m in found]
    assert messages[0].startswith("unknown key 'stesp' in a sequential step")
    assert "(did you mean 'steps'?)" in messages[0]
    assert "(did you mean 'args'?)" in messages[1]
    assert (
        "a call step has no key 'over' (it belongs to map_reduce steps)" in messages[2]
    )
    assert messages[3] == "'inputs' is only allowed at the top of the document"
    assert "(did you mean 'attempts'?)" in messages[4]


def test_kind_is_required_and_checked() -> None:
    found = problems(
        yaml_doc(
            """
            kind: sequential
            steps:
              - {tool: t}
              - {kind: cal, tool: t, bogus: 1}
              - {kind: 3}
              - {}
            """
        )
    )
    assert [(line, path) for line, path, _ in found] == [
        (3, "steps[0]"),
        (4, "steps[1].kind"),
        (4, "steps[1].bogus"),
        (5, "steps[2].kind"),
        (6, "steps[3]"),
    ]
    assert "(this looks like kind: call)" in found[0][2]
    assert "(did you mean 'call'?)" in found[1][2]
    assert "unknown key 'bogus' in a call step" in found[2][2]
    assert "got 3" in found[3][2]
    assert found[4][2].startswith("missing required key 'kind'")


def test_missing_required_keys() -> None:
    found = problems(
        {
            "kind": "sequential",
            "steps": [
                {"kind": "call"},
                {"kind": "map_reduce", "over": []},
                {"kind": "parallel"},
            ],
        }
    )
    assert found == [
        (None, "steps[0]", "missing required key 'tool' of a call step"),
        (None, "steps[1]", "missing required key 'map' of a map_reduce step"),
        (None, "steps[2]", "missing required key 'steps' of a parallel step"),
    ]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([], "steps must not be empty"),
        ({}, "steps must not be empty"),
        ("abc", "steps must be a list of steps or a mapping of named branches"),
        ([3], "expected a step: a mapping with kind"),
        ({"": {"kind": "call", "tool": "t"}}, "branch names must be non-empty"),
    ],
)
def test_bad_parallel_steps(steps: object, expected: str) -> None:
    assert expected in only_problem({"kind": "parallel", "steps": steps}).message


def test_call_arguments() -> None:
    assert problems({"kind": "call", "tool": "t", "args": 3}) == [
        (
            None,
            "args",
            "args must be a list of positional arguments or a mapping of keyword "
            "arguments, got 3",
        )
    ]
    found = problems({"kind": "call", "tool": "t", "args": {"a": 1}, "kwargs": {}})
    assert found[0][1] == "kwargs"
    assert problems({"kind": "call", "tool": "t", "args": {1: 2}})[0][1:] == (
        "args.1",
        "argument names must be strings, got 1",
    )
    assert plait.load({"kind": "call", "tool": "t", "kwargs": {"a": 1}}).step == Call(
        "t", a=1
    )


def test_non_string_keys() -> None:
    error = only_problem("kind: call\ntool: t\non: 1\n")
    assert error.line == 3
    assert "keys must be strings, got true" in error.message
    assert "quote the key" in error.message


def test_workflow_keys() -> None:
    found = problems(
        {
            "kind": "call",
            "tool": "t",
            "name": 3,
            "description": ["x"],
            "inputs": ["ok", "ok", "no way", 3],
        }
    )
    assert [path for _, path, _ in found] == [
        "name",
        "description",
        "inputs[1]",
        "inputs[2]",
        "inputs[3]",
    ]
    assert problems({"kind": "call", "tool": "t", "inputs": "x"})[0][1] == "inputs"
    assert plait.load(
        {"kind": "call", "tool": "t", "name": "any text", "inputs": None}
    ) == Workflow(Call("t"), name="any text")


# -- tools, functions, imports ------------------------------------------------


def test_tools_by_import_path_and_declared() -> None:
    doc = yaml_doc(
        """
        tools:
          hi: "_sample_tools:greet"
          quick: {import: "_sample_tools:shout", timeout: null, retry: null}
          bare: {import: "_sample_tools:double"}
        kind: parallel
        steps:
          - {kind: call, tool: hi, args: [a]}
          - {kind: call, tool: quick, args: [b]}
          - {kind: call, tool: bare, args: [1]}
          - {kind: call, tool: "_sample_tools:greet", args: [c]}
          - {kind: call, tool: registered}
        """
    )
    calls = plait.load(doc).step.steps
    assert isinstance(calls, tuple)
    targets = [c.target for c in calls if isinstance(c, Call)]
    assert targets[0] == plait.Tool(sample.greet, "hi")
    assert targets[1] == plait.Tool(sample.shout.fn, "quick", concurrency_limit=2)
    assert targets[2] == plait.Tool(sample.double.fn, "bare")
    assert targets[3] == plait.Tool.of(sample.greet)
    assert targets[4] == "registered"


def test_bad_imports_name_the_module_or_attribute() -> None:
    found = problems(
        yaml_doc(
            """
            tools:
              a: "no_such_module_xyz:f"
              b: "_sample_tools:dubble"
              c: "_sample_tools:NOT_CALLABLE"
              d: "not a path"
              e: {import: "_sample_tools:double", concurrency_limit: 0, rate_limit: {per: 0}}
              "x:y": "_sample_tools:double"
            functions:
              f: "_sample_tools:async_add"
              g: "_sample_tools:NOT_CALLABLE"
              h: "_sample_tools"
            kind: sequential
            steps:
              - {kind: call, tool: a}
              - {kind: call, tool: "_sample_tools:nope"}
              - {kind: call, tool: "bad path:x"}
              - kind: map_reduce
                over: []
                map: {kind: call, tool: t}
                reduce: f
              - {kind: map_reduce, over: [], map: {kind: call, tool: t}, reduce: "_sample_tools:NOT_CALLABLE"}
            """
        )
    )
    got = {path: (line, message) for line, path, message in found}
    assert got["tools.a"] == (
        2,
        "cannot import 'no_such_module_xyz:f': no module named 'no_such_module_xyz'",
    )
    assert got["tools.b"] == (
        3,
        "cannot import '_sample_tools:dubble': '_sample_tools' has no attribute "
        "'dubble' (did you mean 'double'?)",
    )
    assert (
        got["tools.c"][1]
        == "'_sample_tools:NOT_CALLABLE' is not a function or a plait.Tool, got 3"
    )
    assert "must be an import path 'module:attr'" in got["tools.d"][1]
    assert got["tools.e.concurrency_limit"] == (
        6,
        "Tool.concurrency_limit must be an int >= 1 or a plait.Adaptive or None, got 0",
    )
    assert got["tools.e.rate_limit"][1] == "missing required key 'rate'"
    assert got["tools.e.rate_limit.per"][1] == (
        "RateLimit.per must be a number > 0, got 0"
    )
    assert "tool names must be non-empty strings without ':'" in got["tools.x:y"][1]
    assert "is an async function" in got["functions.f"][1]
    assert "is not callable" in got["functions.g"][1]
    assert "must be an import path" in got["functions.h"][1]
    assert got["steps[0].tool"] == (
        14,
        "tool 'a' is declared in tools but could not be loaded",
    )
    assert "has no attribute 'nope'" in got["steps[1].tool"][1]
    assert "is not an import path" in got["steps[2].tool"][1]
    assert "function 'f' is declared in functions" in got["steps[3].reduce"][1]
    assert "is not callable" in got["steps[4].reduce"][1]


def test_a_module_that_fails_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_on_import_xyz.py").write_text("raise RuntimeError('nope')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    error = only_problem({"kind": "call", "tool": "broken_on_import_xyz:f"})
    assert error.message == (
        "cannot import 'broken_on_import_xyz:f': importing module "
        "'broken_on_import_xyz' raised RuntimeError: nope"
    )


def test_retry_options() -> None:
    doc = {
        "kind": "parallel",
        "steps": [
            {"kind": "call", "tool": "t", "retry": {}},
            {
                "kind": "call",
                "tool": "t",
                "retry": {
                    "attempts": 4,
                    "backoff": 3,
                    "initial_delay": 0,
                    "max_delay": 1.5,
                    "jitter": False,
                    "retry_on": [
                        "ValueError",
                        "_sample_tools:Flaky",
                        "plait:ToolTimeout",
                    ],
                },
            },
            {"kind": "call", "tool": "t", "retry": {"retry_on": "KeyError"}},
            {
                "kind": "call",
                "tool": "t",
                "retry": {"retry_on": "_sample_tools:is_transient"},
            },
        ],
    }
    calls = plait.load(doc).step.steps
    assert [c.retry for c in calls if isinstance(c, Call)] == [
        plait.Retry(),
        plait.Retry(
            attempts=4,
            backoff=3,
            initial_delay=0,
            max_delay=1.5,
            jitter=False,
            retry_on=(ValueError, sample.Flaky, plait.ToolTimeout),
        ),
        plait.Retry(retry_on=(KeyError,)),
        plait.Retry(retry_on=sample.is_transient),
    ]


def test_bad_retry_options_are_all_reported() -> None:
    found = problems(
        {
            "kind": "call",
            "tool": "t",
            "retry": {
                "attempts": "3",
                "backoff": 0.5,
                "jitter": 1,
                "retry_on": ["OSErorr", 3, "len", "_sample_tools:nope"],
                "delay": 1,
            },
        }
    )
    assert [path for _, path, _ in found] == [
        "retry.attempts",
        "retry.backoff",
        "retry.jitter",
        "retry.retry_on[0]",
        "retry.retry_on[1]",
        "retry.retry_on[2]",
        "retry.retry_on[3]",
        "retry.delay",
    ]
    messages = [m for _, _, m in found]
    assert messages[0] == "Retry.attempts must be an int >= 1, got '3'"
    assert messages[1] == "Retry.backoff must be a number >= 1, got 0.5"
    assert messages[2] == "Retry.jitter must be True or False, got 1"
    assert "(did you mean 'OSError'?)" in messages[3]
    assert "'len' is not an Exception subclass" in messages[5]
    assert (
        "(did you mean 'initial_delay'?)" in messages[7]
        or "unknown key 'delay'" in messages[7]
    )
    assert only_problem({"kind": "call", "tool": "t", "retry": 3}).message == (
        "retry must be a mapping, got 3"
    )


def test_declared_names_stay_local_and_unknown_names_go_to_the_engine() -> None:
    doc = {
        "functions": {"plus": "_sample_tools:add"},
        "kind": "map_reduce",
        "over": "${xs}",
        "map": {"kind": "call", "tool": "t", "args": [{"fn": "plus", "args": [1, 2]}]},
        "reduce": "registered_elsewhere",
    }
    step = plait.load(doc).step
    assert isinstance(step, MapReduce)
    assert step.map == Call("t", Fn(sample.add, 1, 2))
    assert step.reduce == "registered_elsewhere"


# -- errors: lines, all at once, their shape ------------------------------------


BROKEN_YAML = yaml_doc(
    """
    name: broken
    inputs: [urls]
    kind: sequential
    steps:
      - kind: map_reduce
        over: ${urls}
        map:
          kind: call
          tool: fetch
          args:
            url: ${itme
        max_concurrency: 0
      - kind: paralel
        steps: []
    """
)


def test_all_problems_are_reported_at_once_with_lines() -> None:
    error = load_errors(BROKEN_YAML)
    assert [(e.line, e.path) for e in error.errors] == [
        (11, "steps[0].map.args.url"),
        (12, "steps[0].max_concurrency"),
        (13, "steps[1].kind"),
        (14, "steps[1].steps"),
    ]
    lines = str(error).splitlines()
    assert lines[0] == "invalid workflow: 4 errors"
    assert lines[1].startswith("  line 11, steps[0].map.args.url: '${itme' is not a")
    assert lines[2] == (
        "  line 12, steps[0].max_concurrency: MapReduce.max_concurrency must be an "
        "int >= 1 or None, got 0"
    )
    assert lines[3].startswith("  line 13, steps[1].kind: kind must be one of")
    assert lines[3].endswith("got 'paralel' (did you mean 'parallel'?)")
    # The first problem is also the error's own path and line.
    assert (error.path, error.line) == ("steps[0].map.args.url", 11)
    one = error.errors[1]
    assert str(one) == (
        "MapReduce.max_concurrency must be an int >= 1 or None, got 0 "
        "(at steps[0].max_concurrency, line 12)"
    )


def test_lines_in_json_text() -> None:
    text = json.dumps(yaml.safe_load(BROKEN_YAML), indent=2)
    error = load_errors(text)
    lines = text.splitlines()
    for e in error.errors:
        assert e.line is not None
        key = e.path.rsplit(".", 1)[-1].split("[")[0]
        assert f'"{key}"' in lines[e.line - 1]


def test_lines_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(BROKEN_YAML)
    error = load_errors(path)
    assert str(error).splitlines()[0] == f"invalid workflow in {path}: 4 errors"
    assert error.errors[0].line == 11


def test_a_problem_without_a_key_takes_the_line_of_its_mapping() -> None:
    error = only_problem("kind: sequential\nsteps:\n  - kind: call\n    name: x\n")
    assert (error.line, error.path) == (3, "steps[0]")


def test_yaml_syntax_errors_have_lines() -> None:
    error = only_problem("kind: call\ntool: [a\nargs: 1\n")
    assert error.message.startswith("invalid YAML:")
    assert error.line == 3
    assert only_problem("kind: call\n\ttool: t\n").line == 2
    assert "#x0007" in only_problem("kind: call\ntool: \x07\n").message


def test_json_syntax_errors_have_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "kind": "call",\n  "tool": "t",,\n}\n')
    error = only_problem(path)
    assert error.message.startswith("invalid JSON: Expecting property name")
    assert error.line == 3


def test_duplicate_keys_are_errors_in_yaml_and_json() -> None:
    error = only_problem("kind: call\ntool: a\ntool: b\n")
    assert (error.line, error.path) == (3, "tool")
    assert error.message == "duplicate key 'tool' (first given on line 2)"
    error = only_problem('{"kind": "call",\n "tool": "a",\n "tool": "b"}')
    assert (error.line, error.path) == (3, "tool")
    # A duplicate does not hide the other problems.
    assert len(load_errors("kind: call\ntool: a\ntool: b\ntimeout: 0\n").errors) == 2


def test_yaml_merge_keys_are_allowed() -> None:
    doc = yaml_doc(
        """
        kind: parallel
        steps:
          - &base {kind: call, tool: t, timeout: 5}
          - {<<: *base, tool: u}
        """
    )
    assert plait.load(doc).step == Parallel(Call("t", timeout=5), Call("u", timeout=5))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: call\ntool: &a [*a]\n", "an alias refers to a node that holds it"),
        ("kind: call\ntool: !!int abc\n", "invalid YAML value 'abc'"),
        ("kind: call\ntool: 2001-13-01\n", "invalid YAML value '2001-13-01'"),
        (
            "kind: call\ntool: !!python/object/apply:os.system [echo hacked]\n",
            "could not determine a constructor",
        ),
        ("kind: call\n---\nkind: call\n", "expected a single document"),
        ("[" * 2000 + "]" * 2000, "nests more than 100 levels deep"),
        ("a: " + "[" * 150 + "]" * 150, "nests more than 100 levels deep"),
        ('{"a": ' + "[" * 150 + "]" * 150 + "}", "nests more than 100 levels deep"),
    ],
)
def test_hostile_yaml(text: str, expected: str) -> None:
    assert expected in str(load_errors(text))


def test_an_alias_bomb_is_stopped() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append("kind: call\ntool: t\nargs: *a8\n")
    assert "more than 100000 values" in str(load_errors("\n".join(lines)))


def test_a_deeply_nested_mapping_given_directly() -> None:
    value: Any = 1
    for _ in range(300):
        value = [value]
    error = only_problem({"kind": "call", "tool": "t", "args": value})
    assert "nests more than 100 levels deep" in error.message


def test_a_check_of_a_step_class_is_reported_with_its_document_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Strict(MapReduce):
        def __attrs_post_init__(self) -> None:
            raise plait.WorkflowError("MapReduce.item must be nicer, got 'x'", "item")

    monkeypatch.setattr("plait._io._load.MapReduce", Strict)
    error = only_problem(
        "kind: sequential\nsteps:\n  - kind: map_reduce\n    over: []\n"
        "    map: {kind: call, tool: t}\n    item: x\n"
    )
    assert (error.path, error.line) == ("steps[0].item", 6)
    assert error.message == "MapReduce.item must be nicer, got 'x'"


def test_workflow_error_keeps_its_old_constructor_and_pickles() -> None:
    plain = plait.WorkflowError("bad thing", "steps[1]")
    assert str(plain) == "bad thing (at steps[1])"
    assert (plain.line, plain.errors) == (None, [])
    error = load_errors(BROKEN_YAML)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert [(e.path, e.line) for e in copy.errors] == [
        (e.path, e.line) for e in error.errors
    ]
    assert str(plait.WorkflowError("m", line=3)) == "m (at line 3)"


def test_the_error_output_in_the_docs_is_what_load_prints() -> None:
    doc = Path(__file__).parent.parent / "docs" / "reference" / "workflow-format.md"
    text = doc.read_text(encoding="utf-8")
    source = text.split('bad = """\\\n', 1)[1].split('"""', 1)[0]
    shown = text.split("```text\n", 1)[1].split("```", 1)[0]
    assert str(load_errors(source)) + "\n" == shown


# -- running a loaded workflow ------------------------------------------------


async def test_a_loaded_workflow_runs() -> None:
    async def search(query: str) -> list[str]:
        return [f"{query}-1", f"{query}-2"]

    engine = plait.Engine(tools=[search], functions={"total": sample.add})
    wf = plait.load(
        yaml_doc(
            """
            inputs: [urls, who]
            tools:
              twice: {import: "_sample_tools:double", concurrency_limit: 2}
            kind: sequential
            steps:
              - kind: map_reduce
                over: ${urls}
                map: {kind: call, tool: "_sample_tools:fetch", args: ["${item}"]}
                reduce: total
                name: size
              - kind: parallel
                steps:
                  doubled: {kind: call, tool: twice, args: {x: "${size}"}}
                  loud: {kind: call, tool: "_sample_tools:shout", args: ["${who}"]}
                  hits: {kind: call, tool: search, args: [{fn: "_sample_tools:join", args: ["${who}", "!"]}]}
                  literal: {kind: call, tool: "_sample_tools:greet", args: ["$${who}"], kwargs: {punctuation: "?"}}
            """
        )
    )
    out = await engine.run(wf, {"urls": ["ab", "cde", "f"], "who": "ann"})
    assert out == {
        "doubled": 12,
        "loud": "ANN",
        "hits": ["ann!-1", "ann!-2"],
        "literal": "hello ${who}?",
    }


async def test_the_sample_document_runs() -> None:
    wf = plait.load(SAMPLE_YAML)
    out = await plait.Engine().run(wf, {"urls": ["a", "bb"], "who": "bo"})
    assert out == {"doubled": 6, "greeting": "hello bo & co${not a var}", "loud": "BO"}


# -- fuzzing: load raises WorkflowError and nothing else -----------------------


def well_formed(error: plait.WorkflowError) -> None:
    assert error.errors
    assert all(isinstance(e, plait.WorkflowError) for e in error.errors)
    assert str(error)


def load_or_workflow_error(source: object) -> None:
    try:
        result = plait.load(source)  # type: ignore[arg-type]
    except plait.WorkflowError as error:
        well_formed(error)
    else:
        assert isinstance(result, Workflow)


@FUZZ_MORE
@given(any_data)
def test_fuzz_random_values(value: object) -> None:
    load_or_workflow_error(value)
    load_or_workflow_error(json.dumps(value))


YAMLISH = st.sampled_from(
    [
        *":-[]{}&*!|>'\"#%@`,?\n\t ",
        *("kind", "call", "sequential", "steps", "tool", "${x}", "$${", "map"),
        *("over", "!!int", "!!python/name:os.system", "&a", "*a", "<<", "0"),
        *("1e3", "null", "yes", "2001-13-01", "!!binary", "!!set", "---"),
    ]
)


@FUZZ_MORE
@given(st.lists(YAMLISH, max_size=40).map("".join) | st.text())
def test_fuzz_yaml_garbage(text: str) -> None:
    load_or_workflow_error(text)


MUTATION_KEYS = st.sampled_from(
    (
        *("kind", "tool", "args", "kwargs", "steps", "over", "map", "reduce"),
        *("initial", "max_concurrency", "ordered", "item", "on_error", "name"),
        *("timeout", "retry", "var", "lit", "fn", "import", "attempts"),
        *("retry_on", "rate", "inputs", "tools"),
    )
) | st.text(max_size=5)
MUTATION_VALUES = (
    st.sampled_from(
        (
            *("call", "sequential", "parallel", "map_reduce", "${x}", "$${x}"),
            *("OSError", "_sample_tools:double", "_sample_tools:nope"),
            *("no_module_xyz:x", "collect", 0, -1, 1.5, True, None, [], {}),
        )
    )
    | any_data
)


def _places(
    doc: Any, out: list[tuple[Any, Any, Any]], parent: Any = None, key: Any = None
) -> list[tuple[Any, Any, Any]]:
    out.append((parent, key, doc))
    if isinstance(doc, dict):
        for k, v in doc.items():
            _places(v, out, doc, k)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            _places(v, out, doc, i)
    return out


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """Valid documents with keys deleted, added, retyped or wrapped."""
    if draw(st.booleans()):
        doc = json.loads(plait.dump(draw(workflows()), "json"))
    else:
        doc = yaml.safe_load(SAMPLE_YAML)
    for _ in range(draw(st.integers(1, 4))):
        parent, key, value = draw(st.sampled_from(_places(doc, [])))
        op = draw(st.sampled_from(["delete", "insert", "replace", "wrap"]))
        if op == "insert" and isinstance(value, dict):
            value[draw(MUTATION_KEYS)] = draw(MUTATION_VALUES)
        elif op == "insert" and isinstance(value, list):
            value.insert(draw(st.integers(0, len(value))), draw(MUTATION_VALUES))
        elif parent is None:
            continue
        elif op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(MUTATION_VALUES)
        else:
            parent[key] = draw(
                st.sampled_from(
                    [
                        [value],
                        {"lit": value},
                        {"var": value},
                        {"fn": value},
                        {"kind": "call", "tool": value},
                        {"kind": "sequential", "steps": value},
                    ]
                )
            )
    return doc


@FUZZ
@given(mutated_documents(), st.sampled_from(["mapping", "yaml", "json"]))
def test_fuzz_mutated_documents(doc: Any, form: str) -> None:
    if form == "yaml":
        load_or_workflow_error(yaml.safe_dump(doc))
    elif form == "json":
        load_or_workflow_error(json.dumps(doc))
    else:
        load_or_workflow_error(doc)


@pytest.mark.parametrize("text", ['!!set "" : 1', "{!!set a: 1}"])
def test_unhashable_tagged_keys_are_workflow_errors(text: str) -> None:
    with pytest.raises(plait.WorkflowError, match="must be a plain value"):
        plait.load(text)
