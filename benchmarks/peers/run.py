"""plait against what users run instead: six jobs, every system, one table.

Usage::

    python benchmarks/peers/setup_envs.py          # once: the peers' venvs
    python benchmarks/peers/run.py [--repeat R] [--systems S,S] [--jobs J,J]
                                   [--backends B,B] [--smoke] [--json PATH]
                                   [--markdown PATH] [--chart PATH] [--docs]

Each system runs in a subprocess of its own interpreter: plait, the floor
(hand-written AnyIO pools), ``asyncio.gather`` and ``ThreadPoolExecutor``
in this one; every peer in its venv under ``benchmarks/peers/.envs``. A
peer whose venv is missing or failed to install is reported as "n/a" with
the reason. The timed jobs run ``--repeat`` times each inside the runner;
the memory job runs once per fresh process, ``--repeat`` processes. With
``--docs`` the tables replace the results in docs/benchmarks.md (between
``<!-- peers:results:start -->`` and ``<!-- peers:results:end -->``, in
the section on peers), and the chart is written to
docs/benchmarks-peers.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import setup_envs  # noqa: E402
from _jobs import FULL, JOBS, SMOKE, Sizes  # noqa: E402
from runner import MARKER, TIMED_JOBS  # noqa: E402

ROOT = HERE.parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks-peers.png"
START, END = "<!-- peers:start -->", "<!-- peers:end -->"
TABLE_START, TABLE_END = "<!-- peers:results:start -->", "<!-- peers:results:end -->"
#: System -> its venv under .envs, or None for this interpreter.
SYSTEMS: dict[str, str | None] = {
    "plait": None,
    "floor": None,
    "gather": None,
    "threads": None,
    "aiometer": "aiometer",
    "langgraph": "langgraph",
    "swarms": "swarms",
    "praisonai": "praisonaiagents",
    "agentos": "agentos",
}


def interpreter(system: str) -> tuple[str | None, str | None]:
    """(python to run ``system`` with, or None; why it cannot run, or None)."""
    env = SYSTEMS[system]
    if env is None:
        return sys.executable, None
    reason = setup_envs.failure_reason(env)
    return (None, reason) if reason else (str(setup_envs.env_python(env)), None)


def call_runner(python: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``runner.py`` with ``args``; its JSON, or ``{"error": why}``."""
    # A scratch directory: some peers write workspaces and logs where they run.
    with tempfile.TemporaryDirectory(prefix="plait-peers-") as scratch:
        try:
            done = subprocess.run(
                [python, str(HERE / "runner.py"), *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=scratch,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"runner did not finish in {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            doc: dict[str, Any] = json.loads(line[len(MARKER) :])
            return doc
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"runner failed ({done.returncode}): {tail[:200]}"}


def na_rows(system: str, jobs: list[str], reason: str) -> list[dict[str, Any]]:
    """One "n/a" row per job for a system that could not run at all."""
    return [
        {"system": system, "job": job, "setting": "-", "backend": "-"}
        | {"samples": [], "wrong": None, "extra": [], "na": reason}
        for job in jobs
    ]


def run_system(
    system: str, jobs: list[str], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every requested job of one system: (rows, versions)."""
    python, reason = interpreter(system)
    if python is None:
        return na_rows(system, jobs, reason or "cannot run"), {}
    common = ["--smoke"] if args.smoke else []
    common += ["--repeat", str(args.repeat), "--backends", args.backends]
    rows: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    timed = [j for j in jobs if j in TIMED_JOBS]
    if timed:
        print(f"  {system}: {', '.join(timed)}", file=sys.stderr, flush=True)
        doc = call_runner(
            python, [system, *common, "--jobs", ",".join(timed)], args.timeout
        )
        if "error" in doc:
            return na_rows(system, jobs, doc["error"]), {}
        rows += doc["rows"]
        versions = doc["versions"]
    if "memory" in jobs:
        print(f"  {system}: memory", file=sys.stderr, flush=True)
        memory, versions = _memory(system, python, common, args, versions)
        rows += memory
    for row in rows:
        row["system"] = system
    return rows, versions


def _memory(
    system: str,
    python: str,
    common: list[str],
    args: argparse.Namespace,
    versions: dict[str, str],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The memory job: ``--repeat`` fresh processes per backend, merged."""
    merged: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeat):
        for backend in _backends_of(system, python, args.backends):
            doc = call_runner(
                python, [system, *common, "--memory", backend], args.timeout
            )
            if "error" in doc:
                return na_rows(system, ["memory"], doc["error"]), versions
            versions = versions or doc["versions"]
            (row,) = doc["rows"]
            if backend in merged:
                merged[backend]["samples"] += row["samples"]
                merged[backend]["extra"] += row["extra"]
                merged[backend]["wrong"] = merged[backend]["wrong"] or row["wrong"]
            else:
                merged[backend] = row
            if row.get("na") or row["wrong"]:
                break
    return list(merged.values()), versions


def _backends_of(system: str, python: str, wanted: str) -> list[str]:
    """The backends ``system`` runs on, limited to ``wanted`` where it can."""
    probe = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); "
        f"import systems.{system} as s; print(','.join(s.BACKENDS))"
    )
    out = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, check=True, cwd=HERE
    ).stdout.strip()
    offered = out.split(",")
    chosen = [b for b in wanted.split(",") if b in offered]
    return chosen or offered


def machine() -> str:
    """One line naming the machine and the day."""
    cores = os.cpu_count()
    return (
        f"{datetime.date.today().isoformat()}, {platform.system()} "
        f"{platform.machine()}, {cores} cores, Python {platform.python_version()}"
    )


def versions_line(versions: dict[str, dict[str, str]]) -> str:
    """``system: pkg x.y`` for every system that reported versions."""
    parts = []
    for system, found in versions.items():
        pkgs = ", ".join(f"{k} {v}" for k, v in found.items() if k != "python")
        if pkgs:
            parts.append(f"{report.LABELS.get(system, system)}: {pkgs}")
    return "; ".join(parts)


def section(
    rows: list[dict[str, Any]], versions: Any, sizes: Sizes, repeat: int
) -> str:
    """The markdown written between the markers of docs/benchmarks.md."""
    return (
        f"Measured on {machine()}; medians of {repeat} runs.\n"
        f"Versions: {versions_line(versions)}.\n\n"
        f"![Medians per job and system]({CHART.name})\n\n"
        f"{report.tables(rows, sizes)}\n"
    )


def write_docs(text: str, path: Path = DOCS) -> None:
    """Replace the results between the table markers of ``path`` with ``text``.

    The markers sit inside the page's section on peers (between
    ``<!-- peers:start -->`` and ``<!-- peers:end -->``), so that the prose
    around the results stays as written.
    """
    page = path.read_text(encoding="utf-8")
    if TABLE_START not in page:
        page = page.rstrip("\n") + f"\n\n{START}\n{TABLE_START}\n{TABLE_END}\n{END}\n"
    head, rest = page.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    path.write_text(f"{head}{TABLE_START}\n{text}{TABLE_END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen systems and jobs; print, and write what was asked for."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--backends", default="asyncio,uvloop,trio")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes")
    parser.add_argument("--timeout", type=float, default=1800, help="per runner, s")
    parser.add_argument("--json", metavar="PATH", help="write every row here")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables here")
    parser.add_argument("--chart", metavar="PATH", help="write the bar chart here")
    parser.add_argument("--docs", action="store_true", help="update docs/ in place")
    parser.add_argument(
        "--merge", metavar="PATH", help="an earlier --json: keep its other rows"
    )
    args = parser.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = sorted(set(systems) - set(SYSTEMS)) + sorted(set(jobs) - set(JOBS))
    if unknown:
        parser.error(f"unknown system or job {unknown[0]!r}")
    sizes = SMOKE if args.smoke else FULL
    rows: list[dict[str, Any]] = []
    versions: dict[str, dict[str, str]] = {}
    if args.merge:  # keep an earlier run's rows, except those run again now
        earlier = json.loads(Path(args.merge).read_text())
        rows = [
            r
            for r in earlier["rows"]
            if not (r["system"] in systems and r["job"] in jobs)
        ]
        versions = earlier["versions"]
    for system in systems:
        found, versions[system] = run_system(system, jobs, args)
        rows += found
    order = {s: n for n, s in enumerate(SYSTEMS)}
    rows.sort(key=lambda r: order[r["system"]])
    report.add_ratios(rows)
    text = section(rows, versions, sizes, args.repeat)
    print(text)
    if args.json:
        doc = {"machine": machine(), "sizes": sizes.to_json(), "rows": rows}
        Path(args.json).write_text(json.dumps(doc | {"versions": versions}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    chart = Path(args.chart) if args.chart else (CHART if args.docs else None)
    if chart and not report.chart(rows, sizes, chart):
        print("matplotlib is not installed: no chart", file=sys.stderr)
    if args.docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
