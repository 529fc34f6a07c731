"""swarms: ``run_agents_concurrently(agents, task, max_workers=...)``.

It submits every agent's ``run`` to a thread pool of ``max_workers``
threads, 95% of the CPU count by default (one thread on two cores), and
collects the outputs in input order, a failing agent's exception in its
place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from _jobs import TASK
from swarms.structs.multi_agent_exec import run_agents_concurrently

PACKAGES = ("swarms",)
BACKENDS = ("threads",)
TUNED_ONLY = False
AGENTS_ONLY = "runs agents' run(task) only: no calls with keyword arguments"
UNSUPPORTED = {
    "fanout": AGENTS_ONLY,
    "rate": "no rate limiting",
    "failfast": "no fail-fast: a failing agent's exception comes back in its "
    "place once every agent has finished",
    "memory": "takes a list of agent objects: no lazy input, no reduce",
}
sleep = asyncio.sleep


def blocking(agents: Sequence[Any], width: int | None, backend: str) -> list[Any]:
    """``run_agents_concurrently``, ``max_workers`` only when tuned."""
    return run_agents_concurrently(list(agents), TASK, max_workers=width)


async_agents = blocking  # the same helper; async agents are not awaited
