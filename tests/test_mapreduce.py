"""MapReduce: lazy input, bounded concurrency and memory, order, folds, failures."""

from __future__ import annotations

import itertools
import operator
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import plait
from plait import Call, Failure, Fn, Lit, MapReduce, Parallel, Sequential, Var

pytestmark = pytest.mark.anyio

PROMPT = 2.0  # generous bound for "it did not wait for the 60 s sleeps"


class Probe:
    """Instrumented input and map tool: counts pulls, work in flight and folds.

    ``ahead`` is how many elements were pulled but not yet mapped, measured
    at every pull (it includes the element being pulled); ``unfolded`` is
    how many were pulled but not yet folded by :meth:`fold`.
    """

    def __init__(self, delay: Callable[[Any], float] = lambda x: 0.0) -> None:
        self.delay = delay
        self.pulled = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.completed = 0
        self.folded = 0
        self.peak_ahead = 0
        self.peak_unfolded = 0
        self.finish_order: list[Any] = []
        self.cancelled: list[Any] = []
        self.closed = False
        self.fail_on: set[Any] = set()
        self.hang_on: set[Any] = set()
        self.gates: dict[Any, anyio.Event] = {}

    def _pulled_one(self) -> None:
        self.pulled += 1
        self.peak_ahead = max(self.peak_ahead, self.pulled - self.completed)
        self.peak_unfolded = max(self.peak_unfolded, self.pulled - self.folded)

    def gen(self, items: Iterable[Any], fail_after: int | None = None) -> Iterator[Any]:
        try:
            for i, x in enumerate(items):
                if i == fail_after:
                    raise OSError(f"source broke after {i}")
                self._pulled_one()
                yield x
        finally:
            self.closed = True

    async def agen(
        self, items: Iterable[Any], fail_after: int | None = None
    ) -> AsyncIterator[Any]:
        try:
            for i, x in enumerate(items):
                await anyio.lowlevel.checkpoint()
                if i == fail_after:
                    raise OSError(f"source broke after {i}")
                self._pulled_one()
                yield x
        finally:
            self.closed = True

    async def work(self, x: Any) -> Any:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if x in self.hang_on:
                await anyio.sleep(60)
            if x in self.gates:
                await self.gates[x].wait()
            seconds = self.delay(x)
            if seconds:
                await anyio.sleep(seconds)
            else:
                await anyio.lowlevel.checkpoint()
            if x in self.fail_on:
                raise ValueError(f"bad item {x!r}")
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(x)
            raise
        finally:
            self.in_flight -= 1
        self.completed += 1
        self.finish_order.append(x)
        return f"<{x}>"

    def fold(self, acc: Any, value: Any) -> Any:
        self.folded += 1
        return acc + value

    def engine(self, **kw: Any) -> plait.Engine:
        return plait.Engine(
            tools=[plait.tool(name="work")(self.work)],
            functions={"fold": self.fold, "concat": lambda a, b: a + b},
            **kw,
        )


async def run_finishing_in(
    probe: Probe, wf: plait.Step, inputs: dict[str, Any], order: list[Any]
) -> Any:
    """Run ``wf`` with every element's map step in flight at once, then let
    them finish one by one in ``order`` (each element must be in ``order``).
    """
    probe.gates = {x: anyio.Event() for x in order}
    outputs = []

    async def release() -> None:
        while probe.in_flight < len(order):
            await anyio.sleep(0.001)
        for x in order:
            probe.gates[x].set()
            while x not in probe.finish_order:
                await anyio.sleep(0)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            outputs.append(await probe.engine().run(wf, inputs))
    assert probe.finish_order == order
    return outputs[0]


FINISH_ORDER = [3, 5, 0, 4, 1, 2]


# -- inputs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p, xs: list(xs), id="list"),
        pytest.param(lambda p, xs: tuple(xs), id="tuple"),
        pytest.param(lambda p, xs: range(len(xs)), id="range"),
        pytest.param(lambda p, xs: p.gen(xs), id="generator"),
        pytest.param(lambda p, xs: p.agen(xs), id="async-generator"),
    ],
)
async def test_inputs_of_every_kind(make: Callable[[Probe, list[int]], Any]) -> None:
    probe = Probe()
    wf = MapReduce(Var("xs"), "work", max_concurrency=3)
    assert await probe.engine().run(wf, {"xs": make(probe, list(range(7)))}) == [
        f"<{i}>" for i in range(7)
    ]


async def test_over_as_a_literal_and_a_function() -> None:
    probe = Probe()
    eng = probe.engine()
    assert await eng.run(MapReduce([1, 2], "work")) == ["<1>", "<2>"]
    assert await eng.run(MapReduce(Lit((3,)), "work")) == ["<3>"]
    wf = MapReduce(Fn(range, Var("n")), "work", max_concurrency=2)
    assert await eng.run(wf, {"n": 3}) == ["<0>", "<1>", "<2>"]


async def test_map_step_sees_the_item_and_outer_names() -> None:
    probe = Probe()

    async def pair(a: Any, b: Any) -> tuple[Any, Any]:
        return (a, b)

    eng = plait.Engine(tools=[probe.work, pair])
    wf = Sequential(
        Call("work", "outer", name="o"),
        MapReduce(
            Var("xs"),
            Sequential(
                Call("work", Var("doc.id"), name="w"),
                Parallel(
                    Call("pair", Var("w"), Var("o")), Call("pair", Var("doc.n"), 0)
                ),
            ),
            item="doc",
        ),
    )
    docs = [{"id": 1, "n": "a"}, {"id": 2, "n": "b"}]
    assert await eng.run(wf, {"xs": docs}) == [
        [("<1>", "<outer>"), ("a", 0)],
        [("<2>", "<outer>"), ("b", 0)],
    ]


async def test_bindings_inside_the_map_are_per_item() -> None:
    probe = Probe(delay=lambda x: 0.01 * (3 - x) if isinstance(x, int) else 0)
    eng = probe.engine()
    # Each item binds `w`; with items overlapping, a shared scope would mix
    # them up.
    wf = MapReduce(
        [0, 1, 2],
        Sequential(Call("work", Var("item"), name="w"), Call("work", Var("w"))),
        max_concurrency=3,
    )
    assert await eng.run(wf) == ["<<0>>", "<<1>>", "<<2>>"]


# -- concurrency and laziness ------------------------------------------------


@pytest.mark.parametrize("max_concurrency", [1, 3, 8])
async def test_at_most_max_concurrency_map_steps_in_flight(
    max_concurrency: int,
) -> None:
    probe = Probe(delay=lambda x: 0.005)
    wf = MapReduce(Var("xs"), "work", max_concurrency=max_concurrency)
    out = await probe.engine().run(wf, {"xs": probe.gen(range(20))})
    assert out == [f"<{i}>" for i in range(20)]
    assert probe.peak_in_flight == max_concurrency
    assert probe.peak_ahead <= max_concurrency


async def test_default_width_is_the_engines_max_concurrency() -> None:
    probe = Probe(delay=lambda x: 0.005)
    wf = MapReduce(Var("xs"), "work")
    await probe.engine(max_concurrency=4).run(wf, {"xs": list(range(12))})
    assert probe.peak_in_flight == 4


@pytest.mark.parametrize(
    ("reduce", "ordered"),
    [(None, True), ("fold", True), ("fold", False)],
    ids=["list", "ordered-reduce", "unordered-reduce"],
)
@pytest.mark.parametrize("source", ["gen", "agen"])
async def test_input_is_pulled_lazily(
    reduce: str | None, ordered: bool, source: str
) -> None:
    mc = 3
    # Out-of-order finishing stresses the ordered window.
    probe = Probe(delay=lambda x: 0.001 * ((x * 7) % 5))
    wf = MapReduce(
        Var("xs"),
        "work",
        reduce=reduce,
        initial="" if reduce else None,
        max_concurrency=mc,
        ordered=ordered,
    )
    xs = getattr(probe, source)(range(40))
    out = await probe.engine().run(wf, {"xs": xs})
    expected = [f"<{i}>" for i in range(40)]
    if reduce is None:
        assert out == expected
    elif ordered:
        assert out == "".join(expected)
    else:
        assert sorted(out.replace("><", ">,<").split(",")) == sorted(expected)
    assert probe.pulled == 40
    assert probe.peak_in_flight <= mc
    # A worker pulls only when it is free to map what it pulls.
    assert probe.peak_ahead <= mc
    if reduce is not None:
        # The fold may lag: ordered folds wait for the element next in line.
        assert probe.peak_unfolded <= (2 * mc if ordered else mc)


@pytest.mark.parametrize("source", ["gen", "agen"])
async def test_ordered_reduce_stops_pulling_at_the_window(source: str) -> None:
    mc = 3
    pulled_when_first_done: list[int] = []
    probe = Probe()

    async def work(x: int) -> int:
        if x == 0:
            with anyio.fail_after(5):
                while probe.pulled < 2 * mc:
                    await anyio.sleep(0.001)
            # Time for the other workers to pull past the window, if they could.
            await anyio.sleep(0.05)
            pulled_when_first_done.append(probe.pulled)
        else:
            await anyio.lowlevel.checkpoint()
        return x

    def fold(acc: int, value: int) -> int:
        probe.folded += 1
        return acc + value

    eng = plait.Engine(tools=[work])
    wf = MapReduce(Var("xs"), "work", reduce=fold, initial=0, max_concurrency=mc)
    xs = getattr(probe, source)(range(1000))
    assert await eng.run(wf, {"xs": xs}) == sum(range(1000))
    # While element 0 is slow nothing can be folded, so input stops at the
    # documented window of 2 * max_concurrency elements.
    assert pulled_when_first_done == [2 * mc]
    assert probe.peak_unfolded <= 2 * mc


async def test_infinite_input_stops_at_the_first_failure() -> None:
    probe = Probe()
    probe.fail_on = {5}
    wf = MapReduce(Var("xs"), "work", reduce="fold", initial="", max_concurrency=2)
    with pytest.raises(plait.StepFailed) as info:
        await probe.engine().run(wf, {"xs": probe.gen(itertools.count())})
    assert info.value.path == "map[5]"
    assert probe.closed
    assert probe.pulled <= 5 + 2 * 2


async def test_memory_stays_bounded_over_many_items() -> None:
    n, mc = 200_000, 10
    probe = Probe()

    async def work(x: int) -> int:
        # Uneven checkpoints make elements finish out of order.
        if x % 3 == 0:
            await anyio.lowlevel.checkpoint()
        probe.completed += 1
        return x

    eng = plait.Engine(tools=[work], functions={"fold": probe.fold})
    wf = MapReduce(Var("xs"), "work", reduce="fold", initial=0, max_concurrency=mc)
    assert await eng.run(wf, {"xs": probe.gen(range(n))}) == n * (n - 1) // 2
    assert probe.pulled == n
    assert probe.folded == n
    assert probe.peak_ahead <= mc
    assert probe.peak_unfolded <= 2 * mc


# -- order and folds ---------------------------------------------------------


async def test_output_is_in_input_order_when_items_finish_out_of_order() -> None:
    probe = Probe()
    wf = MapReduce(Var("xs"), "work", max_concurrency=6)
    out = await run_finishing_in(probe, wf, {"xs": list(range(6))}, FINISH_ORDER)
    assert out == ["<0>", "<1>", "<2>", "<3>", "<4>", "<5>"]


@pytest.mark.parametrize("initial", [None, ""])
async def test_ordered_reduce_folds_in_input_order(initial: str | None) -> None:
    probe = Probe()
    wf = MapReduce(
        Var("xs"), "work", reduce="concat", initial=initial, max_concurrency=6
    )
    out = await run_finishing_in(probe, wf, {"xs": list(range(6))}, FINISH_ORDER)
    assert out == "<0><1><2><3><4><5>"


@pytest.mark.parametrize("initial", [None, ""])
async def test_unordered_reduce_folds_in_completion_order(initial: str | None) -> None:
    probe = Probe()
    wf = MapReduce(
        Var("xs"),
        "work",
        reduce="concat",
        initial=initial,
        ordered=False,
        max_concurrency=6,
    )
    out = await run_finishing_in(probe, wf, {"xs": list(range(6))}, FINISH_ORDER)
    # Without an initial value the first element to finish starts the fold.
    assert out == "<3><5><0><4><1><2>"


async def test_without_initial_the_first_value_starts_the_fold() -> None:
    probe = Probe()
    eng = probe.engine()
    wf = MapReduce(Var("xs"), "work", reduce="fold", max_concurrency=2)
    assert await eng.run(wf, {"xs": [1, 2, 3]}) == "<1><2><3>"
    assert probe.folded == 2
    assert await eng.run(wf, {"xs": ["only"]}) == "<only>"
    assert probe.folded == 2
    assert await eng.run(wf, {"xs": []}) is None
    assert await eng.run(wf, {"xs": probe.gen([])}) is None


async def test_with_initial_the_fold_starts_from_it() -> None:
    probe = Probe()
    eng = probe.engine()
    wf = MapReduce(Var("xs"), "work", reduce="fold", initial=Var("start"))
    assert await eng.run(wf, {"xs": [1, 2], "start": ">"}) == "><1><2>"
    assert probe.folded == 2
    assert await eng.run(wf, {"xs": [], "start": "nothing"}) == "nothing"
    empty = MapReduce(Var("xs"), "work", reduce="fold", initial=Lit(None))
    assert await eng.run(empty, {"xs": []}) is None
    with_fn = MapReduce([2], "work", reduce="fold", initial=Fn(str.upper, "a"))
    assert await eng.run(with_fn) == "A<2>"


async def test_reduce_by_callable_and_by_registered_name() -> None:
    probe = Probe()

    async def square(x: int) -> int:
        return x * x

    eng = plait.Engine(tools=[square], functions=[("total", lambda a, b: a + b), max])
    xs = {"xs": [1, 2, 3]}
    assert await eng.run(MapReduce(Var("xs"), "square", reduce="total"), xs) == 14
    assert await eng.run(MapReduce(Var("xs"), "square", reduce="max"), xs) == 9
    wf = MapReduce(Var("xs"), "square", reduce=probe.fold, initial=100)
    assert await eng.run(wf, xs) == 114
    assert probe.folded == 3


async def test_failing_reduce() -> None:
    def picky(acc: int, value: int) -> int:
        if value == 4:
            raise ZeroDivisionError("no 4s")
        return acc + value

    async def square(x: int) -> int:
        return x * x

    eng = plait.Engine(tools=[square])
    wf = Sequential(MapReduce(Var("xs"), "square", reduce=picky, max_concurrency=1))
    with pytest.raises(plait.StepFailed) as info:
        await eng.run(wf, {"xs": [1, 2, 3]})
    assert info.value.path == "steps[0].reduce"
    assert isinstance(info.value.__cause__, ZeroDivisionError)

    collect = MapReduce(Var("xs"), "square", reduce=picky, on_error="collect")
    result = await eng.execute(collect, {"xs": [1, 2, 3]})
    assert result.output == 1 + 9
    assert result.failures == (Failure(ZeroDivisionError("no 4s"), "reduce"),)


async def test_failing_initial_expression_names_initial() -> None:
    probe = Probe()
    wf = Sequential(
        MapReduce(Var("xs"), "work", reduce="fold", initial=Var("cfg.start"))
    )
    with pytest.raises(plait.StepFailed) as info:
        await probe.engine().run(wf, {"xs": [1], "cfg": {}})
    assert info.value.path == "steps[0].initial"
    assert isinstance(info.value.__cause__, plait.ExpressionError)
    assert probe.pulled == 0


# -- failures ----------------------------------------------------------------


async def test_raise_mode_cancels_in_flight_items_promptly() -> None:
    probe = Probe()
    probe.hang_on = {0, 1, 2, 4}
    probe.fail_on = {3}
    wf = Sequential(
        Call("work", "first"),
        MapReduce(Var("xs"), "work", max_concurrency=5),
    )
    start = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await probe.engine().run(wf, {"xs": probe.gen(range(100))})
    assert anyio.current_time() - start < PROMPT
    assert info.value.path == "steps[1].map[3]"
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "bad item 3"
    assert sorted(probe.cancelled) == [0, 1, 2, 4]
    assert probe.pulled <= 5 + 1
    assert probe.closed


async def test_raise_mode_inside_parallel_has_the_full_path() -> None:
    probe = Probe()
    probe.fail_on = {2}
    wf = Parallel(
        Call("work", 0),
        MapReduce(Var("xs"), Sequential(Call("work", Var("item")))),
    )
    with pytest.raises(plait.StepFailed) as info:
        await probe.engine().run(wf, {"xs": [0, 1, 2, 3]})
    assert info.value.path == "steps[1].map[2].steps[0]"


async def test_collect_mode_keeps_failures_in_place() -> None:
    probe = Probe()
    probe.fail_on = {1, 3}
    wf = MapReduce(Var("xs"), "work", on_error="collect", max_concurrency=2)
    result = await probe.engine().execute(wf, {"xs": [0, 1, 2, 3, 4]})
    out = result.output
    assert out[0::2] == ["<0>", "<2>", "<4>"]
    assert out[1] == Failure(ValueError("bad item 1"), "map[1]")
    assert out[3] == Failure(ValueError("bad item 3"), "map[3]")
    assert type(out[1].error) is ValueError
    assert sorted(result.failures, key=lambda f: f.path) == [out[1], out[3]]


@pytest.mark.parametrize("ordered", [True, False])
async def test_collect_mode_with_reduce_skips_failures(ordered: bool) -> None:
    probe = Probe(delay=lambda x: 0.001 * (x % 3))
    probe.fail_on = {3, 7}
    wf = Sequential(
        MapReduce(
            Var("xs"),
            "work",
            reduce="fold",
            initial="",
            on_error="collect",
            ordered=ordered,
            max_concurrency=3,
        )
    )
    result = await probe.engine().execute(wf, {"xs": probe.gen(range(10))})
    kept = [f"<{i}>" for i in range(10) if i not in (3, 7)]
    if ordered:
        assert result.output == "".join(kept)
    else:
        assert sorted(result.output.replace("><", ">,<").split(",")) == sorted(kept)
    assert probe.folded == 8
    assert sorted(f.path for f in result.failures) == [
        "steps[0].map[3]",
        "steps[0].map[7]",
    ]
    assert all(type(f.error) is ValueError for f in result.failures)


async def test_collect_mode_with_reduce_and_every_item_failing() -> None:
    probe = Probe()
    probe.fail_on = {0, 1}
    wf = MapReduce([0, 1], "work", reduce="fold", on_error="collect")
    result = await probe.engine().execute(wf)
    assert result.output is None
    assert len(result.failures) == 2


@pytest.mark.parametrize(
    ("over", "error"),
    [
        pytest.param(Var("cfg.items"), plait.ExpressionError, id="var"),
        pytest.param(Fn(lambda: 1 / 0), ZeroDivisionError, id="fn"),
    ],
)
async def test_failing_over_expression(over: Any, error: type) -> None:
    probe = Probe()
    wf = Sequential(Call("work", 0), MapReduce(over, "work"))
    with pytest.raises(plait.StepFailed) as info:
        await probe.engine().run(wf, {"cfg": {}})
    assert info.value.path == "steps[1].over"
    assert isinstance(info.value.__cause__, error)


@pytest.mark.parametrize("value", [5, None, object()], ids=["int", "none", "object"])
async def test_over_that_is_not_iterable(value: Any) -> None:
    probe = Probe()
    wf = Sequential(MapReduce(Var("xs"), "work"))
    with pytest.raises(plait.StepFailed) as info:
        await probe.engine().run(wf, {"xs": value})
    assert info.value.path == "steps[0].over"
    assert isinstance(info.value.__cause__, TypeError)
    assert "iterable" in str(info.value.__cause__)
    assert probe.completed == 0


@pytest.mark.parametrize("source", ["gen", "agen"])
async def test_failing_input_in_raise_mode(source: str) -> None:
    probe = Probe()
    probe.hang_on = {0, 1, 2}
    wf = Sequential(MapReduce(Var("xs"), "work", max_concurrency=4))
    xs = getattr(probe, source)(range(10), fail_after=3)
    start = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await probe.engine().run(wf, {"xs": xs})
    assert anyio.current_time() - start < PROMPT
    assert info.value.path == "steps[0].over"
    assert isinstance(info.value.__cause__, OSError)
    assert str(info.value.__cause__) == "source broke after 3"
    assert sorted(probe.cancelled) == [0, 1, 2]
    assert probe.closed


@pytest.mark.parametrize("source", ["gen", "agen"])
async def test_failing_input_in_collect_mode_keeps_finished_results(
    source: str,
) -> None:
    probe = Probe(delay=lambda x: 0.01 if x == 0 else 0)
    wf = Sequential(MapReduce(Var("xs"), "work", max_concurrency=2, on_error="collect"))
    xs = getattr(probe, source)(range(10), fail_after=3)
    result = await probe.engine().execute(wf, {"xs": xs})
    over_failure = Failure(OSError("source broke after 3"), "steps[0].over")
    assert result.output == ["<0>", "<1>", "<2>", over_failure]
    assert result.failures == (over_failure,)


@pytest.mark.parametrize("source", ["gen", "agen"])
async def test_failing_input_in_collect_mode_with_reduce(source: str) -> None:
    probe = Probe()
    wf = MapReduce(
        Var("xs"), "work", reduce="fold", on_error="collect", max_concurrency=2
    )
    xs = getattr(probe, source)(range(10), fail_after=3)
    result = await probe.engine().execute(wf, {"xs": xs})
    assert result.output == "<0><1><2>"
    assert result.failures == (Failure(OSError("source broke after 3"), "over"),)


@pytest.mark.parametrize("source", ["gen", "agen"])
async def test_input_is_closed_when_the_run_stops_early(source: str) -> None:
    probe = Probe()
    probe.fail_on = {2}
    xs = getattr(probe, source)(range(100))
    with pytest.raises(plait.StepFailed):
        await probe.engine().run(
            MapReduce(Var("xs"), "work", max_concurrency=2), {"xs": xs}
        )
    assert probe.closed
    assert probe.pulled < 100

    probe = Probe()
    probe.hang_on = {0, 1}
    xs = getattr(probe, source)(range(100))
    with anyio.move_on_after(0.05):
        await probe.engine().run(
            MapReduce(Var("xs"), "work", max_concurrency=2), {"xs": xs}
        )
    assert probe.closed
    assert sorted(probe.cancelled) == [0, 1]

    probe = Probe()
    probe.hang_on = {0}
    xs = getattr(probe, source)(range(100))
    wf = MapReduce(Var("xs"), "work", max_concurrency=2, timeout=0.05)
    with pytest.raises(plait.StepTimeout):
        await probe.engine().run(wf, {"xs": xs})
    assert probe.closed


async def test_simultaneous_item_failures_raise_a_group() -> None:
    gate = anyio.Event()
    waiting = 0

    async def fail_at_gate(x: int) -> None:
        nonlocal waiting
        waiting += 1
        await gate.wait()
        raise ValueError(x)

    async def open_gate() -> None:
        while waiting < 2:
            await anyio.sleep(0)
        gate.set()

    eng = plait.Engine(tools=[fail_at_gate, open_gate])
    wf = Parallel(MapReduce([0, 1], "fail_at_gate", max_concurrency=2), Call(open_gate))
    with pytest.raises(ExceptionGroup) as info:
        await eng.run(wf)
    paths = sorted(e.path for e in info.value.exceptions)  # type: ignore[attr-defined]
    assert paths == ["steps[0].map[0]", "steps[0].map[1]"]


# -- nesting -----------------------------------------------------------------


async def test_nested_map_reduce_failure_paths() -> None:
    probe = Probe()
    probe.fail_on = {"2-1", "0-0"}
    rows = [["0-0", "0-1"], ["1-0"], ["2-0", "2-1", "2-2"]]

    inner_collect = Sequential(
        Call("work", "start"),
        MapReduce(
            Var("rows"),
            MapReduce(Var("row"), "work", item="cell", on_error="collect"),
            item="row",
            on_error="collect",
        ),
    )
    result = await probe.engine().execute(inner_collect, {"rows": rows})
    f00 = Failure(ValueError("bad item '0-0'"), "steps[1].map[0].map[0]")
    f21 = Failure(ValueError("bad item '2-1'"), "steps[1].map[2].map[1]")
    assert result.output == [
        [f00, "<0-1>"],
        ["<1-0>"],
        ["<2-0>", f21, "<2-2>"],
    ]
    assert sorted(result.failures, key=lambda f: f.path) == [f00, f21]

    # An inner map in raise mode fails its whole outer element.
    inner_raise = MapReduce(
        Var("rows"),
        MapReduce(Var("row"), "work", item="cell"),
        item="row",
        on_error="collect",
    )
    result = await probe.engine().execute(inner_raise, {"rows": rows})
    assert result.output == [
        Failure(ValueError("bad item '0-0'"), "map[0].map[0]"),
        ["<1-0>"],
        Failure(ValueError("bad item '2-1'"), "map[2].map[1]"),
    ]
    assert sorted(f.path for f in result.failures) == ["map[0].map[0]", "map[2].map[1]"]

    with pytest.raises(plait.StepFailed) as info:
        await probe.engine().run(
            MapReduce(Var("rows"), MapReduce(Var("row"), "work", item="c"), item="row"),
            {"rows": rows[1:]},
        )
    assert info.value.path == "map[1].map[1]"


async def test_generators_behind_iterables_are_closed_when_the_step_stops_early() -> (
    None
):
    closed: list[str] = []

    class Lines:
        def __iter__(self) -> Iterator[int]:
            try:
                yield from range(100)
            finally:
                closed.append("sync")

    class Chunks:
        async def _gen(self) -> AsyncIterator[int]:
            try:
                for i in range(100):
                    yield i
            finally:
                closed.append("async")

        def __aiter__(self) -> AsyncIterator[int]:
            return self._gen()

    def boom(x: int) -> int:
        if x == 3:
            raise ValueError(x)
        return x

    engine = plait.Engine(tools=[plait.tool(boom)])
    for source in (Lines(), Chunks()):
        with pytest.raises(plait.StepFailed):
            await engine.run(
                MapReduce(Var("s"), "boom", max_concurrency=2), {"s": source}
            )
    assert closed == ["sync", "async"]


async def test_map_workers_do_not_starve_other_calls_of_engine_slots() -> None:
    # A map of quick calls keeps its engine slots between elements only while
    # nobody else waits for one: a call elsewhere gets a slot within an
    # element or two, not at the map's next periodic checkpoint.
    calls = 0
    calls_before_other: list[int] = []

    @plait.tool
    async def quick(x: int) -> int:
        nonlocal calls
        calls += 1
        await anyio.lowlevel.checkpoint()
        return x

    @plait.tool
    async def other() -> str:
        calls_before_other.append(calls)
        return "done"

    engine = plait.Engine(tools=[quick, other], max_concurrency=2)
    wf = Parallel(
        MapReduce(Var("xs"), "quick", reduce=operator.add, max_concurrency=2),
        Sequential(Call("quick", 0), Call("other")),
    )
    total, done = await engine.run(wf, {"xs": range(1_000)})
    assert (total, done) == (sum(range(1_000)), "done")
    assert calls_before_other[0] <= 8


async def test_a_subscriber_joining_mid_map_sees_the_remaining_calls() -> None:
    seen: list[plait.Event] = []
    engine_box: list[plait.Engine] = []

    @plait.tool
    async def work(x: int) -> int:
        if x == 50:
            engine_box[0].subscribe(seen.append)
        await anyio.lowlevel.checkpoint()
        return x

    engine = plait.Engine(tools=[work])
    engine_box.append(engine)
    out = await engine.run(
        MapReduce(Var("xs"), "work", max_concurrency=1), {"xs": range(100)}
    )
    assert out == list(range(100))
    finished = [e for e in seen if e.kind is plait.EventKind.CALL_FINISHED]
    assert [e.path for e in finished] == [f"map[{i}]" for i in range(51, 100)]


async def test_no_element_is_pulled_after_over_failed() -> None:
    # An iterator (not a generator) may go on after raising; once `over`
    # failed, no worker pulls from it again, even one waiting on the window.
    class Flaky:
        def __init__(self) -> None:
            self.i = 0

        def __iter__(self) -> Flaky:
            return self

        def __next__(self) -> int:
            i = self.i
            self.i += 1
            if i == 4:
                raise RuntimeError("bad record")
            if i > 9:
                raise StopIteration
            return i

    mapped: list[int] = []

    @plait.tool
    async def work(x: int) -> int:
        mapped.append(x)
        await anyio.sleep(0.2 if x == 0 else 0.001)
        return x

    engine = plait.Engine(tools=[work])
    result = await engine.execute(
        MapReduce(
            Var("xs"),
            "work",
            reduce=operator.add,
            max_concurrency=2,
            on_error="collect",
        ),
        {"xs": Flaky()},
    )
    assert sorted(mapped) == [0, 1, 2, 3]
    assert result.output == 6
    assert [f.path for f in result.failures] == ["over"]


async def test_collected_over_and_reduce_failures_are_step_failed_events() -> None:
    @plait.tool
    async def same(x: int) -> int:
        return x

    def bad_add(a: int, b: int) -> int:
        if b == 2:
            raise KeyError("reduce broke")
        return a + b

    def gen() -> Iterator[int]:
        yield 1
        yield 2
        yield 3
        raise RuntimeError("over broke")

    engine = plait.Engine(tools=[same])
    failed: list[tuple[str, type[BaseException]]] = []
    engine.subscribe(
        lambda e: (
            failed.append((e.path, type(e.error)))
            if e.kind is plait.EventKind.STEP_FAILED and e.error is not None
            else None
        )
    )
    result = await engine.execute(
        MapReduce(Var("xs"), "same", reduce=bad_add, on_error="collect"), {"xs": gen()}
    )
    assert result.output == 4
    assert [f.path for f in result.failures] == ["reduce", "over"]
    assert failed == [("reduce", KeyError), ("over", RuntimeError)]


# -- a Sequential of plain calls as the map step -------------------------------


async def test_a_sequential_map_step_binds_per_element_and_keeps_outer_names() -> None:
    # The second step's name shadows an outer variable that the first step
    # reads: every element's first step must see the outer value, not the
    # previous element's bind.
    seen: list[tuple[str, Any]] = []

    @plait.tool
    async def note(tag: str, value: Any) -> Any:
        seen.append((tag, value))
        await anyio.lowlevel.checkpoint()
        return value

    @plait.tool
    async def add(a: int, b: int) -> int:
        await anyio.lowlevel.checkpoint()
        return a + b

    step = MapReduce(
        Var("xs"),
        Sequential(
            Call("note", "outer", Var("base"), name="first"),
            Call("add", Var("item"), 100, name="base"),
            Call("add", Var("base"), Var("first")),
        ),
        max_concurrency=2,
    )
    engine = plait.Engine(tools=[note, add])
    assert await engine.run(step, {"xs": [1, 2, 3, 4], "base": 7}) == [
        108,
        109,
        110,
        111,
    ]
    assert seen == [("outer", 7)] * 4


async def test_a_sequential_map_steps_failures_name_the_failing_call() -> None:
    @plait.tool
    async def half(x: int) -> int:
        if x % 2:
            raise ValueError(f"odd {x}")
        return x // 2

    @plait.tool
    async def double(x: int) -> int:
        return x * 2

    step = MapReduce(
        Var("xs"),
        Sequential(
            Call("double", Var("item.v"), name="twice"),
            Call("half", Var("item.w")),
        ),
        on_error="collect",
    )
    engine = plait.Engine(tools=[half, double])
    result = await engine.execute(
        step, {"xs": [{"v": 1, "w": 4}, {"v": 2, "w": 3}, {"w": 2}]}
    )
    assert result.output[0] == 2
    assert [f.path for f in result.failures] == ["map[1].steps[1]", "map[2].steps[0]"]
    assert isinstance(result.failures[0].error, ValueError)
    assert result.stats.tools["double"].calls == 2
    assert result.stats.tools["half"].calls == 2
    assert result.stats.tools["half"].failures == 1
