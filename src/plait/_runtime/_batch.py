"""Running a list of prepared tool calls: results in order, a bounded number at once.

``Engine.call_tools`` and the :mod:`plait.agents` helpers both hand over a
list of calls whose pipelines are already built. A fixed pool of workers
pulls the next call as soon as one finishes (no batch barrier), so at most
``width`` calls are in flight and a slow call never holds up the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import attrs

from .._calls._invoker import Invoker
from .._concurrency._groups import raise_collapsed
from .._model._errors import StepFailed
from ._failures import to_failure

__all__ = ["PreparedCall", "run_calls"]


@attrs.frozen(eq=False)
class PreparedCall:
    """One call of a batch: its pipeline, its arguments and its path."""

    invoker: Invoker
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    path: str


async def run_calls(
    count: int,
    prepare: Callable[[int], PreparedCall],
    *,
    collect: bool,
    width: int | None = None,
) -> list[Any]:
    """Run calls ``prepare(0)`` to ``prepare(count - 1)``, at most ``width`` at once.

    ``prepare(i)`` is called by the worker about to make call ``i``, so that
    building many pipelines overlaps with the calls already waiting on I/O
    instead of delaying the first one. ``width`` None runs them all at once.
    Returns the results in call order. In collect mode a failed
    call's result is a :class:`plait.Failure` at its path; otherwise the
    first failure cancels the calls still running and is raised as
    :class:`plait.StepFailed` at its path (an ``ExceptionGroup`` of them when
    several failed at once). ``width=1`` runs the calls one after another in
    the caller's task.
    """
    results: list[Any] = [None] * count

    async def one(i: int) -> None:
        call = prepare(i)
        try:
            results[i] = await call.invoker(call.args, call.kwargs, call.path, ())
        except Exception as error:
            if not collect:
                raise StepFailed(call.path, error) from error
            results[i] = to_failure(error, call.path)

    workers = count if width is None else min(width, count)
    if workers <= 1:
        for i in range(count):
            await one(i)
        return results

    pending = iter(range(count))

    async def worker() -> None:
        for i in pending:
            await one(i)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)
    except BaseExceptionGroup as group:
        raise_collapsed(group)
    return results
