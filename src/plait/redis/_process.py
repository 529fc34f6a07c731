"""One process's live side of a ``RedisLimits``: doors, leases, a daemon thread.

Where the work happens: an admission is one script call, made from the
waiting task (see :mod:`._door`); a release rides with the process's next
admission or is handed to plait's worker threads, so giving slots back
never blocks an event loop or a tool's thread; renewals and release
notices run on one daemon thread per process.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._concurrency._threads import submit
from . import _scripts
from ._door import RedisDoor
from ._transport import Connection

if TYPE_CHECKING:
    from ._limits import RedisLimits

__all__ = ["POLL_SECONDS", "RELEASE_DELAY", "HeldLeases", "Live"]

logger = logging.getLogger("plait")

#: Longest a waiter for a busy slot waits without a release notice before it
#: asks again: the backstop for a notice lost with a connection.
POLL_SECONDS = 1.0

#: How long the release of a slot may wait for this process's next admission
#: to carry it to the server (saving a script call) before a worker thread
#: sends it. A slot that others were queued for when it was taken goes at once.
RELEASE_DELAY = 0.002


class Live:
    """One process's connections, doors and held leases for a :class:`RedisLimits`."""

    def __init__(self, config: RedisLimits) -> None:
        self.pid = os.getpid()
        self.config = config
        self.prefix = f"{{{config.namespace}}}:"
        self.client = secrets.token_hex(6)
        self.channel = f"{self.prefix}wake:"
        self.ttl_us = int(config.lease_ttl * 1e6)
        self.poll_us = int(min(POLL_SECONDS, config.lease_ttl / 3) * 1e6)
        self.conn = Connection(config.url, config.timeout, road=config._road)
        self._lock = threading.Lock()
        self._doors: dict[tuple[tuple[str, ...], tuple[str, ...]], RedisDoor] = {}
        self._by_id: dict[int, RedisDoor] = {}
        self._held: dict[str, HeldLeases] = {}
        self._releasing: list[HeldLeases] = []
        self._flushing = False
        self._leases = itertools.count()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    def door(self, slots: tuple[str, ...], rates: tuple[str, ...]) -> RedisDoor:
        try:
            return self._doors[slots, rates]
        except KeyError:
            pass
        with self._lock:
            door = self._doors.get((slots, rates))
            if door is None:
                door = RedisDoor(self, len(self._doors))
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

    def hold(
        self, lease: str, keys: tuple[str, ...], queues: tuple[str, ...]
    ) -> HeldLeases:
        held = HeldLeases(self, lease, keys, queues)
        with self._lock:
            self._held[lease] = held
        return held

    def release(self, held: HeldLeases) -> None:
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

    def carry(self) -> list[HeldLeases]:
        """Take the releases waiting to be sent, for an admission to send."""
        with self._lock:
            batch, self._releasing = self._releasing, []
        return batch

    def put_back(self, batch: list[HeldLeases]) -> None:
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
        owners: list[HeldLeases] = []
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

    def _lose(self, held: HeldLeases) -> None:
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


class HeldLeases:
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
        self, live: Live, lease: str, keys: tuple[str, ...], queues: tuple[str, ...]
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
