"""What a journal adds to a call, and how fast a resume replays, side by side.

Usage::

    python benchmarks/journal.py [--items N] [--repeat R] [--quick]
                                 [--backend B] [--postgres DSN] [--json PATH]

A ``MapReduce`` of ``--items`` elements at ``max_concurrency=100`` over an
async tool that yields to the event loop once runs, interleaved ``--repeat``
times in one process on one event loop:

- ``off``: no journal (the baseline; ``benchmarks/overhead.py`` measures
  what the engine itself costs against a hand-written pool).
- ``sqlite batch`` / ``sqlite sync``: a new run on a :class:`plait.SqliteJournal`
  in a temporary directory; the table shows the microseconds each adds per
  call over ``off`` (the writer thread's time included, since the run ends
  only once every call is committed).
- ``replay``: the batch run again with its run id; every call is answered
  from the journal: the table shows calls replayed per second.
- ``postgres batch`` (with ``--postgres DSN`` or ``PLAIT_BENCH_POSTGRES``):
  journaled calls per second on that server.

Medians of the runs, by the wall clock and by the process's CPU time (all
its threads; steadier on a busy machine, where the writer thread also
waits longer for the GIL). A row passes when its wall-clock figure meets
its target (``TARGETS``). ``--quick`` is a smoke run.

``--switch-interval S`` sets CPython's GIL switch interval first. The
writer thread needs the GIL a few times per commit group (to wake, to
encode the group, to come back from SQLite, to wake the loop); while the
event loop's thread is busy, each of those waits out the interval (5 ms by
default), and a run on a quiet multi-core machine spends more time in
those waits than in writing. ``--switch-interval 0.0005`` shows the cost
without them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

import plait
from plait import Call, MapReduce, Var

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
WORKERS = 100
# (what is measured, how it compares, target)
TARGETS: dict[str, tuple[str, float]] = {
    "sqlite batch": ("us added per call <=", 10.0),
    "sqlite sync": ("us added per call <=", 25.0),
    "replay": ("calls/s >=", 200_000.0),
    "postgres batch": ("calls/s >=", 50_000.0),
}


@plait.tool
async def t(x: int) -> int:
    """The tool: yields to the event loop once, like any async I/O call."""
    await anyio.lowlevel.checkpoint()
    return x * 2


STEP = MapReduce(Var("xs"), Call("t", Var("item")), max_concurrency=WORKERS)


async def timed(run: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``run()``."""
    start, cpu = time.perf_counter(), time.process_time()
    await run()
    return time.perf_counter() - start, time.process_time() - cpu


async def session(
    items: int, repeat: int, folder: Path, dsn: str | None
) -> dict[str, list[tuple[float, float]]]:
    """Wall-clock and CPU seconds of each contender's runs, interleaved."""
    xs = list(range(items))
    off = plait.Engine(tools=[t])
    journals: dict[str, plait.Journal] = {
        "sqlite batch": plait.SqliteJournal(folder / "batch.db"),
        "sqlite sync": plait.SqliteJournal(folder / "sync.db", durability="sync"),
    }
    if dsn:
        journals["postgres batch"] = plait.PostgresJournal(dsn)
    engines = {name: plait.Engine(tools=[t], journal=j) for name, j in journals.items()}
    seconds: dict[str, list[tuple[float, float]]] = {"off": [], "replay": []}
    for name in engines:
        seconds[name] = []
    await off.run(STEP, {"xs": xs})  # warm up
    for _ in range(repeat):
        seconds["off"].append(await timed(lambda: off.run(STEP, {"xs": xs})))
        for name, engine in engines.items():
            run_id = uuid.uuid4().hex

            async def fresh(e: plait.Engine = engine, r: str = run_id) -> None:
                await e.run(STEP, {"xs": xs}, run_id=r)

            seconds[name].append(await timed(fresh))
            if name == "sqlite batch":

                async def again(e: plait.Engine = engine, r: str = run_id) -> None:
                    await e.run(STEP, {"xs": xs}, run_id=r)

                seconds["replay"].append(await timed(again))
    return seconds


def measure(
    backend: str, items: int, repeat: int, dsn: str | None = None
) -> dict[str, Any]:
    """Run a session on ``backend``; medians, per-call costs and rates."""
    name, options = BACKENDS[backend]
    with tempfile.TemporaryDirectory() as folder:
        seconds = anyio.run(
            session,
            items,
            repeat,
            Path(folder),
            dsn,
            backend=name,
            backend_options=options,
        )
    rows = []
    off_us = statistics.median(w for w, _ in seconds["off"]) / items * 1e6
    off_cpu = statistics.median(c for _, c in seconds["off"]) / items * 1e6
    for what, samples in seconds.items():
        median = statistics.median(w for w, _ in samples)
        us = median / items * 1e6
        cpu = statistics.median(c for _, c in samples) / items * 1e6
        row: dict[str, Any] = {
            "what": what,
            "us_per_call": us,
            "cpu_us_per_call": cpu,
            "samples_s": samples,
        }
        if what in ("sqlite batch", "sqlite sync"):
            row["value"] = us - off_us
            row["cpu_value"] = cpu - off_cpu
        elif what in ("replay", "postgres batch"):
            row["value"] = items / median
            row["cpu_value"] = 1e6 / cpu
        if what in TARGETS:
            kind, target = TARGETS[what]
            row["target"] = f"{kind} {target:,.0f}"
            row["passed"] = (
                row["value"] <= target if "<=" in kind else row["value"] >= target
            )
        rows.append(row)
    return {"backend": backend, "items": items, "repeat": repeat, "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'contender':<15} {'us/call':>8} {'cpu us/call':>11} {'measure':>12} "
        f"{'by cpu':>12} {'target':>26} {'ok':>4}",
        f"{'-' * 15} {'-' * 8} {'-' * 11} {'-' * 12} {'-' * 12} {'-' * 26} {'-' * 4}",
    ]
    for row in result["rows"]:
        value, cpu = row.get("value"), row.get("cpu_value")
        shown = "" if value is None else f"{value:,.1f}"
        shown_cpu = "" if cpu is None else f"{cpu:,.1f}"
        ok = "" if "passed" not in row else ("PASS" if row["passed"] else "FAIL")
        lines.append(
            f"{row['what']:<15} {row['us_per_call']:>8.2f} "
            f"{row['cpu_us_per_call']:>11.2f} {shown:>12} {shown_cpu:>12} "
            f"{row.get('target', ''):>26} {ok:>4}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=None, help="default 100000")
    parser.add_argument("--repeat", type=int, default=None, help="default 5")
    parser.add_argument("--quick", action="store_true", help="5000 items, 2 repeats")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="uvloop")
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        default=os.environ.get("PLAIT_BENCH_POSTGRES"),
        help="also measure a PostgresJournal on this server",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        metavar="S",
        help="sys.setswitchinterval(S) first (CPython's default is 0.005)",
    )
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    items = args.items or (5_000 if args.quick else 100_000)
    repeat = args.repeat or (2 if args.quick else 5)
    print(
        f"{args.backend}, {items:,} calls per run, {WORKERS} workers, median of "
        f"{repeat} interleaved runs, GIL switch interval {sys.getswitchinterval()} s"
    )
    result = measure(args.backend, items, repeat, args.postgres)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
