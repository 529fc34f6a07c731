"""Import paths: ``Call("pkg.mod:fn")`` in code, and ``imports=`` for documents."""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import _sample_tools as sample
import plait
from plait import Call, MapReduce, Sequential, Var, Workflow

pytestmark = pytest.mark.anyio

PROBE = "_import_probe"


@pytest.fixture
def not_imported() -> Iterator[None]:
    """``_import_probe`` is not imported before the test; checked after it."""
    sys.modules.pop(PROBE, None)
    yield
    assert PROBE not in sys.modules, "the module was imported"
    sys.modules.pop(PROBE, None)


def load_errors(source: Any, **kw: Any) -> list[tuple[int | None, str, str]]:
    with pytest.raises(plait.WorkflowError) as info:
        plait.load(source, **kw)
    return [(e.line, e.path, e.message) for e in info.value.errors]


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# -- Call("pkg.mod:fn") in code ----------------------------------------------


async def test_a_call_by_import_path_runs_the_function_there() -> None:
    engine = plait.Engine()
    step = MapReduce(Var("xs"), Call("_sample_tools:fetch", Var("item")))
    assert await engine.run(step, {"xs": ["a", "bb"]}) == [1, 2]


async def test_a_call_by_import_path_runs_the_tool_there_with_its_options() -> None:
    engine = plait.Engine()
    assert await engine.run(Call("_sample_tools:shout", "hi")) == "HI"
    result = await engine.execute(Call("_sample_tools:double", 4))
    assert result.output == 8
    # The tool's own name, as for a tool loaded from a document.
    assert set(result.stats.tools) == {"double"}


async def test_a_call_by_import_path_matches_the_document_form() -> None:
    engine = plait.Engine()
    loaded = plait.load({"kind": "call", "tool": "_sample_tools:double", "args": [3]})
    assert await engine.run(Call("_sample_tools:double", 3)) == 6
    assert await engine.run(loaded) == 6


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
        ("_sample_tools:dubble", "has no attribute 'dubble' (did you mean 'double'?)"),
        ("_sample_tools:NOT_CALLABLE", "is not a function or a plait.Tool, got 3"),
    ],
)
async def test_a_bad_import_path_fails_at_the_step_before_any_tool_runs(
    path: str, message: str
) -> None:
    ran: list[int] = []

    async def first() -> None:
        ran.append(1)

    engine = plait.Engine(tools=[first])
    with pytest.raises(plait.WorkflowError) as info:
        await engine.run(Sequential(Call("first"), Call(path)))
    assert message in info.value.message
    assert info.value.path == "steps[1]"
    assert ran == []


async def test_a_registered_tool_of_the_same_name_must_be_the_same_tool() -> None:
    @plait.tool(name="double")
    def other(x: int) -> int:
        return x

    engine = plait.Engine(tools=[sample.double])
    assert await engine.run(Call("_sample_tools:double", 2)) == 4
    clash = plait.Engine(tools=[other])
    with pytest.raises(plait.WorkflowError, match="not the tool registered"):
        await clash.run(Call("_sample_tools:double", 2))


async def test_call_tools_never_imports_a_name() -> None:
    # A model's tool calls are names: they may only pick registered tools.
    engine = plait.Engine(tools=[sample.double])
    with pytest.raises(plait.UnknownTool):
        await engine.call_tools([("_sample_tools:fetch", {"url": "x"})])
    with pytest.raises(plait.UnknownTool):
        await engine.call_tools([("os:getcwd", {})])


async def test_no_allow_list_applies_to_code(not_imported: None) -> None:
    # Documents loaded with imports=() cannot name _import_probe; code can.
    try:
        assert await plait.Engine().run(Call(f"{PROBE}:probe", 1)) == 2
    finally:
        sys.modules.pop(PROBE, None)


def test_the_path_is_kept_as_given() -> None:
    call = Call("_sample_tools:double", 1)
    assert call.target == "_sample_tools:double"
    assert call.tool_name == "_sample_tools:double"
    assert repr(call) == "Call('_sample_tools:double', 1)"
    assert call == Call("_sample_tools:double", 1)
    Call("no_such_module_xyz:f")  # checked when an engine runs it


def test_building_a_call_by_path_imports_nothing(not_imported: None) -> None:
    Call(f"{PROBE}:probe", 1)


@pytest.mark.parametrize("path", ["a:", ":b", "a:b:c", "a.:b", "1a:b", "a:b c"])
def test_a_malformed_path_is_rejected_when_the_step_is_built(path: str) -> None:
    with pytest.raises(plait.WorkflowError) as info:
        Call(path)
    assert info.value.message == (
        f"Call.target must be an import path 'module:attr', got {path!r}"
    )
    assert info.value.path == "target"


def test_dump_writes_the_path_back_as_given() -> None:
    step = Sequential(Call("_sample_tools:double", 1), Call("pkg.mod:fn", x=2))
    text = plait.dump(step)
    assert "tool: _sample_tools:double\n" in text
    assert "tool: pkg.mod:fn\n" in text
    document = json.loads(plait.dump(step, "json"))
    assert [s["tool"] for s in document["steps"]] == [
        "_sample_tools:double",
        "pkg.mod:fn",
    ]


def test_the_dumped_path_loads_as_the_tool_there() -> None:
    back = plait.load(plait.dump(Call("_sample_tools:greet", "x")))
    assert back == Workflow(Call(sample.greet, "x"))


def test_a_call_by_path_pickles() -> None:
    call = Call("_sample_tools:double", Var("x"), name="y")
    again = pickle.loads(pickle.dumps(call))
    assert again == call
    assert type(again.target) is type(call.target)


# -- imports= for documents ----------------------------------------------------

UNTRUSTED = doc(
    """
    tools:
      mine: "_sample_tools:double"
    functions:
      plus: "_sample_tools:add"
    kind: sequential
    steps:
      - kind: call
        tool: "_import_probe:probe"
        args: [1]
      - kind: map_reduce
        over: [1, 2]
        map: {kind: call, tool: mine, args: ["${item}"]}
        reduce: "_import_probe:probe"
      - kind: call
        tool: search
        retry: {retry_on: ["_import_probe:Nope", OSError]}
    """
)


def test_imports_refuses_other_modules_at_their_lines(not_imported: None) -> None:
    found = load_errors(UNTRUSTED, imports=("_sample_tools",))
    refused = "module '_import_probe' is not allowed; the allowed imports are "
    assert found == [
        (
            8,
            "steps[0].tool",
            f"import path '_import_probe:probe' refused: {refused}_sample_tools",
        ),
        (
            13,
            "steps[1].reduce",
            f"import path '_import_probe:probe' refused: {refused}_sample_tools",
        ),
        (
            16,
            "steps[2].retry.retry_on[0]",
            f"import path '_import_probe:Nope' refused: {refused}_sample_tools",
        ),
    ]


def test_imports_empty_refuses_every_import(not_imported: None) -> None:
    found = load_errors(UNTRUSTED, imports=())
    assert [(line, path) for line, path, _ in found] == [
        (2, "tools.mine"),
        (4, "functions.plus"),
        (8, "steps[0].tool"),
        (12, "steps[1].map.tool"),  # the tool declared as `mine`
        (13, "steps[1].reduce"),
        (16, "steps[2].retry.retry_on[0]"),
    ]
    assert found[0][2] == (
        "import path '_sample_tools:double' refused: module '_sample_tools' is not "
        "allowed; this document may not import anything"
    )


async def test_imports_empty_allows_registered_names_and_builtin_exceptions() -> None:
    wf = plait.load(
        doc(
            """
            kind: map_reduce
            over: ${xs}
            map:
              kind: call
              tool: search
              args: ["${item}"]
              retry: {retry_on: [OSError, TimeoutError]}
            reduce: total
            """
        ),
        imports=(),
    )
    engine = plait.Engine(
        tools=[plait.tool(name="search")(sample.fetch)],
        functions={"total": sample.add},
    )
    assert await engine.run(wf, {"xs": ["ab", "c"]}) == 3


@pytest.mark.parametrize(
    "imports",
    [("_sample_tools",), "_sample_tools", ["_sample_tools", "json"], None],
)
def test_allowed_modules_load(imports: Any) -> None:
    wf = plait.load(
        {"kind": "call", "tool": "_sample_tools:double", "args": [2]}, imports=imports
    )
    assert wf.step == Call(sample.double, 2)


def test_a_prefix_allows_the_modules_under_it_only() -> None:
    ok = {"kind": "call", "tool": "json.decoder:JSONDecoder"}
    assert plait.load(ok, imports=("json",)).step == Call(json.decoder.JSONDecoder)
    found = load_errors({"kind": "call", "tool": "jsonschema_xyz:f"}, imports=("json",))
    assert "module 'jsonschema_xyz' is not allowed" in found[0][2]
    found = load_errors(
        {"kind": "call", "tool": "json:dumps"}, imports=("json.decoder",)
    )
    assert "module 'json' is not allowed" in found[0][2]


def test_an_allowed_module_cannot_lead_to_another(not_imported: None) -> None:
    import _import_probe  # noqa: F401  # imported by the test itself

    try:
        found = load_errors(
            {"kind": "call", "tool": "_import_probe:os.getcwd"},
            imports=("_import_probe",),
        )
        assert found[0][2] == (
            "import path '_import_probe:os.getcwd' refused: 'os' is the module "
            "'os', which is not allowed; the allowed imports are _import_probe"
        )
        found = load_errors(
            {"kind": "call", "tool": "_import_probe:_private"},
            imports=("_import_probe",),
        )
        assert "'_private' is a private name" in found[0][2]
        found = load_errors(
            {"kind": "call", "tool": "_import_probe:probe.__globals__"},
            imports=("_import_probe",),
        )
        assert "'__globals__' is a private name" in found[0][2]
        # Without imports= the document is trusted as code.
        plait.load({"kind": "call", "tool": "_import_probe:os.getcwd"})
    finally:
        sys.modules.pop(PROBE, None)


@pytest.mark.parametrize("imports", [3, [3], (b"json",)])
def test_imports_of_the_wrong_type(imports: Any) -> None:
    with pytest.raises(TypeError, match="imports must"):
        plait.load({"kind": "call", "tool": "t"}, imports=imports)


@pytest.mark.parametrize("imports", [("",), ("my-app",), ("json:dumps",), (".x",)])
def test_imports_that_are_not_module_names(imports: Any) -> None:
    with pytest.raises(plait.ConfigError, match="imports must hold module names"):
        plait.load({"kind": "call", "tool": "t"}, imports=imports)
