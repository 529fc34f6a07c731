"""The ``plait`` command line, in-process (``plait._cli.main``) and as a process.

The workflow files are in ``tests/cli/``, with the tools they name by import
path in ``tests/cli/cli_tools.py``: the command puts a file's directory first
on ``sys.path`` (last with ``--imports``), which the subprocess tests check
by running from elsewhere.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import plait
from plait._cli import ExitCode, main
from plait._cli._display import headline, step_status
from plait._cli._json import to_json
from plait._cli._tracker import RunTracker

HERE = Path(__file__).resolve().parent / "cli"
WORDS = str(HERE / "words.yaml")
ECHO = str(HERE / "echo.yaml")
COLLECT = str(HERE / "collect.yaml")
FAILING = str(HERE / "failing.yaml")
UNKNOWN_TOOL = str(HERE / "unknown_tool.yaml")
INVALID = str(HERE / "invalid.yaml")
SLOW = str(HERE / "slow.yaml")
TEXTS = ("-i", 'texts=["a b c", "d e", "f"]')
BACKENDS = ["asyncio", "uvloop", "trio"]
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1"}


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def plait_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plait", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=60,
    )


# -- run ----------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_run_in_process(capsys: pytest.CaptureFixture[str], backend: str) -> None:
    code, out, err = run_main(capsys, "run", WORDS, *TEXTS, "--backend", backend)
    assert code == ExitCode.OK, err
    assert json.loads(out) == {"total": 6, "first": "A B C"}
    # not a terminal: plain progress and a plain summary on stderr
    assert f"plait: running {WORDS} on {backend}" in err
    assert "plait: finished in" in err
    assert re.search(r"count_words +3 +0 +0 ", err), err
    assert re.search(r"shout +1 +0 +0 ", err), err


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_as_a_process(tmp_path: Path, backend: str) -> None:
    # From another directory: the file's own directory makes cli_tools importable.
    proc = plait_process("run", WORDS, *TEXTS, "--backend", backend, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"total": 6, "first": "A B C"}
    assert "plait: finished in" in proc.stderr


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("2.5", 2.5),
        ("true", True),
        ("null", None),
        ('"5"', "5"),
        ("hello world", "hello world"),
        ("", ""),
        ("[1, 2", "[1, 2"),
        ('{"a": [1, "b"]}', {"a": [1, "b"]}),
        ("x=y", "x=y"),
    ],
)
def test_input_values_are_json_or_text(
    capsys: pytest.CaptureFixture[str], text: str, value: Any
) -> None:
    code, out, err = run_main(capsys, "run", ECHO, "-i", f"value={text}", "-q")
    assert code == ExitCode.OK, err
    assert json.loads(out) == value


def test_inputs_file_and_overrides(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"texts": ["one two", "three"]}))
    code, out, err = run_main(capsys, "run", WORDS, "--inputs", str(inputs), "-q")
    assert code == ExitCode.OK, err
    assert json.loads(out) == {"total": 3, "first": "ONE TWO"}
    # -i wins over --inputs
    code, out, err = run_main(
        capsys, "run", WORDS, "--inputs", str(inputs), "-i", 'texts=["x"]', "-q"
    )
    assert code == ExitCode.OK, err
    assert json.loads(out) == {"total": 1, "first": "X"}


def test_inputs_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"value": {"a": 1}}'))
    code, out, err = run_main(capsys, "run", ECHO, "--inputs", "-", "-q")
    assert code == ExitCode.OK, err
    assert json.loads(out) == {"a": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "texts"], "expected KEY=VALUE"),
        (["-i", "no way=1"], "expected KEY=VALUE"),
        ([], "missing input 'texts'"),
        ([*TEXTS, "-i", "extra=1"], "unexpected input 'extra'"),
        (["--inputs", "missing.json"], "cannot read --inputs missing.json"),
        (["--max-concurrency", "0"], "expected an int >= 1"),
        (["--interval", "0"], "expected a number > 0, got '0'"),
        (["--backend", "curio"], "invalid choice"),
        (["--imports", "my-app"], "expected a module name such as 'myapp.tools'"),
        (["--imports", "x", "--no-imports"], "not allowed with argument"),
    ],
)
def test_usage_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run_main(capsys, "run", WORDS, *args)
    assert code == ExitCode.USAGE
    assert message in err
    assert out == ""
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [("[1, 2]", "must hold a JSON object"), ("{nope", "is not valid JSON")],
)
def test_bad_inputs_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, message: str
) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(content)
    code, _, err = run_main(capsys, "run", WORDS, "--inputs", str(inputs))
    assert code == ExitCode.USAGE
    assert message in err


def test_output_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    code, out, err = run_main(capsys, "run", WORDS, *TEXTS, "--output", str(target))
    assert code == ExitCode.OK, err
    assert out == ""
    assert json.loads(target.read_text()) == {"total": 6, "first": "A B C"}


def test_quiet_prints_only_the_result(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "run", WORDS, *TEXTS, "--quiet")
    assert code == ExitCode.OK
    assert err == ""
    assert json.loads(out) == {"total": 6, "first": "A B C"}


def test_plain_progress_when_not_a_terminal(tmp_path: Path) -> None:
    proc = plait_process("run", SLOW, "-i", "n=24", "--interval", "0.05", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == sum(range(24))
    err = proc.stderr
    assert err.startswith(f"plait: running {SLOW} on ")
    # periodic reports: the run's line, then one line per running step, with
    # the map's items done out of the length of its input
    assert re.search(r"^plait: [\d.]+s, \d+ calls?, \d+ running", err, re.M), err
    assert re.search(
        r"^    steps\[1\] map_reduce nap: \d+/24 items, [\d.]+/s, 0 failed, "
        r"0 retries, 0 waits, ETA ",
        err,
        re.M,
    ), err
    assert "plait: finished in" in err
    assert re.search(r"nap +24 +0 +0 +0 +0 ", err), err


def test_collected_failures_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "run", COLLECT, "-i", 'texts=["ok", "bad", "x"]')
    assert code == ExitCode.FAILURES == 3
    assert json.loads(out) == [
        "ok",
        {"failure": {"path": "map[1]", "error": "ValueError: bad text: 'bad'"}},
        "x",
    ]
    assert "1 failure collected" in err
    assert "map[1]: ValueError: bad text: 'bad'" in err


def test_failed_run_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "run", FAILING)
    assert code == ExitCode.FAILED
    assert out == ""
    assert "Traceback" not in err
    assert err.rstrip().splitlines()[-1] == (
        "plait: error: step steps[1] failed: ValueError: bad text: 'bad'"
    )
    # the summary says what finished before the failure
    assert "steps[0] call check: done in" in err
    assert "steps[1] call check: failed after" in err


def test_failed_run_with_debug(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "run", FAILING, "--debug")
    assert code == ExitCode.FAILED
    assert "Traceback (most recent call last)" in err
    assert "ValueError: bad text: 'bad'" in err
    assert err.rstrip().splitlines()[-1].startswith("plait: error: step steps[1]")


def test_unknown_tool_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "run", UNKNOWN_TOOL)
    assert code == ExitCode.FAILED
    assert "plait: error: unknown tool 'fetch'" in err
    assert "import path" in err
    assert "Traceback" not in err


def test_unknown_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    for command in ("run", "show"):
        code, out, err = run_main(capsys, command, str(missing))
        assert code == ExitCode.FAILED
        assert err == f"plait: error: no such file: {missing}\n"
    code, out, err = run_main(capsys, "validate", str(missing))
    assert code == ExitCode.FAILED
    assert out == f"{missing}: no such file: {missing}\n"


def test_invalid_file_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "run", INVALID)
    assert code == ExitCode.FAILED
    assert f"invalid workflow in {INVALID}: 4 errors" in err
    assert "Traceback" not in err


def test_module_next_to_the_file_is_importable(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "here_tools.py").write_text(
        "def twice(x):\n    return 2 * x\n"
    )
    flow = tmp_path / "flows" / "twice.yaml"
    flow.write_text('kind: call\ntool: "here_tools:twice"\nargs: [21]\n')
    proc = plait_process("run", str(flow), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 42


def test_sys_path_is_restored(capsys: pytest.CaptureFixture[str]) -> None:
    before = list(sys.path)
    run_main(capsys, "run", WORDS, *TEXTS, "-q")
    assert sys.path == before
    run_main(capsys, "run", WORDS, *TEXTS, "-q", "--imports", "cli_tools")
    assert sys.path == before


# -- --imports: files not trusted as code -------------------------------------
def test_run_with_imports_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(
        capsys, "run", ECHO, "-i", "value=3", "-q", "--imports", "cli_tools"
    )
    assert code == ExitCode.OK, err
    assert json.loads(out) == 3


@pytest.mark.parametrize(
    "option", [["--imports", "json", "--imports", "os"], ["--no-imports"]]
)
def test_run_refuses_other_imports_before_running(
    capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    code, out, err = run_main(capsys, "run", ECHO, "-i", "value=3", *option)
    assert code == ExitCode.FAILED
    assert out == ""
    assert "line 4, tool: import path 'cli_tools:echo' refused" in err
    assert "Traceback" not in err


def test_validate_with_imports(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "validate", ECHO, WORDS, "--imports", "json")
    assert code == ExitCode.FAILED
    lines = out.splitlines()
    assert lines[0] == (
        f"{ECHO}:4: tool: import path 'cli_tools:echo' refused: module "
        "'cli_tools' is not allowed; the allowed imports are json"
    )
    assert lines[-1] == "2 files checked, 2 with problems"
    code, out, _ = run_main(capsys, "validate", ECHO, "--no-imports")
    assert code == ExitCode.FAILED
    assert out.endswith("this document may not import anything\n")
    code, out, _ = run_main(capsys, "validate", ECHO, "--imports", "cli_tools")
    assert (code, out) == (ExitCode.OK, f"{ECHO}: ok\n")


def test_show_with_imports(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "show", ECHO, "--no-imports")
    assert code == ExitCode.FAILED
    assert "refused" in err


def test_with_imports_the_files_directory_comes_last(tmp_path: Path) -> None:
    # A module next to an untrusted file cannot stand in for an installed one
    # (colorsys: a stdlib module that plait does not import itself).
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "colorsys.py").write_text("def hls_to_rgb(*a):\n    return 'shadow'\n")
    (flows / "here_tools.py").write_text("def twice(x):\n    return 2 * x\n")
    flow = flows / "color.yaml"
    flow.write_text('kind: call\ntool: "colorsys:hls_to_rgb"\nargs: [0, 0, 0]\n')
    proc = plait_process("run", str(flow), "-q", "--imports", "colorsys", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [0, 0, 0]
    # Without --imports the file is trusted as code: its directory comes first.
    proc = plait_process("run", str(flow), "-q", cwd=tmp_path)
    assert json.loads(proc.stdout) == "shadow"
    # A module next to the file still imports when it is allowed.
    twice = flows / "twice.yaml"
    twice.write_text('kind: call\ntool: "here_tools:twice"\nargs: [21]\n')
    proc = plait_process(
        "run", str(twice), "-q", "--imports", "here_tools", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 42


# -- the live display ---------------------------------------------------------
def test_live_display_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    import plait._cli._run as run_module

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    monkeypatch.setattr(run_module, "_rich_console", lambda: console)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, out, err = run_main(capsys, "run", SLOW, "-i", "n=12", "--interval", "0.02")
    assert code == ExitCode.OK, err
    assert json.loads(out) == sum(range(12))
    shown = screen.getvalue()
    assert "plait slow" in shown  # the live headline
    assert "map_reduce nap" in shown
    assert "finished in" in shown
    assert re.search(r"nap +12 +0 ", shown), shown


def test_without_rich_the_display_is_plain(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, _, err = run_main(capsys, "run", WORDS, *TEXTS)
    assert code == ExitCode.OK, err
    assert 'pip install "plait[cli]"' in err
    assert "plait: finished in" in err


def test_the_core_does_not_import_rich(tmp_path: Path) -> None:
    code = (
        "import sys, plait, plait._cli\n"
        "plait.run(plait.Call(len, [1, 2]))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
        timeout=60,
    )
    assert proc.stdout.strip() == "[]", proc.stderr


# -- Ctrl-C -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_cancels_and_sums_up(tmp_path: Path, backend: str) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "plait", "run", SLOW, "-i", "n=400"),
            *("--plain", "--interval", "0.1", "--backend", backend),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=ENV,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        # Wait until the map has finished some items (however loaded the
        # machine is), and for about half a second of running.
        started = None
        deadline = time.monotonic() + 30
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "".join(seen)
            seen.append(line)
            if started is None and line.startswith("plait: running"):
                started = time.monotonic()
            if re.search(r"map_reduce nap: [1-9]\d*/400 items", line):
                break
        assert started is not None
        time.sleep(max(0.0, started + 0.5 - time.monotonic()))
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        took = time.monotonic() - sent
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while (line := lines.get_nowait()) is not None:
        seen.append(line)
    err = "".join(seen)
    assert proc.returncode == ExitCode.INTERRUPTED == 130, err
    assert took < 3.0, err
    assert "Traceback" not in err
    assert proc.stdout is not None
    assert proc.stdout.read() == ""
    # the summary says what finished and what was cancelled
    assert re.search(r"^plait: interrupted after [\d.]+s: \d+ calls", err, re.M), err
    assert re.search(r"steps\[0\] call numbers: done in", err), err
    done = re.search(r"steps\[1\] map_reduce nap: (\d+)/400 items, cancelled", err)
    assert done is not None, err
    assert 0 < int(done.group(1)) < 400
    assert re.search(r"cancelled \d+ calls? still running", err), err
    assert err.rstrip().endswith("plait: interrupted")


# -- validate, show, schema ---------------------------------------------------
def test_validate_lists_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "validate", INVALID)
    assert code == ExitCode.FAILED
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{INVALID}:3: over: '${{items' is not a variable")
    assert lines[1].startswith(f"{INVALID}:6: map.tool: cannot import")
    assert lines[2] == (
        f"{INVALID}:8: map.retry.attempts: Retry.attempts must be an int >= 1, got 0"
    )
    assert lines[3].startswith(
        f"{INVALID}:9: max_concurency: unknown key 'max_concurency'"
    )
    assert "did you mean 'max_concurrency'?" in lines[3]


def test_validate_several_files(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "validate", WORDS, SLOW)
    assert code == ExitCode.OK
    assert out.splitlines() == [
        f"{WORDS}: ok",
        f"{SLOW}: ok",
        "2 files checked, 0 with problems",
    ]
    code, out, _ = run_main(capsys, "validate", WORDS, INVALID)
    assert code == ExitCode.FAILED
    assert out.splitlines()[-1] == "2 files checked, 1 with problems"


def test_validate_as_a_process(tmp_path: Path) -> None:
    proc = plait_process("validate", INVALID, WORDS, cwd=tmp_path)
    assert proc.returncode == 1
    assert f"{INVALID}:9: max_concurency:" in proc.stdout
    assert f"{WORDS}: ok" in proc.stdout
    assert proc.stderr == ""


def test_show_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "show", WORDS)
    assert code == ExitCode.OK
    assert out == (
        "workflow: word count\n"
        "description: count the words of some texts, and shout the first one\n"
        "inputs: texts\n"
        "parallel\n"
        "  steps.total: map_reduce over ${texts}  reduce=operator:add initial=0 "
        "max_concurrency=4\n"
        "    map: call count_words(${item})\n"
        "  steps.first: call shout(${texts.0})\n"
    )


def test_show_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    flow = tmp_path / "options.yaml"
    flow.write_text(
        "kind: sequential\n"
        "timeout: 30\n"
        "steps:\n"
        "  - {kind: call, tool: 'builtins:len', args: [[1, 2]], name: n, timeout: 2,"
        " retry: {attempts: 5}}\n"
        "  - kind: map_reduce\n"
        "    over: {fn: 'builtins:range', args: ['${n}']}\n"
        "    map: {kind: call, tool: 'builtins:str', args: {object: '${x}'}}\n"
        "    item: x\n"
        "    ordered: false\n"
        "    on_error: collect\n"
    )
    code, out, _ = run_main(capsys, "show", str(flow))
    assert code == ExitCode.OK
    assert out == (
        "sequential  timeout=30\n"
        "  steps[0]: call len([1, 2])  name=n timeout=2 retry=retry(attempts=5)\n"
        "  steps[1]: map_reduce over builtins:range(${n}) as x  ordered=false "
        "on_error=collect\n"
        "    map: call str(object=${x})\n"
    )


def test_show_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "show", "--mermaid", SLOW)
    assert code == ExitCode.OK
    assert out.splitlines() == [
        "flowchart TD",
        '  n0("sequential")',
        '  n1["steps[0]: call<br/>numbers(${n})<br/>name=xs"]',
        "  n0 -->|1| n1",
        '  n2[["steps[1]: map_reduce<br/>over ${xs}<br/>reduce=operator:add '
        'max_concurrency=4"]]',
        '  n3["map: call<br/>nap(${item})<br/>tool.concurrency_limit=4"]',
        "  n2 -->|map| n3",
        "  n0 -->|2| n2",
    ]


def test_show_as_a_process(tmp_path: Path) -> None:
    proc = plait_process("show", "--mermaid", WORDS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("flowchart TD\n")
    assert '{{"parallel"}}' in proc.stdout


def test_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "schema")
    assert code == ExitCode.OK
    assert json.loads(out) == plait.json_schema()


def test_help_version_and_bad_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--help")
    assert code == ExitCode.OK
    assert "130  interrupted" in out
    code, out, _ = run_main(capsys, "--version")
    assert code == ExitCode.OK
    assert out == f"plait {plait.__version__}\n"
    assert run_main(capsys, "frobnicate")[0] == ExitCode.USAGE
    assert run_main(capsys)[0] == ExitCode.USAGE
    assert run_main(capsys, "run")[0] == ExitCode.USAGE


# -- the parts ----------------------------------------------------------------
def test_progress_of_a_map_from_events() -> None:
    workflow = plait.Workflow(plait.MapReduce(plait.Var("xs"), len), inputs=["xs"])
    tracker = RunTracker(workflow)
    root = next(iter(tracker))
    measured = tracker.instrument(workflow, ["xs"])
    seen: list[plait.Event] = []
    engine = plait.Engine()
    engine.subscribe(seen.append)
    anyio.run(engine.run, measured, {"xs": ["ab"] * 10})
    assert root.total == 10  # read from the input by the instrumented `over`

    tracker = RunTracker(workflow)
    root = next(iter(tracker))
    root.total = 10
    tracker(plait.Event(plait.EventKind.STEP_STARTED, "", time=0.0, step="MapReduce"))
    for i in range(4):
        tracker(plait.Event(plait.EventKind.STEP_FINISHED, f"map[{i}]", time=1.0))
    tracker(plait.Event(plait.EventKind.STEP_FAILED, "map[4]", time=1.0))
    kw: dict[str, Any] = {"tool": "len", "time": 1.0}
    tracker(plait.Event(plait.EventKind.CALL_RETRIED, "map[5]", attempt=1, **kw))
    tracker(plait.Event(plait.EventKind.CALL_RATE_LIMITED, "map[6]", attempt=1, **kw))
    assert step_status(root, now=5.0) == (
        "5/10 items, 1.0/s, 1 failed, 1 retry, 1 wait, ETA 5.0s"
    )
    assert tracker.retries == 1
    assert tracker.waits == 1


def test_progress_shows_push_backs_and_adaptive_limits() -> None:
    tracker = RunTracker(plait.Workflow(plait.Call("api")))
    assert "pushed back" not in headline(tracker, now=0.0)
    kw: dict[str, Any] = {"tool": "api", "time": 1.0, "attempt": 1}
    tracker(plait.Event(plait.EventKind.CALL_PUSHED_BACK, "", delay=0.5, **kw))
    tracker(plait.Event(plait.EventKind.LIMIT_CHANGED, "", limit=6, **kw))
    tracker(plait.Event(plait.EventKind.LIMIT_CHANGED, "", limit=5, **kw))
    assert tracker.pushed_back == 1
    assert tracker.limits() == {"api": 5}
    assert headline(tracker, now=0.0).endswith(", 1 pushed back, limit api=5")


def test_output_json_of_any_value() -> None:
    failure = plait.Failure(ValueError("no"), "map[2]")
    value = {
        "tuple": (1, 2),
        "set": {3},
        "nan": float("nan"),
        "path": Path("a/b"),
        "failure": failure,
        "object": object,
        1: b"bytes",
    }
    assert json.loads(to_json(value)) == {
        "tuple": [1, 2],
        "set": [3],
        "nan": "nan",
        "path": str(Path("a/b")),
        "failure": {"failure": {"path": "map[2]", "error": "ValueError: no"}},
        "object": "<class 'object'>",
        "1": "bytes",
    }
