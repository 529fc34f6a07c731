"""plait.run: the synchronous entry point, its backends and Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import anyio
import anyio.to_thread
import pytest
import sniffio

import plait


def backend_probe() -> dict[str, Any]:
    """Which async library and event loop a tool runs on."""
    library = sniffio.current_async_library()
    loop = None
    if library == "asyncio":
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return {"library": library, "loop": loop}


@plait.tool
async def probe() -> dict[str, Any]:
    await anyio.sleep(0)
    return backend_probe()


@plait.tool
def add(a: int, b: int) -> int:
    time.sleep(0.01)
    return a + b


@pytest.mark.parametrize(
    ("backend", "library", "loop"),
    [
        (None, "asyncio", "uvloop"),
        ("asyncio", "asyncio", "asyncio"),
        ("uvloop", "asyncio", "uvloop"),
        ("trio", "trio", None),
    ],
)
def test_run_on_each_backend(
    backend: str | None, library: str, loop: str | None
) -> None:
    wf = plait.Sequential(
        plait.Parallel(
            where=plait.Call("probe"),
            total=plait.Call("add", plait.Var("a"), 2),
            name="out",
        ),
        plait.Call("add", plait.Var("out.total"), 10),
    )
    assert plait.run(wf, {"a": 1}, backend=backend, tools=[probe, add]) == 13
    where = plait.run(plait.Call("probe"), backend=backend, tools=[probe])
    assert where == {"library": library, "loop": loop}


def test_default_backend_keyword_is_none() -> None:
    assert plait.run(plait.Call(probe)) == {"library": "asyncio", "loop": "uvloop"}


@pytest.mark.parametrize("backend", ["curio", "Trio", "", "uv"])
def test_unknown_backend_is_a_value_error(backend: str) -> None:
    ran = False

    @plait.tool
    def work() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(ValueError, match="backend") as info:
        plait.run(plait.Call("work"), backend=backend, tools=[work])
    assert repr(backend) in str(info.value)
    assert ran is False


def test_run_passes_engine_options() -> None:
    seen: list[str] = []

    async def record(call: plait.ToolCall, call_next: plait.Next) -> Any:
        seen.append(call.name)
        return await call_next(call)

    running = 0
    peak = 0

    @plait.tool
    async def work(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1
        return i

    wf = plait.MapReduce(
        plait.Var("xs"), plait.Call("work", plait.Var("item")), reduce="plus"
    )
    out = plait.run(
        wf,
        {"xs": list(range(6))},
        tools=[work],
        functions={"plus": lambda a, b: a + b},
        max_concurrency=2,
        middleware=[record],
    )
    assert out == sum(range(6))
    assert peak == 2
    assert seen == ["work"] * 6


def test_run_rejects_bad_engine_options() -> None:
    with pytest.raises(plait.ConfigError, match="max_concurrency"):
        plait.run(plait.Call(probe), max_concurrency=0)
    with pytest.raises(TypeError):
        plait.run(plait.Call(probe), no_such_option=1)


def test_run_deadline() -> None:
    @plait.tool
    async def slow() -> None:
        await anyio.sleep(5)

    started = time.monotonic()
    with pytest.raises(plait.StepTimeout):
        plait.run(plait.Call("slow"), tools=[slow], deadline=0.1, backend="trio")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_raises_step_failed(backend: str) -> None:
    @plait.tool
    async def broken() -> None:
        raise ValueError("broken")

    wf = plait.Parallel(plait.Call("broken"), plait.Call("probe"))
    with pytest.raises(plait.StepFailed) as info:
        plait.run(wf, tools=[broken, probe], backend=backend)
    assert info.value.path == "steps[0]"
    assert isinstance(info.value.__cause__, ValueError)


def test_run_from_a_plain_thread_of_a_running_loop() -> None:
    """A worker thread has no loop of its own, so plait.run works there."""

    async def main() -> Any:
        return await anyio.to_thread.run_sync(
            lambda: plait.run(plait.Call(probe), backend="asyncio")
        )

    assert anyio.run(main, backend="trio") == {"library": "asyncio", "loop": "asyncio"}


# -- inside a running event loop ---------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("backend", [None, "asyncio", "uvloop", "trio"])
async def test_run_inside_a_running_loop_is_refused(backend: str | None) -> None:
    ran = False

    @plait.tool
    def work() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(RuntimeError) as info:
        plait.run(plait.Call("work"), tools=[work], backend=backend)
    assert "await engine.run(" in str(info.value)
    assert ran is False
    # the engine's own entry point is the one to use here
    assert await plait.Engine(tools=[work]).run(plait.Call("work")) is None
    assert ran is True


# -- Ctrl-C --------------------------------------------------------------------

CTRL_C_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import anyio, plait

    backend = None if sys.argv[1] == "default" else sys.argv[1]
    sync = sys.argv[2] == "sync"
    started = threading.Event()

    @plait.tool
    async def nap(x):
        started.set()
        await anyio.sleep(30)
        return x

    @plait.tool
    def nap_sync(x):
        started.set()
        time.sleep(1)
        return x

    tool = nap_sync if sync else nap
    wf = plait.Parallel(
        plait.Call(tool, 1),
        plait.Sequential(plait.Parallel(plait.Call(tool, 2), plait.Call(tool, 3))),
        plait.MapReduce([1, 2, 3], plait.Call(tool, plait.Var("item"))),
    )
    sent = []

    def interrupt():
        if not started.wait(20):
            os._exit(3)
        time.sleep(0.1)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        plait.run(wf, backend=backend)
    except KeyboardInterrupt:
        print(f"BARE {time.monotonic() - sent[0]:.3f}", flush=True)
        raise
    except BaseExceptionGroup as group:
        print(f"GROUP {group!r}", flush=True)
        raise
    except BaseException as exc:
        print(f"OTHER {exc!r}", flush=True)
        raise
    print("RETURNED", flush=True)
    """
)


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("backend", ["default", "asyncio", "uvloop", "trio"])
def test_ctrl_c_is_a_bare_keyboard_interrupt(backend: str, kind: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CTRL_C_SCRIPT, backend, kind],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    lines = proc.stdout.split()
    assert lines, proc.stderr
    assert lines[0] == "BARE", proc.stdout + proc.stderr
    # the run stopped promptly after Ctrl-C, whatever its tools were doing
    assert float(lines[1]) < 1.0, proc.stdout
    # uncaught, it ends the process like any Ctrl-C does
    assert proc.returncode == -signal.SIGINT, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == "KeyboardInterrupt"
