"""What counts as an agent, what it is called, and how it becomes a tool.

An agent is any object with an ``arun(task)`` coroutine method, a
``run(task)`` method (sync or async), or a plain callable. Blocking agents
run on worker threads through the engine's thread bridge; async ones run on
the event loop; a sync ``run`` that returns an awaitable has it awaited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._model._errors import ConfigError
from .._model._tools import Tool

__all__ = ["agent_name", "agent_tool", "entry_point"]

_EXPECTED = (
    "an agent: an object with a run(task) method or an arun(task) coroutine "
    "method, or a callable"
)


def agent_name(agent: object) -> str:
    """The agent's name: ``agent_name``, else ``name``, else ``__name__``.

    Falls back to the type's name, so that every agent has one to show in
    failures, events and statistics.
    """
    for attr in ("agent_name", "name", "__name__"):
        value = getattr(agent, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(agent).__name__


def entry_point(agent: object, what: str = "agent") -> Callable[..., Any]:
    """The callable that runs ``agent``: ``arun``, else ``run``, else itself.

    Raises:
        ConfigError: ``agent`` has none of them; the message names ``what``
            (e.g. ``agents[3]``) and what was expected.
    """
    for attr in ("arun", "run"):
        method = getattr(agent, attr, None)
        if callable(method):
            return method  # type: ignore[no-any-return]
    if callable(agent):
        return agent
    raise ConfigError(f"{what} must be {_EXPECTED}; got {agent!r}")


def agent_tool(agent: object, *, name: str | None = None, **options: Any) -> Tool:
    """A :class:`plait.Tool` that runs ``agent``, for use in workflows.

    ``Call(agent_tool(agent), Var("task"))`` runs the agent on a task inside
    any workflow, with the same limits, retries and timeouts as any tool.

    Args:
        agent: see :func:`entry_point`.
        name: the tool's name; the agent's name by default.
        **options: ``concurrency_limit``, ``timeout``, ``retry``,
            ``rate_limit``, as for :func:`plait.tool`.
    """
    return Tool(
        entry_point(agent),
        name if name is not None else agent_name(agent),
        **options,
    )
