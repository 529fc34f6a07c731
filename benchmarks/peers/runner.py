"""Run one system's jobs and print the results as one line of JSON.

Usage (the driver, ``run.py``, calls it with each system's own interpreter)::

    python benchmarks/peers/runner.py SYSTEM [--smoke] [--repeat R]
                                      [--jobs J,J] [--backends B,B]
    python benchmarks/peers/runner.py SYSTEM --memory BACKEND [--smoke]

The first form times jobs ``blocking``, ``async``, ``fanout``, ``rate`` and
``failfast`` ``--repeat`` times each, interleaved, checking every answer; a
wrong answer is recorded once with its reason and not timed again. The
second measures the ``memory`` job once, in this fresh process.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import json
import platform
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import _jobs
from _jobs import JOBS, SMOKE, Sizes

TIMED_JOBS = ("blocking", "async", "fanout", "rate", "failfast")
MARKER = "@@peers-result@@ "  # peers may print to stdout too
Outcome = tuple[float, str | None, dict[str, float]]


def versions(system: ModuleType) -> dict[str, str]:
    """Installed versions of the system's packages, and Python's."""
    out = {"python": platform.python_version()}
    for name in system.PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def settings(job: str, sizes: Sizes, tuned_only: bool) -> list[tuple[str, int | None]]:
    """(label, width) of each setting a job runs at: defaults, then tuned."""
    if job == "rate":
        return [("defaults", None)]
    if job == "failfast":
        return [(f"width {sizes.pending + 1}", sizes.pending + 1)]
    if job == "memory":
        return [(f"width {sizes.call_width}", sizes.call_width)]
    width = sizes.agent_width if job in ("blocking", "async") else sizes.call_width
    tuned: list[tuple[str, int | None]] = [(f"width {width}", width)]
    return tuned if tuned_only else [("defaults", None), *tuned]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def run_job(
    system: ModuleType, job: str, width: int | None, backend: str, sizes: Sizes
) -> Outcome:
    """Run ``job`` once; (seconds, what is wrong or None, extra figures)."""
    if job == "blocking":
        agents = [_jobs.BlockingAgent(n, sizes.agent_s) for n in range(sizes.agents)]
        took, out = _timed(lambda: system.blocking(agents, width, backend))
        return took, _jobs.check_outputs(out, _jobs.expected_outputs(sizes.agents)), {}
    if job == "async":
        agents = [
            _jobs.AsyncAgent(n, sizes.agent_s, system.sleep)
            for n in range(sizes.agents)
        ]
        took, out = _timed(lambda: system.async_agents(agents, width, backend))
        return took, _jobs.check_outputs(out, _jobs.expected_outputs(sizes.agents)), {}
    if job == "fanout":
        took, out = _timed(lambda: system.fanout(sizes.calls, width, backend))
        return took, _jobs.check_sum(out, sizes.calls), {}
    if job == "rate":
        return _rate(system, backend, sizes)
    if job == "failfast":
        return _failfast(system, backend, sizes)
    raise ValueError(f"unknown job {job!r}")


def _rate(system: ModuleType, backend: str, sizes: Sizes) -> Outcome:
    log = _jobs.StartLog()
    took, out = _timed(lambda: system.rate(sizes.rated_calls, sizes.rate, log, backend))
    wrong = _jobs.check_rate(log, out, sizes.rated_calls, sizes.rate)
    extra = {"rate_per_s": log.steady_rate(), "max_1s_window": log.max_in_window()}
    return took, wrong, extra


def _failfast(system: ModuleType, backend: str, sizes: Sizes) -> Outcome:
    siblings = _jobs.Siblings(sizes.pending)
    try:
        system.failfast(siblings, sizes.sibling_s, backend)
    except Exception as error:
        siblings.caught(error)
    siblings.wait_stopped(sizes.sibling_s + 2.0)
    if siblings.failed_at is None:
        return 0.0, siblings.verdict(), {}
    caught, stopped = siblings.seconds()
    extra = {"error_s": caught, "stopped_s": stopped}
    return max(caught, stopped), siblings.verdict(), extra


def timed_rows(
    system: ModuleType, jobs: list[str], backends: list[str], sizes: Sizes, repeat: int
) -> list[dict[str, Any]]:
    """Every (job, setting, backend) of the system, ``repeat`` runs each."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for job in jobs:
        for label, width in settings(job, sizes, system.TUNED_ONLY):
            for backend in backends:
                row = {"job": job, "setting": label, "backend": backend}
                row.update(samples=[], wrong=None, extra=[], width=width)
                if job in system.UNSUPPORTED:
                    row["na"] = system.UNSUPPORTED[job]
                rows[job, label, backend] = row
    for r in range(repeat):
        order = list(rows.values())
        for row in order if r % 2 == 0 else reversed(order):
            if row.get("na") or row["wrong"]:
                continue
            gc.collect()
            took, wrong, extra = run_job(
                system, row["job"], row["width"], row["backend"], sizes
            )
            row["samples"].append(took)
            row["extra"].append(extra)
            row["wrong"] = wrong
    return list(rows.values())


def memory_row(system: ModuleType, backend: str, sizes: Sizes) -> dict[str, Any]:
    """Peak RSS growth of the ``memory`` job, measured once in this process."""
    ((label, width),) = settings("memory", sizes, True)
    row: dict[str, Any] = {"job": "memory", "setting": label}
    row.update(backend=backend, width=width, samples=[], wrong=None, extra=[])
    if "memory" in system.UNSUPPORTED:
        row["na"] = system.UNSUPPORTED["memory"]
        return row
    system.memory(_jobs.lazy_items(1000), width, backend)  # imports, warm caches
    gc.collect()
    if not _jobs.reset_peak_rss():
        row["na"] = "cannot reset the peak RSS here (Linux /proc only)"
        return row
    before = _jobs.rss_kb("VmRSS")
    took, out = _timed(
        lambda: system.memory(_jobs.lazy_items(sizes.lazy_items), width, backend)
    )
    growth_mb = (_jobs.rss_kb("VmHWM") - before) / 1024
    row["samples"].append(growth_mb)
    row["extra"].append({"seconds": took})
    row["wrong"] = _jobs.check_sum(out, sizes.lazy_items)
    return row


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("system", help="a module of benchmarks/peers/systems")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", default=",".join(TIMED_JOBS))
    parser.add_argument("--backends", default="", help="default: all the system's")
    parser.add_argument("--memory", metavar="BACKEND", help="measure the memory job")
    args = parser.parse_args(argv)
    system = importlib.import_module(f"systems.{args.system}")
    sizes = SMOKE if args.smoke else Sizes()
    wanted = [b for b in args.backends.split(",") if b in system.BACKENDS]
    backends = wanted or list(system.BACKENDS)
    if args.memory:
        rows = [memory_row(system, args.memory, sizes)]
    else:
        jobs = [j for j in args.jobs.split(",") if j in JOBS and j != "memory"]
        rows = timed_rows(system, jobs, backends, sizes, args.repeat)
    doc = {"system": args.system, "versions": versions(system), "rows": rows}
    print(MARKER + json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
