"""The peer suite's harness works: plait and the floor at tiny sizes.

No peer venv is needed; the peers themselves run only in
``tox -e bench-peers``. Timings are not asserted, only that every job ran,
was checked, and reached the table.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from _scripts import BENCHMARKS, load_script

PEERS = BENCHMARKS / "peers"


def _load(name: str) -> ModuleType:
    """Import ``benchmarks/peers/<name>.py`` (not a package) as a module."""
    return load_script(PEERS / f"{name}.py", "plait_peers")


@pytest.fixture(scope="module")
def run() -> ModuleType:
    return _load("run")  # puts benchmarks/peers on sys.path for the rest


def test_plait_and_floor_end_to_end(run: ModuleType, tmp_path: Path) -> None:
    out, md = tmp_path / "rows.json", tmp_path / "peers.md"
    argv = ["--smoke", "--systems", "plait,floor", "--repeat", "1"]
    argv += ["--backends", "asyncio", "--json", str(out), "--markdown", str(md)]
    assert run.main(argv) == 0
    rows: list[dict[str, Any]] = json.loads(out.read_text())["rows"]
    jobs = {"blocking", "async", "fanout", "rate", "failfast", "memory"}
    for system in ("plait", "floor"):
        mine = [r for r in rows if r["system"] == system]
        assert {r["job"] for r in mine} == jobs
        for r in mine:
            assert r["backend"] == "asyncio"
            assert not r.get("na"), r
            assert r["wrong"] is None, r
            assert len(r["samples"]) == 1
            assert r["vs_floor"] is not None
    plait_rows = [r for r in rows if r["system"] == "plait"]
    # A median of 0 (no RSS growth at smoke sizes) has no ratio.
    assert all(r["vs_plait"] == pytest.approx(1.0) for r in plait_rows if r["median"])
    assert {r["setting"] for r in plait_rows if r["job"] == "blocking"} == {
        "defaults",
        "width 8",
    }
    text = md.read_text()
    assert text.count("| system | setting | backend |") == len(jobs)
    assert "| plait | defaults | asyncio |" in text


def test_a_peer_without_its_venv_is_not_applicable(
    run: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run.setup_envs, "ENVS", tmp_path)
    rows, versions = run.run_system("aiometer", ["blocking", "memory"], None)
    assert versions == {}
    assert [r["job"] for r in rows] == ["blocking", "memory"]
    assert all("setup_envs.py" in r["na"] for r in rows)
    (tmp_path / "aiometer").mkdir()
    (tmp_path / "aiometer" / "FAILED").write_text("pip install failed: no wheel")
    rows, _ = run.run_system("aiometer", ["rate"], None)
    assert rows[0]["na"] == "pip install failed: no wheel"


def test_wrong_answers_are_named(run: ModuleType) -> None:
    jobs = sys.modules["_jobs"]
    expected = jobs.expected_outputs(3)
    assert jobs.check_outputs(expected, expected) is None
    assert jobs.check_outputs(expected[::-1], expected) == "results out of input order"
    assert jobs.check_outputs(expected[:2], expected) == "2 results for 3 inputs"
    agent = jobs.AsyncAgent(0, 0.0, asyncio.sleep)
    coroutines = [agent.run(jobs.TASK) for _ in range(3)]
    assert "un-awaited coroutines" in jobs.check_outputs(coroutines, expected)
    assert jobs.check_sum(jobs.expected_sum(10), 10) is None
    assert jobs.check_sum(["<coroutine object f at 0x1>"], 10) == (
        "coroutines returned as strings"
    )


def test_siblings_left_running_are_wrong(run: ModuleType) -> None:
    jobs = sys.modules["_jobs"]
    siblings = jobs.Siblings(2)
    siblings.enter()
    siblings.enter()
    error = siblings.fail()
    siblings.caught(RuntimeError("wrapped"))
    assert siblings.verdict() == "2 siblings still running at the error"
    siblings.leave()
    siblings.ran_out()
    siblings.leave()
    assert siblings.verdict() == "1 siblings ran to their end, not stopped"
    clean = jobs.Siblings(0)
    clean.fail()
    group = ExceptionGroup("group", [error])
    clean.caught(group)
    assert clean.verdict() is None


def test_rate_windows(run: ModuleType) -> None:
    jobs = sys.modules["_jobs"]
    log = jobs.StartLog()
    log.starts = [0.5] * 10 + [1.0 + i / 10 for i in range(20)]
    assert log.max_in_window() == 10 + 5  # [0.5, 1.5)
    assert jobs.check_rate(log, jobs.expected_sum(30), 30, 10) is None
    assert "in one 1 s window" in jobs.check_rate(log, jobs.expected_sum(30), 30, 5)


def test_report_marks_wrong_rows(run: ModuleType) -> None:
    report = sys.modules["report"]
    base = {"job": "async", "setting": "defaults", "backend": "asyncio", "extra": []}
    rows = [
        base | {"system": "plait", "samples": [0.2], "wrong": None},
        base | {"system": "floor", "samples": [0.1], "wrong": None},
        base | {"system": "swarms", "samples": [0.01], "wrong": "coroutines"},
        base | {"system": "agentos", "samples": [], "wrong": None, "na": "no way"},
    ]
    report.add_ratios(rows)
    assert rows[1]["vs_plait"] == pytest.approx(0.5)
    assert rows[2]["vs_plait"] is None
    text = report.table(rows, "async")
    assert (
        "| swarms | defaults | asyncio | (10.0 ms) | - | - | wrong: coroutines |"
        in text
    )
    assert "n/a: no way" in text


def test_write_docs_keeps_the_prose(run: ModuleType, tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nintro\n")
    run.write_docs("first\n", page)
    run.write_docs("second\n", page)
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n")
    assert "second\n" in text
    assert "first" not in text
    assert text.count(run.START) == text.count(run.END) == 1
