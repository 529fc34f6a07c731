"""plait's own Redis client for admissions: plain sockets, any event loop, no thread.

An admission is one script call from the waiting task. Through redis-py it
cost two to four times a round trip: the client's own work per command,
and on Trio (which redis-py's asyncio client does not run on) a hop to a
worker thread and back. :class:`ScriptClient` sends ``EVALSHA`` itself
(:mod:`._resp` encodes it and reads the reply) over non-blocking sockets,
and waits for the answer with :func:`anyio.wait_readable`, so the same
code runs on asyncio, uvloop and Trio, with no thread in between.

Its sockets belong to no event loop: a socket is registered with a loop
only while a request waits on it, so the pool is one per process (per
:class:`plait.redis.RedisLimits`, closed by its ``close()``) and serves
every loop, in any thread; a loop that ends leaves nothing behind. An
anyio stream is tied to the loop that opened it, and nothing tells a
library when a loop ends; on asyncio a round trip over one also measured
slower (its send takes a turn of the loop).

Each request takes an idle socket (or connects a new one) for itself, so
concurrent requests never share one (with 8 tasks at once, that ran a
third more scripts a second than one socket behind a lock); a socket goes
back to the pool only after a whole reply, so a request cut short (a
timeout) closes its socket rather than leave a reply in it for the next.
A request (with its connecting) is shielded from outside cancellation
and bounded by ``timeout``: a server that accepts but never answers
raises ``TimeoutError``. Every failure to reach the server is an ``OSError``;
the caller (:mod:`._transport`) turns it into
:class:`plait.LimitBackendUnavailable`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from ._resp import NOT_YET, Reader, ReplyError, command

__all__ = ["ScriptClient"]

Waiter = Callable[[socket.socket], Awaitable[None]]

_wait_readable: Waiter
_wait_writable: Waiter
if hasattr(anyio, "wait_readable"):
    _wait_readable, _wait_writable = anyio.wait_readable, anyio.wait_writable
else:  # pragma: no cover - anyio < 4.7 names them wait_socket_*
    _wait_readable = anyio.wait_socket_readable
    _wait_writable = anyio.wait_socket_writable

#: Idle connections kept for the next requests; more are closed when done.
MAX_IDLE = 8

_RECEIVE = 65536


class ScriptClient:
    """Scripts run on one Redis server over a small pool of plain sockets.

    Args:
        url: a ``redis://`` or ``unix://`` URL (see :meth:`supports`);
            its user, password and database are sent when a socket connects.
        timeout: seconds to connect, and to wait for each reply.
    """

    def __init__(self, url: str, timeout: float) -> None:
        # Read as redis-py reads it, so both clients reach the same server.
        from redis.connection import parse_url

        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self._path: str | None = options.get("path")
        self._host: str = options.get("host") or "localhost"
        self._port = int(options.get("port") or 6379)
        hello: list[bytes] = []
        password = options.get("password")
        if password is not None:
            user = options.get("username")
            auth = ("AUTH", user, password) if user else ("AUTH", password)
            hello.append(command(auth))
        if int(options.get("db") or 0):
            hello.append(command(("SELECT", int(options["db"]))))
        self._hello = hello
        self._shas: dict[str, str] = {}
        self._lock = threading.Lock()
        self._idle: list[socket.socket] = []
        self._closed = False
        weakref.finalize(self, _close_all, self._idle)

    @staticmethod
    def supports(url: str) -> bool:
        """Whether it can talk to ``url`` (TLS, ``rediss://``, it can't)."""
        return url.startswith(("redis://", "unix://"))

    async def script(
        self, script: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run ``script``: ``EVALSHA``, and ``EVAL`` when the server lacks it.

        The reply as :class:`._resp.Reader` gives it; an error reply is
        returned as a :class:`._resp.ReplyError` value, not raised. Shielded
        from outside cancellation (a reply that never reaches its caller
        could be an admission nobody releases) and bounded by the timeout
        instead: one cancel scope does both, the cheapest way (a scope costs
        about as much as the wait for the reply itself).

        Raises:
            OSError: the server could not be reached or did not answer in
                time (``TimeoutError``).
        """
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script.encode()).hexdigest()
        deadline = anyio.current_time() + self.timeout
        with anyio.CancelScope(shield=True, deadline=deadline):
            reply = await self._request(
                command(("EVALSHA", sha, len(keys), *keys, *args))
            )
            if isinstance(reply, ReplyError) and reply.code == "NOSCRIPT":
                # Not cached (a restart, SCRIPT FLUSH): EVAL runs and caches it.
                reply = await self._request(
                    command(("EVAL", script, len(keys), *keys, *args))
                )
            return reply
        raise TimeoutError(f"no answer within {self.timeout:g} s")

    async def _request(self, payload: bytes) -> Any:
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        if sock is not None:
            try:
                return await self._exchange(sock, payload)
            except OSError:
                # A pooled socket died with its server (a restart) or its
                # idle timeout; the other idle ones most likely did too. One
                # more try on a new socket, as redis-py makes: a server that
                # stays away fails it at once.
                self._drop_idle()
        return await self._exchange(await self._connect(), payload)

    async def _exchange(self, sock: socket.socket, payload: bytes) -> Any:
        """Send ``payload``, read one reply, then put ``sock`` back in the pool."""
        try:
            (reply,) = await _round_trip(sock, payload, 1)
        except BaseException:
            sock.close()
            raise
        self._give(sock)
        return reply

    async def _connect(self) -> socket.socket:
        if self._path is not None:
            where: list[tuple[Any, ...]] = [
                (socket.AF_UNIX, socket.SOCK_STREAM, 0, "", self._path)
            ]
        else:
            try:  # an IP address needs no lookup (nor the thread one takes)
                where = socket.getaddrinfo(
                    self._host,
                    self._port,
                    type=socket.SOCK_STREAM,
                    flags=socket.AI_NUMERICHOST,
                )
            except socket.gaierror:
                where = list(
                    await anyio.getaddrinfo(
                        self._host, self._port, type=socket.SOCK_STREAM
                    )
                )
        error: OSError = OSError(f"no address for {self._host}:{self._port}")
        for family, kind, proto, _, address in where:
            sock = socket.socket(family, kind, proto)
            try:
                await self._open(sock, address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise error

    async def _open(self, sock: socket.socket, address: Any) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(address)
        except BlockingIOError:
            await _wait_writable(sock)
            errno = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if errno:
                raise OSError(errno, os.strerror(errno)) from None
        if self._hello:
            for reply in await _round_trip(
                sock, b"".join(self._hello), len(self._hello)
            ):
                if isinstance(reply, ReplyError):
                    # A wrong password or database: redis-py reports it as a
                    # failed connection too.
                    raise ConnectionRefusedError(
                        f"the server refused the connection: {reply.message}"
                    )

    def _give(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(sock)
                return
        sock.close()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle[:] = list(self._idle), []
        for sock in idle:
            sock.close()

    def close(self) -> None:
        """Close the idle sockets; those in use close when their request ends."""
        with self._lock:
            self._closed = True
        self._drop_idle()


async def _round_trip(sock: socket.socket, payload: bytes, replies: int) -> list[Any]:
    """Send ``payload`` and read ``replies`` replies to it."""
    view = memoryview(payload)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            await _wait_writable(sock)
    reader = Reader()
    out: list[Any] = []
    while True:
        # The reply is a round trip away: wait before the first read too.
        await _wait_readable(sock)
        try:
            data = sock.recv(_RECEIVE)
        except BlockingIOError:  # woken with nothing to read after all
            continue
        if not data:
            raise ConnectionResetError("the server closed the connection")
        reader.feed(data)
        while (reply := reader.reply()) is not NOT_YET:
            out.append(reply)
            if len(out) == replies:
                if reader.pending:
                    raise ConnectionError("the server sent more than was asked for")
                return out


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
