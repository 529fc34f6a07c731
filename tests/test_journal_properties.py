"""Random workflows crashed at a random call and resumed equal the reference.

Hypothesis draws workflows with the differential tests' generator
(``test_differential.cases``: every step kind, both error modes, failing
calls and functions); the run is cut at a random call (its scope cancelled
when that call starts, an in-process crash), then run again with the same
run id. The resumed run's outcome must be what the sequential reference in
``_reference.py`` allows, and it makes no more calls than a whole run.

A lazy map resumed over many elements keeps O(max_concurrency) records in
memory, never one per element.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plait
from _reference import Reference
from plait import Call, MapReduce, Var
from test_differential import DIFFERENTIAL, INPUTS, Case, Probe, cases, outcome_problems

pytestmark = pytest.mark.anyio

RESUMES = settings(DIFFERENTIAL, max_examples=max(10, DIFFERENTIAL.max_examples // 2))


def engine_for(probe: Probe, case: Case, journal: plait.Journal) -> plait.Engine:
    return plait.Engine(
        tools=probe.tools(),
        functions=probe.functions(),
        max_concurrency=case.engine_limit,
        journal=journal,
    )


@RESUMES
@given(case=cases(), cut=st.integers(0, 40))
async def test_a_run_cut_at_a_random_call_resumes_to_the_reference(
    tmp_path: Path, case: Case, cut: int
) -> None:
    # No hanging calls: they only make examples slow, the resume is the same.
    plan = dataclasses.replace(case.plan, hang_pct=0)
    expected = Reference(plan).run(case.step, INPUTS)
    journal = plait.SqliteJournal(tmp_path / "runs.db")
    run_id = uuid.uuid4().hex

    first = Probe(plan, case.tool_limits)
    engine = engine_for(first, case, journal)
    with anyio.fail_after(30), anyio.CancelScope() as scope:
        started = 0

        def crash(event: plait.Event) -> None:
            nonlocal started
            started += 1
            if started > cut:
                scope.cancel()

        engine.subscribe(crash, ["call.started"])
        with contextlib.suppress(plait.StepFailed, ExceptionGroup):
            await engine.execute(case.step, dict(INPUTS), run_id=run_id)
    await first.settle()

    second = Probe(plan, case.tool_limits)
    resumed = engine_for(second, case, journal)
    result: plait.RunResult | None = None
    error: BaseException | None = None
    with anyio.fail_after(30):
        try:
            result = await resumed.execute(case.step, dict(INPUTS), run_id=run_id)
        except (plait.StepFailed, ExceptionGroup) as raised:
            error = raised
    await second.settle()
    problems = outcome_problems(expected, result, error)
    # No call more often than a whole run may make it.
    allowed = expected.uncertain().calls
    for key, count in second.calls.items():
        if count > allowed[key]:
            problems.append(
                f"the resume called {key} {count} times, at most {allowed[key]}"
            )
    assert not problems, "\n".join(problems)


def lazy(n: int) -> Iterator[int]:
    yield from range(n)


async def resume_peak(tmp_path: Path, n: int) -> tuple[int, int]:
    """Journal a lazy ``n``-element fold, resume it; its result and peak bytes."""
    made = 0

    @plait.tool
    async def inc(x: int) -> int:
        nonlocal made
        made += 1
        return x + 1

    def add(a: int, b: int) -> int:
        return a + b

    journal = plait.SqliteJournal(tmp_path / "big.db")
    engine = plait.Engine(tools=[inc], functions=[add], journal=journal)
    step = MapReduce(
        Var("xs"), Call("inc", Var("item")), reduce="add", max_concurrency=50
    )
    run_id = uuid.uuid4().hex
    await engine.run(step, {"xs": lazy(n)}, run_id=run_id)
    assert made == n
    tracemalloc.start()
    try:
        total = await engine.run(step, {"xs": lazy(n)}, run_id=run_id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert made == n  # every call replayed
    return total, peak


async def test_a_lazy_resume_holds_a_bounded_number_of_records(
    tmp_path: Path,
) -> None:
    total, peak = await resume_peak(tmp_path, 10_000)
    assert total == sum(range(1, 10_001))
    # Reading every element's record at once peaks at 4 MB here (measured);
    # the chunks in memory hold at most 64 x 256 records, and drop each
    # one as it is replayed (about 0.8 MB, and 1.1 MB for 200,000).
    assert peak < 2_500_000, peak


@pytest.mark.slow
async def test_a_lazy_200_000_element_resume_stays_within_bounded_memory(
    tmp_path: Path,
) -> None:
    total, peak = await resume_peak(tmp_path, 200_000)
    assert total == sum(range(1, 200_001))
    assert peak < 3_000_000, peak
