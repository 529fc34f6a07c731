"""The progress display of ``plait run``: live with rich, or plain lines.

A display is a context manager around the whole run (outside the event
loop) with an async :meth:`run` that refreshes it from inside the loop until
cancelled, so it works the same on every backend and never reads the
tracker from another thread. There is one line per running step outside
the maps, indented like the step tree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Protocol

import anyio

from .._model._paths import show_path
from ._format import count, duration, rate
from ._tracker import RunTracker, StepProgress

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = [
    "Display",
    "LiveDisplay",
    "NoDisplay",
    "PlainDisplay",
    "headline",
    "step_name",
    "step_status",
]

#: At most this many step lines; the rest are counted in one more line.
MAX_LINES = 20


def step_name(step: StepProgress) -> str:
    """``steps[1] map_reduce count_words``: the path, the kind, the label."""
    name = f"{show_path(step.path)} {step.kind}"
    return f"{name} {step.label}" if step.label else name


def step_status(step: StepProgress, now: float) -> str:
    """What a running step has done: parts done, rate, failures, ETA."""
    finished = step.done + step.failed
    parts: list[str] = []
    if step.kind == "map_reduce":
        total = f"/{step.total:,}" if step.total is not None else ""
        eta = step.eta(now)
        parts = [
            f"{finished:,}{total} items",
            rate(step.rate(now)),
            count(step.failed, "failed"),
            count(step.retries, "retry"),
            count(step.waits, "wait"),
            f"ETA {duration(eta) if eta is not None else '?'}",
        ]
        return ", ".join(parts)
    if step.unit is not None:
        parts.append(f"{finished}/{step.total} {step.unit}")
        if step.failed:
            parts.append(count(step.failed, "failed"))
    else:
        parts.append("running")
    parts.append(duration(step.elapsed(now)))
    if step.retries:
        parts.append(count(step.retries, "retry"))
    if step.waits:
        parts.append(count(step.waits, "wait"))
    return ", ".join(parts)


def headline(tracker: RunTracker, now: float) -> str:
    """The run as a whole: time, calls, failures, retries, waits.

    Then, once a service pushed back, how often, and the adaptive limits
    that moved (``limit api=6``).
    """
    parts = [
        duration(tracker.elapsed(now)),
        count(tracker.calls, "call"),
        f"{len(tracker.in_flight):,} running",
        count(tracker.failures, "failed"),
        count(tracker.retries, "retry"),
        count(tracker.waits, "rate-limit wait"),
    ]
    if tracker.pushed_back:
        parts.append(count(tracker.pushed_back, "pushed back"))
    limits = tracker.limits()
    if limits:
        parts.append("limit " + " ".join(f"{k}={v}" for k, v in limits.items()))
    return ", ".join(parts)


class Display(Protocol):
    """What ``plait run`` needs of a progress display."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...

    async def run(self) -> None:
        """Show progress until cancelled (from inside the event loop)."""
        ...


class NoDisplay:
    """``--quiet``: shows nothing."""

    def __enter__(self) -> NoDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    async def run(self) -> None:
        pass


class PlainDisplay:
    """Plain progress lines on a stream (stderr), every ``interval`` seconds.

    The first line says the run started; then each report is a line for the
    whole run followed by one line per running step.
    """

    def __init__(
        self,
        tracker: RunTracker,
        stream: IO[str],
        interval: float,
        start_line: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker = tracker
        self.stream = stream
        self.interval = interval
        self.start_line = start_line
        self.clock = clock

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    async def run(self) -> None:
        self._print([self.start_line])
        while True:
            await anyio.sleep(self.interval)
            self._print(self.lines())

    def lines(self) -> list[str]:
        """One report: the run's line, then a line per running step."""
        now = self.clock()
        lines = [f"plait: {headline(self.tracker, now)}"]
        running = self.tracker.running()
        for step in running[:MAX_LINES]:
            indent = "  " * (step.depth + 1)
            lines.append(f"{indent}{step_name(step)}: {step_status(step, now)}")
        if len(running) > MAX_LINES:
            lines.append(f"  ... and {len(running) - MAX_LINES} more steps running")
        return lines

    def _print(self, lines: list[str]) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()


class LiveDisplay:
    """A live rich display on ``console``, redrawn every ``interval`` seconds."""

    def __init__(
        self,
        tracker: RunTracker,
        console: Console,
        interval: float,
        title: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from rich.live import Live

        self.tracker = tracker
        self.interval = interval
        self.title = title
        self.clock = clock
        self._spinners: dict[str, Any] = {}
        self.live = Live(
            console=console,
            auto_refresh=False,
            transient=True,
            get_renderable=self.render,
        )

    def __enter__(self) -> LiveDisplay:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    async def run(self) -> None:
        while True:
            self.live.refresh()
            await anyio.sleep(self.interval)

    def render(self) -> RenderableType:
        """The display now: a headline and a row per running step."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        now = self.clock()
        head = Text.assemble(
            ("plait ", "bold magenta"),
            (self.title, "bold"),
            "  ",
            headline(self.tracker, now),
        )
        table = Table.grid(padding=(0, 1))
        table.add_column(width=1)
        table.add_column(no_wrap=True)
        table.add_column(width=20)
        table.add_column(no_wrap=True, overflow="ellipsis")
        running = self.tracker.running()
        for step in running[:MAX_LINES]:
            spinner = self._spinners.get(step.path)
            if spinner is None:
                spinner = self._spinners[step.path] = Spinner("dots", style="cyan")
            name = Text("  " * step.depth)
            name.append(show_path(step.path), style="cyan")
            name.append(f" {step.kind}", style="dim")
            if step.label:
                name.append(f" {step.label}", style="bold")
            bar: RenderableType = Text("")
            if step.unit is not None:
                bar = ProgressBar(
                    total=step.total, completed=step.done + step.failed, width=20
                )
            table.add_row(spinner, name, bar, Text(step_status(step, now)))
        parts: list[RenderableType] = [head, table]
        if len(running) > MAX_LINES:
            parts.append(Text(f"... and {len(running) - MAX_LINES} more steps running"))
        return Group(*parts)
