"""Values that runs give back: failures in collect mode and whole-run results."""

from __future__ import annotations

from typing import Any

import attrs

from ._paths import show_path
from ._stats import RunStats

__all__ = ["Failure", "RunResult"]


@attrs.frozen(eq=False)
class Failure:
    """What collect mode puts in place of a result that failed.

    Attributes:
        error: the original exception raised by the tool, expression or
            step (a :class:`plait.ToolTimeout` or :class:`plait.StepTimeout`
            for timeouts), never a wrapper.
        path: the path of the step that failed, e.g. ``steps[1].map[17]``.
    """

    error: BaseException
    path: str

    def __repr__(self) -> str:
        return (
            f"Failure({type(self.error).__name__}({str(self.error)!r}), "
            f"path={show_path(self.path)!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Failure):
            return NotImplemented
        return self.path == other.path and (
            self.error is other.error
            or (
                type(self.error) is type(other.error)
                and self.error.args == other.error.args
            )
        )

    def __hash__(self) -> int:
        return hash((self.path, type(self.error)))


@attrs.frozen
class RunResult:
    """The whole outcome of :meth:`plait.Engine.execute`.

    Attributes:
        output: what ``Engine.run`` would have returned.
        failures: every :class:`Failure` that collect mode recorded, in the
            order they happened, including those a ``reduce`` skipped.
        stats: per-tool counters and latency percentiles.
        run_id: the run's id: the one given to ``run_id=``, or a new one.
            With a journal, running the same workflow with it resumes the run.
    """

    output: Any
    failures: tuple[Failure, ...]
    stats: RunStats
    run_id: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failures
