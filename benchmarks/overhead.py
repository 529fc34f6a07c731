"""Per-item overhead and memory of a plait MapReduce, on every backend.

Usage::

    python benchmarks/overhead.py [--items N] [--repeat R] [--quick]
                                  [--memory-items M] [--backends B,B]
                                  [--tracemalloc] [--json PATH]

**Overhead.** For each backend (asyncio, asyncio+uvloop, trio) and two tools,
a ``MapReduce`` of ``--items`` elements at ``max_concurrency=100`` runs
against a hand-written AnyIO worker pool doing the same work: 100 workers in
one task group pulling ``(index, element)`` pairs from a shared iterator,
awaiting the same tool and storing results by index. Both run in the same
process on the same event loop, interleaved (baseline, plait, plait,
baseline, ...) ``--repeat`` times; the table shows the median microseconds
per item of each and their ratio, by the wall clock and by the process's CPU
time (steadier than the wall clock on a busy machine: both contenders are
CPU-bound, so time another process takes is the only difference). The headline tool yields to the event loop
once per call, as any real async I/O tool does; the second never yields and
shows the bare bookkeeping cost, for transparency.

**Memory.** For each backend, in a fresh subprocess, a lazy ``MapReduce``
over a generator of ``--memory-items`` elements with ``reduce=operator.add``
runs while a thread samples the process RSS every 5 ms; the table shows the
growth of the peak over the RSS before the run. ``--tracemalloc`` adds a
second subprocess per backend reporting the peak of traced Python
allocations (slower, so kept apart from the RSS run).
"""

from __future__ import annotations

import argparse
import gc
import json
import operator
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

import plait

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
WORKERS = 100
TARGET_RATIO = 1.5
TARGET_GROWTH_MB = 50.0
MB = 1024 * 1024

ToolFn = Callable[[int], Awaitable[int]]


async def yielding_tool(x: int) -> int:
    """A tool that yields to the event loop once, like any async I/O call."""
    await anyio.lowlevel.checkpoint()
    return x * 2


async def plain_tool(x: int) -> int:
    """A tool that never yields: the bare cost of the bookkeeping around it."""
    return x * 2


TOOLS: dict[str, ToolFn] = {"yielding": yielding_tool, "non-yielding": plain_tool}


# -- the two contenders --------------------------------------------------------
async def baseline_pool(fn: ToolFn, xs: Sequence[int], workers: int) -> list[Any]:
    """The hand-written pool plait is measured against."""
    results: list[Any] = [None] * len(xs)
    pairs = iter(enumerate(xs))

    async def worker() -> None:
        for i, x in pairs:
            results[i] = await fn(x)

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    return results


def map_workflow(fn: ToolFn, workers: int, **options: Any) -> plait.MapReduce:
    """``MapReduce(Var("xs"), Call(fn, Var("item")))`` at ``workers`` wide."""
    return plait.MapReduce(
        plait.Var("xs"),
        plait.Call(fn, plait.Var("item")),
        max_concurrency=workers,
        **options,
    )


# -- overhead ------------------------------------------------------------------
async def _time(run: Callable[[], Awaitable[Any]]) -> tuple[float, float, Any]:
    """Wall and CPU seconds of ``await run()``, and its value."""
    gc.collect()
    cpu = time.process_time()
    wall = time.perf_counter()
    value = await run()
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    return wall, cpu, value


Samples = dict[str, list[float]]


async def _overhead_session(
    fn: ToolFn, items: int, repeat: int, workers: int
) -> Samples:
    xs = list(range(items))
    expected = [2 * x for x in xs]
    engine = plait.Engine(tools=[fn])
    wf = map_workflow(fn, workers)

    async def run_baseline() -> list[Any]:
        return await baseline_pool(fn, xs, workers)

    async def run_plait() -> Any:
        return await engine.run(wf, {"xs": xs})

    # Warm both paths up (imports, caches, the loop's internals) untimed.
    warm = xs[: min(items, 2000)]
    await baseline_pool(fn, warm, workers)
    await engine.run(wf, {"xs": warm})

    runs = {"baseline": run_baseline, "plait": run_plait}
    samples: Samples = {f"{w}_{c}": [] for w in runs for c in ("wall", "cpu")}
    for r in range(repeat):
        # Alternate which goes first so neither always inherits the other's
        # garbage or warm caches.
        order = ("baseline", "plait") if r % 2 == 0 else ("plait", "baseline")
        for which in order:
            wall, cpu, value = await _time(runs[which])
            if value != expected:
                raise AssertionError(f"{which} gave a wrong result")
            samples[f"{which}_wall"].append(wall)
            samples[f"{which}_cpu"].append(cpu)
    return samples


def measure_overhead(
    backend: str,
    variant: str = "yielding",
    items: int = 100_000,
    repeat: int = 7,
    workers: int = WORKERS,
) -> dict[str, Any]:
    """Median per-item microseconds of plait and of the baseline pool.

    Returns a dict with ``baseline_us``, ``plait_us`` and ``ratio`` (wall
    clock), ``baseline_cpu_us``, ``plait_cpu_us`` and ``cpu_ratio`` (process
    CPU time), and the raw per-run samples in microseconds per item
    (``baseline_samples_us``, ``plait_samples_us``, ``baseline_cpu_samples_us``,
    ``plait_cpu_samples_us``) and their minimums (``min_us``).
    """
    name, options = BACKENDS[backend]
    fn = TOOLS[variant]
    samples = anyio.run(
        _overhead_session,
        fn,
        items,
        repeat,
        workers,
        backend=name,
        backend_options=options,
    )
    per_item = 1e6 / items
    us = {k: [s * per_item for s in v] for k, v in samples.items()}
    med = {k: statistics.median(v) for k, v in us.items()}
    return {
        "backend": backend,
        "tool": variant,
        "items": items,
        "repeat": repeat,
        "workers": workers,
        "baseline_us": med["baseline_wall"],
        "plait_us": med["plait_wall"],
        "ratio": med["plait_wall"] / med["baseline_wall"],
        "baseline_cpu_us": med["baseline_cpu"],
        "plait_cpu_us": med["plait_cpu"],
        "cpu_ratio": med["plait_cpu"] / med["baseline_cpu"],
        "min_us": {k: min(v) for k, v in us.items()},
        "baseline_samples_us": us["baseline_wall"],
        "plait_samples_us": us["plait_wall"],
        "baseline_cpu_samples_us": us["baseline_cpu"],
        "plait_cpu_samples_us": us["plait_cpu"],
    }


# -- memory --------------------------------------------------------------------
class RssSampler:
    """Samples this process's RSS from a thread, keeping the peak."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.samples = 0
        self.peak = self.rss()

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = self.rss()
            self.samples += 1
            if rss > self.peak:
                self.peak = rss
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


async def lazy_map_reduce(items: int, workers: int = WORKERS) -> Any:
    """A reduce over a generator of ``items`` elements; returns the sum."""
    engine = plait.Engine(tools=[yielding_tool])
    wf = map_workflow(yielding_tool, workers, reduce=operator.add)
    return await engine.run(wf, {"xs": (i for i in range(items))})


async def _memory_session(
    items: int, workers: int, use_tracemalloc: bool
) -> dict[str, Any]:
    # A small run first, so that lazily built state is not counted as growth.
    await lazy_map_reduce(2000, workers)
    gc.collect()
    report: dict[str, Any] = {}
    if use_tracemalloc:
        import tracemalloc

        tracemalloc.start()
        started = time.perf_counter()
        total = await lazy_map_reduce(items, workers)
        report["seconds"] = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        report["tracemalloc_peak_mb"] = peak / MB
    else:
        sampler = RssSampler()
        before = sampler.rss()
        with sampler:
            started = time.perf_counter()
            total = await lazy_map_reduce(items, workers)
            report["seconds"] = time.perf_counter() - started
        report.update(
            rss_before_mb=before / MB,
            rss_peak_mb=sampler.peak / MB,
            growth_mb=(sampler.peak - before) / MB,
            samples=sampler.samples,
        )
    if total != items * (items - 1):
        raise AssertionError(f"lazy MapReduce summed to {total!r}")
    return report


def memory_in_process(
    backend: str,
    items: int = 1_000_000,
    workers: int = WORKERS,
    use_tracemalloc: bool = False,
) -> dict[str, Any]:
    """Memory of a lazy MapReduce measured in this process (see the module doc)."""
    name, options = BACKENDS[backend]
    report: dict[str, Any] = anyio.run(
        _memory_session,
        items,
        workers,
        use_tracemalloc,
        backend=name,
        backend_options=options,
    )
    report.update(backend=backend, items=items, workers=workers)
    return report


def measure_memory(
    backend: str,
    items: int = 1_000_000,
    workers: int = WORKERS,
    use_tracemalloc: bool = False,
) -> dict[str, Any]:
    """:func:`memory_in_process` in a fresh interpreter, so RSS starts clean."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-child",
        backend,
        "--memory-items",
        str(items),
        "--workers",
        str(workers),
    ]
    if use_tracemalloc:
        cmd.append("--tracemalloc")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"memory run on {backend} failed ({done.returncode}):\n{done.stderr}"
        )
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


# -- report --------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("plait", "anyio", "trio", "uvloop"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "missing"
    found["cpus"] = str(os.cpu_count())
    return found


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    ]
    return "\n".join(lines)


def overhead_table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        spread = max(r["plait_samples_us"]) - min(r["plait_samples_us"])
        verdict = ""
        if r["tool"] == "yielding":
            verdict = "ok" if r["ratio"] <= TARGET_RATIO else "OVER"
        rows.append(
            [
                r["backend"],
                r["tool"],
                f"{r['baseline_us']:.2f}",
                f"{r['plait_us']:.2f}",
                f"{r['plait_us'] - r['baseline_us']:+.2f}",
                f"{r['ratio']:.2f}",
                f"{spread:.2f}",
                f"{r['baseline_cpu_us']:.2f}",
                f"{r['plait_cpu_us']:.2f}",
                f"{r['cpu_ratio']:.2f}",
                verdict,
            ]
        )
    headers = [
        "backend",
        "tool",
        "baseline us",
        "plait us",
        "delta",
        "ratio",
        "spread",
        "baseline cpu us",
        "plait cpu us",
        "cpu ratio",
        f"<= {TARGET_RATIO}",
    ]
    return _table(headers, rows)


def memory_table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        growth = r.get("growth_mb")
        traced = r.get("tracemalloc_peak_mb")
        rows.append(
            [
                r["backend"],
                f"{r['items']:,}",
                f"{r['rss_before_mb']:.1f}" if growth is not None else "-",
                f"{r['rss_peak_mb']:.1f}" if growth is not None else "-",
                f"{growth:.1f}" if growth is not None else "-",
                f"{traced:.2f}" if traced is not None else "-",
                f"{r['seconds']:.1f}",
                ("ok" if growth < TARGET_GROWTH_MB else "OVER")
                if growth is not None
                else "",
            ]
        )
    headers = [
        "backend",
        "items",
        "rss before MB",
        "rss peak MB",
        "growth MB",
        "tracemalloc peak MB",
        "seconds",
        f"< {TARGET_GROWTH_MB:.0f} MB",
    ]
    return _table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=None, help="default 100000")
    parser.add_argument("--repeat", type=int, default=None, help="default 7")
    parser.add_argument("--memory-items", type=int, default=None, help="default 1e6")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 20000 items, 3 repeats, 200000 for memory",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated subset of " + ", ".join(BACKENDS),
    )
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help="comma-separated subset of tools"
    )
    parser.add_argument("--no-overhead", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also report the tracemalloc peak (a separate, slower run)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument("--memory-child", metavar="BACKEND", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    items = args.items or (20_000 if args.quick else 100_000)
    repeat = args.repeat or (3 if args.quick else 7)
    memory_items = args.memory_items or (200_000 if args.quick else 1_000_000)

    if args.memory_child:
        report = memory_in_process(
            args.memory_child, memory_items, args.workers, args.tracemalloc
        )
        print(json.dumps(report))
        return 0

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    for t in tools:
        if t not in TOOLS:
            parser.error(f"unknown tool {t!r}; choose from {', '.join(TOOLS)}")

    versions = _versions()
    print(" ".join(f"{k}={v}" for k, v in versions.items()))
    overhead: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    if not args.no_overhead:
        print(
            f"\nPer-item cost, {items:,} items, {args.workers} workers, "
            f"median of {repeat} interleaved runs:"
        )
        for b in backends:
            for t in tools:
                overhead.append(measure_overhead(b, t, items, repeat, args.workers))
                print(f"  ... {b} / {t} done", file=sys.stderr)
        print(overhead_table(overhead))
    if not args.no_memory:
        print(
            f"\nPeak RSS growth, lazy MapReduce over a generator of "
            f"{memory_items:,} items with reduce=operator.add, fresh process each:"
        )
        for b in backends:
            report = measure_memory(b, memory_items, args.workers)
            if args.tracemalloc:
                traced = measure_memory(b, memory_items, args.workers, True)
                report["tracemalloc_peak_mb"] = traced["tracemalloc_peak_mb"]
                report["tracemalloc_seconds"] = traced["seconds"]
            memory.append(report)
        print(memory_table(memory))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "versions": versions,
                    "argv": sys.argv[1:] if argv is None else list(argv),
                    "overhead": overhead,
                    "memory": memory,
                },
                f,
                indent=2,
            )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
