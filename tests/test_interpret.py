"""The interpreter: scopes, outputs, raise and collect modes, timeouts, cancellation.

The async tests here run on asyncio, uvloop and Trio through anyio's plugin;
they are marked one by one because the pytest-trio test at the end must not
also carry the anyio mark.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import trio

import plait
from plait import Call, Failure, MapReduce, Parallel, Sequential, Var, Workflow

anyio_test = pytest.mark.anyio

HANG = 60.0
PROMPT = 2.0  # generous bound for "it did not wait for the 60 s sleeps"


class Toolbox:
    """Tools that record what ran, what finished and what was cancelled."""

    def __init__(self) -> None:
        self.ran: list[Any] = []
        self.finished: list[Any] = []
        self.cancelled: list[Any] = []
        self.errors: dict[str, Exception] = {}
        self.gate = anyio.Event()
        self.at_gate = 0

        async def ok(value: Any = None) -> Any:
            self.ran.append(value)
            return value

        async def pair(a: Any, b: Any) -> tuple[Any, Any]:
            return (a, b)

        async def echo_kwargs(**kwargs: Any) -> dict[str, Any]:
            return kwargs

        async def sleep(value: Any, seconds: float) -> Any:
            self.ran.append(value)
            try:
                await anyio.sleep(seconds)
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(value)
                raise
            self.finished.append(value)
            return value

        async def hang(value: Any = "hang") -> None:
            await sleep(value, HANG)

        async def fail(message: str, delay: float = 0.0) -> None:
            self.ran.append(message)
            if delay:
                await anyio.sleep(delay)
            error = self.errors[message] = ValueError(message)
            raise error

        async def fail_at_gate(message: str) -> None:
            """Fail as soon as the gate opens, with no checkpoint in between."""
            self.at_gate += 1
            await self.gate.wait()
            error = self.errors[message] = ValueError(message)
            raise error

        async def open_gate(waiters: int) -> None:
            while self.at_gate < waiters:
                await anyio.sleep(0)
            self.gate.set()

        def sync_double(x: int) -> int:
            return 2 * x

        self.tools = [
            ok,
            pair,
            echo_kwargs,
            sleep,
            hang,
            fail,
            fail_at_gate,
            open_gate,
            sync_double,
            plait.tool(name="search")(ok),
        ]

    def engine(self, **kw: Any) -> plait.Engine:
        return plait.Engine(tools=self.tools, **kw)


@pytest.fixture
def box() -> Toolbox:
    return Toolbox()


def add(acc: int, value: int) -> int:
    return acc + value


# -- compile-time checks -----------------------------------------------------


@anyio_test
async def test_unknown_tool_is_rejected_before_any_tool_runs(box: Toolbox) -> None:
    wf = Sequential(Call("ok", 1), Call("serch", Var("q")))
    with pytest.raises(plait.UnknownTool) as info:
        await box.engine().run(wf, {"q": "x"})
    error = info.value
    assert isinstance(error, plait.WorkflowError)
    assert error.path == "steps[1]"
    message = str(error)
    assert "unknown tool 'serch'" in message
    assert "(did you mean 'search'?)" in message
    assert "(at steps[1])" in message
    assert box.ran == []


@anyio_test
async def test_unknown_tool_inside_a_map_is_rejected_before_any_tool_runs(
    box: Toolbox,
) -> None:
    wf = Sequential(
        Call("ok", 1),
        MapReduce(Var("xs"), Sequential(Call("ok", 2), Call("hnag"))),
    )
    with pytest.raises(plait.UnknownTool) as info:
        await box.engine().run(wf, {"xs": [1, 2]})
    assert info.value.path.startswith("steps[1].map")
    assert info.value.path.endswith(".steps[1]")
    assert "did you mean 'hang'?" in str(info.value)
    assert box.ran == []


@anyio_test
async def test_unknown_reduce_function_is_rejected_before_any_tool_runs(
    box: Toolbox,
) -> None:
    wf = Sequential(Call("ok", 1), MapReduce(Var("xs"), "ok", reduce="ad"))
    with pytest.raises(plait.WorkflowError) as info:
        await box.engine(functions=[add]).run(wf, {"xs": [1, 2]})
    assert info.value.path == "steps[1].reduce"
    assert "unknown function 'ad'" in str(info.value)
    assert "did you mean 'add'?" in str(info.value)
    assert box.ran == []


@anyio_test
async def test_item_variable_is_visible_only_inside_the_map(box: Toolbox) -> None:
    eng = box.engine()
    after = Sequential(
        MapReduce(Var("xs"), Call("ok", Var("item"))), Call("ok", Var("item"))
    )
    with pytest.raises(plait.WorkflowError, match="unknown variable 'item'") as info:
        await eng.run(after, {"xs": [1]})
    assert info.value.path == "steps[1].args[0]"

    with pytest.raises(plait.WorkflowError, match="unknown variable 'item'") as info:
        await eng.run(MapReduce(Var("item"), "ok"), {"xs": [1]})
    assert info.value.path == "over"

    renamed = MapReduce(Var("xs"), Call("ok", Var("item")), item="doc")
    with pytest.raises(plait.WorkflowError, match="unknown variable 'item'") as info:
        await eng.run(renamed, {"xs": [1]})
    assert info.value.path.startswith("map")
    assert info.value.path.endswith(".args[0]")
    assert box.ran == []

    nested = MapReduce(
        Var("rows"),
        MapReduce(Var("row"), Call("pair", Var("row.0"), Var("cell")), item="cell"),
        item="row",
    )
    assert await eng.run(nested, {"rows": [[1, 2], [3]]}) == [
        [(1, 1), (1, 2)],
        [(3, 3)],
    ]


@anyio_test
async def test_bound_names_are_visible_to_later_steps_and_their_children(
    box: Toolbox,
) -> None:
    wf = Sequential(
        Call("ok", 1, name="a"),
        Call("ok", 2, name="b"),
        Parallel(
            x=Sequential(Call("pair", Var("a"), Var("b"))),
            y=MapReduce([10, 20], Call("pair", Var("a"), Var("item"))),
        ),
    )
    assert await box.engine().run(wf) == {
        "x": (1, 2),
        "y": [(1, 10), (1, 20)],
    }


@pytest.mark.parametrize(
    ("step", "path"),
    [
        pytest.param(
            Sequential(Call("ok", Var("a")), Call("ok", 1, name="a")),
            "steps[0].args[0]",
            id="earlier-step",
        ),
        pytest.param(
            Sequential(Call("ok", 0), Call("ok", Var("a"), name="a")),
            "steps[1].args[0]",
            id="the-step-itself",
        ),
        pytest.param(
            Sequential(
                Sequential(Call("ok", 1, name="a"), Call("ok", 2)),
                Call("ok", Var("a")),
            ),
            "steps[1].args[0]",
            id="outside-the-sequential",
        ),
        pytest.param(
            Parallel(Call("ok", 1, name="a"), Call("ok", Var("a"))),
            "steps[1].args[0]",
            id="parallel-sibling",
        ),
        pytest.param(
            Parallel(
                a=Sequential(Call("ok", 1, name="x"), Call("ok", Var("x"))),
                b=Sequential(Call("ok", 2), Call("ok", Var("x"))),
            ),
            "steps.b.steps[1].args[0]",
            id="parallel-branch-scopes",
        ),
        pytest.param(
            Sequential(
                MapReduce(
                    Var("xs"),
                    Sequential(Call("ok", Var("item"), name="v"), Call("ok", Var("v"))),
                ),
                Call("ok", Var("v")),
            ),
            "steps[1].args[0]",
            id="map-body",
        ),
        pytest.param(
            Sequential(
                Parallel(Call("ok", 1), Call("ok", 2), name="p"),
                Call("ok", Var("p.0")),
                Call("ok", Var("q")),
            ),
            "steps[2].args[0]",
            id="unbound",
        ),
    ],
)
@anyio_test
async def test_names_are_not_visible_outside_their_scope(
    box: Toolbox, step: plait.Step, path: str
) -> None:
    with pytest.raises(plait.WorkflowError, match="unknown variable") as info:
        await box.engine().run(step, {"xs": [1]})
    assert info.value.path == path
    assert box.ran == []


@anyio_test
async def test_a_binding_at_the_end_of_a_sequential_does_not_leak(
    box: Toolbox,
) -> None:
    """An inner step's ``name=`` shadows an input only inside its Sequential."""
    eng = box.engine()
    wf = Sequential(
        Sequential(Call("ok", "inner", name="x")),
        Call("ok", Var("x")),
    )
    assert await eng.run(wf, {"x": "input"}) == "input"

    wf = Sequential(
        Sequential(Call("ok", "inner", name="x"), Call("ok", Var("x")), name="got"),
        Call("pair", Var("got"), Var("x")),
    )
    assert await eng.run(wf, {"x": "input"}) == ("inner", "input")


@anyio_test
async def test_parallel_branch_bindings_do_not_leak_at_run_time(
    box: Toolbox,
) -> None:
    wf = Parallel(
        a=Sequential(Call("ok", 1), Call("ok", "from a", name="x")),
        b=Sequential(Call("sleep", 0, 0.05), Call("ok", Var("x"))),
    )
    assert await box.engine().run(wf, {"x": "input"}) == {
        "a": "from a",
        "b": "input",
    }


@anyio_test
async def test_workflow_inputs_are_checked_before_anything_runs(
    box: Toolbox,
) -> None:
    eng = box.engine()
    wf = Workflow(Call("pair", Var("query"), Var("limit")), inputs=("query", "limit"))

    with pytest.raises(plait.WorkflowError) as info:
        await eng.run(wf, {"query": "q"})
    assert info.value.path == "inputs"
    assert "missing input 'limit'" in str(info.value)

    with pytest.raises(plait.WorkflowError) as info:
        await eng.run(wf, {"query": "q", "limit": 1, "limt": 2})
    assert info.value.path == "inputs"
    assert "unexpected input 'limt'" in str(info.value)
    assert "did you mean 'limit'?" in str(info.value)

    with pytest.raises(plait.WorkflowError) as info:
        await eng.run(wf)
    assert "missing input 'query'" in str(info.value)

    with pytest.raises(plait.WorkflowError) as info:
        await eng.run(wf, [("query", "q")])  # type: ignore[arg-type]
    assert info.value.path == "inputs"
    assert box.ran == []

    assert await eng.run(wf, {"query": "q", "limit": 3}) == ("q", 3)


@anyio_test
async def test_run_rejects_what_is_not_a_workflow(box: Toolbox) -> None:
    with pytest.raises(plait.WorkflowError, match=r"expected a plait\.Workflow"):
        await box.engine().run("ok")  # type: ignore[arg-type]


# -- outputs -----------------------------------------------------------------


@anyio_test
async def test_outputs_of_sequential_and_parallel(box: Toolbox) -> None:
    eng = box.engine()
    assert await eng.run(Sequential(Call("ok", 1), Call("ok", 2), Call("ok", 3))) == 3
    assert await eng.run(Parallel(Call("ok", 1), Call("ok", 2))) == [1, 2]
    assert await eng.run(Parallel(b=Call("ok", 1), a=Call("ok", 2))) == {
        "b": 1,
        "a": 2,
    }
    assert await eng.run(Parallel(Call("ok", "only"))) == ["only"]
    nested = Parallel(
        a=Sequential(Call("ok", 1), Parallel(Call("ok", 2), Call("sync_double", 2))),
        b=Parallel(x=Sequential(Call("ok", 3)), y=Call("ok", None)),
        c=MapReduce([1, 2], "sync_double"),
    )
    assert await eng.run(nested) == {
        "a": [2, 4],
        "b": {"x": 3, "y": None},
        "c": [2, 4],
    }


@anyio_test
async def test_outputs_keep_step_order_not_finishing_order(box: Toolbox) -> None:
    finished: list[str] = []
    second_done = anyio.Event()

    async def first() -> str:
        await second_done.wait()
        finished.append("first")
        return "first"

    async def second() -> str:
        await anyio.sleep(0.01)
        finished.append("second")
        second_done.set()
        return "second"

    wf = Parallel(Call(first), Call(second), Call("ok", "third"))
    assert await box.engine().run(wf) == ["first", "second", "third"]
    assert finished == ["second", "first"]


@anyio_test
async def test_reserved_names_reach_the_tool_and_branches(box: Toolbox) -> None:
    eng = box.engine()
    call = Call(
        "echo_kwargs",
        arguments={"name": "ada", "timeout": 3, "retry": False, "arguments": []},
        other=1,
        name="result",
    )
    assert await eng.run(call) == {
        "other": 1,
        "name": "ada",
        "timeout": 3,
        "retry": False,
        "arguments": [],
    }
    wf = Parallel(
        {"name": Call("ok", 1), "timeout": Call("ok", 2), "on_error": Call("ok", 3)},
        on_error="collect",
    )
    assert await eng.run(wf) == {"name": 1, "timeout": 2, "on_error": 3}


@anyio_test
async def test_sequential_runs_in_order_and_parallel_overlaps(box: Toolbox) -> None:
    eng = box.engine()
    order: list[str] = []
    first_in, second_in = anyio.Event(), anyio.Event()

    async def first() -> str:
        order.append("first")
        first_in.set()
        await second_in.wait()
        return "first"

    async def second() -> str:
        order.append("second")
        second_in.set()
        await first_in.wait()
        return "second"

    # Each branch waits for the other: only running them at once finishes.
    with anyio.fail_after(5):
        assert await eng.run(Parallel(Call(first), Call(second))) == [
            "first",
            "second",
        ]
    wf = Sequential(Call("sleep", "a", 0.02), Call("ok", "b"), Call("sleep", "c", 0.01))
    assert await eng.run(wf) == "c"
    assert box.ran == ["a", "b", "c"]


@anyio_test
async def test_engine_runs_inside_the_callers_task_group(box: Toolbox) -> None:
    eng = box.engine()
    results: list[Any] = []

    async def run_one(value: int) -> None:
        results.append(await eng.run(Sequential(Call("sleep", value, 0.01))))

    async with anyio.create_task_group() as tg:
        for v in range(3):
            tg.start_soon(run_one, v)
    assert sorted(results) == [0, 1, 2]


# -- raise mode --------------------------------------------------------------


@anyio_test
async def test_first_failure_cancels_siblings_and_raises(box: Toolbox) -> None:
    wf = Sequential(
        Call("ok", 0),
        Parallel(
            Call("hang", "h1"),
            Sequential(Call("ok", 1), Call("fail", "boom", 0.01)),
            Parallel(Call("hang", "h2")),
        ),
    )
    start = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await box.engine().run(wf)
    assert anyio.current_time() - start < PROMPT
    error = info.value
    assert error.path == "steps[1].steps[1].steps[1]"
    assert error.error is box.errors["boom"]
    assert error.__cause__ is box.errors["boom"]
    assert "boom" in str(error)
    # The siblings were cancelled and finished before the step raised.
    assert sorted(box.cancelled) == ["h1", "h2"]
    assert box.finished == []


@anyio_test
async def test_failing_named_branch_has_its_name_in_the_path(box: Toolbox) -> None:
    wf = Parallel(left=Call("hang"), right=Call("fail", "bad"))
    with pytest.raises(plait.StepFailed) as info:
        await box.engine().run(wf)
    assert info.value.path == "steps.right"
    assert info.value.__cause__ is box.errors["bad"]


@anyio_test
async def test_sequential_stops_at_the_first_failure(box: Toolbox) -> None:
    wf = Sequential(Call("ok", 1), Call("fail", "stop"), Call("ok", 2))
    with pytest.raises(plait.StepFailed) as info:
        await box.engine().run(wf)
    assert info.value.path == "steps[1]"
    assert box.ran == [1, "stop"]


@anyio_test
async def test_simultaneous_failures_raise_a_group(box: Toolbox) -> None:
    wf = Parallel(
        Call("fail_at_gate", "a"),
        Call("hang"),
        Sequential(Call("fail_at_gate", "b")),
        Call("open_gate", 2),
    )
    start = anyio.current_time()
    with pytest.raises(ExceptionGroup) as info:
        await box.engine().run(wf)
    assert anyio.current_time() - start < PROMPT
    group = info.value
    assert all(isinstance(e, plait.StepFailed) for e in group.exceptions)
    by_path = {e.path: e for e in group.exceptions}  # type: ignore[attr-defined]
    assert sorted(by_path) == ["steps[0]", "steps[2].steps[0]"]
    assert by_path["steps[0]"].__cause__ is box.errors["a"]
    assert by_path["steps[2].steps[0]"].__cause__ is box.errors["b"]
    assert box.cancelled == ["hang"]


@anyio_test
async def test_failures_before_any_checkpoint_raise_a_group(box: Toolbox) -> None:
    wf = Parallel(Call("fail", "a"), Call("fail", "b"), Call("fail", "c"))
    with pytest.raises(ExceptionGroup) as info:
        await box.engine().run(wf)
    paths = sorted(e.path for e in info.value.exceptions)  # type: ignore[attr-defined]
    assert paths == ["steps[0]", "steps[1]", "steps[2]"]
    causes = {e.__cause__ for e in info.value.exceptions}
    assert causes == set(box.errors.values())


# -- collect mode ------------------------------------------------------------


@anyio_test
async def test_collect_mode_runs_everything_and_keeps_failures_in_place(
    box: Toolbox,
) -> None:
    wf = Parallel(
        Call("ok", 1),
        Call("fail", "boom"),
        Call("sleep", "slow", 0.05),
        Sequential(Call("ok", 2), Call("fail", "deep", 0.01)),
        on_error="collect",
    )
    result = await box.engine().execute(wf)
    out = result.output
    assert out[0] == 1
    assert out[2] == "slow"
    assert box.finished == ["slow"]
    assert box.cancelled == []
    assert isinstance(out[1], Failure)
    assert out[1].error is box.errors["boom"]
    assert out[1].path == "steps[1]"
    assert isinstance(out[3], Failure)
    assert out[3].error is box.errors["deep"]
    assert out[3].path == "steps[3].steps[1]"
    assert out[1] == Failure(ValueError("boom"), "steps[1]")
    assert result.failures == (out[1], out[3])
    assert not result.ok


@anyio_test
async def test_collect_mode_with_named_branches(box: Toolbox) -> None:
    wf = Parallel(a=Call("fail", "x"), b=Call("ok", 2), on_error="collect")
    out = await box.engine().run(wf)
    assert out == {"a": Failure(ValueError("x"), "steps.a"), "b": 2}
    assert type(out["a"].error) is ValueError


@anyio_test
async def test_execute_without_failures(box: Toolbox) -> None:
    result = await box.engine().execute(
        Parallel(Call("ok", 1), Call("ok", 2), on_error="collect")
    )
    assert result.output == [1, 2]
    assert result.failures == ()
    assert result.ok


@anyio_test
async def test_collect_keeps_a_raising_inner_parallel_as_one_failure(
    box: Toolbox,
) -> None:
    wf = Parallel(
        Parallel(Call("hang", "inner"), Call("fail", "inner boom", 0.01)),
        Call("sleep", "outer", 0.05),
        on_error="collect",
    )
    start = anyio.current_time()
    out = await box.engine().run(wf)
    assert anyio.current_time() - start < PROMPT
    assert out == [
        Failure(ValueError("inner boom"), "steps[0].steps[1]"),
        "outer",
    ]
    assert box.cancelled == ["inner"]
    assert box.finished == ["outer"]


@anyio_test
async def test_collect_inside_raise_does_not_raise(box: Toolbox) -> None:
    wf = Parallel(
        Parallel(Call("fail", "quiet"), Call("ok", 1), on_error="collect"),
        Call("ok", 2),
    )
    result = await box.engine().execute(wf)
    assert result.output == [[Failure(ValueError("quiet"), "steps[0].steps[0]"), 1], 2]
    assert result.failures == (Failure(ValueError("quiet"), "steps[0].steps[0]"),)


@anyio_test
async def test_collect_mode_records_timeouts(box: Toolbox) -> None:
    wf = Parallel(
        Call("hang", "tool", timeout=0.05),
        Sequential(Call("hang", "step"), timeout=0.05),
        Call("ok", 3),
        on_error="collect",
    )
    out = await box.engine().run(wf)
    assert isinstance(out[0], Failure)
    assert isinstance(out[0].error, plait.ToolTimeout)
    assert out[0].path == "steps[0]"
    assert isinstance(out[1], Failure)
    assert isinstance(out[1].error, plait.StepTimeout)
    assert out[1].error.path == "steps[1]"
    assert out[1].path == "steps[1]"
    assert out[2] == 3


# -- timeouts ----------------------------------------------------------------


def test_timeouts_are_timeout_errors() -> None:
    for cls in (plait.ToolTimeout, plait.StepTimeout):
        assert issubclass(cls, TimeoutError)
        assert issubclass(cls, plait.PlaitError)
    assert not issubclass(plait.StepFailed, TimeoutError)


@pytest.mark.parametrize(
    "timed",
    [
        pytest.param(lambda s: Sequential(s, timeout=0.1), id="sequential"),
        pytest.param(lambda s: Parallel(Call("ok", 1), s, timeout=0.1), id="parallel"),
        pytest.param(
            lambda s: MapReduce([1, 2, 3], s, max_concurrency=2, timeout=0.1),
            id="mapreduce",
        ),
    ],
)
@anyio_test
async def test_step_timeout(box: Toolbox, timed: Any) -> None:
    wf = Sequential(Call("ok", 0), timed(Call("hang")))
    start = anyio.current_time()
    with pytest.raises(plait.StepTimeout) as info:
        await box.engine().run(wf)
    elapsed = anyio.current_time() - start
    assert 0.09 <= elapsed < PROMPT
    assert info.value.path == "steps[1]"
    assert info.value.timeout == 0.1
    assert "steps[1]" in str(info.value)
    assert box.cancelled
    assert all(v == "hang" for v in box.cancelled)


@anyio_test
async def test_step_that_ends_in_time_returns_its_output(box: Toolbox) -> None:
    wf = Sequential(
        Parallel(Call("sleep", 1, 0.01), Call("ok", 2), timeout=5), timeout=5
    )
    assert await box.engine().run(wf) == [1, 2]


@anyio_test
async def test_call_timeout_is_a_tool_timeout(box: Toolbox) -> None:
    wf = Sequential(Call("ok", 0), Call("hang", "t", timeout=0.05))
    start = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await box.engine().run(wf)
    assert anyio.current_time() - start < PROMPT
    assert info.value.path == "steps[1]"
    cause = info.value.__cause__
    assert isinstance(cause, plait.ToolTimeout)
    assert cause is info.value.error
    assert cause.tool == "hang"
    assert cause.timeout == 0.05
    assert box.cancelled == ["t"]


@anyio_test
async def test_call_timeout_overrides_the_tools_own(box: Toolbox) -> None:
    @plait.tool(timeout=0.01)
    async def slowish() -> str:
        await anyio.sleep(0.05)
        return "done"

    eng = plait.Engine(tools=[slowish])
    assert await eng.run(Call("slowish", timeout=5)) == "done"
    with pytest.raises(plait.StepFailed) as info:
        await eng.run(Call("slowish"))
    assert isinstance(info.value.error, plait.ToolTimeout)
    assert info.value.error.timeout == 0.01


@anyio_test
async def test_run_deadline(box: Toolbox) -> None:
    wf = Parallel(Call("hang", "a"), MapReduce([1, 2], Call("hang", "b")))
    start = anyio.current_time()
    with pytest.raises(plait.StepTimeout) as info:
        await box.engine().run(wf, deadline=0.2)
    assert 0.19 <= anyio.current_time() - start < PROMPT
    assert info.value.path == ""
    assert info.value.timeout == 0.2
    assert "deadline" in str(info.value)
    assert sorted(box.cancelled) == ["a", "b", "b"]


@anyio_test
async def test_run_deadline_not_reached(box: Toolbox) -> None:
    assert await box.engine().run(Call("sleep", 1, 0.01), deadline=5) == 1


@pytest.mark.parametrize(
    ("inner", "outer", "deadline", "path"),
    [
        (0.1, 5, None, "steps[0].steps[0]"),
        (5, 0.1, None, "steps[0]"),
        (0.1, 5, 5, "steps[0].steps[0]"),
        (5, 0.1, 5, "steps[0]"),
        (5, 5, 0.1, ""),
    ],
)
@anyio_test
async def test_nested_timeouts_the_tightest_wins(
    box: Toolbox, inner: float, outer: float, deadline: float | None, path: str
) -> None:
    wf = Sequential(
        Sequential(
            Sequential(Call("ok", 1), Call("hang"), timeout=inner), timeout=outer
        )
    )
    start = anyio.current_time()
    with pytest.raises(plait.StepTimeout) as info:
        await box.engine().run(wf, deadline=deadline)
    assert anyio.current_time() - start < PROMPT
    assert info.value.path == path
    assert info.value.timeout == 0.1


@pytest.mark.parametrize(
    ("call_timeout", "step_timeout", "expected"),
    [(0.1, 5, plait.StepFailed), (5, 0.1, plait.StepTimeout)],
)
@anyio_test
async def test_call_timeout_inside_a_step_timeout(
    box: Toolbox, call_timeout: float, step_timeout: float, expected: type
) -> None:
    wf = Sequential(
        Sequential(Call("hang", timeout=call_timeout), timeout=step_timeout)
    )
    with pytest.raises(expected) as info:
        await box.engine().run(wf)
    if expected is plait.StepFailed:
        assert info.value.path == "steps[0].steps[0]"
        assert isinstance(info.value.__cause__, plait.ToolTimeout)
    else:
        assert info.value.path == "steps[0]"


# -- cancellation from outside -----------------------------------------------


@anyio_test
async def test_outside_cancellation_cancels_everything_inside(box: Toolbox) -> None:
    wf = Parallel(
        Call("hang", "branch"),
        Sequential(Call("ok", 1), Parallel(Call("hang", "nested"))),
        MapReduce(Var("xs"), Call("hang", Var("item")), max_concurrency=2),
    )
    start = anyio.current_time()
    with anyio.move_on_after(0.1) as scope:
        await box.engine().run(wf, {"xs": ["m1", "m2", "m3"]})
        pytest.fail("the run should have been cancelled")
    assert scope.cancelled_caught
    assert anyio.current_time() - start < PROMPT
    assert sorted(box.cancelled) == ["branch", "m1", "m2", "nested"]
    assert box.finished == []


@anyio_test
async def test_cancelling_the_callers_task_group_cancels_the_run(
    box: Toolbox,
) -> None:
    eng = box.engine()
    started = anyio.Event()

    async def watch() -> None:
        await started.wait()
        tg.cancel_scope.cancel()

    async def kick() -> None:
        started.set()

    wf = Parallel(Call("hang", "a"), Sequential(Call(kick), Call("hang", "b")))
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        tg.start_soon(eng.run, wf)
    assert sorted(box.cancelled) == ["a", "b"]


@pytest.mark.trio
async def test_engine_in_a_plain_trio_app() -> None:
    """A trio app runs the engine next to its own tasks and can cancel it."""
    send, receive = trio.open_memory_channel[int](0)
    cleaned_up: list[int] = []
    started: list[int] = []

    async def produce(n: int) -> int:
        await send.send(n)
        return n

    async def wait_forever(n: int) -> None:
        started.append(n)
        try:
            await trio.sleep_forever()
        finally:
            cleaned_up.append(n)

    engine = plait.Engine(tools=[produce, wait_forever])
    received: list[int] = []
    outputs: list[Any] = []

    async def consume() -> None:
        for _ in range(3):
            received.append(await receive.receive())

    async def run_workflow() -> None:
        wf = MapReduce([1, 2, 3], "produce", reduce=add, max_concurrency=2)
        outputs.append(await engine.run(wf))

    # The tool talks to a plain trio task through an unbuffered channel, so
    # the run only finishes if both share the event loop.
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(run_workflow)
    assert outputs == [6]
    assert sorted(received) == [1, 2, 3]

    start = trio.current_time()
    with trio.CancelScope() as cancel:
        async with trio.open_nursery() as nursery:
            wf = Parallel(
                Call("wait_forever", 1),
                MapReduce([2, 3], "wait_forever", max_concurrency=2),
            )
            nursery.start_soon(engine.run, wf)
            while len(started) < 3:
                await trio.sleep(0.001)
            cancel.cancel()
    assert cancel.cancelled_caught
    assert trio.current_time() - start < PROMPT
    assert sorted(cleaned_up) == [1, 2, 3]
