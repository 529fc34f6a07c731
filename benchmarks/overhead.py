"""Per-item overhead and memory of a plait MapReduce, on every backend.

Usage::

    python benchmarks/overhead.py [--items N] [--repeat R] [--quick]
                                  [--shapes S,S] [--backends B,B] [--check]
                                  [--memory-items M] [--tracemalloc]
                                  [--no-overhead] [--no-memory] [--json PATH]

**Overhead.** For each backend (asyncio, asyncio+uvloop, trio) and each of
six call shapes, a ``MapReduce`` of ``--items`` elements at
``max_concurrency=100`` runs against a hand-written AnyIO worker pool doing
the same work: 100 workers in one task group pulling ``(index, element)``
pairs from a shared iterator and storing results by index, with the same
arguments, the same awaits, an ``anyio.CapacityLimiter`` where plait has a
tool limit and a plain function call per event where plait has a
subscriber. The tool yields to the event loop once per call, as any real
async I/O tool does. The shapes:

- ``positional``: ``Call(t, Var("item"))``.
- ``keyword``: ``Call("t", x=Var("item"))``, what YAML ``args:`` mappings
  produce.
- ``attr-two-args``: ``Call("t2", Var("item.a"), y=Lit(1))`` over dicts.
- ``sequential``: ``Sequential(Call(t, Var("item"), name="a"),
  Call(t, Var("a")))``, two calls per element.
- ``subscriber``: ``keyword`` with one subscriber counting events; the pool
  calls the same function before and after each call.
- ``tool-limit``: ``keyword`` with ``concurrency_limit=50`` on the tool; the
  pool wraps each call in a shared ``CapacityLimiter(50)``.

Both contenders run in the same process on the same event loop, interleaved
(baseline, plait, plait, baseline, ...) ``--repeat`` times; the table shows
the median microseconds per item of each and their ratio, by the wall clock
and by the process's CPU time (steadier than the wall clock on a busy
machine: both contenders are CPU-bound, so time another process takes is the
only difference). A row passes when its wall-clock ratio is at most
``TARGET_RATIO``; ``--check`` makes a failing row fail the script.

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
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
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
TOOL_LIMIT = 50
TARGET_RATIO = 1.3
TARGET_GROWTH_MB = 50.0
MB = 1024 * 1024


async def t(x: int) -> int:
    """The tool: yields to the event loop once, like any async I/O call."""
    await anyio.lowlevel.checkpoint()
    return x * 2


async def t2(a: int, y: int) -> int:
    """A two-argument tool, for a field of the item and a literal."""
    await anyio.lowlevel.checkpoint()
    return a * 2 + y


# -- the shapes ----------------------------------------------------------------
Pairs = Iterator[tuple[int, Any]]
Worker = Callable[[Pairs, list[Any]], Coroutine[Any, Any, None]]


class EventCounter:
    """A trivial subscriber: counts the calls made to it."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, event: object) -> None:
        self.n += 1


@dataclass(frozen=True)
class Contest:
    """One shape's two contenders, built inside the event loop that runs them.

    Attributes:
        engine: the plait engine, with the shape's tools and subscribers.
        step: the map step of the plait ``MapReduce``.
        worker: one worker of the hand-written pool: takes ``(index,
            element)`` pairs until they run out, storing results by index.
        element: builds the i-th input element.
        events: the subscriber, if the shape has one.
    """

    engine: plait.Engine
    step: plait.Step
    worker: Worker
    element: Callable[[int], Any] = int
    events: EventCounter | None = None


def positional() -> Contest:
    """``Call(t, Var("item"))``: the tool by value, one positional argument."""

    async def by_hand(pairs: Pairs, results: list[Any]) -> None:
        for i, x in pairs:
            results[i] = await t(x)

    call = plait.Call(t, plait.Var("item"))
    return Contest(plait.Engine(tools=[t]), call, by_hand)


def keyword() -> Contest:
    """``Call("t", x=Var("item"))``: the tool by name, a keyword argument."""

    async def by_hand(pairs: Pairs, results: list[Any]) -> None:
        for i, x in pairs:
            results[i] = await t(x=x)

    call = plait.Call("t", x=plait.Var("item"))
    return Contest(plait.Engine(tools=[t]), call, by_hand)


def attr_two_args() -> Contest:
    """``Call("t2", Var("item.a"), y=Lit(1))``: a field of a dict and a literal."""

    async def by_hand(pairs: Pairs, results: list[Any]) -> None:
        for i, item in pairs:
            results[i] = await t2(item["a"], y=1)

    call = plait.Call("t2", plait.Var("item.a"), y=plait.Lit(1))
    return Contest(plait.Engine(tools=[t2]), call, by_hand, lambda i: {"a": i})


def sequential() -> Contest:
    """Two calls per element, the second reading the first's named result."""

    async def by_hand(pairs: Pairs, results: list[Any]) -> None:
        for i, x in pairs:
            a = await t(x)
            results[i] = await t(a)

    step = plait.Sequential(
        plait.Call(t, plait.Var("item"), name="a"), plait.Call(t, plait.Var("a"))
    )
    return Contest(plait.Engine(tools=[t]), step, by_hand)


def subscriber() -> Contest:
    """``keyword`` with one subscriber; by hand, a call before and after each.

    plait may emit more events than that per element (today it also emits
    step events for each element's ``Call``); those count as plait's cost,
    and the result reports how many it emitted.
    """
    events = EventCounter()

    async def by_hand(pairs: Pairs, results: list[Any]) -> None:
        for i, x in pairs:
            events(x)
            results[i] = await t(x=x)
            events(x)

    engine = plait.Engine(tools=[t])
    engine.subscribe(events)
    call = plait.Call("t", x=plait.Var("item"))
    return Contest(engine, call, by_hand, events=events)


def tool_limit() -> Contest:
    """``keyword`` with ``concurrency_limit=50`` on the tool; by hand, a limiter."""
    limiter = anyio.CapacityLimiter(TOOL_LIMIT)

    async def by_hand(pairs: Pairs, results: list[Any]) -> None:
        for i, x in pairs:
            async with limiter:
                results[i] = await t(x=x)

    engine = plait.Engine(tools=[plait.tool(concurrency_limit=TOOL_LIMIT)(t)])
    return Contest(engine, plait.Call("t", x=plait.Var("item")), by_hand)


SHAPES: dict[str, Callable[[], Contest]] = {
    "positional": positional,
    "keyword": keyword,
    "attr-two-args": attr_two_args,
    "sequential": sequential,
    "subscriber": subscriber,
    "tool-limit": tool_limit,
}


# -- overhead ------------------------------------------------------------------
async def baseline_pool(worker: Worker, xs: Sequence[Any], workers: int) -> list[Any]:
    """The hand-written pool plait is measured against."""
    results: list[Any] = [None] * len(xs)
    pairs = iter(enumerate(xs))
    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker, pairs, results)
    return results


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
    shape: str, items: int, repeat: int, workers: int
) -> tuple[Samples, float | None]:
    """Timed runs of both contenders, and plait's events per item if counted."""
    contest = SHAPES[shape]()
    xs = [contest.element(i) for i in range(items)]
    wf = plait.MapReduce(plait.Var("xs"), contest.step, max_concurrency=workers)

    async def run_baseline() -> list[Any]:
        return await baseline_pool(contest.worker, xs, workers)

    async def run_plait() -> Any:
        return await contest.engine.run(wf, {"xs": xs})

    # One untimed run of each warms up imports, caches and the loop's
    # internals, and gives the result every timed run must reproduce.
    expected = await run_baseline()
    if contest.events is not None:
        contest.events.n = 0
    if await run_plait() != expected:
        raise AssertionError(f"plait and the baseline disagree on {shape}")
    events = None if contest.events is None else contest.events.n / items

    runs = {"baseline": run_baseline, "plait": run_plait}
    samples: Samples = {f"{w}_{c}": [] for w in runs for c in ("wall", "cpu")}
    for r in range(repeat):
        # Alternate which goes first so neither always inherits the other's
        # garbage or warm caches.
        order = ("baseline", "plait") if r % 2 == 0 else ("plait", "baseline")
        for which in order:
            wall, cpu, value = await _time(runs[which])
            if value != expected:
                raise AssertionError(f"{which} gave a wrong result on {shape}")
            samples[f"{which}_wall"].append(wall)
            samples[f"{which}_cpu"].append(cpu)
    return samples, events


def measure_overhead(
    backend: str,
    shape: str = "positional",
    items: int = 20_000,
    repeat: int = 7,
    workers: int = WORKERS,
) -> dict[str, Any]:
    """Median per-item microseconds of plait and of the baseline pool.

    Returns a dict with ``baseline_us``, ``plait_us`` and ``ratio`` (wall
    clock), ``baseline_cpu_us``, ``plait_cpu_us`` and ``cpu_ratio`` (process
    CPU time), ``passed`` (``ratio <= TARGET_RATIO``), ``plait_events_per_item``
    (None unless the shape has a subscriber), and the raw per-run samples in
    microseconds per item (``baseline_samples_us``, ``plait_samples_us``,
    ``baseline_cpu_samples_us``, ``plait_cpu_samples_us``) and their minimums
    (``min_us``).
    """
    name, options = BACKENDS[backend]
    samples, events = anyio.run(
        _overhead_session,
        shape,
        items,
        repeat,
        workers,
        backend=name,
        backend_options=options,
    )
    per_item = 1e6 / items
    us = {k: [s * per_item for s in v] for k, v in samples.items()}
    med = {k: statistics.median(v) for k, v in us.items()}
    ratio = med["plait_wall"] / med["baseline_wall"]
    return {
        "backend": backend,
        "shape": shape,
        "items": items,
        "repeat": repeat,
        "workers": workers,
        "baseline_us": med["baseline_wall"],
        "plait_us": med["plait_wall"],
        "ratio": ratio,
        "baseline_cpu_us": med["baseline_cpu"],
        "plait_cpu_us": med["plait_cpu"],
        "cpu_ratio": med["plait_cpu"] / med["baseline_cpu"],
        "passed": ratio <= TARGET_RATIO,
        "plait_events_per_item": events,
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
    engine = plait.Engine(tools=[t])
    wf = plait.MapReduce(
        plait.Var("xs"),
        plait.Call(t, plait.Var("item")),
        max_concurrency=workers,
        reduce=operator.add,
    )
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
    """The per-shape, per-backend overhead results as a text table."""
    rows = []
    for r in results:
        spread = max(r["plait_samples_us"]) - min(r["plait_samples_us"])
        rows.append(
            [
                r["backend"],
                r["shape"],
                f"{r['baseline_us']:.2f}",
                f"{r['plait_us']:.2f}",
                f"{r['plait_us'] - r['baseline_us']:+.2f}",
                f"{r['ratio']:.2f}",
                f"{spread:.2f}",
                f"{r['baseline_cpu_us']:.2f}",
                f"{r['plait_cpu_us']:.2f}",
                f"{r['cpu_ratio']:.2f}",
                "PASS" if r["passed"] else "FAIL",
            ]
        )
    headers = [
        "backend",
        "shape",
        "baseline us",
        "plait us",
        "delta",
        "ratio",
        "spread",
        "baseline cpu us",
        "plait cpu us",
        "cpu ratio",
        f"ratio <= {TARGET_RATIO}",
    ]
    return _table(headers, rows)


def worst_shapes(results: Sequence[dict[str, Any]]) -> str:
    """One line per backend naming its worst shape by wall-clock ratio."""
    worst: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["backend"] not in worst or r["ratio"] > worst[r["backend"]]["ratio"]:
            worst[r["backend"]] = r
    return "\n".join(
        f"worst on {b}: {r['shape']} at {r['ratio']:.2f} "
        f"({'PASS' if r['passed'] else 'FAIL'})"
        for b, r in worst.items()
    )


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


def _choose(
    parser: argparse.ArgumentParser, flag: str, value: str, choices: Iterable[str]
) -> list[str]:
    """Split a comma-separated ``value``, rejecting names not in ``choices``."""
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    choices = list(choices)
    for v in chosen:
        if v not in choices:
            parser.error(
                f"{flag}: unknown name {v!r}; choose from {', '.join(choices)}"
            )
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks the flags select; print tables, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=None, help="default 20000")
    parser.add_argument("--repeat", type=int, default=None, help="default 7")
    parser.add_argument("--memory-items", type=int, default=None, help="default 1e6")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 5000 items, 3 repeats, 200000 for memory",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated subset of " + ", ".join(BACKENDS),
    )
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPES),
        help="comma-separated subset of " + ", ".join(SHAPES),
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 if any shape's ratio is over {TARGET_RATIO}",
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

    items = args.items or (5_000 if args.quick else 20_000)
    repeat = args.repeat or (3 if args.quick else 7)
    memory_items = args.memory_items or (200_000 if args.quick else 1_000_000)

    if args.memory_child:
        report = memory_in_process(
            args.memory_child, memory_items, args.workers, args.tracemalloc
        )
        print(json.dumps(report))
        return 0

    backends = _choose(parser, "--backends", args.backends, BACKENDS)
    shapes = _choose(parser, "--shapes", args.shapes, SHAPES)

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
            for s in shapes:
                overhead.append(measure_overhead(b, s, items, repeat, args.workers))
                print(f"  ... {b} / {s} done", file=sys.stderr)
        print(overhead_table(overhead))
        print(worst_shapes(overhead))
        for r in overhead:
            if r["plait_events_per_item"] is not None:
                print(
                    f"{r['backend']} / {r['shape']}: plait emitted "
                    f"{r['plait_events_per_item']:.2f} events per item, "
                    f"the baseline 2 calls"
                )
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
    if args.check and not all(r["passed"] for r in overhead):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
