"""Real servers for the tests: Redis and PostgreSQL on loopback, in temp dirs.

Each server is started on a free port in a temporary directory of its own
and stopped when the test session ends. ``.ci/servers`` installs the
programs from Debian packages. A missing program skips the tests that need
it, except with ``CI=true``, where it fails them: CI never passes by
skipping the tests of a layer.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "free_port",
    "missing",
    "need_module",
    "postgres_server",
    "redis_server",
    "restartable_redis_server",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing(what: str) -> None:
    """Skip (or, under ``CI=true``, fail) a test whose server is not installed."""
    message = f"{what} is not installed (run: bash .ci/servers)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def need_module(name: str) -> Any:
    """Import the client library ``name`` for a layer's tests.

    Missing, it skips the importing test module (or test), except with
    ``CI=true``, where it fails: the ``test`` extra installs every one.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"{name} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within 30 s")


def _start(argv: list[str], port: int, what: str) -> subprocess.Popen[bytes]:
    """Start ``argv`` and wait until it listens on ``port``."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc, what)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def restartable_redis_server() -> Iterator[tuple[str, Callable[[], None]]]:
    """A fresh ``redis-server`` on loopback: its ``redis://`` URL, and a restart.

    The restart stops the server and starts a new one on the same port
    (with no data: nothing is saved).
    """
    exe = shutil.which("redis-server")
    if exe is None:
        missing("redis-server")
        raise AssertionError("unreachable")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="plait-redis-") as tmp:
        argv = [
            exe,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", tmp,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        procs = [_start(argv, port, "redis-server")]

        def restart() -> None:
            _stop(procs[0])
            procs[0] = _start(argv, port, "redis-server")

        try:
            yield f"redis://127.0.0.1:{port}/0", restart
        finally:
            _stop(procs[0])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A fresh ``redis-server`` on loopback; yields its ``redis://`` URL."""
    with restartable_redis_server() as (url, _):
        yield url


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster on loopback; yields its DSN (trust auth)."""
    bindir = _postgres_bin()
    if bindir is None:
        missing("PostgreSQL")
        raise AssertionError("unreachable")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="plait-pg-")
    data = os.path.join(tmp, "data")
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    log = os.path.join(tmp, "log")
    pg_ctl = str(bindir / "pg_ctl")
    try:
        subprocess.run(
            _as_postgres(
                [str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        options = (
            f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=200"
        )
        subprocess.run(
            _as_postgres([pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "start"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                _as_postgres([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"]),
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def dask_cluster() -> Iterator[Any]:
    """A ``LocalCluster`` of 2 single-thread worker processes on loopback.

    Yields a ``distributed.Client`` of it; the dashboard is off.
    """
    import distributed

    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
