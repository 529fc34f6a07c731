"""Turn the runners' rows into the comparison: ratios, tables and a chart."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from _jobs import JOBS, Sizes

LABELS = {
    "plait": "plait",
    "floor": "floor (anyio pool)",
    "gather": "asyncio.gather + Semaphore",
    "threads": "ThreadPoolExecutor",
    "aiometer": "aiometer",
    "langgraph": "LangGraph (Send)",
    "swarms": "swarms",
    "praisonai": "praisonaiagents parallel()",
    "agentos": "agentos AsyncAgentLoop",
}


def job_title(job: str, sizes: Sizes) -> str:
    """The heading of a job's table, with its sizes."""
    counts = {
        "blocking": f"{sizes.agents:,} x {sizes.agent_s * 1000:g} ms",
        "async": f"{sizes.agents:,} x {sizes.agent_s * 1000:g} ms",
        "fanout": f"{sizes.calls:,}",
        "rate": f"{sizes.rated_calls:,} at {sizes.rate}/s",
        "failfast": f"1 of {sizes.pending + 1:,}",
        "memory": f"{sizes.lazy_items:,}",
    }
    return f"{counts[job]} {JOBS[job]}"


def median(row: dict[str, Any]) -> float | None:
    """The row's median sample, or None when it has none."""
    return statistics.median(row["samples"]) if row.get("samples") else None


def _ref(rows: Sequence[dict[str, Any]], system: str, row: dict[str, Any]) -> Any:
    """The ``system`` row to compare ``row`` with: same job, setting, backend."""
    same_job = [r for r in rows if r["system"] == system and r["job"] == row["job"]]
    for backend in (row["backend"], "asyncio"):
        for r in same_job:
            if r["backend"] == backend and (
                r["setting"] == row["setting"] or system == "floor"
            ):
                return r
    return None


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set ``median``, ``vs_plait`` and ``vs_floor`` on every row."""
    for row in rows:
        row["median"] = median(row)
    for row in rows:
        for key, system in (("vs_plait", "plait"), ("vs_floor", "floor")):
            ref = _ref(rows, system, row)
            ok = ref and ref["median"] and row["median"] is not None
            usable = ok and not row["wrong"] and not ref["wrong"]
            row[key] = row["median"] / ref["median"] if usable else None


def verdict(row: dict[str, Any]) -> str:
    """ "ok", "wrong: ..." or "n/a: ..."."""
    if row.get("na"):
        return f"n/a: {row['na']}"
    if row["wrong"]:
        return f"wrong: {row['wrong']}"
    return "ok" if row["samples"] else "n/a: no run"


def _amount(value: float | None, job: str) -> str:
    if value is None:
        return "-"
    if job == "memory":
        return f"{value:.1f} MB"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _note(row: dict[str, Any]) -> str:
    extra = [e for e in row.get("extra", []) if e]
    if row["job"] == "rate" and extra:
        rate = statistics.median(e["rate_per_s"] for e in extra)
        window = max(e["max_1s_window"] for e in extra)
        return f"{rate:.1f}/s after the burst; at most {window} in any 1 s"
    if row["job"] == "failfast" and extra:
        error = statistics.median(e["error_s"] for e in extra)
        stopped = statistics.median(e["stopped_s"] for e in extra)
        return f"error after {_amount(error, '')}, all stopped after {_amount(stopped, '')}"
    if row["job"] == "memory" and extra:
        return f"{statistics.median(e['seconds'] for e in extra):.1f} s"
    return ""


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: Iterable[dict[str, Any]], job: str) -> str:
    """A markdown table of one job's rows."""
    lines = [
        "| system | setting | backend | median | vs plait | vs floor | correct | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["job"] != job:
            continue
        amount = _amount(row["median"], job)
        if row["wrong"] and row["median"] is not None:
            amount = f"({amount})"  # a wrong answer is not a timing
        name = LABELS.get(row["system"], row["system"])
        lines.append(
            f"| {name} | {row['setting']} | {row['backend']} | {amount} "
            f"| {_ratio(row['vs_plait'])} | {_ratio(row['vs_floor'])} "
            f"| {verdict(row)} | {_note(row)} |"
        )
    return "\n".join(lines)


def tables(rows: list[dict[str, Any]], sizes: Sizes) -> str:
    """Every job's table under a heading naming the job."""
    parts = []
    for n, job in enumerate(JOBS, 1):
        if any(r["job"] == job for r in rows):
            parts.append(f"#### ({n}) {job_title(job, sizes)}\n\n{table(rows, job)}")
    return "\n\n".join(parts)


def chart(rows: list[dict[str, Any]], sizes: Sizes, path: Path) -> bool:
    """A bar chart per job (log scale) of the rows that ran; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown_by_job = {
        job: [r for r in rows if r["job"] == job and r["median"]] for job in JOBS
    }
    jobs = [job for job, shown in shown_by_job.items() if shown]
    bars = [len(shown_by_job[job]) for job in jobs]
    fig, axes = plt.subplots(
        len(jobs),
        1,
        figsize=(9, 0.9 * len(jobs) + 0.22 * sum(bars)),
        gridspec_kw={"height_ratios": [b + 2 for b in bars]},
        squeeze=False,
    )
    for ax, job in zip(axes[:, 0], jobs, strict=True):
        shown = shown_by_job[job]
        names = [
            f"{LABELS.get(r['system'], r['system'])}, {r['setting']}, {r['backend']}"
            for r in shown
        ]
        colours = [_colour(r) for r in shown]
        ax.barh(names, [r["median"] for r in shown], color=colours)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(
            f"({list(JOBS).index(job) + 1}) {job_title(job, sizes)}", fontsize=9
        )
        ax.set_xlabel("peak RSS growth, MB" if job == "memory" else "seconds (median)")
        ax.tick_params(labelsize=7)
    fig.text(0.01, 0.002, "red: wrong result (time not a success)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _colour(row: dict[str, Any]) -> str:
    if row["wrong"]:
        return "tab:red"
    return {"plait": "tab:blue", "floor": "tab:gray"}.get(row["system"], "tab:orange")
