"""Which limits a remote map may run with: never silently unlimited.

A tool's ``concurrency_limit`` or ``rate_limit`` (and the engine's
``rate_limit``) is held by one engine. Spread over many worker processes, a
limit either holds across all of them (shared limits on a server) or once
per worker process, when the user asked for that with
``DaskExecutor(limits="per-worker")``. Anything else is refused here,
before the run starts: this is the one place that decides it.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._model._errors import ConfigError
from .._model._tools import Tool

__all__ = ["check_remote_limits"]


def check_remote_limits(
    tools: Iterable[Tool],
    *,
    registry_limited: Iterable[str] = (),
    engine_rate_limited: bool,
    mode: str,
    shared: bool = False,
    path: str = "",
) -> None:
    """Refuse limits that would not hold on the executor.

    Args:
        tools: the tools the remote map step calls.
        registry_limited: the names of those tools with a concurrency limit
            held by the engine's limiters (``Engine(limiters=...)``).
        engine_rate_limited: the engine has a ``rate_limit``.
        mode: the executor's ``limits``: ``"shared"`` or ``"per-worker"``.
        shared: the engine holds its limits on a server, exact across
            processes (``Engine(shared_limits=...)``); then every limit holds.
        path: the remote step's path, for the message.

    Raises:
        ConfigError: a limit would not hold, naming the tool and the fixes.
    """
    if shared or mode == "per-worker":
        return
    where = f" in the remote map at {path or '<root>'}"
    fixes = (
        "give the engine shared limits (Engine(shared_limits=...)) to hold it "
        'across the cluster, or DaskExecutor(limits="per-worker") to hold it '
        "in each worker process"
    )
    for tool in tools:
        for option in ("concurrency_limit", "rate_limit"):
            if getattr(tool, option) is not None:
                raise ConfigError(
                    f"tool {tool.name!r}{where} has a {option} that would not hold "
                    f"across worker processes; {fixes}"
                )
    for name in sorted(registry_limited):
        raise ConfigError(
            f"tool {name!r}{where} has a concurrency limit in Engine.limiters that "
            f"would not hold across worker processes; {fixes}"
        )
    if engine_rate_limited:
        raise ConfigError(
            f"Engine.rate_limit would not hold across worker processes{where}; {fixes}"
        )
