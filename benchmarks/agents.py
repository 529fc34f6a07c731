"""Many agents at once: plait.agents against a thread pool and the ideal.

Usage::

    python benchmarks/agents.py [--agents N] [--sleep S] [--batch B]
                                [--repeat R] [--backends B,B] [--json PATH]

``--agents`` agents (default 1,000) each "wait on the network" for
``--sleep`` seconds (default 10 ms), their outputs wanted in input order.
With ``--batch`` of them in flight (default 100) the ideal is
``ceil(agents / batch) * sleep``: 100 ms. Contenders, interleaved in one
process ``--repeat`` times, medians reported:

* ``plait sync``: blocking agents (``time.sleep``) through
  ``plait.agents.run_agents_concurrently(..., batch_size=B)``, per backend;
* ``plait async``: the same with ``async def run`` agents (``anyio.sleep``);
* ``plait defaults``: blocking agents with no ``batch_size`` at all (64 in
  flight, ideal ``ceil(agents / 64) * sleep``), the case a user meets first;
* ``ThreadPoolExecutor``: ``concurrent.futures.ThreadPoolExecutor(B).map``,
  the usual hand-written answer, created per run as users do.

Every timing is of the whole synchronous call, event loop start and thread
start-up included. The target is a ratio to the ideal of at most 1.3 for the
``batch_size`` runs, and at most 0.2 s for 1,000 agents on the defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio

from plait.agents import DEFAULT_BATCH_SIZE, run_agents_concurrently

BACKENDS = ("asyncio", "uvloop", "trio")
TARGET_RATIO = 1.3
TARGET_DEFAULTS_S = 0.2


class BlockingAgent:
    """An agent whose ``run`` blocks its thread, like a sync HTTP client."""

    def __init__(self, n: int, seconds: float) -> None:
        self.agent_name = f"blocking-{n}"
        self.n = n
        self.seconds = seconds

    def run(self, task: str) -> tuple[int, str]:
        time.sleep(self.seconds)
        return self.n, task


class AsyncAgent:
    """An agent whose ``run`` awaits, like an async HTTP client."""

    def __init__(self, n: int, seconds: float) -> None:
        self.agent_name = f"async-{n}"
        self.n = n
        self.seconds = seconds

    async def run(self, task: str) -> tuple[int, str]:
        await anyio.sleep(self.seconds)
        return self.n, task


def ideal(agents: int, width: int, seconds: float) -> float:
    """The wall time with no overhead at all: full rounds of ``width`` agents."""
    return math.ceil(agents / width) * seconds


def thread_pool(agents: Sequence[BlockingAgent], task: str, width: int) -> list[Any]:
    """The hand-written answer: a ``ThreadPoolExecutor`` mapping ``run``."""
    with ThreadPoolExecutor(width) as pool:
        return list(pool.map(lambda a: a.run(task), agents))


def _timed(fn: Callable[[], list[Any]], expected: list[Any]) -> float:
    started = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - started
    if out != expected:  # a wrong answer fast is no answer
        raise AssertionError("outputs are not the agents' outputs in input order")
    return elapsed


def contenders(
    agents: int, seconds: float, width: int, backends: Sequence[str]
) -> dict[str, tuple[Callable[[], list[Any]], float]]:
    """Name -> (run it, its ideal time)."""
    blocking = [BlockingAgent(i, seconds) for i in range(agents)]
    asynchronous = [AsyncAgent(i, seconds) for i in range(agents)]
    batch_ideal = ideal(agents, width, seconds)
    out: dict[str, tuple[Callable[[], list[Any]], float]] = {
        "ThreadPoolExecutor": (
            lambda: thread_pool(blocking, "t", width),
            batch_ideal,
        )
    }
    for backend in backends:
        out[f"plait sync, {backend}"] = (
            lambda b=backend: run_agents_concurrently(  # type: ignore[misc]
                blocking, "t", batch_size=width, backend=b
            ),
            batch_ideal,
        )
        out[f"plait async, {backend}"] = (
            lambda b=backend: run_agents_concurrently(  # type: ignore[misc]
                asynchronous, "t", batch_size=width, backend=b
            ),
            batch_ideal,
        )
        out[f"plait defaults, {backend}"] = (
            lambda b=backend: run_agents_concurrently(blocking, "t", backend=b),  # type: ignore[misc]
            ideal(agents, DEFAULT_BATCH_SIZE, seconds),
        )
    return out


def measure(
    agents: int = 1000,
    seconds: float = 0.01,
    width: int = 100,
    repeat: int = 7,
    backends: Sequence[str] = BACKENDS,
) -> list[dict[str, Any]]:
    """Run every contender ``repeat`` times, interleaved; one row per contender."""
    runs = contenders(agents, seconds, width, backends)
    expected = [(i, "t") for i in range(agents)]
    samples: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeat):
        # Alternate the order so no contender always runs on a warm machine.
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(_timed(runs[name][0], expected))
    rows = []
    for name, (_, best) in runs.items():
        median = statistics.median(samples[name])
        rows.append(
            {
                "contender": name,
                "ideal_s": best,
                "median_s": median,
                "min_s": min(samples[name]),
                "max_s": max(samples[name]),
                "ratio": median / best,
                "samples_s": samples[name],
            }
        )
    return rows


def table(rows: Iterable[dict[str, Any]]) -> str:
    """A markdown table of :func:`measure`'s rows."""
    lines = [
        "| contender | ideal s | median s | min s | max s | ratio to ideal |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['contender']} | {row['ideal_s']:.3f} | {row['median_s']:.3f} "
            f"| {row['min_s']:.3f} | {row['max_s']:.3f} | {row['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--sleep", type=float, default=0.01, help="seconds per agent")
    parser.add_argument("--batch", type=int, default=100, help="agents in flight")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated"
    )
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(
            f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}"
        )
    rows = measure(args.agents, args.sleep, args.batch, args.repeat, backends)
    print(
        f"{args.agents} agents x {args.sleep * 1000:g} ms, {args.batch} in flight, "
        f"medians of {args.repeat} (Python {platform.python_version()})"
    )
    print(table(rows))
    batch_rows = [r for r in rows if not r["contender"].startswith("plait defaults")]
    worst = max(r["ratio"] for r in batch_rows if r["contender"].startswith("plait"))
    print(
        f"\nworst plait ratio at batch {args.batch}: {worst:.2f} (target <= {TARGET_RATIO})"
    )
    if args.agents == 1000 and args.sleep == 0.01:
        slowest = max(
            r["median_s"] for r in rows if r["contender"].startswith("plait defaults")
        )
        print(
            f"slowest plait run on the defaults: {slowest:.3f} s (target <= {TARGET_DEFAULTS_S} s)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
