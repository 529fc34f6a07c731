"""Cancellation latency: how fast a failure stops 1,000 pending siblings.

Usage::

    python benchmarks/cancel_latency.py [--pending N] [--repeat R]
                                        [--backends B,B] [--scenarios S,S]
                                        [--steps S,S] [--json PATH] [--check]

In raise mode the first failure of a ``Parallel`` branch or a ``MapReduce``
element cancels everything else in the step. This measures how long that
takes when ``--pending`` siblings (1,000 by default) are blocked, each
scenario blocking them in a different place:

- ``sleep``: in the tool, in ``anyio.sleep``;
- ``rate-limit``: waiting for a token of the tool's exhausted ``RateLimit``;
- ``limiter``: waiting for a slot of the tool's saturated
  ``concurrency_limit``;
- ``backoff``: sleeping between attempts of a ``Retry`` with a long
  ``initial_delay``.

The failing call is element 0 (branch 0), which plait starts first, so it
holds the only token or slot. It waits until every other task is blocked
(``anyio.wait_all_tasks_blocked``), takes a timestamp and raises; the latency
is the time from that timestamp to ``engine.run`` raising ``StepFailed`` in
the caller. Each timed run gets a fresh engine (so a fresh bucket and fresh
limits). The baseline is a bare AnyIO task group in which one task raises
while ``--pending`` others sleep: what cancelling that many tasks costs on
the backend at all. Every timed run comes right after a baseline run of its
own, round after round (the first round untimed), so that a machine busy
for a moment slows both sides of a ratio alike. The table shows medians
over ``--repeat`` rounds: of the milliseconds, and of the ratio of each run
to its baseline run.

Target: tasks waiting in a limiter or for a rate-limit token are cancelled
within ``TARGET_RATIO`` times the baseline on every backend (sleeps and
backoff are shown for comparison); ``--check`` makes a miss fail the script.

``--steps bare`` (not run by default) adds rows without the engine: the
bare task group again, its tasks sleeping (``sleep``) or waiting for a slot
of a paused ``plait.Limiter`` (``limiter``). Set against the engine's rows,
they tell the limiter's own share of the latency from that of the call
layers above it.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import anyio

import plait

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
SCENARIOS = ("sleep", "rate-limit", "limiter", "backoff")
STEPS = ("Parallel", "MapReduce")
BARE = "bare"  # the optional step without the engine
BARE_SCENARIOS = ("sleep", "limiter")
PENDING = 1000
# Waiters of these scenarios must be cancelled within TARGET_RATIO times
# the bare task group's time.
TARGETED = ("rate-limit", "limiter")
TARGET_RATIO = 1.2
FOREVER = 3600.0


class Boom(Exception):
    """The failure under test; no retry policy here retries it."""


class Case:
    """One timed run: an engine, a workflow and the failure's timestamp."""

    def __init__(self, scenario: str, step: str, pending: int) -> None:
        self.scenario = scenario
        self.step = step
        self.pending = pending
        self.failed_at = 0.0
        self.entered = 0  # tool bodies entered by the pending siblings

        async def blocked(i: int) -> None:
            if i == 0:
                await anyio.wait_all_tasks_blocked()
                self.failed_at = time.perf_counter()
                raise Boom("element 0 failed")
            self.entered += 1
            if scenario == "backoff":
                raise OSError("transient")  # retried after FOREVER seconds
            await anyio.sleep(FOREVER)

        options: dict[str, Any] = {}
        if scenario == "rate-limit":
            # One token, refilled after an hour: element 0 takes it.
            options["rate_limit"] = plait.RateLimit(1, per=FOREVER)
        elif scenario == "limiter":
            options["concurrency_limit"] = 1
        elif scenario == "backoff":
            options["retry"] = plait.Retry(
                attempts=2,
                initial_delay=FOREVER,
                max_delay=FOREVER,
                jitter=False,
                retry_on=(OSError,),
            )
        elif scenario != "sleep":
            raise ValueError(f"unknown scenario {scenario!r}")
        tool = plait.tool(name="blocked", **options)(blocked)
        # The engine's own limit stays out of the way: only the scenario's
        # blocker makes the siblings wait.
        self.engine = plait.Engine(tools=[tool], max_concurrency=pending + 10)
        calls = pending + 1
        if step == "Parallel":
            self.workflow: plait.Step = plait.Parallel(
                *[plait.Call("blocked", i) for i in range(calls)]
            )
            self.path = "steps[0]"
        elif step == "MapReduce":
            self.workflow = plait.MapReduce(
                plait.Var("xs"),
                plait.Call("blocked", plait.Var("item")),
                max_concurrency=calls,
            )
            self.path = "map[0]"
        else:
            raise ValueError(f"unknown step {step!r}")
        self.inputs = {"xs": list(range(calls))}

    async def run(self) -> float:
        """Run once; return the seconds from the failure to ``run`` raising."""
        try:
            await self.engine.run(self.workflow, self.inputs)
        except plait.StepFailed as error:
            raised_at = time.perf_counter()
            if error.path != self.path or not isinstance(error.error, Boom):
                raise
        else:
            raise AssertionError("the run should have failed")
        # A waiter granted the slot element 0 gives back as it fails may
        # start its tool before its cancellation reaches it (cancellation
        # lands at the next checkpoint), so "limiter" allows one.
        if self.scenario in ("sleep", "backoff"):
            expected: tuple[int, ...] = (self.pending,)
        elif self.scenario == "limiter":
            expected = (0, 1)
        else:
            expected = (0,)
        if self.entered not in expected:
            raise AssertionError(
                f"{self.entered} siblings entered the tool, expected {expected}"
            )
        return raised_at - self.failed_at


async def baseline(pending: int, scenario: str = "sleep") -> float:
    """The same failure in a bare task group of sleeping tasks.

    With ``scenario="limiter"`` the tasks wait for a slot of a paused
    :class:`plait.Limiter` instead.
    """
    failed_at = 0.0
    wait: Callable[[], Awaitable[None]]
    if scenario == "limiter":
        wait = plait.Limiter(0, "paused").acquire
    elif scenario == "sleep":
        wait = functools.partial(anyio.sleep, FOREVER)
    else:
        raise ValueError(f"no bare scenario {scenario!r}")

    async def fail() -> None:
        nonlocal failed_at
        await anyio.wait_all_tasks_blocked()
        failed_at = time.perf_counter()
        raise Boom("task 0 failed")

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(pending):
                tg.start_soon(wait)
            await fail()
    except* Boom:
        raised_at = time.perf_counter()
    return raised_at - failed_at


async def _session(
    scenarios: Sequence[str], steps: Sequence[str], pending: int, repeat: int
) -> list[dict[str, Any]]:
    cases: dict[tuple[str, str], Callable[[], Awaitable[float]]] = {}
    for step in steps:
        for scenario in scenarios:

            async def one(scenario: str = scenario, step: str = step) -> float:
                if step == BARE:
                    return await baseline(pending, scenario)
                return await Case(scenario, step, pending).run()

            if step != BARE or scenario in BARE_SCENARIOS:
                cases[step, scenario] = one
    base: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
    timed: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
    for round_ in range(repeat + 1):  # round 0 warms up, untimed
        for key, run in cases.items():
            gc.collect()
            base_s = await baseline(pending)
            gc.collect()
            case_s = await run()
            if round_:
                base[key].append(1000 * base_s)
                timed[key].append(1000 * case_s)
    results = []
    for (step, scenario), ms in timed.items():
        base_ms = base[step, scenario]
        # Each run is paired with the baseline run just before it, so that
        # a machine busy for a moment slows both sides of a ratio alike.
        ratio = statistics.median(c / b for c, b in zip(ms, base_ms, strict=True))
        targeted = scenario in TARGETED and step != BARE  # bare rows only explain
        target = TARGET_RATIO if targeted else None
        results.append(
            {
                "step": step,
                "scenario": scenario,
                "pending": pending,
                "repeat": repeat,
                "median_ms": statistics.median(ms),
                "min_ms": min(ms),
                "max_ms": max(ms),
                "samples_ms": ms,
                "baseline_ms": statistics.median(base_ms),
                "baseline_samples_ms": base_ms,
                "ratio": ratio,
                "target_ratio": target,
                "passed": target is None or ratio <= target,
            }
        )
    return results


def measure(
    backend: str,
    scenarios: Sequence[str] = SCENARIOS,
    steps: Sequence[str] = STEPS,
    pending: int = PENDING,
    repeat: int = 7,
) -> list[dict[str, Any]]:
    """Latency samples for every step and scenario, on one backend's loop."""
    name, options = BACKENDS[backend]
    results: list[dict[str, Any]] = anyio.run(
        _session,
        scenarios,
        steps,
        pending,
        repeat,
        backend=name,
        backend_options=options,
    )
    for r in results:
        r["backend"] = backend
    return results


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


def table(results: Iterable[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    headers = [
        "backend",
        "step",
        "blocked in",
        "pending",
        "baseline ms",
        "median ms",
        "min ms",
        "max ms",
        "us/sibling",
        "vs baseline",
        f"target <= {TARGET_RATIO:g}x",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in results:
        mark = "ok" if r["passed"] else "OVER"
        cells = [
            r["backend"],
            r["step"],
            r["scenario"],
            f"{r['pending']:,}",
            f"{r['baseline_ms']:.2f}",
            f"**{r['median_ms']:.2f}**",
            f"{r['min_ms']:.2f}",
            f"{r['max_ms']:.2f}",
            f"{1000 * r['median_ms'] / r['pending']:.1f}",
            f"{r['ratio']:.2f}x",
            "-" if r["target_ratio"] is None else mark,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: Sequence[dict[str, Any]]) -> str:
    """One line: is the target met, and where is it missed."""
    targeted = [r for r in results if r["target_ratio"] is not None]
    missed = [r for r in targeted if not r["passed"]]
    goal = (
        f"{' and '.join(TARGETED)} waiters within {TARGET_RATIO:g}x of the "
        "bare task group on every backend"
    )
    if not targeted:
        return f"Target ({goal}): no targeted scenario was run."
    if not missed:
        worst = max(r["ratio"] for r in targeted)
        return f"Target ({goal}): met, worst {worst:.2f}x."
    where = ", ".join(
        f"{r['backend']} {r['step']} {r['scenario']} {r['ratio']:.2f}x" for r in missed
    )
    return f"Target ({goal}): MISSED in {where}."


def _choices(value: str, known: Sequence[str], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    for v in chosen:
        if v not in known:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {v!r}; choose from {', '.join(known)}"
            )
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, default=PENDING)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--backends",
        type=lambda v: _choices(v, list(BACKENDS), "backend"),
        default=list(BACKENDS),
        help="comma-separated subset of " + ", ".join(BACKENDS),
    )
    parser.add_argument(
        "--scenarios",
        type=lambda v: _choices(v, SCENARIOS, "scenario"),
        default=list(SCENARIOS),
        help="comma-separated subset of " + ", ".join(SCENARIOS),
    )
    parser.add_argument(
        "--steps",
        type=lambda v: _choices(v, (*STEPS, BARE), "step"),
        default=list(STEPS),
        help="comma-separated subset of " + ", ".join((*STEPS, BARE)),
    )
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 if a {' or '.join(TARGETED)} ratio is over {TARGET_RATIO:g}",
    )
    args = parser.parse_args(argv)

    versions = _versions()
    print(" ".join(f"{k}={v}" for k, v in versions.items()))
    results: list[dict[str, Any]] = []
    for backend in args.backends:
        results += measure(
            backend, args.scenarios, args.steps, args.pending, args.repeat
        )
        print(f"  ... {backend} done", file=sys.stderr)
    print(
        f"\nFrom a failure to engine.run raising, {args.pending:,} pending "
        f"siblings, median of {args.repeat} runs, each against a baseline run:\n"
    )
    print(table(results))
    print(f"\n{verdict(results)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "versions": versions,
                    "argv": sys.argv[1:] if argv is None else list(argv),
                    "results": results,
                },
                f,
                indent=2,
            )
        print(f"\nwrote {args.json}")
    if args.check and not all(r["passed"] for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
