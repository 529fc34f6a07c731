"""plait.json_schema: a valid draft 2020-12 schema that agrees with load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

import plait
from _documents import SAMPLE_YAML, workflows
from plait._io._form import STEP_KEYS

VALIDATOR = jsonschema.Draft202012Validator(plait.json_schema())


def errors(doc: object) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(doc)]


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = plait.json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_each_call_returns_a_new_dict() -> None:
    first = plait.json_schema()
    first["$defs"].clear()
    assert plait.json_schema()["$defs"]


def test_the_schema_knows_the_keys_load_knows() -> None:
    defs = plait.json_schema()["$defs"]
    for kind, keys in STEP_KEYS.items():
        assert set(defs[kind]["properties"]) | {"name"} == set(keys), kind


VALID = [
    yaml.safe_load(SAMPLE_YAML),
    {"kind": "call", "tool": "t"},
    {"kind": "call", "tool": "m:f", "args": {"a": "${x}"}, "retry": None},
    {"kind": "call", "tool": "t", "args": [1], "kwargs": {"b": {"lit": {"var": 1}}}},
    {"kind": "parallel", "steps": {"a": {"kind": "call", "tool": "t", "name": "x"}}},
    {
        "kind": "map_reduce",
        "over": {"fn": "len", "args": ["$${literal}", [1, {"k": None}]]},
        "map": {"kind": "sequential", "steps": [{"kind": "call", "tool": "t"}]},
        "reduce": None,
        "max_concurrency": None,
        "timeout": 1.5,
    },
    {
        "name": "anything at all",
        "inputs": ["a", "b"],
        "tools": {"t": {"import": "m:f", "rate_limit": {"rate": 2}, "retry": {}}},
        "functions": {"f": "m.n:g"},
        "kind": "call",
        "tool": "t",
    },
]


@pytest.mark.parametrize("doc", VALID)
def test_valid_documents_pass(doc: object) -> None:
    assert errors(doc) == []


INVALID: list[tuple[str, Any]] = [
    ("no kind", {"tool": "t"}),
    ("bad kind", {"kind": "cal", "tool": "t"}),
    ("unknown key", {"kind": "call", "tool": "t", "tol": 1}),
    ("key of another kind", {"kind": "call", "tool": "t", "over": []}),
    ("missing tool", {"kind": "call"}),
    ("empty steps", {"kind": "sequential", "steps": []}),
    ("step not a mapping", {"kind": "sequential", "steps": [3]}),
    (
        "nested unknown key",
        {"kind": "sequential", "steps": [{"kind": "call", "tool": "t", "x": 1}]},
    ),
    (
        "inputs below the top",
        {"kind": "sequential", "steps": [{"kind": "call", "tool": "t", "inputs": []}]},
    ),
    (
        "bad step name",
        {"kind": "sequential", "steps": [{"kind": "call", "tool": "t", "name": "1x"}]},
    ),
    (
        "zero max_concurrency",
        {
            "kind": "map_reduce",
            "over": [],
            "map": {"kind": "call", "tool": "t"},
            "max_concurrency": 0,
        },
    ),
    (
        "ordered not a bool",
        {
            "kind": "map_reduce",
            "over": [],
            "map": {"kind": "call", "tool": "t"},
            "ordered": "yes",
        },
    ),
    (
        "bad on_error",
        {
            "kind": "parallel",
            "steps": [{"kind": "call", "tool": "t"}],
            "on_error": "ignore",
        },
    ),
    ("zero timeout", {"kind": "call", "tool": "t", "timeout": 0}),
    ("bad var shorthand", {"kind": "call", "tool": "t", "args": ["${x"]}),
    (
        "expression with extra key",
        {"kind": "call", "tool": "t", "args": [{"var": "x", "y": 1}]},
    ),
    (
        "fn args not a list",
        {"kind": "call", "tool": "t", "args": [{"fn": "f", "args": 1}]},
    ),
    (
        "kwargs next to keyword args",
        {"kind": "call", "tool": "t", "args": {}, "kwargs": {}},
    ),
    ("bad import path", {"kind": "call", "tool": "a b:c"}),
    ("retry typo", {"kind": "call", "tool": "t", "retry": {"atempts": 2}}),
    ("zero attempts", {"kind": "call", "tool": "t", "retry": {"attempts": 0}}),
    (
        "tool without import",
        {"tools": {"t": {"timeout": 1}}, "kind": "call", "tool": "t"},
    ),
    (
        "rate limit without rate",
        {
            "tools": {"t": {"import": "m:f", "rate_limit": {}}},
            "kind": "call",
            "tool": "t",
        },
    ),
    ("function not a path", {"functions": {"f": "len"}, "kind": "call", "tool": "t"}),
    ("duplicate inputs", {"inputs": ["a", "a"], "kind": "call", "tool": "t"}),
]


@pytest.mark.parametrize(("why", "doc"), INVALID, ids=[why for why, _ in INVALID])
def test_invalid_documents_fail_the_schema_and_load(why: str, doc: object) -> None:
    assert errors(doc), why
    with pytest.raises(plait.WorkflowError):
        plait.load(doc)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(workflows())
def test_every_dumped_workflow_passes_the_schema(workflow: plait.Workflow) -> None:
    doc = json.loads(plait.dump(workflow, "json"))
    assert errors(doc) == []


EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "workflows").glob("*.yaml"))


def test_there_are_example_workflow_files() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_example_workflows_validate_against_the_schema(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert errors(doc) == []
