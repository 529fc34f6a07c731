"""How plait talks to Redis: from any backend, never hanging.

An admission, the one script call on a call's path, goes through plait's
own client (:mod:`._client`): ``EVALSHA`` over plain non-blocking sockets,
awaited from the waiting task with anyio on asyncio, uvloop and Trio
alike, with no thread hop and no redis-py. Its sockets belong to no event
loop, so one pool per process serves every loop.

Everything else (releases not carried by an admission, renewals, release
notices, ``set_limit``) runs redis-py's sync client on threads, off any
event loop. So do admissions to a ``rediss://`` server, which the own
client does not speak (TLS): on plait's worker threads (the thread
bridge), which wake the task when the answer is in.

Two older roads for admissions stay for ``benchmarks/shared_limits.py``,
which measures them side by side with the own client: the sync client on
worker threads (``"threads"``), and redis-py's asyncio client on asyncio
(``"asyncio"``, one client per loop: its pools belong to one event loop,
with no hook to close them when the loop ends).

Every connection has connect and read timeouts, so a server that accepts
a connection but never answers is an unreachable one:
:class:`plait.LimitBackendUnavailable`, never a hang; so are a refused
connection, a reset one and a server still loading its data.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from .._concurrency._bridge import run_in_thread
from .._concurrency._limits import Limiter
from .._concurrency._threads import current_inbox
from .._concurrency._wakeup import running_async_library
from .._model._errors import LimitBackendUnavailable
from ._client import ScriptClient
from ._resp import ReplyError

__all__ = ["ROADS", "Connection", "import_redis"]

#: The ways an admission can reach the server (see the module's docstring).
ROADS = ("native", "threads", "asyncio")

T = TypeVar("T")


def import_redis() -> Any:
    """The ``redis`` package, or an ImportError saying how to install it."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the test extra has it
        raise ImportError(
            'plait.redis needs the redis client: pip install "plait[redis]"'
        ) from exc
    return redis


def _nothing() -> None:
    pass


class Connection:
    """The clients of one process for one server URL."""

    def __init__(self, url: str, timeout: float, *, road: str = "native") -> None:
        self.redis = redis = import_redis()
        self.url = url
        self.timeout = timeout
        if road == "native" and not ScriptClient.supports(url):
            road = "threads"
        self.road = road
        self.native = ScriptClient(url, timeout) if road == "native" else None
        self._options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        # One immediate retry: a pooled connection that died with a server
        # restart is replaced; a server that stays away fails at once.
        self.sync = redis.Redis.from_url(
            url, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 1), **self._options
        )
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            OSError,
        )
        self._sync_scripts: dict[str, Any] = {}
        self._async: weakref.WeakKeyDictionary[Any, tuple[Any, dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._threads = Limiter(None, "redis threads")

    def unavailable(self, exc: BaseException) -> LimitBackendUnavailable:
        return LimitBackendUnavailable(
            f"the shared-limits server at {self.url} is unavailable "
            f"({type(exc).__name__}: {exc}); no call is admitted until it answers"
        )

    def _down(self, exc: Exception) -> LimitBackendUnavailable | None:
        """The error to raise for ``exc`` when it means the server is away.

        None for any other error (a bug in a script, say): it goes on as is.
        """
        if isinstance(exc, self._errors) or (
            isinstance(exc, self.redis.exceptions.ResponseError) and _restarting(exc)
        ):
            return self.unavailable(exc)
        return None

    # -- sync, from threads ------------------------------------------------
    def sync_call(self, fn: Callable[[Any], T]) -> T:
        try:
            return fn(self.sync)
        except Exception as exc:
            down = self._down(exc)
            if down is None:
                raise
            raise down from exc

    def sync_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        runner = self._sync_scripts.get(script)
        if runner is None:
            runner = self._sync_scripts[script] = self.sync.register_script(script)
        return self.sync_call(lambda r: runner(keys=keys, args=args, client=r))

    def pubsub(self, channel: str) -> Any:
        pubsub = self.sync.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(channel)
        return pubsub

    # -- from a task -------------------------------------------------------
    async def script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` from the calling task, on whichever backend it is.

        Never cancelled from outside, so that a reply (an admission, say)
        always reaches the caller; bounded by the timeout instead.
        """
        native = self.native
        if native is not None:
            try:
                reply = await native.script(script, keys, args)
            except OSError as exc:
                raise self.unavailable(exc) from exc
            if isinstance(reply, ReplyError):
                if _restarting(reply):
                    raise self.unavailable(reply)
                raise self.redis.exceptions.ResponseError(reply.message)
            return reply
        with anyio.CancelScope(shield=True):
            return await self._redis_py_script(script, keys, args)

    async def _redis_py_script(
        self, script: str, keys: list[str], args: list[Any]
    ) -> Any:
        if self.road == "threads" or running_async_library() != "asyncio":
            return await run_in_thread(
                self.sync_script, (script, keys, args), {}, _nothing, self._threads
            )
        client, scripts = self._async_client(current_inbox().key)
        runner = scripts.get(script)
        if runner is None:
            runner = scripts[script] = client.register_script(script)
        try:
            return await runner(keys=keys, args=args, client=client)
        except Exception as exc:
            down = self._down(exc)
            if down is None:
                raise
            raise down from exc

    def _async_client(self, loop: Any) -> tuple[Any, dict[str, Any]]:
        try:
            return self._async[loop]
        except KeyError:
            pass
        import redis.asyncio
        import redis.asyncio.retry

        client = redis.asyncio.Redis.from_url(
            self.url,
            retry=redis.asyncio.retry.Retry(self.redis.backoff.NoBackoff(), 1),
            **self._options,
        )
        entry: tuple[Any, dict[str, Any]] = (client, {})
        with self._lock:
            self._async[loop] = entry
        return entry

    def close(self) -> None:
        if self.native is not None:
            self.native.close()
        self.sync.close()


def _restarting(exc: BaseException) -> bool:
    """A reply that means the server is starting or failing over, not a bug."""
    text = str(exc).split(" ", 1)[0]
    return text in {"LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"}
