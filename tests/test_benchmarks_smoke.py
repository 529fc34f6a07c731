"""The benchmark scripts still run: tiny sizes, no timing assertions."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from _scripts import BENCHMARKS, load_script
from _servers import need_module

BACKENDS = ["asyncio", "uvloop", "trio"]
SHAPES = [
    "positional",
    "keyword",
    "attr-two-args",
    "sequential",
    "subscriber",
    "tool-limit",
]


def _load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) as a module."""
    return load_script(BENCHMARKS / f"{name}.py", "plait_bench")


def _run_main(
    module: ModuleType,
    argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> tuple[str, Any]:
    """Run ``module.main(argv)`` with ``--json``: what it printed, what it wrote."""
    out = tmp_path / "results.json"
    assert module.main([*argv, "--json", str(out)]) == 0
    return capsys.readouterr().out, json.loads(out.read_text())


@pytest.fixture(scope="module")
def overhead() -> ModuleType:
    return _load("overhead")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_overhead_runs(overhead: ModuleType, backend: str, shape: str) -> None:
    result = overhead.measure_overhead(backend, shape, items=200, repeat=2)
    assert result["backend"] == backend
    assert result["shape"] == shape
    assert len(result["baseline_samples_us"]) == 2
    assert len(result["plait_samples_us"]) == 2
    assert result["baseline_us"] > 0
    assert result["plait_us"] > 0
    assert result["ratio"] == pytest.approx(result["plait_us"] / result["baseline_us"])
    assert result["cpu_ratio"] > 0
    assert result["passed"] == (result["ratio"] <= overhead.TARGET_RATIO)
    if shape == "subscriber":
        assert result["plait_events_per_item"] >= 2
    else:
        assert result["plait_events_per_item"] is None
    assert "plait us" in overhead.overhead_table([result])


def test_every_shape_is_smoke_tested(overhead: ModuleType) -> None:
    assert list(overhead.SHAPES) == SHAPES


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_runs_in_process(overhead: ModuleType, backend: str) -> None:
    pytest.importorskip("psutil")
    report = overhead.memory_in_process(backend, items=500)
    assert report["items"] == 500
    assert report["rss_peak_mb"] >= report["rss_before_mb"] > 0
    assert report["growth_mb"] >= 0


def test_memory_tracemalloc(overhead: ModuleType) -> None:
    report = overhead.memory_in_process("asyncio", items=500, use_tracemalloc=True)
    assert report["tracemalloc_peak_mb"] > 0


def test_script_end_to_end(
    overhead: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psutil")
    argv = ["--items", "300", "--repeat", "1", "--memory-items", "300"]
    argv += ["--backends", "trio"]
    printed, data = _run_main(overhead, argv, tmp_path, capsys)
    assert "ratio" in printed
    assert "growth MB" in printed
    assert [r["shape"] for r in data["overhead"]] == SHAPES
    assert data["memory"][0]["backend"] == "trio"
    assert data["memory"][0]["items"] == 300


def test_script_shapes_and_check(
    overhead: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "results.json"
    argv = ["--items", "200", "--repeat", "1", "--no-memory", "--backends", "asyncio"]
    argv += ["--shapes", "keyword,sequential", "--json", str(out)]
    # The verdicts come from TARGET_RATIO; pin it so the exit code is known.
    monkeypatch.setattr(overhead, "TARGET_RATIO", 0.0)
    assert overhead.main(argv) == 0
    assert overhead.main([*argv, "--check"]) == 1
    assert "FAIL" in capsys.readouterr().out
    monkeypatch.setattr(overhead, "TARGET_RATIO", float("inf"))
    assert overhead.main([*argv, "--check"]) == 0
    data = json.loads(out.read_text())
    assert [r["shape"] for r in data["overhead"]] == ["keyword", "sequential"]
    assert data["memory"] == []


def test_script_rejects_unknown_shape(overhead: ModuleType) -> None:
    with pytest.raises(SystemExit):
        overhead.main(["--shapes", "keyword,nope", "--no-memory"])


def test_cancel_latency_script_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--pending", "20", "--repeat", "1"]
    printed, data = _run_main(_load("cancel_latency"), argv, tmp_path, capsys)
    assert "| backend | step | blocked in |" in printed
    results = data["results"]
    cases = {(r["backend"], r["step"], r["scenario"]) for r in results}
    assert cases == {
        (b, step, scenario)
        for b in BACKENDS
        for step in ("Parallel", "MapReduce")
        for scenario in ("sleep", "rate-limit", "limiter", "backoff")
    }
    for r in results:
        assert r["pending"] == 20
        assert len(r["samples_ms"]) == 1
        assert r["median_ms"] > 0
        assert r["baseline_ms"] > 0


def test_agents_script_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--agents", "30", "--sleep", "0.001", "--batch", "10", "--repeat", "1"]
    printed, rows = _run_main(_load("agents"), argv, tmp_path, capsys)
    assert "| contender | ideal s |" in printed
    names = {r["contender"] for r in rows}
    assert "ThreadPoolExecutor" in names
    for b in BACKENDS:
        assert {
            f"plait sync, {b}",
            f"plait async, {b}",
            f"plait defaults, {b}",
        } <= names
    for r in rows:
        assert r["median_s"] > 0
        assert r["ratio"] == pytest.approx(r["median_s"] / r["ideal_s"])


def test_backpressure_script_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--requests", "40", "--warmup", "0.1", "--overhead-requests", "20"]
    argv += ["--repeat", "1", "--backends", "trio"]
    printed, data = _run_main(_load("backpressure"), argv, tmp_path, capsys)
    assert "| backend | contender |" in printed
    assert "bare httpx us/request" in printed
    assert [r["contender"] for r in data["quota"]] == [
        "plait Adaptive",
        "naive retry loop",
    ]
    for r in data["quota"]:
        assert r["backend"] == "trio"
        assert r["seen"] >= 40
        assert 0 <= r["share_429"] <= 1
    assert [r["transport"] for r in data["overhead"]] == ["loopback", "in process"]
    for overhead in data["overhead"]:
        assert overhead["bare_us"] > 0
        assert overhead["plait_us"] > 0
        assert len(overhead["plait_samples_us"]) == 1


def test_journal_benchmark_runs(postgres_dsn: str) -> None:
    journal = _load("journal")
    result = journal.measure("asyncio", items=200, repeat=1, dsn=postgres_dsn)
    rows = {row["what"]: row for row in result["rows"]}
    assert set(rows) == {
        "off",
        "replay",
        "sqlite batch",
        "sqlite sync",
        "postgres batch",
    }
    assert all(row["us_per_call"] > 0 for row in rows.values())
    assert set(journal.TARGETS) <= set(rows)
    assert all("passed" in rows[name] for name in journal.TARGETS)
    assert "postgres batch" in journal.table(result)


def test_remote_benchmark_runs() -> None:
    need_module("distributed")
    remote = _load("remote")
    assert remote.main(["--quick", "--elements", "512"]) == 0


def test_remote_journal_benchmark_runs(postgres_dsn: str) -> None:
    need_module("distributed")
    module = _load("remote_journal")
    argv = ["--quick", "--elements", "512", "--postgres", postgres_dsn]
    assert module.main(argv) == 0


def test_shared_limits_script_end_to_end(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = _load("shared_limits")
    argv = ["--quick", "--url", redis_url, "--calls", "60", "--processes", "2"]
    argv += ["--tasks", "2", "--seconds", "1"]
    printed, data = _run_main(module, argv, tmp_path, capsys)
    assert "admit+release us" in printed
    assert "all scripts per call" in printed
    assert [(r["backend"], r["road"]) for r in data["uncontended"]] == [
        *((b, road) for b, road, _ in module.ROADS),
        *module.FLOORS,
    ]
    for row in data["uncontended"]:
        assert row["admit_release_us"] > 0
    load = data["contended"]
    assert load["calls"] > 0
    assert load["peak_in_flight"] <= module.CONCURRENCY
