"""Tools: the functions a workflow calls, with their own limits and policies."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, overload

import attrs

from ._backpressure import Adaptive
from ._ratelimit import RateLimit
from ._retry import Retry
from ._validate import CALLABLE, COUNT, SECONDS, Rule, instance_of

__all__ = ["CONCURRENCY_LIMIT", "Tool", "is_async_callable", "tool"]


def is_async_callable(fn: object) -> bool:
    """True for ``async def`` functions, methods and callables with one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004
    return (
        call is not None
        and not inspect.isfunction(fn)
        and (inspect.iscoroutinefunction(call))
    )


#: A tool's ``concurrency_limit``: fixed, or adaptive.
CONCURRENCY_LIMIT = Rule(
    "an int >= 1 or a plait.Adaptive",
    lambda v: COUNT.ok(v) or isinstance(v, Adaptive),
).or_none()

_TOOL_NAME = Rule("a non-empty str", lambda v: isinstance(v, str) and bool(v))


@attrs.frozen(repr=False)
class Tool:
    """A function a workflow can call, with its own limits and policies.

    Build one with :func:`tool`. A ``Tool`` is still callable like the
    function it wraps.

    Attributes:
        fn: the sync or async function.
        name: the name workflows use in ``Call("name", ...)``.
        concurrency_limit: at most this many calls at once per engine; None
            means bounded only by the engine's ``max_concurrency``; a
            :class:`plait.Adaptive` limit follows what the service takes.
        timeout: seconds per attempt, or None.
        retry: a :class:`Retry` policy, or None for a single attempt.
        rate_limit: a :class:`RateLimit` for this tool, per engine.
        journal: whether an engine with a journal records this tool's calls
            and replays them on resume; False runs the tool again on every
            resume (a clock, a random draw, a health check).
        is_async: whether ``fn`` is a coroutine function (sync ones run on
            worker threads).
    """

    fn: Callable[..., Any] = attrs.field(validator=CALLABLE)
    name: str = attrs.field(validator=_TOOL_NAME)
    concurrency_limit: int | Adaptive | None = attrs.field(
        default=None, kw_only=True, validator=CONCURRENCY_LIMIT
    )
    timeout: float | None = attrs.field(
        default=None, kw_only=True, validator=SECONDS.or_none()
    )
    retry: Retry | None = attrs.field(
        default=None, kw_only=True, validator=instance_of(Retry).or_none()
    )
    rate_limit: RateLimit | None = attrs.field(
        default=None, kw_only=True, validator=instance_of(RateLimit).or_none()
    )
    journal: bool = attrs.field(default=True, kw_only=True, validator=instance_of(bool))
    is_async: bool = attrs.field(init=False, eq=False)

    @is_async.default
    def _is_async_default(self) -> bool:
        return is_async_callable(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        opts = "".join(
            f", {f}={getattr(self, f)!r}"
            for f in ("concurrency_limit", "timeout", "retry", "rate_limit")
            if getattr(self, f) is not None
        )
        if not self.journal:
            opts += ", journal=False"
        return f"Tool({self.name!r}{opts})"

    @classmethod
    def of(cls, target: Tool | Callable[..., Any]) -> Tool:
        """``target`` itself if it is a Tool, else a Tool with default options."""
        if isinstance(target, Tool):
            return target
        return cls(target, _default_name(target))


def _default_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return str(name)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    concurrency_limit: int | Adaptive | None = None,
    timeout: float | None = None,
    retry: Retry | None = None,
    rate_limit: RateLimit | None = None,
    journal: bool = True,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    concurrency_limit: int | Adaptive | None = None,
    timeout: float | None = None,
    retry: Retry | None = None,
    rate_limit: RateLimit | None = None,
    journal: bool = True,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a sync or async function a :class:`Tool`.

    Use it bare (``@plait.tool``) or with options
    (``@plait.tool(concurrency_limit=4, timeout=10, retry=plait.Retry())``).
    The name defaults to the function's ``__name__``. ``journal=False``
    keeps the tool's calls out of an engine's journal (see
    :class:`plait.SqliteJournal`): they run again on every resume.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(
            f,
            name if name is not None else _default_name(f),
            concurrency_limit=concurrency_limit,
            timeout=timeout,
            retry=retry,
            rate_limit=rate_limit,
            journal=journal,
        )

    if fn is not None:
        return wrap(fn)
    return wrap
