"""Middleware: wrappers around every attempt of every tool call.

A middleware is any callable ``(call, call_next) -> awaitable``::

    async def log_calls(call: plait.ToolCall, call_next):
        print("calling", call.tool.name, "attempt", call.attempt)
        try:
            return await call_next(call)
        finally:
            print("done", call.path)

    engine = plait.Engine(tools=[...], middleware=[log_calls])

``call_next`` runs the rest of the chain: the next middleware, then the
engine's own rate limit, concurrency slot and timeout, then the tool. A
middleware may change the call (``attrs.evolve(call, kwargs=...)``), skip
``call_next`` and return a value (a cache), retry it, or raise. Middleware
runs once per attempt, inside the retry loop, in the order given (the first
is outermost). Time spent in middleware does not count against the tool's
per-attempt timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Protocol

import attrs

from .._concurrency._adaptive import AdaptiveLimit
from .._concurrency._bucket import TokenBucket
from .._concurrency._cooldown import CoolDown
from .._concurrency._limits import Limiter, LimiterRegistry
from .._model._backpressure import Adaptive
from .._model._errors import ConfigError, RateLimited
from .._model._events import EventKind
from .._model._paths import fill
from .._model._ratelimit import RateLimit
from .._model._tools import Tool
from ._admission import Admission, admission
from ._attempt import Attempt
from ._report import CallReport

__all__ = [
    "KeyedLimit",
    "KeyedRateLimit",
    "Middleware",
    "Next",
    "ToolCall",
    "chain",
    "with_middleware",
]


@attrs.frozen
class ToolCall:
    """One attempt of one tool call, as middleware sees it.

    Attributes:
        tool: the :class:`plait.Tool` called.
        args: positional arguments, evaluated.
        kwargs: keyword arguments, evaluated.
        path: the calling step's path (``steps[1].map[17]``), or
            ``calls[i]`` for :meth:`plait.Engine.call_tools`.
        attempt: 1 for the first try, 2 for the first retry, ...
        buckets: extra rate-limit buckets this attempt must take a token of,
            added by middleware such as :class:`KeyedRateLimit`. The engine
            takes them together with its own, at the instant the call starts.
        limiters: extra concurrency limiters this attempt must hold a slot
            of, added by middleware such as :class:`KeyedLimit`; held like the
            tool's own slot (a timed-out sync tool keeps them until its thread
            returns).
    """

    tool: Tool
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    path: str
    attempt: int = 1
    buckets: tuple[TokenBucket, ...] = ()
    limiters: tuple[Limiter, ...] = ()

    @property
    def name(self) -> str:
        """The tool's name."""
        return self.tool.name


Next = Callable[[ToolCall], Awaitable[Any]]
"""The type of ``call_next``: runs the rest of the chain for a :class:`ToolCall`."""


class Middleware(Protocol):
    """The middleware protocol: wrap ``call_next(call)``.

    A middleware is any callable ``(call, call_next) -> awaitable``, usually
    an ``async def``. ``call_next`` runs the rest of the chain: the next
    middleware, then the engine's own rate limit, concurrency slot and
    timeout, then the tool. A middleware may change the call
    (``attrs.evolve(call, kwargs=...)``), skip ``call_next`` and return a
    value (a cache), or raise; it must not replace ``call.tool``.

    Middleware runs once per attempt, inside the retry loop, in the order
    given to ``Engine(middleware=...)`` (the first is outermost). Time spent
    in middleware does not count against the tool's per-attempt timeout.
    """

    def __call__(self, call: ToolCall, call_next: Next, /) -> Awaitable[Any]: ...


def chain(middleware: tuple[Middleware, ...], core: Next) -> Next:
    """Compose ``middleware`` around ``core``; the first one is outermost."""
    handler = core
    for mw in reversed(middleware):
        handler = _link(mw, handler)
    return handler


def _link(mw: Middleware, call_next: Next) -> Next:
    def handler(call: ToolCall) -> Awaitable[Any]:
        return mw(call, call_next)

    return handler


_reporting: ContextVar[CallReport | None] = ContextVar(
    "plait_middleware_report", default=None
)
"""The report of the call whose middleware runs in this task (see below)."""


def with_middleware(
    attempt: Attempt,
    tool: Tool,
    middleware: tuple[Middleware, ...],
    limiters: tuple[Limiter, ...],
    buckets: tuple[TokenBucket, ...],
    make_admission: Callable[
        [tuple[Limiter, ...], tuple[TokenBucket, ...]], Admission
    ] = admission,
    *,
    report: CallReport | None = None,
) -> Attempt:
    """Run ``middleware`` around every ``attempt`` of ``tool``'s calls.

    ``limiters`` and ``buckets`` are the call's own limits: limits a
    middleware adds to the :class:`ToolCall` are taken together with them,
    by the admission ``make_admission`` builds. ``report``: the tool's, which
    plait's own middleware (a :class:`KeyedLimit`'s adaptive limits) reports
    to while the attempt runs.
    """

    async def core(c: ToolCall) -> Any:
        if c.tool is not tool:
            raise ConfigError(
                f"middleware replaced ToolCall.tool ({tool.name!r} with "
                f"{c.tool.name!r}); a middleware may change the arguments, "
                "not the tool"
            )
        extra = None
        if c.limiters or c.buckets:
            extra = make_admission(limiters + c.limiters, buckets + c.buckets)
        return await attempt(c.args, c.kwargs, _literal(c.path), (), c.attempt, extra)

    handler = chain(middleware, core)
    if report is not None:
        handler = _reporting_to(report, handler)

    def one_try(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
        number: int = 1,
        admission: Admission | None = None,
    ) -> Awaitable[Any]:
        return handler(ToolCall(tool, args, kwargs, fill(template, loc), number))

    return one_try


def _reporting_to(report: CallReport, handler: Next) -> Next:
    """``handler``, with ``report`` the current one while it runs.

    A context variable rather than a field of the public :class:`ToolCall`;
    reset when the attempt ends, so a tool calling tools in its own task
    leaves the outer call's report in force.
    """

    async def reporting(call: ToolCall) -> Any:
        token = _reporting.set(report)
        try:
            return await handler(call)
        finally:
            _reporting.reset(token)

    return reporting


def _literal(path: str) -> str:
    """A finished path as a template with no slots."""
    return path.replace("{", "{{").replace("}", "}}")


def _by_tool(call: ToolCall) -> str:
    return call.tool.name


class _Pauses:
    """The cool-downs of a keyed middleware, one per key (see :class:`CoolDown`)."""

    __slots__ = ("_gates", "_lock")

    def __init__(self) -> None:
        self._gates: dict[str, CoolDown] = {}
        self._lock = threading.Lock()

    def gate(self, key: str) -> CoolDown:
        try:
            return self._gates[key]
        except KeyError:
            with self._lock:
                return self._gates.setdefault(key, CoolDown())


class _KeyReport:
    """Where a key's adaptive limit reports: the calling tool's stats and events."""

    __slots__ = ("call", "key", "report")

    def __init__(self, report: CallReport, call: ToolCall, key: str) -> None:
        self.report = report
        self.call = call
        self.key = key

    def now(self, limit: int) -> None:
        """The key's limit as this tool's calls see it (in its stats)."""
        self.report.counters.key_limits[self.key] = limit

    def changed(self, limit: int | None) -> None:
        """The key's limit moved to ``limit`` (None: it did not)."""
        if limit is None:
            return
        self.now(limit)
        call = self.call
        self.report.note(
            EventKind.LIMIT_CHANGED,
            _literal(call.path),
            (),
            call.attempt,
            limit=limit,
            key=self.key,
        )


async def _under_backpressure(
    call: ToolCall,
    call_next: Next,
    gate: CoolDown,
    control: AdaptiveLimit | None = None,
    to: _KeyReport | None = None,
) -> Any:
    """``call_next(call)`` after the key's pause; a push-back pauses the key.

    The pause is the ``retry_after`` the service asked for, else the tool's
    retry backoff; ``control``, the key's adaptive limit, hears how it went,
    and ``to`` hears where it moved.
    """
    if gate.cooling():
        await gate.wait()
    try:
        result = await call_next(call)
    except RateLimited as error:
        pause = error.retry_after
        if pause is None:
            retry = call.tool.retry
            pause = retry.delay(call.attempt) if retry is not None else 0.0
        gate.cool(pause)
        if control is not None:
            limit = control.pushed_back()
            if to is not None:
                to.changed(limit)
        raise
    if control is not None:
        limit = control.succeeded()
        if to is not None:
            to.changed(limit)
    return result


class KeyedRateLimit:
    """Middleware: a separate token bucket per key, e.g. per agent or per user.

    Args:
        rate_limit: the :class:`plait.RateLimit` each key gets.
        key: ``(call) -> str``; by default the tool's name.

    The key's token is taken together with the engine's and the tool's, at
    the instant the call starts (see :class:`ToolCall`), so calls never
    start faster than the key's bucket allows. When a call of a key is
    pushed back (:class:`plait.RateLimited`), the key's calls pause (for
    its ``retry_after``, else the tool's retry backoff), other keys go on.

    Example: at most 2 calls a second per agent, whatever the tool::

        plait.KeyedRateLimit(plait.RateLimit(2), key=lambda c: c.kwargs["agent"])
    """

    def __init__(
        self, rate_limit: RateLimit, key: Callable[[ToolCall], str] = _by_tool
    ) -> None:
        if not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a plait.RateLimit, got {rate_limit!r}")
        self.rate_limit = rate_limit
        self.key = key
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()
        self._pauses = _Pauses()

    def bucket(self, key: str) -> TokenBucket:
        """The bucket of ``key`` (created full on first use)."""
        try:
            return self._buckets[key]
        except KeyError:
            with self._lock:
                return self._buckets.setdefault(
                    key, TokenBucket(self.rate_limit, f"key:{key}")
                )

    def __call__(self, call: ToolCall, call_next: Next) -> Awaitable[Any]:
        key = self.key(call)
        bucket = self.bucket(key)
        return _under_backpressure(
            attrs.evolve(call, buckets=(*call.buckets, bucket)),
            call_next,
            self._pauses.gate(key),
        )


class KeyedLimit:
    """Middleware: a concurrency limit per key, held in a :class:`LimiterRegistry`.

    Args:
        limits: the registry; set limits on it with ``set_limit(key, n)``
            (keys without a limit are unlimited).
        key: ``(call) -> str``; by default the tool's name.
        adaptive: a :class:`plait.Adaptive` limit for every key: each key's
            limit in ``limits`` then starts at ``adaptive.initial`` and
            follows what the service takes for that key.

    The key's slot is taken with the tool's and the engine's own and held
    like them: a timed-out sync tool keeps it until its thread returns.
    When a call of a key is pushed back (:class:`plait.RateLimited`), the
    key's calls pause (for its ``retry_after``, else the tool's retry
    backoff) and its adaptive limit, if any, shrinks; other keys go on.
    A key's adaptive limit is in the stats of the tools whose calls went
    through it (``ToolStats.key_limits``) and each move in a
    ``tool.limit_changed`` event naming the ``key``.
    """

    def __init__(
        self,
        limits: LimiterRegistry,
        key: Callable[[ToolCall], str] = _by_tool,
        *,
        adaptive: Adaptive | None = None,
    ) -> None:
        if adaptive is not None and not isinstance(adaptive, Adaptive):
            raise ConfigError(
                f"KeyedLimit.adaptive must be a plait.Adaptive or None, got {adaptive!r}"
            )
        self.limits = limits
        self.key = key
        self.adaptive = adaptive
        self._pauses = _Pauses()
        self._controls: dict[str, AdaptiveLimit] = {}
        self._lock = threading.Lock()

    def control(self, key: str) -> AdaptiveLimit | None:
        """The adaptive limit of ``key`` (None without ``adaptive``)."""
        if self.adaptive is None:
            return None
        try:
            return self._controls[key]
        except KeyError:
            with self._lock:
                control = self._controls.get(key)
                if control is None:
                    limiter = self.limits.limiter(key)
                    control = AdaptiveLimit(self.adaptive, limiter)
                    self._controls[key] = control
                return control

    def __call__(self, call: ToolCall, call_next: Next) -> Awaitable[Any]:
        key = self.key(call)
        limiter = self.limits.limiter(key)
        control = self.control(key)
        to = None
        if control is not None:
            report = _reporting.get()
            if report is not None:
                to = _KeyReport(report, call, key)
                to.now(control.value)
        return _under_backpressure(
            attrs.evolve(call, limiters=(*call.limiters, limiter)),
            call_next,
            self._pauses.gate(key),
            control,
            to,
        )
