"""The summary ``plait run`` prints at the end: per-tool table, failures, steps.

A finished run is summed up from :attr:`plait.RunResult.stats`; a failed or
interrupted one (there is no result then) from the :class:`RunTracker`,
which also says which steps finished and which were cancelled.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

import attrs

from .._model._errors import StepFailed
from .._model._paths import show_path
from .._model._results import Failure
from .._model._stats import ToolStats
from ._display import step_name
from ._format import count, duration, latency
from ._tracker import RunTracker, State, StepProgress

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Outcome", "Summary", "print_plain", "print_rich"]

#: At most this many collected failures are listed one by one.
MAX_FAILURES = 10

_COLUMNS = ("tool", "calls", "failed", "retries", "timeouts", "waits", "p50", "p95")


class Outcome(enum.Enum):
    """How the run ended."""

    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@attrs.frozen
class Summary:
    """Everything the summary shows.

    Attributes:
        outcome: how the run ended.
        duration: seconds the run took.
        tools: per-tool statistics, by tool name.
        failures: the failures collect mode recorded.
        steps: the tracked steps, for a run that did not finish.
        cancelled_calls: calls that were running when the run stopped.
        abandoned_threads: sync tools' threads left running.
    """

    outcome: Outcome
    duration: float
    tools: dict[str, ToolStats]
    failures: Sequence[Failure] = ()
    steps: Sequence[StepProgress] = ()
    cancelled_calls: int = 0
    abandoned_threads: int = 0

    @classmethod
    def of_tracker(cls, tracker: RunTracker, outcome: Outcome) -> Summary:
        """A summary of a run that did not finish, from what its events said."""
        return cls(
            outcome=outcome,
            duration=tracker.elapsed(),
            tools={name: t.snapshot() for name, t in sorted(tracker.tools.items())},
            steps=list(tracker),
            cancelled_calls=len(tracker.in_flight),
            abandoned_threads=tracker.abandoned_threads,
        )

    def headline(self) -> str:
        """The first line: how it ended, how long it took, how many calls."""
        calls = sum(t.calls for t in self.tools.values())
        failed = sum(t.failures for t in self.tools.values())
        retries = sum(t.retries for t in self.tools.values())
        after = "in" if self.outcome is Outcome.FINISHED else "after"
        line = (
            f"{self.outcome.value} {after} {duration(self.duration)}: "
            f"{count(calls, 'call')}, {count(failed, 'failed')}, "
            f"{count(retries, 'retry')}"
        )
        if self.failures:
            line += f"; {count(len(self.failures), 'failure')} collected"
        return line

    def notes(self) -> list[str]:
        """Lines about calls cancelled and threads left running."""
        notes = []
        if self.cancelled_calls:
            notes.append(
                f"cancelled {count(self.cancelled_calls, 'call')} still running"
            )
        if self.abandoned_threads:
            notes.append(
                f"{count(self.abandoned_threads, 'worker thread')} of sync tools "
                "were still running and were left to finish"
            )
        return notes

    def rows(self) -> list[tuple[str, ...]]:
        """The per-tool table, without its header."""
        return [
            (
                name,
                f"{t.calls:,}",
                f"{t.failures:,}",
                f"{t.retries:,}",
                f"{t.timeouts:,}",
                f"{t.rate_limited:,}",
                latency(t.p50),
                latency(t.p95),
            )
            for name, t in self.tools.items()
        ]

    def failure_lines(self) -> list[str]:
        """``path: Type: message`` for the first collected failures."""
        lines = [
            f"{show_path(f.path)}: {type(f.error).__name__}: {f.error}"
            for f in self.failures[:MAX_FAILURES]
        ]
        if len(self.failures) > MAX_FAILURES:
            lines.append(f"... and {len(self.failures) - MAX_FAILURES} more")
        return lines

    def step_lines(self) -> list[tuple[int, str, str]]:
        """``(depth, name, what happened)`` for every step that started."""
        stopped = "cancelled" if self.outcome is not Outcome.FINISHED else "running"
        lines = []
        for step in self.steps:
            if step.state is State.WAITING:
                continue
            if step.state is State.DONE:
                what = f"done in {duration(step.elapsed(0.0))}"
            elif step.state is State.FAILED:
                error = step.error
                # An error passes up unchanged through the steps around the
                # one that raised it: print it once, at that step.
                shown = not any(
                    s.parent is step and s.error is error for s in self.steps
                )
                why = f": {_short(error)}" if error is not None and shown else ""
                what = f"failed after {duration(step.elapsed(0.0))}{why}"
            else:
                what = stopped
            done = _parts_done(step)
            lines.append((step.depth, step_name(step), f"{done}{what}"))
        waiting = sum(1 for s in self.steps if s.state is State.WAITING)
        if waiting:
            lines.append((0, "", f"{count(waiting, 'step')} never started"))
        return lines


def _parts_done(step: StepProgress) -> str:
    if step.unit is None:
        return ""
    total = f"/{step.total:,}" if step.total is not None else ""
    failed = f" ({step.failed:,} failed)" if step.failed else ""
    return f"{step.done + step.failed:,}{total} {step.unit}{failed}, "


def _short(error: BaseException) -> str:
    if isinstance(error, StepFailed):
        error = error.error
    text = f"{type(error).__name__}: {error}"
    first = text.splitlines()[0] if text else text
    return first if len(first) <= 200 else first[:197] + "..."


def print_plain(summary: Summary, stream: IO[str]) -> None:
    """The summary as plain text, for logs and pipes."""
    out = [f"plait: {summary.headline()}"]
    if summary.outcome is not Outcome.FINISHED:
        steps = summary.step_lines()
        if steps:
            out.append("  steps:")
            for depth, name, what in steps:
                label = f"{name}: " if name else ""
                out.append(f"    {'  ' * depth}{label}{what}")
    if summary.tools:
        rows = [_COLUMNS, *summary.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
        for row in rows:
            cells = [
                row[0].ljust(widths[0]),
                *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)),
            ]
            out.append("  " + "  ".join(cells).rstrip())
    if summary.failures:
        out.append("  failures:")
        out.extend(f"    {line}" for line in summary.failure_lines())
    out.extend(f"  {note}" for note in summary.notes())
    stream.write("\n".join(out) + "\n")
    stream.flush()


def print_rich(summary: Summary, console: Console) -> None:
    """The summary as a rich table, for a terminal."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    style = {
        Outcome.FINISHED: "bold green" if not summary.failures else "bold yellow",
        Outcome.FAILED: "bold red",
        Outcome.INTERRUPTED: "bold yellow",
    }[summary.outcome]
    console.print(
        Text.assemble(("plait ", "bold magenta"), (summary.headline(), style))
    )
    if summary.outcome is not Outcome.FINISHED:
        for depth, name, what in summary.step_lines():
            line = Text("  " * (depth + 1))
            if name:
                line.append(name, style="cyan")
                line.append(": ")
            line.append(what)
            console.print(line)
    if summary.tools:
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
        for i, column in enumerate(_COLUMNS):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in summary.rows():
            table.add_row(*row)
        console.print(table)
    if summary.failures:
        console.print(Text("failures:", style="bold yellow"))
        for failure in summary.failure_lines():
            console.print(Text(f"  {failure}"))
    for note in summary.notes():
        console.print(Text(note, style="dim"))
