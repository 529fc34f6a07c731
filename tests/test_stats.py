"""Latency percentiles come from a bounded histogram, within about 1%."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait._model._stats import LatencyHistogram


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=1e-8, max_value=1e5, allow_nan=False),
        min_size=1,
        max_size=300,
    ),
    st.sampled_from([0, 50, 95, 99, 100]),
)
def test_percentiles_are_within_about_one_percent_of_the_sample(
    values: list[float], q: int
) -> None:
    hist = LatencyHistogram()
    for v in values:
        hist.add(v)
    exact = sorted(values)[int(q / 100 * (len(values) - 1))]
    got = hist.percentile(q)
    assert got is not None
    assert got == pytest.approx(exact, rel=0.012)
    assert hist.count == len(values)
    assert hist.mean == pytest.approx(sum(values) / len(values))


def test_memory_is_bounded_whatever_the_count() -> None:
    hist = LatencyHistogram()
    size = len(hist.counts)
    rng = random.Random(1)
    for _ in range(100_000):
        hist.add(rng.expovariate(1000))
    assert len(hist.counts) == size
    assert sum(hist.counts) == 100_000


def test_out_of_range_values_go_to_the_end_buckets() -> None:
    hist = LatencyHistogram()
    for v in (0.0, -1.0, 1e-12, 1e9):
        hist.add(v)
    assert hist.counts[0] == 3
    assert hist.counts[-1] == 1
    assert hist.percentile(0) is not None
    assert LatencyHistogram().percentile(50) is None
