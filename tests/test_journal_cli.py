"""``plait run --journal --run-id`` and ``plait runs``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plait._cli._exit import ExitCode
from plait._cli._main import main

FLOW = """\
name: marks
inputs: [xs]
kind: map_reduce
over: ${xs}
map:
  kind: call
  tool: "marks:mark"
  args: ["${item}"]
"""

TOOLS = """\
import os


def mark(x: int) -> int:
    with open(os.path.join(os.path.dirname(__file__), "made"), "a") as f:
        f.write(f"{x}\\n")
    return x * 10
"""


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    (tmp_path / "marks.py").write_text(TOOLS)
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_with_a_journal_resumes_by_run_id(
    capsys: pytest.CaptureFixture[str], flow: Path, tmp_path: Path
) -> None:
    db = str(tmp_path / "runs.db")
    args = ["run", str(flow), "-i", "xs=[1,2,3]", "--journal", db, "--run-id", "cli-1"]
    code, out, err = run(capsys, *args)
    assert code == ExitCode.OK, err
    assert json.loads(out) == [10, 20, 30]
    assert "run id cli-1" in err
    code, out, err = run(capsys, *args)
    assert code == ExitCode.OK, err
    assert json.loads(out) == [10, 20, 30]
    assert sorted((tmp_path / "made").read_text().split()) == ["1", "2", "3"]

    code, out, err = run(capsys, "runs", db)
    assert code == ExitCode.OK, err
    header, line = out.splitlines()
    assert header.split()[:4] == ["RUN", "ID", "WORKFLOW", "STATUS"]
    assert line.split()[:5] == ["cli-1", "marks", "finished", "3", "0"]


def test_a_new_run_id_is_printed_and_other_inputs_refused(
    capsys: pytest.CaptureFixture[str], flow: Path, tmp_path: Path
) -> None:
    db = str(tmp_path / "runs.db")
    code, _, err = run(capsys, "run", str(flow), "-i", "xs=[1]", "--journal", db)
    assert code == ExitCode.OK, err
    run_id = err.split("run id ", 1)[1].split()[0]
    code, _, err = run(
        capsys, "run", str(flow), "-i", "xs=[2]", "--journal", db, "--run-id", run_id
    )
    assert code == ExitCode.FAILED
    assert "plait: error: run" in err
    assert "other inputs" in err


def test_runs_of_a_postgres_journal(
    capsys: pytest.CaptureFixture[str], flow: Path, postgres_dsn: str
) -> None:
    import uuid

    run_id = f"cli-{uuid.uuid4().hex}"
    args = ["run", str(flow), "-i", "xs=[4]", "--journal", postgres_dsn]
    code, out, err = run(capsys, *args, "--run-id", run_id, "-q")
    assert code == ExitCode.OK, err
    code, out, err = run(capsys, "runs", postgres_dsn)
    assert code == ExitCode.OK, err
    [line] = [x for x in out.splitlines() if x.startswith(run_id)]
    assert line.split()[1:5] == ["marks", "finished", "1", "0"]
