"""``RedisLimits``: shared limits kept on a Redis server.

One object per server and namespace; engines take it as
``Engine(shared_limits=...)``. It is configuration (URL, namespace, lease
TTL, timeout) plus, made lazily in each process that uses it, the live
part (:class:`_Live`): the clients, this process's doors and held leases,
and one daemon thread that renews the leases and hears release notices.
Pickling it sends the configuration only, so a worker process rebuilds
its own live part.

Where the work happens: an admission is one script call, made from the
waiting task (see :mod:`._transport`); a release is a script call handed
to plait's worker threads, so giving slots back never blocks an event
loop or a tool's thread; renewal and notices run on the daemon thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from .._calls._shared import Door, Held, RateSpec, Refused, SlotSpec
from .._concurrency._limits import Limiter
from .._concurrency._threads import submit
from .._model._errors import ConfigError
from .._model._ratelimit import RateLimit
from . import _scripts
from ._transport import Connection

__all__ = ["RedisLimits"]

logger = logging.getLogger("plait")

#: Longest a waiter for a busy slot waits without a release notice before it
#: asks again: the backstop for a notice lost with a connection.
POLL_SECONDS = 1.0

#: How long the release of a slot may wait for this process's next admission
#: to carry it to the server (saving a script call) before a worker thread
#: sends it. A slot that others were queued for when it was taken goes at once.
RELEASE_DELAY = 0.002


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
        self._live: _Live | None = None
        # Admit through the sync client on worker threads on every backend;
        # False: through redis-py's asyncio client on asyncio (see
        # _transport.py; benchmarks/shared_limits.py compares the two).
        self._threads_only = True

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

    def _process(self) -> _Live:
        """This process's live part, made on first use (again after a fork)."""
        live = self._live
        if live is not None and live.pid == os.getpid():
            return live
        with self._lock:
            live = self._live
            if live is None or live.pid != os.getpid():
                live = self._live = _Live(self)
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
            value = _rate_text(limit)
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


def _interval_us(spec: RateLimit) -> float:
    return spec.per / spec.rate * 1e6


def _rate_text(spec: RateLimit) -> str:
    return f"{_interval_us(spec)!r} {spec.capacity!r}"


class _Live:
    """One process's connections, doors and held leases for a :class:`RedisLimits`."""

    def __init__(self, config: RedisLimits) -> None:
        self.pid = os.getpid()
        self.config = config
        self.prefix = f"{{{config.namespace}}}:"
        self.client = secrets.token_hex(6)
        self.channel = f"{self.prefix}wake:"
        self.ttl_us = int(config.lease_ttl * 1e6)
        self.poll_us = int(min(POLL_SECONDS, config.lease_ttl / 3) * 1e6)
        self.conn = Connection(
            config.url, config.timeout, threads_only=config._threads_only
        )
        self._lock = threading.Lock()
        self._doors: dict[tuple[tuple[str, ...], tuple[str, ...]], _Door] = {}
        self._by_id: dict[int, _Door] = {}
        self._held: dict[str, _Held] = {}
        self._releasing: list[_Held] = []
        self._flushing = False
        self._leases = itertools.count()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    def door(self, slots: tuple[str, ...], rates: tuple[str, ...]) -> _Door:
        try:
            return self._doors[slots, rates]
        except KeyError:
            pass
        with self._lock:
            door = self._doors.get((slots, rates))
            if door is None:
                door = _Door(self, len(self._doors))
                self._by_id[door.id] = door
                self._doors[slots, rates] = door
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="plait redis limits", daemon=True
                )
                self._thread.start()
            return door

    def new_lease(self) -> str:
        return f"{self.client}:{next(self._leases)}"

    def hold(self, lease: str, keys: tuple[str, ...], queues: tuple[str, ...]) -> _Held:
        held = _Held(self, lease, keys, queues)
        with self._lock:
            self._held[lease] = held
        return held

    def release(self, held: _Held) -> None:
        """Give ``held`` back soon, never blocking.

        A slot that others were queued for when it was taken is sent at
        once from a worker thread; others wait up to :data:`RELEASE_DELAY`
        for this process's next admission to carry them. Releases that pile up go together, in
        one script call.
        """
        with self._lock:
            self._held.pop(held.lease, None)
            self._releasing.append(held)
            if not held.contended:
                if self._flushing:
                    return
                self._flushing = True
        submit(self._flush if held.contended else self._flush_later)

    def carry(self) -> list[_Held]:
        """Take the releases waiting to be sent, for an admission to send."""
        with self._lock:
            batch, self._releasing = self._releasing, []
        return batch

    def put_back(self, batch: list[_Held]) -> None:
        """An admission could not send ``batch``: send it from a thread."""
        with self._lock:
            self._releasing += batch
        submit(self._flush)

    def _flush_later(self) -> None:
        time.sleep(RELEASE_DELAY)
        with self._lock:
            self._flushing = False
        self._flush()

    def _flush(self) -> None:
        while True:
            batch = self.carry()
            if not batch:
                return
            keys: list[str] = []
            args: list[Any] = [self.channel]
            for held in batch:
                for pair in zip(held.keys, held.queues, strict=True):
                    keys += pair
                    args.append(held.lease)
            try:
                self.conn.sync_script(_scripts.RELEASE, keys, args)
            except Exception as exc:
                # The leases run out on their own within lease_ttl.
                logger.warning("plait.redis: could not release shared slots: %s", exc)

    def background(self, script: str, keys: list[str], args: list[Any]) -> None:
        """Run ``script`` on a worker thread; a failure is only logged."""

        def job() -> None:
            try:
                self.conn.sync_script(script, keys, args)
            except Exception as exc:
                logger.debug("plait.redis: background script failed: %s", exc)

        submit(job)

    # -- the daemon thread: renewals and release notices ----------------------
    def _serve(self) -> None:
        interval = self.config.lease_ttl / 3
        renew_at = time.monotonic() + interval
        pubsub: Any = None
        while not self._closing.is_set():
            try:
                if pubsub is None:
                    pubsub = self.conn.pubsub(self.channel + self.client)
                wait = max(0.0, min(renew_at - time.monotonic(), 0.5))
                message = pubsub.get_message(timeout=wait)
                if message is not None and message.get("type") == "message":
                    self._ring(message["data"])
            except Exception as exc:
                logger.debug("plait.redis: notice connection failed: %s", exc)
                _close_quietly(pubsub)
                pubsub = None
                self._closing.wait(min(0.5, interval))
            if time.monotonic() >= renew_at:
                self._renew()
                renew_at = time.monotonic() + interval
        _close_quietly(pubsub)

    def _ring(self, data: bytes) -> None:
        try:
            door = self._by_id[int(data.rsplit(b"|", 1)[1])]
        except (IndexError, ValueError, KeyError):
            return
        door.ring()

    def _renew(self) -> None:
        with self._lock:
            held = list(self._held.values())
        if not held:
            return
        now = time.monotonic()
        keys: list[str] = []
        args: list[Any] = [self.ttl_us]
        owners: list[_Held] = []
        for h in held:
            for key in h.keys:
                keys.append(key)
                args.append(h.lease)
                owners.append(h)
        try:
            alive = self.conn.sync_script(_scripts.RENEW, keys, args)
        except Exception as exc:
            logger.warning("plait.redis: could not renew shared leases: %s", exc)
            for h in held:  # not renewed for lease_ttl: others may have the slot
                if now - h.renewed >= self.config.lease_ttl:
                    self._lose(h)
            return
        gone = {owners[i].lease for i, ok in enumerate(alive) if not ok}
        for h in held:
            if h.lease in gone:
                self._lose(h)
            else:
                h.renewed = now

    def _lose(self, held: _Held) -> None:
        with self._lock:
            self._held.pop(held.lease, None)
        held.lose()

    def close(self) -> None:
        self._closing.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        self.conn.close()


def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):
            pubsub.close()


class _Held:
    """An admitted call's leases, renewed by the daemon thread until released."""

    __slots__ = (
        "_lost",
        "_on_lost",
        "contended",
        "keys",
        "lease",
        "live",
        "queues",
        "renewed",
    )

    def __init__(
        self, live: _Live, lease: str, keys: tuple[str, ...], queues: tuple[str, ...]
    ) -> None:
        self.live = live
        self.lease = lease
        self.keys = keys
        self.queues = queues
        self.renewed = time.monotonic()
        self.contended = False
        self._lost = False
        self._on_lost: Callable[[], None] | None = None

    def release(self) -> None:
        if self.keys:
            self.live.release(self)

    def watch(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost
        if self._lost:
            on_lost()

    def lose(self) -> None:
        self._lost = True
        on_lost = self._on_lost
        if on_lost is not None:
            on_lost()
        else:
            logger.warning(
                "plait.redis: a shared lease was lost while its call was not "
                "watched (a sync tool's thread still running after its call ended)"
            )


class _NoSlots:
    """The hold of a call under shared buckets only: nothing to give back."""

    __slots__ = ()

    def release(self) -> None:
        pass

    def watch(self, on_lost: Callable[[], None]) -> None:
        pass


_NO_SLOTS = _NoSlots()


class _Door:
    """One process's gate and notice bell for one set of shared limits."""

    __slots__ = ("_hint", "_keys", "bell", "gate", "id", "live", "waiter")

    def __init__(self, live: _Live, ident: int) -> None:
        self.live = live
        self.id = ident
        self.waiter = f"{live.client}|{ident}"
        self.gate = Limiter(1, "shared limits gate")
        # Held while nobody rang; a release notice frees it, and a waiter
        # for a slot waits to take it (a notice that comes early is kept).
        self.bell = Limiter(1, "shared limits bell")
        self.bell.try_acquire()
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}
        # (until, refusal): where the last admission queued this door's next
        # call, which waits that out before it asks (see ADMIT's ``more``).
        self._hint: tuple[float, Refused] | None = None

    def ring(self) -> None:
        # Only the daemon thread rings, so checking first cannot race.
        if self.bell.borrowed:
            self.bell.release()

    def _pair(self, kind: str, name: str) -> tuple[str, str]:
        try:
            return self._keys[kind, name]
        except KeyError:
            live = self.live
            pair = (live.key(kind, name), live.key(kind + "q", name))
            self._keys[kind, name] = pair
            return pair

    async def admit(
        self,
        slots: Sequence[SlotSpec],
        rates: Sequence[RateSpec],
        on_conflict: Callable[[str], None],
    ) -> Held | Refused:
        hint = self._hint
        if hint is not None:
            self._hint = None
            left = hint[0] - time.monotonic()
            if left > 0:
                await self.wait(Refused(left, hint[1].for_token))
        live = self.live
        lease = live.new_lease()
        keys = [live.key("limits"), live.key("declared")]
        args: list[Any] = [
            lease,
            self.waiter,
            live.ttl_us,
            len(slots),
            len(rates),
            live.poll_us,
            1 if self.gate.waiting else 0,
        ]
        carried = live.carry()
        args += (len(carried), live.channel)
        for name, limit in slots:
            keys.extend(self._pair("slot", name))
            args += (name, limit)
        for name, spec in rates:
            keys.extend(self._pair("rate", name))
            args += (
                name,
                repr(_interval_us(spec)),
                repr(spec.capacity),
                _rate_text(spec),
            )
        for held in carried:
            for pair in zip(held.keys, held.queues, strict=True):
                keys += pair
                args.append(held.lease)
        self.bell.try_acquire()  # a notice from before this try is stale
        with anyio.CancelScope(shield=True):
            # Bounded by the client's timeouts; shielded so that a cancelled
            # waiter never leaves an admitted lease behind unreleased.
            try:
                reply = await live.conn.script(_scripts.ADMIT, keys, args)
            except BaseException:
                if carried:
                    live.put_back(carried)
                raise
        status, wait_us, then, contended, *conflicts = reply
        for name in conflicts:
            on_conflict(name.decode() if isinstance(name, bytes) else str(name))
        if status == 1:
            if then:
                seconds = wait_us / 1e6
                self._hint = (time.monotonic() + seconds, Refused(seconds, then == 2))
            if not slots:
                return _NO_SLOTS
            held = live.hold(
                lease,
                tuple(keys[2 : 2 + 2 * len(slots) : 2]),
                tuple(keys[3 : 3 + 2 * len(slots) : 2]),
            )
            held.contended = contended == 1
            return held
        return Refused(wait_us / 1e6, status == 2)

    async def wait(self, refused: Refused) -> None:
        if refused.for_token:
            await anyio.sleep(refused.seconds)
            return
        with anyio.move_on_after(refused.seconds):
            await self.bell.acquire()

    def leave(self) -> None:
        live = self.live
        queues = [k[1] for k in list(self._keys.values())]
        if queues:
            live.background(_scripts.LEAVE, queues, [self.waiter])
