"""Adaptive limits shrink when latency climbs well above its recent floor."""

from __future__ import annotations

import itertools

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plait
from plait._concurrency._adaptive import (
    FLOOR_WINDOWS,
    LATENCY_FACTOR,
    LATENCY_SLACK,
    LATENCY_WINDOW,
    AdaptiveLimit,
)
from plait._concurrency._limits import Limiter

pytestmark = pytest.mark.anyio


def _control(initial: int = 8, lo: int = 1, hi: int = 64) -> AdaptiveLimit:
    return AdaptiveLimit(plait.Adaptive(initial, lo, hi), Limiter(None, "t"))


def _window(
    control: AdaptiveLimit, seconds: float, n: int = LATENCY_WINDOW
) -> list[int]:
    """``n`` successes of ``seconds`` each; the limits they changed it to."""
    changes = []
    for _ in range(n):
        control.observe(seconds)
        changed = control.succeeded()
        if changed is not None:
            changes.append(changed)
    return changes


def test_a_sustained_climb_cuts_once_per_window() -> None:
    control = _control(initial=16)
    assert _window(control, 0.010) == []  # idle: no growth, no floor yet
    assert control.floor == 0.010
    assert _window(control, 0.010) == []
    # The median climbs to 5x the floor: one cut per window, by DECREASE.
    assert _window(control, 0.050) == [12]
    assert _window(control, 0.050) == [9]
    assert _window(control, 0.050, LATENCY_WINDOW - 1) == []
    assert control.value == 9


def test_a_single_outlier_never_cuts() -> None:
    control = _control(initial=16)
    _window(control, 0.010)
    for _ in range(5):
        assert _window(control, 0.010, LATENCY_WINDOW - 1) == []
        assert _window(control, 10.0, 1) == []  # one slow call per window
    assert control.value == 16


def test_a_sub_millisecond_climb_is_within_the_slack() -> None:
    control = _control(initial=16)
    _window(control, 0.0001)
    for _ in range(4):
        assert _window(control, 0.0001 + LATENCY_SLACK / 2) == []
    assert control.value == 16


def test_a_service_that_stays_slower_raises_the_floor() -> None:
    control = _control(initial=64)
    _window(control, 0.010)
    cuts = []
    for _ in range(FLOOR_WINDOWS + 3):
        cuts += _window(control, 0.050)
    # Cut while the fast window was within the last FLOOR_WINDOWS, then no more.
    assert len(cuts) == FLOOR_WINDOWS
    assert control.floor == 0.050
    assert _window(control, 0.050) == []


def test_calls_in_flight_at_a_cut_are_not_timed() -> None:
    limiter = Limiter(None, "t")
    control = AdaptiveLimit(plait.Adaptive(8, 1, 8), limiter)
    for _ in range(3):
        assert limiter.try_acquire()
    assert control.pushed_back() == 6
    for _ in range(3):  # sent under the old limit: however slow, not timed
        control.observe(100.0)
        control.succeeded()
    assert control.floor == float("inf")
    _window(control, 0.010)
    assert control.floor == 0.010


_LATENCY = st.floats(0.001, 10.0)


@settings(max_examples=150, deadline=None)
@given(
    base=_LATENCY,
    spread=st.lists(st.floats(1.0, LATENCY_FACTOR, exclude_max=True), max_size=400),
    held=st.integers(0, 64),
    initial=st.integers(1, 64),
)
def test_flat_latencies_never_shrink_the_limit(
    base: float, spread: list[float], held: int, initial: int
) -> None:
    """Latencies within a factor of LATENCY_FACTOR of each other never cut."""
    limiter = Limiter(None, "t")
    control = AdaptiveLimit(plait.Adaptive(initial, 1, 64), limiter)
    for _ in range(min(held, initial)):
        assert limiter.try_acquire()
    before = control.value
    for factor in spread:
        control.observe(base * factor)
        control.succeeded()
        assert control.value >= before
        before = control.value


@settings(max_examples=150, deadline=None)
@given(
    bounds=st.integers(1, 20).flatmap(
        lambda lo: st.tuples(st.just(lo), st.integers(lo, 40))
    ),
    data=st.data(),
)
def test_latency_keeps_the_limit_within_min_and_max(
    bounds: tuple[int, int], data: st.DataObject
) -> None:
    lo, hi = bounds
    initial = data.draw(st.integers(lo, hi))
    events = data.draw(
        st.lists(st.tuples(st.booleans(), _LATENCY, st.integers(0, 50)), max_size=400)
    )
    limiter = Limiter(None, "t")
    control = AdaptiveLimit(plait.Adaptive(initial, lo, hi), limiter)
    held = 0
    for ok, seconds, in_flight in events:
        while held < in_flight and limiter.try_acquire():
            held += 1
        while held > in_flight:
            limiter.release()
            held -= 1
        if ok:
            control.observe(seconds)
            changed = control.succeeded()
        else:
            changed = control.pushed_back()
        assert lo <= control.value <= hi
        if changed is not None:
            assert changed == control.value


@settings(max_examples=60, deadline=None)
@given(
    floor=st.floats(0.001, 1.0),
    climb=st.floats(LATENCY_FACTOR * 1.01, 20.0),
    initial=st.integers(2, 64),
)
def test_a_sustained_climb_always_shrinks(
    floor: float, climb: float, initial: int
) -> None:
    control = _control(initial=initial)
    _window(control, floor)
    slow = floor * climb + LATENCY_SLACK
    _window(control, slow)
    assert control.value < initial


# -- against a tool that slows down as more of its calls run at once ---------------


class _Crowded:
    """A tool taking ``base`` seconds, longer once more than ``knee`` run at once."""

    def __init__(self, base: float, knee: int | None) -> None:
        self.base = base
        self.knee = knee
        self.running = 0

    async def __call__(self, i: int) -> int:
        self.running += 1
        try:
            crowd = 1.0 if self.knee is None else max(1.0, self.running / self.knee)
            await anyio.sleep(self.base * crowd)
        finally:
            self.running -= 1
        return i


async def _run(service: _Crowded, items: int) -> tuple[int, list[int]]:
    tool = plait.Tool(
        service,
        "api",
        concurrency_limit=plait.Adaptive(initial=2, min=1, max=64),
        retry=plait.Retry(attempts=1),
    )
    engine = plait.Engine(tools=[tool], max_concurrency=64)
    limits: list[int] = []
    engine.subscribe(
        lambda e: limits.append(e.limit), kinds=[plait.EventKind.LIMIT_CHANGED]
    )
    result = await engine.execute(
        plait.MapReduce(
            over=list(range(items)), map=plait.Call("api", plait.Var("item"))
        )
    )
    assert result.output == list(range(items))
    limit = result.stats.tools["api"].limit
    assert limit is not None
    return limit, limits


async def test_the_limit_settles_where_latency_starts_to_climb() -> None:
    # 20 ms up to 4 at once, then 20 ms per 4: twice the floor at 8.
    limit, limits = await _run(_Crowded(0.02, knee=4), 400)
    cuts = [b for a, b in itertools.pairwise(limits) if b < a]
    assert cuts, limits
    assert 2 <= limit <= 16, limits
    assert max(limits[len(limits) // 2 :]) <= 20, limits


async def test_with_flat_latencies_the_limit_only_grows() -> None:
    limit, limits = await _run(_Crowded(0.02, knee=None), 400)
    assert limits == sorted(limits)
    assert limit >= 16, limits
