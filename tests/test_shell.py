"""plait.tools.shell: real subprocesses, captured, capped, limited, never orphaned."""

from __future__ import annotations

import os
import pickle
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import pytest

import plait
from plait.tools import CommandFailed, ShellResult, run_shell, shell, shell_tool

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups"),
]

PY = shlex.quote(sys.executable)


def running(pid: int) -> bool:
    """Whether ``pid`` still runs.

    A killed process stays a zombie until its parent reaps it; a grandchild
    whose parent died belongs to PID 1, which in some containers never
    reaps. A zombie runs nothing, so it counts as gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc").is_dir():
        return True
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def wait_gone(*pids: int, within: float = 1.0) -> None:
    with anyio.move_on_after(within):
        while any(running(p) for p in pids):
            await anyio.sleep(0.02)
    alive = [p for p in pids if running(p)]
    assert not alive, f"processes still running: {alive}"


async def read_pid(path: Path) -> int:
    with anyio.fail_after(5):
        while not path.exists() or not path.read_text().strip():
            await anyio.sleep(0.01)
    return int(path.read_text())


def orphan_maker(tmp_path: Path) -> tuple[str, Path, Path]:
    """A shell that starts a background grandchild and waits for it."""
    shell_pid, child_pid = tmp_path / "shell.pid", tmp_path / "child.pid"
    command = (
        f"echo $$ > {shlex.quote(str(shell_pid))}; "
        f"sleep 30 & echo $! > {shlex.quote(str(child_pid))}; wait"
    )
    return command, shell_pid, child_pid


# -- running and capturing ----------------------------------------------------


async def test_captures_stdout_stderr_and_status() -> None:
    result = await run_shell("echo out; echo err >&2; exit 3")
    assert isinstance(result, ShellResult)
    assert result.returncode == 3
    assert not result.ok
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.truncated is False
    assert 0 < result.duration < 10
    assert result.command == "echo out; echo err >&2; exit 3"


async def test_a_list_runs_without_a_shell() -> None:
    result = await run_shell(["printf", "%s|", "a b", "$HOME", "*"])
    assert result.ok
    assert result.stdout == "a b|$HOME|*|"
    assert result.command == ("printf", "%s|", "a b", "$HOME", "*")


async def test_input_goes_to_stdin_and_stdin_is_otherwise_empty() -> None:
    assert (await run_shell("tr a-z A-Z", input="hello")).stdout == "HELLO"
    assert (await run_shell(["cat"], input=b"\x00raw")).stdout == "\x00raw"
    # Without input a command reading stdin gets end-of-file, never a hang.
    with anyio.fail_after(5):
        assert (await run_shell("cat")).stdout == ""


async def test_output_is_capped_and_marked() -> None:
    result = await run_shell(
        "head -c 100000 /dev/zero | tr '\\0' x; echo oops >&2", max_output=1000
    )
    assert result.ok
    assert result.truncated is True
    kept, marker = result.stdout[:1000], result.stdout[1000:]
    assert kept == "x" * 1000
    assert "truncated" in marker
    assert "99000 more bytes" in marker
    assert result.stderr == "oops\n"


async def test_output_beyond_the_cap_is_drained_so_the_command_finishes() -> None:
    # Far more than a pipe buffer: a writer that nobody read would block.
    with anyio.fail_after(10):
        result = await run_shell("head -c 3000000 /dev/zero", max_output=10)
    assert result.ok
    assert result.truncated
    assert result.stdout.startswith("\0" * 10 + "\n[plait")


async def test_no_cap_with_max_output_none() -> None:
    result = await run_shell("head -c 200000 /dev/zero", max_output=None)
    assert len(result.stdout) == 200000
    assert not result.truncated


# -- working directory and environment ----------------------------------------


async def test_each_call_runs_in_a_temp_dir_removed_afterwards() -> None:
    first = await run_shell("pwd; echo data > made-here.txt; ls")
    second = await run_shell("pwd")
    dir1, dir2 = first.stdout.splitlines()[0], second.stdout.strip()
    assert first.stdout.splitlines()[1] == "made-here.txt"
    assert dir1 != dir2
    for d in (dir1, dir2):
        assert Path(d).name.startswith("plait-shell-")
        assert Path(d).parent.resolve() == Path(tempfile.gettempdir()).resolve()
        assert not Path(d).exists()


async def test_the_temp_dir_is_removed_after_a_cancellation(tmp_path: Path) -> None:
    where = tmp_path / "where"
    with anyio.move_on_after(0.3):
        await run_shell(f"pwd > {shlex.quote(str(where))}; touch x; sleep 30")
    workdir = Path(where.read_text().strip())
    assert workdir.name.startswith("plait-shell-")
    assert not workdir.exists()


async def test_cwd_is_respected_and_kept(tmp_path: Path) -> None:
    result = await run_shell("pwd; echo data > out.txt", cwd=tmp_path)
    assert Path(result.stdout.strip()).resolve() == tmp_path.resolve()
    assert (tmp_path / "out.txt").read_text() == "data\n"
    result = await run_shell(["ls"], cwd=str(tmp_path))
    assert result.stdout == "out.txt\n"


async def test_env_is_added_to_the_inherited_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLAIT_INHERITED", "yes")
    result = await run_shell(
        'echo "$PLAIT_INHERITED $PLAIT_GIVEN"', env={"PLAIT_GIVEN": "42"}
    )
    assert result.stdout == "yes 42\n"
    clean = await run_shell(
        'echo "${PLAIT_INHERITED-unset} $PLAIT_GIVEN"',
        env={"PLAIT_GIVEN": "42"},
        inherit_env=False,
    )
    assert clean.stdout == "unset 42\n"


# -- errors -------------------------------------------------------------------


async def test_check_raises_command_failed() -> None:
    with pytest.raises(CommandFailed) as info:
        await run_shell("echo partial; echo 'no such thing' >&2; exit 2", check=True)
    error = info.value
    assert isinstance(error, plait.PlaitError)
    assert isinstance(error, subprocess.CalledProcessError)
    assert error.returncode == 2
    assert error.stdout == error.output == "partial\n"
    assert error.stderr == "no such thing\n"
    assert "exited with 2" in str(error)
    assert "no such thing" in str(error)
    assert "check=False" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.returncode, copy.cmd, copy.stderr) == (2, error.cmd, error.stderr)
    assert str(copy) == str(error)
    # Without check the status is just reported.
    assert (await run_shell("exit 2")).returncode == 2


async def test_a_killed_command_reports_the_signal() -> None:
    result = await run_shell("kill -9 $$")
    assert result.returncode == -9
    with pytest.raises(CommandFailed, match="killed by signal 9"):
        result.check_returncode()


@pytest.mark.parametrize(
    "command", ["", "   ", [], [1, 2], None, 42], ids=lambda c: repr(c)
)
async def test_bad_commands_are_rejected(command: object) -> None:
    with pytest.raises(plait.ConfigError, match="shell: the command must"):
        await run_shell(command)  # type: ignore[arg-type]


async def test_bad_max_output_is_rejected() -> None:
    with pytest.raises(plait.ConfigError, match="max_output must be an int >= 0"):
        await run_shell("true", max_output=-1)
    with pytest.raises(plait.ConfigError, match="max_output"):
        shell_tool(max_output=True)  # type: ignore[arg-type]
    with pytest.raises(plait.ConfigError, match="concurrency_limit"):
        shell_tool(concurrency_limit=0)


async def test_a_missing_program_raises_os_error() -> None:
    with pytest.raises(FileNotFoundError):
        await run_shell(["/nonexistent/program"])
    with pytest.raises(FileNotFoundError):
        await run_shell("true", cwd="/nonexistent/directory")


# -- as a tool on an engine ----------------------------------------------------


async def test_the_ready_made_tool() -> None:
    assert isinstance(shell, plait.Tool)
    assert shell is plait.tools.shell
    assert shell.name == "shell"
    assert shell.concurrency_limit == 4
    assert shell.is_async
    engine = plait.Engine(tools=[plait.tools.shell])
    result = await engine.run(plait.Call("shell", "echo hi"))
    assert result.stdout == "hi\n"
    out = await engine.run(
        plait.Sequential(
            plait.Call("shell", ["printf", "%s", plait.Var("word")], name="r"),
            plait.Call("shell", "cat", input=plait.Var("r.stdout")),
        ),
        {"word": "relay"},
    )
    assert out.stdout == "relay"


async def test_check_true_through_the_engine_fails_the_step() -> None:
    engine = plait.Engine(tools=[shell])
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("shell", "exit 5", check=True))
    assert isinstance(info.value.error, CommandFailed)
    collected = await engine.run(
        plait.Parallel(
            plait.Call("shell", "exit 5", check=True),
            plait.Call("shell", "echo fine"),
            on_error="collect",
        )
    )
    assert isinstance(collected[0], plait.Failure)
    assert isinstance(collected[0].error, CommandFailed)
    assert collected[1].stdout == "fine\n"


async def test_variants_have_their_own_name_limits_and_defaults(
    tmp_path: Path,
) -> None:
    build = shell_tool(
        "build",
        concurrency_limit=2,
        timeout=5,
        check=True,
        max_output=4,
        cwd=tmp_path,
        env={"TARGET": "all"},
    )
    assert (build.name, build.concurrency_limit, build.timeout) == ("build", 2, 5)
    engine = plait.Engine(tools=[shell, build])
    result = await engine.run(plait.Call("build", 'echo "$TARGET-$PWD"'))
    assert result.stdout.startswith("all-")
    assert result.truncated
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("build", "false"))
    assert isinstance(info.value.error, CommandFailed)
    # A call can still override a default.
    assert (await engine.run(plait.Call("build", "false", check=False))).returncode == 1


async def test_concurrency_limit_of_four_is_respected(tmp_path: Path) -> None:
    probe = (
        f"{PY} -c 'import sys, time; s = time.time(); time.sleep(0.25); "
        'open(sys.argv[1], "w").write(f"{s} {time.time()}")\' '
    )
    engine = plait.Engine(
        tools=[shell], functions=[("probe", lambda f: probe + shlex.quote(f))]
    )
    started = anyio.current_time()
    results = await engine.run(
        plait.MapReduce(
            plait.Var("files"),
            plait.Call("shell", plait.Fn("probe", plait.Var("item"))),
            max_concurrency=16,
        ),
        {"files": [str(tmp_path / f"{i}.txt") for i in range(8)]},
    )
    elapsed = anyio.current_time() - started
    assert all(r.ok for r in results), results
    edges = []
    for i in range(8):
        start, end = map(float, (tmp_path / f"{i}.txt").read_text().split())
        edges += [(start, 1), (end, -1)]
    running_now = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        running_now += step
        peak = max(peak, running_now)
    assert 2 <= peak <= 4
    # Eight commands of 0.25 s, four at a time: at least two rounds.
    assert elapsed >= 0.45


# -- no process outlives its call ----------------------------------------------


async def test_no_orphan_survives_a_timeout(tmp_path: Path) -> None:
    command, shell_pid, child_pid = orphan_maker(tmp_path)
    engine = plait.Engine(tools=[shell])
    started = anyio.current_time()
    with pytest.raises(plait.StepFailed) as info:
        await engine.run(plait.Call("shell", command, timeout=0.3))
    assert isinstance(info.value.error, plait.ToolTimeout)
    assert anyio.current_time() - started < 5
    await wait_gone(await read_pid(shell_pid), await read_pid(child_pid))


async def test_no_orphan_survives_a_timeout_of_the_tool(tmp_path: Path) -> None:
    command, shell_pid, child_pid = orphan_maker(tmp_path)
    quick = shell_tool("quick", timeout=0.3)
    with pytest.raises(plait.StepFailed) as info:
        await plait.Engine(tools=[quick]).run(plait.Call("quick", command))
    assert isinstance(info.value.error, plait.ToolTimeout)
    await wait_gone(await read_pid(shell_pid), await read_pid(child_pid))


async def test_no_orphan_survives_a_cancellation(tmp_path: Path) -> None:
    command, shell_pid, child_pid = orphan_maker(tmp_path)
    engine = plait.Engine(tools=[shell])
    with anyio.move_on_after(0.3) as scope:
        await engine.run(plait.Call("shell", command))
    assert scope.cancelled_caught
    await wait_gone(await read_pid(shell_pid), await read_pid(child_pid))


async def test_no_orphan_when_a_sibling_fails(tmp_path: Path) -> None:
    command, shell_pid, child_pid = orphan_maker(tmp_path)

    async def fail_soon() -> None:
        await anyio.sleep(0.3)
        raise RuntimeError("sibling failed")

    engine = plait.Engine(tools=[shell, fail_soon])
    with pytest.raises(plait.StepFailed, match="sibling failed"):
        await engine.run(
            plait.Parallel(plait.Call("shell", command), plait.Call("fail_soon"))
        )
    await wait_gone(await read_pid(shell_pid), await read_pid(child_pid))


async def test_direct_call_cancelled_kills_the_group(tmp_path: Path) -> None:
    command, shell_pid, child_pid = orphan_maker(tmp_path)
    with anyio.move_on_after(0.3):
        await run_shell(command)
    await wait_gone(await read_pid(shell_pid), await read_pid(child_pid))


async def test_what_a_command_leaves_behind_ends_with_it(tmp_path: Path) -> None:
    # The background sleep even holds stdout open: without the group kill
    # the call would wait 30 s for the pipe to close.
    with anyio.fail_after(5):
        result = await run_shell("sleep 30 & echo $!")
    assert result.ok
    await wait_gone(int(result.stdout))
    detached = await run_shell("sleep 30 > /dev/null 2>&1 & echo $!")
    await wait_gone(int(detached.stdout))


# -- as data -------------------------------------------------------------------


def test_the_shell_tool_in_a_workflow_file() -> None:
    loaded = plait.load(
        """
kind: call
tool: "plait.tools:shell"
args: ["echo hi"]
kwargs: {check: true}
"""
    )
    assert loaded.step == plait.Call(shell, "echo hi", check=True)
    workflow = plait.Workflow(plait.Call(shell, "echo hi"))
    assert plait.load(plait.dump(workflow)) == workflow
    assert plait.run(loaded, tools=[shell]).stdout == "hi\n"


async def test_background_jobs_die_when_a_cancellation_lands_just_after_the_command_exits(
    tmp_path: Path,
) -> None:
    # The command exits at 0.2 s but the loop is busy until 0.6 s, so the
    # caller's 0.3 s deadline is already past when the exit is noticed.
    child_pid = tmp_path / "child.pid"
    command = f"sleep 30 & echo $! > {shlex.quote(str(child_pid))}; sleep 0.2"

    async def hog_the_loop() -> None:
        await anyio.sleep(0.1)
        time.sleep(0.5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(hog_the_loop)
        with anyio.move_on_after(0.3):
            await run_shell(command)
    await wait_gone(await read_pid(child_pid))
