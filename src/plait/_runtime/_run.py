"""The synchronous entry point: ``plait.run`` picks a backend and runs one workflow."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .._concurrency._loops import BACKENDS, resolve_backend, run_sync
from .._model._steps import Step, Workflow
from ._engine import Engine, ToolSpec

__all__ = ["BACKENDS", "resolve_backend", "run", "run_sync"]


def run(
    workflow: Workflow | Step,
    inputs: Mapping[str, Any] | None = None,
    *,
    backend: str | None = None,
    tools: Iterable[ToolSpec] = (),
    deadline: float | None = None,
    run_id: str | None = None,
    **engine_kw: Any,
) -> Any:
    """Run a workflow from synchronous code and return its output.

    Builds an :class:`Engine` from ``tools`` and ``engine_kw`` and runs the
    workflow on a new event loop. ``backend`` is None (uvloop if installed,
    else asyncio), ``"asyncio"``, ``"uvloop"`` or ``"trio"``. With
    ``journal=`` (an engine option) and ``run_id``, running again resumes
    the run (see :meth:`Engine.execute`).

    Raises:
        RuntimeError: when an event loop is already running in this thread;
            use ``await engine.run(...)`` there.
    """
    engine = Engine(tools=tools, **engine_kw)

    async def main() -> Any:
        return await engine.run(workflow, inputs, deadline=deadline, run_id=run_id)

    return run_sync(main, backend=backend, what="plait.run()")
