"""Public names carry their public module: reprs, tracebacks and pickles."""

from __future__ import annotations

import inspect
import pickle
import traceback
import typing
from types import ModuleType
from typing import Any

import attrs
import cattrs
import pytest

import _sample_tools as sample
import plait
import plait.agents
import plait.redis
import plait.tools
from plait import (
    Call,
    Failure,
    Fn,
    Lit,
    MapReduce,
    Parallel,
    RateLimit,
    Retry,
    Sequential,
    Var,
    Workflow,
)

PACKAGES = [plait, plait.agents, plait.tools, plait.redis]


def public_objects() -> list[tuple[ModuleType, str, Any]]:
    return [
        (package, name, getattr(package, name))
        for package in PACKAGES
        for name in package.__all__
        if isinstance(getattr(package, name), type)
        or inspect.isfunction(getattr(package, name))
    ]


@pytest.mark.parametrize(
    ("package", "name", "obj"),
    public_objects(),
    ids=[f"{p.__name__}.{n}" for p, n, _ in public_objects()],
)
def test_public_names_name_their_public_module(
    package: ModuleType, name: str, obj: Any
) -> None:
    assert obj.__module__ == package.__name__
    assert getattr(package, obj.__qualname__) is obj


def test_reprs_and_tracebacks_show_the_public_name() -> None:
    assert repr(plait.Call) == "<class 'plait.Call'>"
    assert repr(plait.agents.AgentLoop) == "<class 'plait.agents.AgentLoop'>"
    assert plait.Call.__init__.__module__ == "plait"
    assert plait.Tool.of.__func__.__module__ == "plait"  # type: ignore[attr-defined]
    line = traceback.format_exception_only(plait.WorkflowError("bad", "steps[1]"))
    assert line == ["plait.WorkflowError: bad (at steps[1])\n"]


def test_private_helpers_keep_their_module() -> None:
    from plait._model import _steps

    assert _steps._MapShorthand.__module__ == "plait._model._steps"


def roundtrip(value: Any) -> Any:
    data = pickle.dumps(value)
    assert b"plait._" not in data, "a pickle names a private module"
    return pickle.loads(data)


STEPS = [
    Call("search", Var("q"), limit=5, name="hits", timeout=2.0, retry=Retry()),
    Call(sample.greet, 1),
    Call("_sample_tools:double", 1),
    Sequential(Call("a"), Call("b", Fn(sample.join, Lit("x"), Var("y")))),
    Parallel(a=Call("a"), b=Call("b"), on_error="collect"),
    Parallel({"name": Call("a")}),
    MapReduce(Var("xs"), Call("t", Var("item")), reduce=sample.add, initial=0),
    Workflow(Call("t"), name="flow", inputs=("xs",), description="d"),
    Retry(attempts=5, retry_on=(OSError, sample.Flaky)),
    Retry(retry_on=sample.is_transient),
    RateLimit(10, per=2.0, burst=3),
    plait.tool(concurrency_limit=2, rate_limit=RateLimit(5))(sample.greet),
]


@pytest.mark.parametrize("value", STEPS, ids=lambda v: type(v).__name__)
def test_specs_pickle(value: Any) -> None:
    assert roundtrip(value) == value


def test_errors_pickle() -> None:
    cause = KeyError("k")
    errors: list[BaseException] = [
        plait.WorkflowError(
            "2 problems",
            "steps[0]",
            line=3,
            errors=[plait.WorkflowError("a", "x", line=3)],
        ),
        plait.UnknownTool("unknown tool 'x'", "steps[1]"),
        plait.ConfigError("Engine.max_concurrency must be an int >= 1, got 0"),
        plait.ExpressionError("Var('x'): no key"),
        plait.ToolTimeout("search", 1.5),
        plait.StepTimeout("steps[2]", 3.0, deadline=True),
        plait.StepFailed("steps[3].map[7]", cause),
        plait.tools.CommandFailed(2, ["false"], "out", "err"),
    ]
    for error in errors:
        again = roundtrip(error)
        assert type(again) is type(error)
        assert str(again) == str(error)
        assert again.args == error.args
    workflow_error = roundtrip(errors[0])
    assert (workflow_error.path, workflow_error.line) == ("steps[0]", 3)
    assert workflow_error.errors[0].message == "a"
    failed = roundtrip(errors[6])
    assert failed.path == "steps[3].map[7]"
    assert isinstance(failed.error, KeyError)


def test_failure_pickles() -> None:
    failure = Failure(plait.ToolTimeout("search", 2.0), "steps[1].map[3]")
    assert roundtrip(failure) == failure
    assert roundtrip([failure, 1])[0].path == "steps[1].map[3]"


def test_type_hints_of_public_classes_resolve() -> None:
    for _, _, obj in public_objects():
        if obj is plait.agents.AgentLoop:
            # `itertools.count[int]` cannot be evaluated at run time (3.11).
            hints = inspect.get_annotations(obj)
            assert hints["retry"] == Retry | None
        elif isinstance(obj, type):
            typing.get_type_hints(obj)  # names from the defining module


def test_cattrs_structures_public_attrs_classes() -> None:
    converter = cattrs.Converter()
    limit = converter.structure({"rate": 5, "per": 2.0, "burst": 3}, RateLimit)
    assert limit == RateLimit(5, per=2.0, burst=3)
    assert attrs.has(plait.Retry)
