"""The shell tool: run a command as a subprocess that never outlives its call.

Every call starts its command in a new session (``start_new_session=True``),
so the command and everything it starts -- pipelines, background jobs,
grandchildren -- share one process group whose id is the command's pid.
Killing only the command would orphan its children: a ``sh -c 'sleep 60 &
wait'`` cancelled that way leaves the ``sleep`` running for a minute, with
the output pipes still open. So when a call is cancelled or times out, the
cleanup (shielded from the cancellation, so it always runs to the end)
sends SIGKILL to the *whole group* with :func:`os.killpg` and then waits for
the command, so that nothing it started is left behind and no zombie is
either. SIGKILL rather than SIGTERM because a cancellation must finish
promptly and certainly: a process may ignore SIGTERM, never SIGKILL.

When the command exits by itself, whatever it left running in its group is
killed the same way: a call's processes end with the call, as a task ends
with its task group. A process that starts a session of its own (``setsid``,
a daemon) leaves the group and is beyond reach, as it is for any shell.

Only AnyIO's process API is used, so the tool works on asyncio, uvloop and
Trio alike.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import attrs

from .._model._errors import CommandFailed, ConfigError
from .._model._ratelimit import RateLimit
from .._model._retry import Retry
from .._model._tools import Tool
from ._variant import make_tool

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_OUTPUT",
    "ShellResult",
    "run_shell",
    "shell",
    "shell_tool",
]

DEFAULT_MAX_OUTPUT = 1 << 20
"""Bytes of stdout, and of stderr, that a call keeps by default (1 MiB each)."""

DEFAULT_CONCURRENCY = 4
"""Commands of one shell tool running at once per engine, by default."""

SHELL = "/bin/sh"

# The cleanup after SIGKILL waits this long for the command to be reaped
# before giving up on it (a process stuck in the kernel cannot die sooner).
_REAP_TIMEOUT = 5.0

Command = str | Sequence[str | os.PathLike[str]]


@attrs.frozen
class ShellResult:
    """What a command did: its exit status and its captured output.

    Attributes:
        returncode: the exit status; ``-N`` when signal ``N`` killed it.
        stdout: standard output, decoded as UTF-8 (undecodable bytes are
            replaced), cut at ``max_output`` bytes.
        stderr: standard error, likewise.
        truncated: True when stdout or stderr was cut; the text then ends
            with a line saying how many bytes were dropped.
        duration: seconds from the start of the call to its end.
        command: the command as given: a string (run by ``/bin/sh -c``) or
            a tuple of arguments.
    """

    returncode: int
    stdout: str
    stderr: str
    truncated: bool = False
    duration: float = 0.0
    command: str | tuple[str, ...] = attrs.field(default="", kw_only=True)

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.returncode == 0

    def check_returncode(self) -> None:
        """Raise :class:`plait.tools.CommandFailed` if the status is not 0."""
        if self.returncode != 0:
            raise CommandFailed(self.returncode, self.command, self.stdout, self.stderr)


class _Capture:
    """Keeps the first ``limit`` bytes of a stream and counts the rest."""

    __slots__ = ("chunks", "dropped", "kept", "limit")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    async def drain(self, stream: anyio.abc.ByteReceiveStream) -> None:
        # Read to the end even past the limit: a writer blocked on a full
        # pipe would never exit.
        async for chunk in stream:
            room = len(chunk) if self.limit is None else self.limit - self.kept
            if room >= len(chunk):
                self.chunks.append(chunk)
                self.kept += len(chunk)
            else:
                if room > 0:
                    self.chunks.append(chunk[:room])
                    self.kept += room
                self.dropped += len(chunk) - max(room, 0)

    def text(self) -> str:
        text = b"".join(self.chunks).decode("utf-8", errors="replace")
        if self.dropped:
            text += (
                f"\n[plait: output truncated, {self.dropped} more bytes dropped "
                f"(max_output={self.limit})]"
            )
        return text


def _argv(command: object) -> tuple[list[str], str | tuple[str, ...]]:
    """The argument vector to run and the command as a result reports it."""
    if isinstance(command, str):
        if not command.strip():
            raise ConfigError("shell: the command must not be empty")
        return [SHELL, "-c", command], command
    if isinstance(command, Sequence) and command:
        try:
            args = tuple(os.fspath(a) for a in command)
        except TypeError:
            pass
        else:
            if all(isinstance(a, str) for a in args):
                return list(args), args
    raise ConfigError(
        "shell: the command must be a non-empty str (run by /bin/sh -c) or a "
        f"non-empty list of str arguments, got {command!r}"
    )


def _check_max_output(value: object) -> int | None:
    if value is None or (
        isinstance(value, int) and not isinstance(value, bool) and value >= 0
    ):
        return value
    raise ConfigError(
        f"shell: max_output must be an int >= 0 (bytes) or None, got {value!r}"
    )


def _environment(
    env: Mapping[str, str] | None, inherit_env: bool
) -> dict[str, str] | None:
    if env is None and inherit_env:
        return None  # the child inherits this process's environment as is
    merged = dict(os.environ) if inherit_env else {}
    merged.update(env or {})
    return merged


def _kill_group(process: anyio.abc.Process) -> None:
    """SIGKILL the process group the command leads: it and all it started."""
    if sys.platform == "win32":  # no process groups: the command alone
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return
    # The group may be gone already (ProcessLookupError); PermissionError
    # would mean its id now belongs to a stranger's group, which we spare.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _feed(stream: anyio.abc.ByteSendStream, data: bytes) -> None:
    # A command may exit without reading its input, as with subprocess.run.
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send(data)
        await stream.aclose()


@contextlib.asynccontextmanager
async def _working_directory(
    cwd: str | os.PathLike[str] | None,
) -> AsyncIterator[str]:
    """``cwd``, or a fresh temporary directory removed on the way out."""
    if cwd is not None:
        yield os.fspath(cwd)
        return
    path = await anyio.to_thread.run_sync(
        functools.partial(tempfile.mkdtemp, prefix="plait-shell-")
    )
    try:
        yield path
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                functools.partial(shutil.rmtree, path, ignore_errors=True)
            )


async def _run(
    argv: list[str],
    cwd: str,
    env: dict[str, str] | None,
    data: bytes | None,
    out: _Capture,
    err: _Capture,
) -> int:
    """Run ``argv`` in its own process group; return its exit status."""
    process = await anyio.open_process(
        argv,
        stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    killed = False
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(out.drain, process.stdout)
            tg.start_soon(err.drain, process.stderr)
            if data is not None:
                assert process.stdin is not None
                tg.start_soon(_feed, process.stdin, data)
            returncode = await process.wait()
            # Whatever the command left running would outlive the call and
            # keep the pipes open; it goes with the command.
            _kill_group(process)
            killed = True
        return returncode
    finally:
        # Cancelled, timed out or failed: kill the whole group, then reap
        # the command, shielded so that the cancellation cannot cut the
        # cleanup short. The group is killed even when the command itself
        # has exited (a cancellation can land just after it did): what it
        # started in the background must not outlive the call.
        with anyio.move_on_after(_REAP_TIMEOUT, shield=True):
            if not killed:
                _kill_group(process)
            await process.aclose()


async def run_shell(
    command: Command,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    input: str | bytes | None = None,
    check: bool = False,
    max_output: int | None = DEFAULT_MAX_OUTPUT,
) -> ShellResult:
    """Run ``command`` as a subprocess and return its :class:`ShellResult`.

    This is the function behind :data:`shell`; call it directly from your
    own async code or tools. It runs on asyncio, uvloop and Trio.

    The command runs in a new session, so it leads a process group of its
    own. If the call is cancelled (a timeout, a failing sibling, Ctrl-C),
    the whole group -- the command and everything it started -- is killed
    with SIGKILL and reaped before the cancellation goes on, in a shielded
    cleanup; when the command exits by itself, anything it left running in
    its group is killed too. Nothing outlives the call. There is no
    ``timeout`` argument: give the tool or the ``Call`` a ``timeout=``, or
    wrap a direct call in :func:`anyio.fail_after`.

    Args:
        command: a string, run by ``/bin/sh -c`` (pipes, redirections and
            ``&&`` work), or a list of arguments, run as is without a shell.
        cwd: the working directory. By default each call runs in a fresh
            temporary directory (``plait-shell-*``) that is removed, with
            everything in it, when the call ends.
        env: environment variables to set for the command.
        inherit_env: start from this process's environment (the default)
            or from an empty one.
        input: text or bytes sent to the command's stdin; by default stdin
            is ``/dev/null``, so a command never waits for a terminal.
        check: raise :class:`plait.tools.CommandFailed` when the command
            exits with a non-zero status.
        max_output: bytes of stdout, and of stderr, to keep; the rest is
            read and dropped (the command is never blocked or killed for
            writing too much) and ``ShellResult.truncated`` is set. None
            keeps everything.

    Raises:
        CommandFailed: with ``check=True``, on a non-zero exit status.
        ConfigError: an empty or malformed command, or a bad ``max_output``.
        OSError: the program or ``cwd`` does not exist, or cannot be run.
    """
    argv, shown = _argv(command)
    limit = _check_max_output(max_output)
    data = input.encode() if isinstance(input, str) else input
    environment = _environment(env, inherit_env)
    out, err = _Capture(limit), _Capture(limit)
    started = time.perf_counter()
    async with _working_directory(cwd) as workdir:
        returncode = await _run(argv, workdir, environment, data, out, err)
    result = ShellResult(
        returncode,
        out.text(),
        err.text(),
        truncated=bool(out.dropped or err.dropped),
        duration=time.perf_counter() - started,
        command=shown,
    )
    if check:
        result.check_returncode()
    return result


def shell_tool(
    name: str = "shell",
    *,
    concurrency_limit: int | None = DEFAULT_CONCURRENCY,
    timeout: float | None = None,
    retry: Retry | None = None,
    rate_limit: RateLimit | None = None,
    max_output: int | None = DEFAULT_MAX_OUTPUT,
    check: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Tool:
    """Make a shell tool with its own name, limits and defaults.

    ``plait.tools.shell`` is ``shell_tool()``. Make variants for commands
    that need other limits, e.g. a build tool that runs two at a time and
    fails on a non-zero exit::

        make = plait.tools.shell_tool("make", concurrency_limit=2,
                                      timeout=600, check=True)
        engine = plait.Engine(tools=[plait.tools.shell, make])

    Args:
        name: the name workflows call it by.
        concurrency_limit: commands running at once per engine (None: only
            the engine's ``max_concurrency``).
        timeout: seconds per attempt; when it fires the command's whole
            process group is killed and :class:`plait.ToolTimeout` raised.
        retry, rate_limit: as for :func:`plait.tool`.
        max_output, check, cwd, env: defaults for the arguments of
            :func:`run_shell` of the same names; a call can still pass its
            own.

    Raises:
        ConfigError: a bad ``max_output`` or limit.
    """
    _check_max_output(max_output)
    defaults: dict[str, Any] = {}
    if max_output != DEFAULT_MAX_OUTPUT:
        defaults["max_output"] = max_output
    if check:
        defaults["check"] = True
    if cwd is not None:
        defaults["cwd"] = cwd
    if env is not None:
        defaults["env"] = dict(env)
    # Without defaults the tool holds run_shell itself, so that plait.dump
    # can write it as an import path.
    fn = functools.partial(run_shell, **defaults) if defaults else run_shell
    return make_tool(
        "shell_tool",
        fn,
        name,
        concurrency_limit=concurrency_limit,
        timeout=timeout,
        retry=retry,
        rate_limit=rate_limit,
    )


shell = shell_tool()
"""The ready-made shell tool, named ``"shell"``: at most 4 commands at once
per engine, each in a temporary directory, 1 MiB of output kept per stream.
``plait.Engine(tools=[plait.tools.shell])``, then ``Call("shell", "echo hi")``.
"""
