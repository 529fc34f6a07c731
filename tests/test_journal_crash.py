"""Durable runs across real crashes: a process killed with SIGKILL, resumed.

A subprocess (``_crash_run.py``) runs a 2,000-element MapReduce whose tool
appends its element to a side-effect file; the test kills it part way, runs
it again with the same run id, and checks that every element is there, the
output equals an uninterrupted run's, and which side effects happened
twice: with ``"sync"`` durability at most the calls in flight when the
process died, with ``"batch"`` at most those plus one commit group. The same
on a real PostgreSQL server (``postgres_dsn``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from plait._journal._writer import MAX_GROUP

SCRIPT = Path(__file__).resolve().parent / "_crash_run.py"
N = 2000
EXPECTED = [x * x for x in range(N)]
LEASE_TTL = 1.0  # what _crash_run.py gives a PostgresJournal


@pytest.fixture(params=["sqlite", "postgres"])
def journal_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the runs are kept: a SQLite file, or a real PostgreSQL server."""
    if request.param == "sqlite":
        yield str(tmp_path / "runs.db")
    else:
        yield request.getfixturevalue("postgres_dsn")


def start(
    journal_at: str,
    run_id: str,
    durability: str,
    effects: Path,
    *,
    workers: int = 10,
    kill_at: int = -1,
    pause: float = 0.002,
) -> subprocess.Popen[str]:
    args = [journal_at, run_id, durability, effects, N, workers, kill_at, pause]
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def effects_of(path: Path) -> Counter[int]:
    if not path.exists():
        return Counter()
    return Counter(int(line) for line in path.read_text().split())


def kill_when(proc: subprocess.Popen[str], effects: Path, lines: int) -> None:
    """SIGKILL ``proc`` once its side-effect file has ``lines`` lines."""
    end = time.monotonic() + 60
    while time.monotonic() < end and proc.poll() is None:
        if effects.exists() and effects.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""


def resume(
    journal_at: str, run_id: str, durability: str, effects: Path, **kw: object
) -> list[int]:
    if journal_at.startswith("postgresql://"):
        time.sleep(LEASE_TTL + 0.3)  # the dead run's lease lapses
    code, out, err = finish(start(journal_at, run_id, durability, effects, **kw))  # type: ignore[arg-type]
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_killed_part_way_resumes_to_the_same_output(
    journal_at: str, durability: str, tmp_path: Path
) -> None:
    run_id = f"kill-{uuid.uuid4().hex}"
    effects = tmp_path / "effects"
    kill_when(start(journal_at, run_id, durability, effects), effects, 600)
    before = effects_of(effects)
    assert 0 < sum(before.values()) < N
    assert resume(journal_at, run_id, durability, effects) == EXPECTED
    after = effects_of(effects)
    assert set(after) == set(range(N))
    again = sum(count - 1 for count in after.values())
    # Only calls in flight (10 workers) run again with "sync"; with "batch"
    # also those of the last group that was not committed.
    assert again <= (10 if durability == "sync" else 10 + MAX_GROUP)


def killed_inside_a_call(
    journal_at: str, durability: str, kill_at: int, tmp_path: Path
) -> tuple[Counter[int], Counter[int]]:
    """Run one call at a time, killed inside element ``kill_at``'s, then resume.

    Returns the side effects before the resume and after it.
    """
    run_id = f"{durability}-{uuid.uuid4().hex}"
    effects = tmp_path / "effects"
    code, _, _ = finish(
        start(
            journal_at, run_id, durability, effects, workers=1, kill_at=kill_at, pause=0
        )
    )
    assert code == -signal.SIGKILL
    before = effects_of(effects)
    assert resume(journal_at, run_id, durability, effects) == EXPECTED
    return before, effects_of(effects)


def test_sync_killed_inside_a_call_repeats_no_side_effect(
    journal_at: str, tmp_path: Path
) -> None:
    # Killed before the side effect of element 300: every earlier call's
    # output went on, so it was committed.
    before, after = killed_inside_a_call(journal_at, "sync", 300, tmp_path)
    assert before == Counter(range(300))
    assert after == Counter(range(N))


def test_batch_killed_inside_a_call_repeats_at_most_one_group(
    journal_at: str, tmp_path: Path
) -> None:
    _, after = killed_inside_a_call(journal_at, "batch", 1500, tmp_path)
    assert set(after) == set(range(N))
    assert sum(count - 1 for count in after.values()) <= MAX_GROUP


def test_a_second_process_on_a_running_run_id_is_refused(
    journal_at: str, tmp_path: Path
) -> None:
    run_id = f"two-{uuid.uuid4().hex}"
    effects = tmp_path / "effects"
    first = start(journal_at, run_id, "batch", effects, workers=1, pause=0.01)
    try:
        end = time.monotonic() + 60
        while not effects.exists() and time.monotonic() < end:
            time.sleep(0.01)
        code, _, err = finish(start(journal_at, run_id, "batch", tmp_path / "other"))
        assert code == 3
        assert "running in another process" in err
        assert (tmp_path / "other").read_bytes() == b""
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    # The killed run's claim lapsed (at once for SQLite, within the lease
    # for Postgres): it resumes.
    assert resume(journal_at, run_id, "batch", effects) == EXPECTED
