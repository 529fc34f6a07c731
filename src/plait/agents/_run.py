"""Run many agents at once: the ``run_agents_*`` helpers and their async twins.

Every helper returns the agents' outputs in input order. Agents run through
plait's call pipeline: at most ``batch_size`` in flight (a slot frees as
soon as its agent finishes, with no batch barrier), blocking agents on at
most ``max_workers`` worker threads, async agents on the event loop, each
with an optional timeout and :class:`plait.Retry`. By default a failing agent
leaves a :class:`plait.Failure` in its place and the others' outputs are
kept; ``on_error="raise"`` cancels the rest and raises
:class:`plait.StepFailed`.

The sync functions start an event loop of their own (uvloop when installed);
inside a running loop use the ``a``-prefixed twin.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import anyio

from .._calls._context import RunContext
from .._concurrency._groups import raise_collapsed
from .._concurrency._limits import Limiter
from .._model._errors import ConfigError
from .._model._events import EventBus
from .._model._paths import index
from .._model._retry import Retry
from .._model._tools import is_async_callable
from .._model._validate import check_seconds, instance_of, one_of
from .._runtime._batch import PreparedCall, run_calls
from .._runtime._run import run_sync
from ._adapt import agent_name, entry_point
from ._pipelines import AgentPipelines
from ._resources import ResourceMonitor

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "arun_agents_concurrently",
    "arun_agents_sequentially",
    "arun_agents_with_different_tasks",
    "arun_agents_with_resource_monitoring",
    "arun_agents_with_timeout",
    "run_agents_concurrently",
    "run_agents_sequentially",
    "run_agents_with_different_tasks",
    "run_agents_with_resource_monitoring",
    "run_agents_with_timeout",
]

logger = logging.getLogger("plait.agents")

_RETRY = instance_of(Retry).or_none()
_ON_ERROR = one_of("collect", "raise")

#: Agents in flight (and worker threads) when ``batch_size`` is not given.
#: Agents mostly wait on the network, so this is sized for I/O, not for the
#: number of CPUs.
DEFAULT_BATCH_SIZE = 64

OnError = Literal["collect", "raise"]
T = TypeVar("T")


def _width(value: object, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what} must be an int >= 1 or None, got {value!r}")
    return value


def _agent_list(agents: object) -> list[Any]:
    if isinstance(agents, str | bytes) or not isinstance(agents, Iterable):
        raise ConfigError(
            f"agents must be a list of agents, got {type(agents).__name__} {agents!r}"
        )
    return list(agents)


def _pair_list(pairs: object) -> list[tuple[Any, Any]]:
    if isinstance(pairs, str | bytes) or not isinstance(pairs, Iterable):
        raise ConfigError(f"pairs must be a list of (agent, task) pairs, got {pairs!r}")
    checked = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ConfigError(
                f"{index('pairs', i)} must be an (agent, task) pair, got {pair!r}"
            )
        checked.append((pair[0], pair[1]))
    return checked


async def _run_pairs(
    pairs: Sequence[tuple[Any, Any]],
    *,
    base: str,
    batch_size: object = None,
    max_workers: object = None,
    timeout: object = None,
    retry: object = None,
    on_error: object = "collect",
    monitor: ResourceMonitor | None = None,
) -> list[Any]:
    """Run ``agent(task)`` for every pair; the outputs in order.

    Failure paths are ``<base>[i]``. With a ``monitor``, a task beside the
    agents changes the number allowed in flight as resources allow.
    """
    width, threads = _widths(batch_size, max_workers)
    seconds = check_seconds(timeout, "timeout")
    _RETRY.check(retry, "retry")
    _ON_ERROR.check(on_error, "on_error")
    run = _agents_run(width, threads)
    pipelines = AgentPipelines(run, timeout=seconds, retry=retry)  # type: ignore[arg-type]
    # Every agent is checked before any runs; its pipeline is looked up by
    # the worker about to run it.
    entries = []
    for i, (agent, task) in enumerate(pairs):
        call = entry_point(agent, index(base, i))
        entries.append((call, is_async_callable(call), agent_name(agent), task))

    def prepare(i: int) -> PreparedCall:
        call, is_async, name, task = entries[i]
        invoker = pipelines.get(name, is_async)
        return PreparedCall(invoker, (call, task), {}, index(base, i))

    batch = functools.partial(
        run_calls, len(entries), prepare, collect=on_error == "collect", width=width
    )
    try:
        if monitor is None:
            return await batch()
        return await _monitored(batch, monitor, run.engine_limiter, width)
    finally:
        _warn_of_abandoned_threads(run)


def _widths(batch_size: object, max_workers: object) -> tuple[int, int]:
    """Agents in flight and threads: each defaults to the other, else 64."""
    width = _width(batch_size, "batch_size")
    threads = _width(max_workers, "max_workers")
    if width is None:
        width = threads or DEFAULT_BATCH_SIZE
    return width, width if threads is None else threads


def _agents_run(width: int, threads: int) -> RunContext:
    """The limits and state the agents of one call share."""
    return RunContext(
        events=EventBus(),
        engine_limiter=Limiter(width, "agents in flight"),
        engine_bucket=None,
        middleware=(),
        thread_limiter=Limiter(threads, "agent threads"),
        # A blocking agent past its timeout frees its place in the batch at
        # once; its thread, which cannot be killed, stays counted against
        # max_workers until it returns.
        slots_follow_threads=False,
    )


async def _monitored(
    batch: Callable[[], Awaitable[list[Any]]],
    monitor: ResourceMonitor,
    limiter: Limiter,
    width: int,
) -> list[Any]:
    """Run ``batch`` with ``monitor`` changing ``limiter`` beside it."""
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(monitor.watch, limiter, width)
            results = await batch()
            tg.cancel_scope.cancel()
        return results
    except BaseExceptionGroup as group:
        # The monitor's task group wraps the agents' error: unwrap it, so
        # that a monitored run fails as an unmonitored one does.
        raise_collapsed(group)


def _warn_of_abandoned_threads(run: RunContext) -> None:
    if run.abandoned_threads:
        logger.warning(
            "%d blocking agent(s) timed out or were cancelled while their "
            "threads still ran; each thread counts against max_workers "
            "until it returns (call plait.check_cancelled() in long agents "
            "to stop them early)",
            run.abandoned_threads,
        )


def _blocking(
    afn: Callable[..., Awaitable[T]],
    backend: str | None,
    *args: Any,
    **kwargs: Any,
) -> T:
    """Run the async twin ``afn`` on a new event loop of ``backend``."""
    name = afn.__name__
    return run_sync(  # type: ignore[no-any-return]
        functools.partial(afn, *args, **kwargs),
        backend=backend,
        what=f"plait.agents.{name[1:]}()",
        instead=f"await plait.agents.{name}(...)",
    )


# -- async twins ---------------------------------------------------------------


async def arun_agents_concurrently(
    agents: Iterable[Any],
    task: Any,
    batch_size: int | None = None,
    max_workers: int | None = None,
    *,
    timeout: float | None = None,
    retry: Retry | None = None,
    on_error: OnError = "collect",
) -> list[Any]:
    """Run every agent on ``task`` at once; see :func:`run_agents_concurrently`."""
    return await _run_pairs(
        [(agent, task) for agent in _agent_list(agents)],
        base="agents",
        batch_size=batch_size,
        max_workers=max_workers,
        timeout=timeout,
        retry=retry,
        on_error=on_error,
    )


async def arun_agents_sequentially(
    agents: Iterable[Any],
    task: Any,
    *,
    timeout: float | None = None,
    retry: Retry | None = None,
    on_error: OnError = "collect",
) -> list[Any]:
    """Run the agents one after another; see :func:`run_agents_sequentially`."""
    return await _run_pairs(
        [(agent, task) for agent in _agent_list(agents)],
        base="agents",
        batch_size=1,
        timeout=timeout,
        retry=retry,
        on_error=on_error,
    )


async def arun_agents_with_different_tasks(
    pairs: Iterable[tuple[Any, Any]],
    batch_size: int | None = None,
    max_workers: int | None = None,
    *,
    timeout: float | None = None,
    retry: Retry | None = None,
    on_error: OnError = "collect",
) -> list[Any]:
    """Run each agent on its own task; see :func:`run_agents_with_different_tasks`."""
    return await _run_pairs(
        _pair_list(pairs),
        base="pairs",
        batch_size=batch_size,
        max_workers=max_workers,
        timeout=timeout,
        retry=retry,
        on_error=on_error,
    )


async def arun_agents_with_timeout(
    agents: Iterable[Any],
    task: Any,
    timeout: float,
    batch_size: int | None = None,
    max_workers: int | None = None,
    *,
    retry: Retry | None = None,
    on_error: OnError = "collect",
) -> list[Any]:
    """Run the agents with a time limit each; see :func:`run_agents_with_timeout`."""
    if timeout is None:
        raise ConfigError("timeout must be a number of seconds > 0, got None")
    return await arun_agents_concurrently(
        agents,
        task,
        batch_size,
        max_workers,
        timeout=timeout,
        retry=retry,
        on_error=on_error,
    )


async def arun_agents_with_resource_monitoring(
    agents: Iterable[Any],
    task: Any,
    cpu_threshold: float = 90.0,
    memory_threshold: float = 90.0,
    check_interval: float = 1.0,
    *,
    batch_size: int | None = None,
    max_workers: int | None = None,
    monitor: ResourceMonitor | None = None,
    timeout: float | None = None,
    retry: Retry | None = None,
    on_error: OnError = "collect",
) -> list[Any]:
    """Run the agents, fewer at once while the machine is loaded.

    See :func:`run_agents_with_resource_monitoring`.
    """
    if monitor is None:
        monitor = ResourceMonitor(
            cpu_threshold=cpu_threshold,
            memory_threshold=memory_threshold,
            check_interval=check_interval,
        )
    elif not isinstance(monitor, ResourceMonitor):
        raise ConfigError(
            f"monitor must be a plait.agents.ResourceMonitor or None, got {monitor!r}"
        )
    return await _run_pairs(
        [(agent, task) for agent in _agent_list(agents)],
        base="agents",
        batch_size=batch_size,
        max_workers=max_workers,
        timeout=timeout,
        retry=retry,
        on_error=on_error,
        monitor=monitor,
    )


# -- sync functions --------------------------------------------------------------


def run_agents_concurrently(
    agents: Iterable[Any],
    task: Any,
    batch_size: int | None = None,
    max_workers: int | None = None,
    *,
    timeout: float | None = None,
    retry: Retry | None = None,
    on_error: OnError = "collect",
    backend: str | None = None,
) -> list[Any]:
    """Run every agent on ``task`` at once; return their outputs in input order.

    Args:
        agents: objects with ``run(task)`` (sync or async) or
            ``arun(task)``, or plain callables.
        task: what every agent is given.
        batch_size: agents in flight at once; a slot frees as soon as its
            agent finishes. Default 64 (:data:`DEFAULT_BATCH_SIZE`), or
            ``max_workers`` when only that is given.
        max_workers: worker threads for blocking agents; default
            ``batch_size``.
        timeout: seconds per attempt of each agent; one past it gives a
            :class:`plait.Failure` holding a :class:`plait.ToolTimeout`.
        retry: a :class:`plait.Retry` for each agent.
        on_error: ``"collect"`` (a :class:`plait.Failure` in a failed
            agent's place, at path ``agents[i]``) or ``"raise"`` (cancel the
            rest and raise :class:`plait.StepFailed`).
        backend: ``None`` (uvloop when installed), ``"asyncio"``,
            ``"uvloop"`` or ``"trio"``.

    Raises:
        RuntimeError: called with a running event loop in this thread; use
            :func:`arun_agents_concurrently` there.
    """
    return _blocking(
        arun_agents_concurrently,
        backend,
        agents,
        task,
        batch_size,
        max_workers,
        timeout=timeout,
        retry=retry,
        on_error=on_error,
    )


def run_agents_sequentially(
    agents: Iterable[Any],
    task: Any,
    *,
    timeout: float | None = None,
    retry: Retry | None = None,
    on_error: OnError = "collect",
    backend: str | None = None,
) -> list[Any]:
    """Run the agents one after another on ``task``; their outputs in order.

    A baseline for comparison and debugging. Options as for
    :func:`run_agents_concurrently`.
    """
    return _blocking(
        arun_agents_sequentially,
        backend,
        agents,
        task,
        timeout=timeout,
        retry=retry,
        on_error=on_error,
    )


def run_agents_with_different_tasks(
    pairs: Iterable[tuple[Any, Any]],
    batch_size: int | None = None,
    max_workers: int | None = None,
    *,
    timeout: float | None = None,
    retry: Retry | None = None,
    on_error: OnError = "collect",
    backend: str | None = None,
) -> list[Any]:
    """Run each ``(agent, task)`` pair at once; the outputs in order of ``pairs``.

    An agent may appear in several pairs. Failure paths are ``pairs[i]``.
    Options as for :func:`run_agents_concurrently`.
    """
    return _blocking(
        arun_agents_with_different_tasks,
        backend,
        pairs,
        batch_size,
        max_workers,
        timeout=timeout,
        retry=retry,
        on_error=on_error,
    )


def run_agents_with_timeout(
    agents: Iterable[Any],
    task: Any,
    timeout: float,
    batch_size: int | None = None,
    max_workers: int | None = None,
    *,
    retry: Retry | None = None,
    on_error: OnError = "collect",
    backend: str | None = None,
) -> list[Any]:
    """Run the agents at once, each for at most ``timeout`` seconds.

    An agent past its timeout gives a :class:`plait.Failure` whose error is
    a :class:`plait.ToolTimeout`, in its place; the others' outputs are
    kept. A blocking agent's thread cannot be killed: it keeps its slot
    until it returns (so the limits stay true) and is logged as abandoned.
    Options as for :func:`run_agents_concurrently`.
    """
    return _blocking(
        arun_agents_with_timeout,
        backend,
        agents,
        task,
        timeout,
        batch_size,
        max_workers,
        retry=retry,
        on_error=on_error,
    )


def run_agents_with_resource_monitoring(
    agents: Iterable[Any],
    task: Any,
    cpu_threshold: float = 90.0,
    memory_threshold: float = 90.0,
    check_interval: float = 1.0,
    *,
    batch_size: int | None = None,
    max_workers: int | None = None,
    monitor: ResourceMonitor | None = None,
    timeout: float | None = None,
    retry: Retry | None = None,
    on_error: OnError = "collect",
    backend: str | None = None,
) -> list[Any]:
    """Run the agents at once, fewer in flight while CPU or memory is high.

    Every ``check_interval`` seconds a monitor reads
    :class:`ResourceMetrics`: over either threshold it halves the number of
    agents allowed in flight (never below 1); under both it raises it by a
    quarter of ``batch_size`` (never above it). Agents already running are
    never interrupted. Pass your own :class:`ResourceMonitor` as ``monitor``
    to read the metrics it saw and the limits it set
    (``monitor.samples``, ``monitor.limits``); then the three threshold
    arguments are taken from it. Other options as for
    :func:`run_agents_concurrently`.
    """
    return _blocking(
        arun_agents_with_resource_monitoring,
        backend,
        agents,
        task,
        cpu_threshold,
        memory_threshold,
        check_interval,
        batch_size=batch_size,
        max_workers=max_workers,
        monitor=monitor,
        timeout=timeout,
        retry=retry,
        on_error=on_error,
    )
