"""``RedisLimits``: shared limits kept on a Redis server.

One object per server and namespace; engines take it as
``Engine(shared_limits=...)``. It is configuration (URL, namespace, lease
TTL, timeout) plus, made lazily in each process that uses it, the live
part (:class:`._process.Live`): the clients, this process's doors and held
leases, and one daemon thread that renews the leases and hears release
notices. Pickling it sends the configuration only, so a worker process
rebuilds its own live part.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

from .._calls._shared import Door
from .._model._errors import ConfigError
from .._model._ratelimit import RateLimit
from ._door import rate_text
from ._process import Live

__all__ = ["RedisLimits"]


class RedisLimits:
    """Limits shared by every engine that uses one Redis server and namespace.

    Pass it as ``Engine(shared_limits=...)``: every tool's
    ``concurrency_limit`` and ``rate_limit``, the engine's ``rate_limit``,
    and :class:`plait.KeyedLimit` / :class:`plait.KeyedRateLimit` limits
    then hold across all the engines, processes and machines using the same
    server and namespace. ``max_concurrency`` stays each engine's own.

    A call is admitted by one atomic script under all its limits at once,
    on the server's clock. Its concurrency slots are leases that this
    process renews every ``lease_ttl / 3`` seconds while the call runs (a
    sync tool's until its thread returns); a crashed process's slots come
    back within ``lease_ttl``. A lease found lost cancels its call with
    :class:`plait.LeaseLost`. When the server cannot be reached within
    ``timeout``, admission raises :class:`plait.LimitBackendUnavailable`.

    Args:
        url: a ``redis://`` (or ``rediss://``, ``unix://``) URL.
        namespace: keeps unrelated quotas apart on one server; all its keys
            share one hash slot (``{namespace}``), so Redis Cluster works.
        lease_ttl: seconds a crashed holder's slot stays taken. Shorter
            frees slots sooner after a crash; longer tolerates longer
            pauses of a process (or the network) before its calls are
            cancelled.
        timeout: seconds to connect and to wait for each answer.

    It pickles as its configuration, so a worker process given it (a Dask
    worker, say) builds its own connections. Requires ``pip install
    "plait[redis]"``.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "plait",
        lease_ttl: float = 15.0,
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(f"RedisLimits.url must be a redis:// URL, got {url!r}")
        if (
            not isinstance(namespace, str)
            or not namespace
            or "{" in namespace
            or ("}" in namespace)
        ):
            raise ConfigError(
                "RedisLimits.namespace must be a non-empty str without braces, "
                f"got {namespace!r}"
            )
        for field, value in (("lease_ttl", lease_ttl), ("timeout", timeout)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (0 < value < math.inf)
            ):
                raise ConfigError(
                    f"RedisLimits.{field} must be a number of seconds > 0, got {value!r}"
                )
        self.url = url
        self.namespace = namespace
        self.lease_ttl = float(lease_ttl)
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._live: Live | None = None
        # How admissions reach the server: "native" (plait's own client),
        # else one of the older roads that benchmarks/shared_limits.py
        # measures beside it (see _transport.py).
        self._road = "native"

    def __repr__(self) -> str:
        return (
            f"RedisLimits({self.url!r}, namespace={self.namespace!r}, "
            f"lease_ttl={self.lease_ttl:g})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, self._config())

    def _config(self) -> tuple[str, str, float, float]:
        return (self.url, self.namespace, self.lease_ttl, self.timeout)

    # Equal when configured alike: the same limits on the same server, so a
    # copy unpickled in a worker can key a cache as the original does.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RedisLimits):
            return NotImplemented
        return self._config() == other._config()

    def __hash__(self) -> int:
        return hash(self._config())

    def _process(self) -> Live:
        """This process's live part, made on first use (again after a fork)."""
        live = self._live
        if live is not None and live.pid == os.getpid():
            return live
        with self._lock:
            live = self._live
            if live is None or live.pid != os.getpid():
                live = self._live = Live(self)
            return live

    def door(self, slots: tuple[str, ...], rates: tuple[str, ...]) -> Door:
        # The SharedLimits protocol: engines call it, users have no need to.
        return self._process().door(slots, rates)

    def set_limit(self, name: str, limit: int | RateLimit | None) -> None:
        """Store a limit on the server; it wins over what processes declare.

        Args:
            name: the limit's name: ``tool:<tool name>`` for a tool's
                concurrency or rate limit, ``engine`` for the engines'
                ``rate_limit``, a :class:`plait.KeyedLimit` registry key, or
                ``key:<key>`` for a :class:`plait.KeyedRateLimit` key.
            limit: an int for a concurrency limit, a :class:`plait.RateLimit`
                for a rate limit, None to remove both stored limits of
                ``name`` (the declared ones apply again).

        Blocks for one round trip; raises
        :class:`plait.LimitBackendUnavailable` when the server is unreachable.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"RedisLimits.set_limit name must be a str, got {name!r}")
        live = self._process()
        key = live.key("limits")
        if limit is None:
            live.conn.sync_call(lambda r: r.hdel(key, f"slot:{name}", f"rate:{name}"))
        elif isinstance(limit, RateLimit):
            value = rate_text(limit)
            live.conn.sync_call(lambda r: r.hset(key, f"rate:{name}", value))
        elif isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            live.conn.sync_call(lambda r: r.hset(key, f"slot:{name}", str(limit)))
        else:
            raise ConfigError(
                "RedisLimits.set_limit limit must be an int >= 0, a plait.RateLimit "
                f"or None, got {limit!r}"
            )

    def close(self) -> None:
        """Stop this process's renewal thread and close its connections.

        Calls still holding shared slots stop being renewed (their slots
        come back within ``lease_ttl``). Using the object again reconnects.
        """
        with self._lock:
            live, self._live = self._live, None
        if live is not None and live.pid == os.getpid():
            live.close()


def _restore(url: str, namespace: str, lease_ttl: float, timeout: float) -> RedisLimits:
    return RedisLimits(url, namespace=namespace, lease_ttl=lease_ttl, timeout=timeout)
