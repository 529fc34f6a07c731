"""Checks that every journal store must pass, shared by its test modules."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

import plait
from plait import Call


async def check_a_running_id_is_refused(
    make_journal: Callable[[], plait.Journal], run_id: str
) -> None:
    """While run ``run_id`` goes on, another engine is refused it; then it resumes.

    Each engine gets its own journal from ``make_journal`` (the same store),
    as engines in other processes would; a run without an id, going on at
    the same time, claims nothing.
    """
    started, release = anyio.Event(), anyio.Event()

    @plait.tool
    async def wait() -> int:
        started.set()
        await release.wait()
        return 1

    engine = plait.Engine(tools=[wait], journal=make_journal())
    other = plait.Engine(tools=[wait], journal=make_journal())
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.execute, Call("wait"), None)
        tg.start_soon(lambda: engine.execute(Call("wait"), run_id=run_id))
        await started.wait()
        with pytest.raises(plait.JournalError, match="running in another"):
            await other.execute(Call("wait"), run_id=run_id)
        release.set()
    # Once it ended, the id can be resumed.
    assert await other.run(Call("wait"), run_id=run_id) == 1
