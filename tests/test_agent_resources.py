"""ResourceMonitor: fewer agents in flight while the machine is loaded.

The monitor's readings are scripted through ``sample=``, and agents wait for
the monitor's next reading before they finish, so every reading sees
exactly the agents admitted under the limit the previous one set: the
limits are proved with a gauge, not inferred from timings.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

import plait
from _fake_agents import BACKENDS, AsyncAgent, Boom, Gauge, SyncAgent
from plait.agents import (
    ResourceMetrics,
    ResourceMonitor,
    arun_agents_with_resource_monitoring,
    run_agents_with_resource_monitoring,
)

anyio_test = pytest.mark.anyio
on_each_backend = pytest.mark.parametrize("backend", BACKENDS)

IDLE = ResourceMetrics(cpu_percent=5.0, memory_percent=20.0, active_threads=3)
BUSY_CPU = ResourceMetrics(cpu_percent=99.0, memory_percent=20.0, active_threads=3)
BUSY_MEMORY = ResourceMetrics(cpu_percent=5.0, memory_percent=97.0, active_threads=3)


# -- the metrics ---------------------------------------------------------------------


def test_current_metrics_are_sane() -> None:
    ResourceMetrics.current()  # the first CPU reading only starts the measurement
    time.sleep(0.05)
    metrics = ResourceMetrics.current()
    assert isinstance(metrics.cpu_percent, float)
    assert isinstance(metrics.memory_percent, float)
    assert isinstance(metrics.active_threads, int)
    assert 0.0 <= metrics.cpu_percent <= 100.0
    assert 0.0 < metrics.memory_percent <= 100.0
    assert metrics.active_threads >= 1
    assert metrics.active_threads <= threading.active_count() + 50


def test_metrics_are_frozen_values() -> None:
    assert ResourceMetrics(1.0, 2.0, 3) == ResourceMetrics(1.0, 2.0, 3)
    with pytest.raises(AttributeError):
        IDLE.cpu_percent = 50.0


# -- the monitor's settings and policy -------------------------------------------------


def test_monitor_defaults() -> None:
    monitor = ResourceMonitor()
    assert monitor.cpu_threshold == 90.0
    assert monitor.memory_threshold == 90.0
    assert monitor.check_interval == 1.0
    assert monitor.min_limit == 1
    assert monitor.sample == ResourceMetrics.current
    assert monitor.samples == []
    assert monitor.limits == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"cpu_threshold": -1}, r"ResourceMonitor\.cpu_threshold must be a number > 0"),
        ({"cpu_threshold": 0}, r"ResourceMonitor\.cpu_threshold must be a number > 0"),
        ({"cpu_threshold": math.nan}, r"ResourceMonitor\.cpu_threshold"),
        ({"cpu_threshold": "90"}, r"ResourceMonitor\.cpu_threshold"),
        ({"cpu_threshold": True}, r"ResourceMonitor\.cpu_threshold"),
        (
            {"memory_threshold": -5.0},
            r"ResourceMonitor\.memory_threshold must be a number > 0, got -5\.0",
        ),
        (
            {"check_interval": 0},
            r"ResourceMonitor\.check_interval must be a number > 0, got 0",
        ),
        ({"check_interval": -1}, r"ResourceMonitor\.check_interval"),
        ({"check_interval": math.inf}, r"ResourceMonitor\.check_interval"),
        ({"min_limit": 0}, r"ResourceMonitor\.min_limit must be an int >= 1, got 0"),
        ({"min_limit": 1.5}, r"ResourceMonitor\.min_limit must be an int >= 1"),
        ({"sample": 42}, r"ResourceMonitor\.sample must be a callable"),
    ],
)
def test_monitor_rejects_bad_settings(options: dict[str, Any], match: str) -> None:
    with pytest.raises(plait.ConfigError, match=match) as info:
        ResourceMonitor(**options)
    assert isinstance(info.value, ValueError)


@on_each_backend
def test_bad_thresholds_given_to_the_run_function_name_the_field(backend: str) -> None:
    agent = SyncAgent("a")
    with pytest.raises(plait.ConfigError, match=r"cpu_threshold must be a number > 0"):
        run_agents_with_resource_monitoring([agent], "t", -1.0, backend=backend)
    with pytest.raises(plait.ConfigError, match=r"memory_threshold"):
        run_agents_with_resource_monitoring([agent], "t", 90, -1, backend=backend)
    with pytest.raises(plait.ConfigError, match=r"check_interval must be a number > 0"):
        run_agents_with_resource_monitoring([agent], "t", check_interval=0)
    assert agent.calls == 0


@pytest.mark.parametrize(
    ("current", "maximum", "metrics", "expected"),
    [
        pytest.param(8, 8, BUSY_CPU, 4, id="CPU over: halved"),
        pytest.param(8, 8, BUSY_MEMORY, 4, id="memory over: halved"),
        pytest.param(5, 8, BUSY_CPU, 2, id="halved, rounded down"),
        pytest.param(1, 8, BUSY_CPU, 1, id="never below 1"),
        pytest.param(2, 8, IDLE, 4, id="under: up by a quarter of the maximum"),
        pytest.param(7, 8, IDLE, 8, id="never above the maximum"),
        pytest.param(8, 8, IDLE, 8, id="stays at the maximum"),
        pytest.param(1, 3, IDLE, 2, id="up by at least 1"),
        pytest.param(1, 64, IDLE, 17, id="a quarter of 64"),
    ],
)
def test_next_limit_halves_when_over_and_adds_a_quarter_when_under(
    current: int, maximum: int, metrics: ResourceMetrics, expected: int
) -> None:
    assert ResourceMonitor().next_limit(current, maximum, metrics) == expected


def test_next_limit_respects_min_limit() -> None:
    monitor = ResourceMonitor(min_limit=3)
    assert monitor.next_limit(8, 8, BUSY_CPU) == 4
    assert monitor.next_limit(4, 8, BUSY_CPU) == 3
    assert monitor.next_limit(3, 8, BUSY_CPU) == 3
    # a min_limit above the run's maximum is the maximum
    assert monitor.next_limit(2, 2, BUSY_CPU) == 2


def test_thresholds_are_strict_and_each_one_counts() -> None:
    monitor = ResourceMonitor(cpu_threshold=50.0, memory_threshold=60.0)
    assert not monitor.overloaded(ResourceMetrics(50.0, 60.0, 1))
    assert monitor.overloaded(ResourceMetrics(50.1, 0.0, 1))
    assert monitor.overloaded(ResourceMetrics(0.0, 60.1, 1))


# -- the monitor at work -----------------------------------------------------------------


class ScriptedLoad:
    """A ``sample=`` function reading ``script`` (its last entry repeats).

    At each reading it records how many agents run (``in_flight``) and
    ends the current *tick*: agents wait for the tick that was current when
    they started, so each one spans exactly one reading.
    """

    def __init__(self, script: Sequence[ResourceMetrics], gauge: Gauge) -> None:
        self.script = list(script)
        self.gauge = gauge
        self.calls = 0
        self.in_flight: list[int] = []
        self._tick: anyio.Event | None = None

    def tick(self) -> anyio.Event:
        if self._tick is None:
            self._tick = anyio.Event()
        return self._tick

    def __call__(self) -> ResourceMetrics:
        self.calls += 1
        if self.calls == 1:  # the monitor's first reading only starts CPU timing
            return IDLE
        self.in_flight.append(self.gauge.running)
        self.tick().set()
        self._tick = anyio.Event()
        return self.script[min(self.calls - 2, len(self.script) - 1)]


class TickAgent:
    """An async agent that runs until the monitor's next reading."""

    def __init__(
        self,
        i: int,
        load: ScriptedLoad,
        monitor: ResourceMonitor,
        maximum: int,
        entries: list[tuple[int, int]],
    ) -> None:
        self.name = f"tick{i}"
        self.i = i
        self.load = load
        self.monitor = monitor
        self.maximum = maximum
        self.entries = entries

    async def run(self, task: Any) -> Any:
        running = self.load.gauge.enter(self.name)
        try:
            limit = self.monitor.limits[-1] if self.monitor.limits else self.maximum
            self.entries.append((running, limit))
            with anyio.fail_after(5):
                await self.load.tick().wait()
            return (self.i, task)
        finally:
            self.load.gauge.leave(self.name)


@anyio_test
async def test_high_load_lowers_the_agents_in_flight_and_low_load_raises_it() -> None:
    gauge = Gauge()
    # three busy readings, then idle ones
    load = ScriptedLoad([BUSY_CPU, BUSY_MEMORY, BUSY_CPU, IDLE], gauge)
    monitor = ResourceMonitor(check_interval=0.03, sample=load)
    entries: list[tuple[int, int]] = []
    n = 40
    agents = [TickAgent(i, load, monitor, 8, entries) for i in range(n)]

    out = await arun_agents_with_resource_monitoring(
        agents, "t", batch_size=8, monitor=monitor
    )

    assert out == [(i, "t") for i in range(n)]
    # halved three times, then up by a quarter of 8 until back at 8
    assert monitor.limits[:7] == [4, 2, 1, 3, 5, 7, 8]
    assert set(monitor.limits[7:]) <= {8}
    assert len(monitor.samples) == len(monitor.limits)
    assert monitor.samples[:4] == [BUSY_CPU, BUSY_MEMORY, BUSY_CPU, IDLE]
    # No agent ever started over the limit in force when it started ...
    assert all(running <= limit for running, limit in entries)
    # ... and each reading saw at most as many as the limit before it allowed.
    allowed = [8, *monitor.limits]
    assert all(
        seen <= limit for seen, limit in zip(load.in_flight, allowed, strict=False)
    )
    # In flight really dropped to the lowered limit, and came back up to 8.
    assert load.in_flight[0] == 8
    assert load.in_flight[3] == 1
    assert 8 in load.in_flight[4:]
    assert gauge.peak == 8


@on_each_backend
def test_run_agents_with_resource_monitoring_on_each_backend(backend: str) -> None:
    gauge = Gauge()
    monitor = ResourceMonitor(check_interval=0.01, sample=lambda: BUSY_CPU)
    agents = [SyncAgent(f"s{i}", 0.01, gauge) for i in range(10)]
    agents[3] = AsyncAgent("bad", 0.0, gauge, fail=True)
    out = run_agents_with_resource_monitoring(
        agents, "t", batch_size=4, monitor=monitor, backend=backend
    )
    for i, value in enumerate(out):
        if i == 3:
            assert isinstance(value, plait.Failure)
            assert value.path == "agents[3]"
            assert isinstance(value.error, Boom)
        else:
            assert value == (f"s{i}", "t")
    assert gauge.peak <= 4
    assert monitor.samples
    assert set(monitor.samples) == {BUSY_CPU}
    # halved from 4, never below 1
    assert monitor.limits[:2] == [2, 1][: len(monitor.limits)]
    assert set(monitor.limits) <= {1, 2}


@on_each_backend
def test_the_default_monitor_reads_the_real_machine(backend: str) -> None:
    agents = [SyncAgent(f"s{i}", 0.02) for i in range(6)]
    out = run_agents_with_resource_monitoring(
        agents, "t", 100.0, 100.0, 0.01, batch_size=2, backend=backend
    )
    assert out == [(f"s{i}", "t") for i in range(6)]


@anyio_test
async def test_the_monitor_stops_with_the_run() -> None:
    load = ScriptedLoad([IDLE], Gauge())
    monitor = ResourceMonitor(check_interval=0.01, sample=load)
    agents = [AsyncAgent(f"a{i}", 0.03) for i in range(3)]
    assert (
        len(await arun_agents_with_resource_monitoring(agents, "t", monitor=monitor))
        == 3
    )
    calls = load.calls
    await anyio.sleep(0.1)
    assert load.calls == calls  # nobody reads the load any more


@anyio_test
async def test_raise_mode_with_a_monitor_raises_step_failed() -> None:
    monitor = ResourceMonitor(check_interval=0.01, sample=lambda: IDLE)
    sleeper = AsyncAgent("sleeper", 10.0)
    bad = SyncAgent("bad", 0.01, fail=True)
    with pytest.raises(plait.StepFailed) as info:
        await arun_agents_with_resource_monitoring(
            [sleeper, bad], "t", monitor=monitor, on_error="raise"
        )
    assert info.value.path == "agents[1]"
    assert info.value.__cause__ is bad.error
    assert sleeper.cancelled


@on_each_backend
def test_sync_raise_mode_with_a_monitor_raises_step_failed(backend: str) -> None:
    bad = AsyncAgent("bad", 0.0, fail=True)
    with pytest.raises(plait.StepFailed) as info:
        run_agents_with_resource_monitoring(
            [SyncAgent("ok"), bad],
            "t",
            monitor=ResourceMonitor(sample=lambda: IDLE),
            on_error="raise",
            backend=backend,
        )
    assert info.value.path == "agents[1]"
    assert info.value.__cause__ is bad.error
