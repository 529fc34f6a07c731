"""Remote map steps on a 2-worker Dask LocalCluster: overhead, speed-up, cancel.

Usage::

    python benchmarks/remote.py [--quick] [--elements N] [--repeat R]

Three measurements, each side by side in one run, medians of ``--repeat``:

- **overhead**: ``MapReduce(Var("xs"), inc, remote=True)`` over ``N``
  elements in chunks of 256, with the coordinator on asyncio, uvloop and
  Trio, against the same chunks sent with plain
  ``client.submit`` of a function doing the same work, keeping the same
  number of chunks in flight. The difference per element is plait's
  overhead (target: at most 100 us).
- **speed-up**: a CPU-bound pure-Python tool mapped over 256 elements, on
  the cluster against one thread of the coordinator (target: >= 1.7x).
- **cancel**: a remote map of 5 s sleeps is cancelled once every chunk
  runs; the time from the cancellation until ``run`` returns, which is
  when every chunk has acknowledged that it stopped (target: <= 250 ms).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # remote_tools, for workers

import plait
import remote_tools as tools
from plait import Call, Engine, MapReduce, Var

CHUNK = 256
TARGET_OVERHEAD_US = 100.0
TARGET_SPEEDUP = 1.7
TARGET_CANCEL_MS = 250.0


def local_cluster() -> AbstractContextManager[Any]:
    """The tests' cluster: 2 single-thread worker processes on loopback.

    One definition for the tests and the benchmarks (``tests/_servers.py``);
    entering it yields the ``distributed.Client``.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _servers import dask_cluster

    return dask_cluster()


def _baseline(client: Any, xs: list[int], window: int) -> float:
    """Seconds for the chunks of ``xs`` by plain client.submit."""
    import distributed

    started = time.perf_counter()
    chunks = [xs[i : i + CHUNK] for i in range(0, len(xs), CHUNK)]
    pending = set()
    out = 0
    for chunk in chunks:
        if len(pending) >= window:
            done, pending = distributed.wait(pending, return_when="FIRST_COMPLETED")
            out += sum(len(r) for r in client.gather(list(done)))
        pending.add(client.submit(tools.inc_chunk, chunk, pure=False))
    out += sum(len(r) for r in client.gather(list(pending)))
    assert out == len(xs)
    return time.perf_counter() - started


def measure_overhead(
    client: Any, elements: int, repeat: int, backend: str = "asyncio"
) -> dict[str, Any]:
    from plait.dask import DaskExecutor

    xs = list(range(elements))
    executor = DaskExecutor(client, chunk_size=CHUNK)
    step = MapReduce(Var("xs"), tools.inc, remote=True)
    window = 2 * sum(client.nthreads().values())
    plait.run(step, {"xs": xs[:CHUNK]}, executor=executor)  # warm the workers
    base, mine = [], []
    for _ in range(repeat):
        base.append(_baseline(client, xs, window))
        started = time.perf_counter()
        out = plait.run(step, {"xs": xs}, executor=executor, backend=backend)
        mine.append(time.perf_counter() - started)
        assert out[-1] == elements
    b, p = statistics.median(base), statistics.median(mine)
    overhead_us = (p - b) / elements * 1e6
    return {
        "backend": backend,
        "baseline_us": b / elements * 1e6,
        "plait_us": p / elements * 1e6,
        "overhead_us": overhead_us,
        "passed": overhead_us <= TARGET_OVERHEAD_US,
    }


def measure_speedup(client: Any, n: int, spins: int, repeat: int) -> dict[str, Any]:
    from plait.dask import DaskExecutor

    executor = DaskExecutor(client, chunk_size=max(1, n // 16))
    step = MapReduce(Var("xs"), Call(tools.spin, Var("item")), remote=True)
    xs = [spins] * n
    plait.run(step, {"xs": xs[:4]}, executor=executor)
    local, remote, dask = [], [], []
    for _ in range(repeat):
        started = time.perf_counter()
        expected = [tools.spin(x) for x in xs]
        local.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert plait.run(step, {"xs": xs}, executor=executor) == expected
        remote.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert client.gather(client.map(tools.spin, xs, pure=False)) == expected
        dask.append(time.perf_counter() - started)
    ratio = statistics.median(local) / statistics.median(remote)
    return {
        "one_thread_s": statistics.median(local),
        "cluster_s": statistics.median(remote),
        # What plain Dask tasks reach on the same cluster, for reference: on
        # a busy machine neither reaches 2x.
        "dask_speedup": statistics.median(local) / statistics.median(dask),
        "speedup": ratio,
        "passed": ratio >= TARGET_SPEEDUP,
    }


def measure_cancel(client: Any, repeat: int) -> dict[str, Any]:
    from plait.dask import DaskExecutor

    executor = DaskExecutor(client, chunk_size=8)
    step = MapReduce(Var("xs"), Call(tools.sleep_logged, Var("item"), 5.0), remote=True)
    samples = []
    for _ in range(repeat):

        async def main() -> float:
            engine = Engine(executor=executor)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:

                    async def cancel_later() -> None:
                        await anyio.sleep(1.0)  # every chunk is running by now
                        times.append(time.perf_counter())
                        scope.cancel()

                    times: list[float] = []
                    tg.start_soon(cancel_later)
                    await engine.run(step, {"xs": list(range(32))})
            return time.perf_counter() - times[0]

        samples.append(anyio.run(main) * 1000)
    ms = statistics.median(samples)
    return {"cancel_ms": ms, "passed": ms <= TARGET_CANCEL_MS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--elements", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args(argv)
    elements = args.elements or (2_048 if args.quick else 100_000)
    repeat = args.repeat or (1 if args.quick else 5)
    with local_cluster() as client:
        rows = [
            *(
                ("overhead", measure_overhead(client, elements, repeat, backend))
                for backend in ("asyncio", "uvloop", "trio")
            ),
            (
                "speed-up",
                measure_speedup(
                    client,
                    8 if args.quick else 256,
                    20_000 if args.quick else 400_000,
                    repeat,
                ),
            ),
            ("cancel", measure_cancel(client, repeat)),
        ]
    for name, row in rows:
        values = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.items()
        )
        print(f"{name:10} {values}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
