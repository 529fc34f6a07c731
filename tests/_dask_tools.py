"""Tools for the remote map tests: importable on the Dask workers.

The workers of the tests' LocalCluster import this module by its import
path (the tests' directory is on their ``sys.path``), as a real cluster's
workers import a project's tools.
"""

from __future__ import annotations

import os
import time

import anyio

import plait


class Boom(Exception):
    """A tool's failure that travels back as itself."""


class Unpicklable(Exception):
    """A failure that cannot be pickled (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = __import__("threading").Lock()


def inc(x: int) -> int:
    return x + 1


async def ainc(x: int) -> int:
    await anyio.sleep(0)
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def double(x: int) -> int:
    return 2 * x


def fail_on(x: int, bad: int = 3) -> int:
    if x % 10 == bad:
        raise Boom(f"bad element {x}")
    return x


def fail_unpicklable(x: int) -> int:
    if x == 2:
        raise Unpicklable(f"cannot travel {x}")
    return x


def pid(x: int) -> int:
    return os.getpid()


def spin(n: int) -> int:
    """CPU-bound pure Python."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


async def logged_sleep(x: int, log: str, seconds: float = 0.2) -> int:
    """Append 'start x' and 'end x' lines (with a time) to the file ``log``."""
    _append(log, f"start {x} {time.time()}")
    await anyio.sleep(seconds)
    _append(log, f"end {x} {time.time()}")
    if x < 0:
        raise Boom(f"negative {x}")
    return x


async def logged_fail(x: int, log: str) -> int:
    """Fail at once for element 0; sleep and log like logged_sleep otherwise."""
    if x == 0:
        await anyio.sleep(0.3)
        raise Boom("first element fails")
    return await logged_sleep(x, log, 5.0)


def kill_once(x: int, flag: str) -> int:
    """The first call to see ``flag`` missing creates it and kills its worker."""
    if x == 5:
        try:
            fd = os.open(flag, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os._exit(1)
    time.sleep(0.002)
    return x * 3


limited = plait.tool(inc, name="limited", concurrency_limit=2)


async def _logged_pid(x: int, log: str) -> int:
    """Append 'start x time pid' and 'end x time pid' around a short sleep."""
    _append(log, f"start {x} {time.time()} {os.getpid()}")
    await anyio.sleep(0.05)
    _append(log, f"end {x} {time.time()} {os.getpid()}")
    return x


logged_limited = plait.tool(_logged_pid, name="logged_limited", concurrency_limit=2)


# -- journaled remote maps (tests/test_dask_journal.py) -----------------------------


def effect(x: int, log: str, fail_flag: str = "") -> int:
    """Append ``x`` to ``log`` (one write), then fail if ``fail_flag`` exists
    and ``x % 7 == 3``; else return ``x * x``."""
    if fail_flag and x % 7 == 3 and os.path.exists(fail_flag):
        raise Boom(f"told to fail on {x}")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    return x * x


def effect_kill_once(x: int, log: str, flag: str, kill_at: int = 13) -> int:
    """As :func:`effect`; element ``kill_at``'s first call kills its worker,
    after a pause that lets the chunk's other calls finish (and commit)."""
    if x == kill_at and not os.path.exists(flag):
        time.sleep(0.6)
        fd = os.open(flag, os.O_CREAT | os.O_EXCL)
        os.close(fd)
        os._exit(1)
    return effect(x, log)


def effect_slow(x: int, log: str, seconds: float = 0.05) -> int:
    """As :func:`effect`, after ``seconds``."""
    time.sleep(seconds)
    return effect(x, log)


def call_key(x: int) -> list[str]:
    """The path and idempotency key ``plait.current_call()`` gives."""
    info = plait.current_call()
    assert info is not None
    return [info.run_id, info.path, info.idempotency_key]


def listing(n: int, flag: str) -> list[int]:
    """``range(n)``; once ``flag`` exists, its second half changes."""
    shift = 100 if os.path.exists(flag) else 0
    return [x if x < n // 2 else x + shift for x in range(n)]


def blocking_logged(x: int, log: str, seconds: float = 0.05) -> int:
    """Sleep in the calling thread, logging 'pid start|end time' lines."""
    _append(log, f"{os.getpid()} start {time.time()}")
    time.sleep(seconds)
    _append(log, f"{os.getpid()} end {time.time()}")
    return x


async def async_logged(x: int, log: str, seconds: float = 0.05) -> int:
    """As :func:`blocking_logged`, sleeping on the event loop."""
    _append(log, f"{os.getpid()} start {time.time()}")
    await anyio.sleep(seconds)
    _append(log, f"{os.getpid()} end {time.time()}")
    return x


def _append(log: str, line: str) -> None:
    with open(log, "a") as f:
        f.write(line + "\n")
