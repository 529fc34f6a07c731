"""A real HTTP server on loopback that enforces a quota and counts what it saw.

It stands for a service with limits nobody told you exactly: at most
``rate`` requests a second with bursts of ``burst`` (a token bucket), and
at most ``max_in_flight`` requests being served at once. A request within
the quota takes ``latency`` seconds and gets 200 with a small JSON body; one
beyond it gets 429 at once, with a ``Retry-After`` saying (in fractional
seconds) when a token will be there. ``/fail/<status>`` answers with that
status; ``/retry-after/<value>`` answers 429 with that header as it is.

The server runs on threads of its own (the standard library's threading
HTTP server, HTTP/1.1 with keep-alive), never on the event loop under test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import attrs

__all__ = ["QuotaServer", "Seen", "naive_requests", "quota_server"]


@attrs.define
class Seen:
    """What the server saw."""

    requests: int = 0
    ok: int = 0
    too_many: int = 0
    peak_in_flight: int = 0
    first_ok: float | None = None
    last_ok: float | None = None
    # (time.monotonic(), accepted) of every quota request, in order
    log: list[tuple[float, bool]] = attrs.field(factory=list, repr=False)

    @property
    def share_429(self) -> float:
        return self.too_many / self.requests if self.requests else 0.0

    def throughput(self) -> float:
        """Successful requests a second, from the first to the last success."""
        if self.first_ok is None or self.last_ok is None or self.ok < 2:
            return 0.0
        return (self.ok - 1) / max(self.last_ok - self.first_ok, 1e-9)

    def after(self, warmup: float) -> tuple[float, float]:
        """(share of 429s, accepted requests a second) ``warmup`` s after the first.

        Counted from then to the last accepted request.
        """
        if not self.log:
            return 0.0, 0.0
        since = self.log[0][0] + warmup
        rest = [(t, ok) for t, ok in self.log if t >= since]
        accepted = [t for t, ok in rest if ok]
        if len(accepted) < 2:
            return 0.0, 0.0
        counted = [ok for t, ok in rest if t <= accepted[-1]]
        share = counted.count(False) / len(counted)
        return share, (len(accepted) - 1) / max(accepted[-1] - accepted[0], 1e-9)


class QuotaServer:
    """The quota and the counts; ``url`` once started."""

    def __init__(
        self,
        rate: float = 100.0,
        burst: int = 10,
        max_in_flight: int = 8,
        latency: float = 0.05,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_in_flight = max_in_flight
        self.latency = latency
        self.lock = threading.Lock()
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.in_flight = 0
        self.seen = Seen()
        self.url = ""

    def reset(self) -> None:
        """Forget the counts and fill the bucket again."""
        with self.lock:
            self.tokens = float(self.burst)
            self.stamp = time.monotonic()
            self.seen = Seen()

    def admit(self) -> float | None:
        """Take a token and a place in flight: None, or the seconds to wait."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(
                float(self.burst), self.tokens + (now - self.stamp) * self.rate
            )
            self.stamp = now
            self.seen.requests += 1
            wait = None
            if self.in_flight >= self.max_in_flight:
                wait = self.latency
            elif self.tokens < 1.0:
                wait = (1.0 - self.tokens) / self.rate
            self.seen.log.append((now, wait is None))
            if wait is not None:
                self.seen.too_many += 1
                return wait
            self.tokens -= 1.0
            self.in_flight += 1
            self.seen.peak_in_flight = max(self.seen.peak_in_flight, self.in_flight)
            return None

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1
            now = time.monotonic()
            self.seen.ok += 1
            if self.seen.first_ok is None:
                self.seen.first_ok = now
            self.seen.last_ok = now


def _handler(quota: QuotaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass

        def reply(self, status: int, body: bytes, **headers: str) -> None:
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.handle_one()

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.body = self.rfile.read(length)
            self.handle_one()

        def handle_one(self) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts[0] == "fail":
                self.reply(int(parts[1]), b"it failed", content_type="text/plain")
                return
            if parts[0] == "retry-after":
                self.reply(429, b"slow down", retry_after=unquote(parts[1]))
                return
            if parts[0] == "echo":
                body = getattr(self, "body", b"")
                self.reply(200, body, content_type="application/json")
                return
            wait = quota.admit()
            if wait is not None:
                self.reply(429, b"too many requests", retry_after=f"{wait:.4f}")
                return
            try:
                time.sleep(quota.latency)
            finally:
                quota.done()
            self.reply(
                200,
                json.dumps({"path": self.path}).encode(),
                content_type="application/json",
            )

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # listen()'s backlog: the default 5 drops the SYNs of a burst of new
    # connections, which the client sends again only a second later.
    request_queue_size = 1024


@contextmanager
def quota_server(**quota: float) -> Iterator[QuotaServer]:
    """Run a :class:`QuotaServer` on a free loopback port while in the block."""
    server = QuotaServer(**quota)  # type: ignore[arg-type]
    httpd = _Server(("127.0.0.1", 0), _handler(server))
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def naive_requests(urls: list[str], width: int) -> None:
    """The usual way: ``width`` concurrent httpx requests, each retrying on its own.

    Every request that gets a 429 sleeps for its ``Retry-After`` and sends
    again, whatever its siblings got meanwhile.
    """
    import anyio
    import httpx

    async def one(client: httpx.AsyncClient, url: str) -> None:
        while True:
            response = await client.get(url)
            if response.status_code != 429:
                response.raise_for_status()
                return
            await anyio.sleep(float(response.headers["retry-after"]))

    limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
    async with httpx.AsyncClient(limits=limits) as client:
        slots = anyio.Semaphore(width)

        async def bounded(url: str) -> None:
            async with slots:
                await one(client, url)

        async with anyio.create_task_group() as tg:
            for url in urls:
                tg.start_soon(bounded, url)


_FAST_SERVER = r"""
import asyncio, sys

RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: 11\r\n\r\n{\"ok\":true}"
)

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:  # GETs only: no bodies
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(RESPONSE)

async def main():
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


@contextmanager
def fast_server() -> Iterator[str]:
    """A server in a process of its own that answers every GET with 200 at once.

    For measuring a client's own cost: it does next to nothing per request,
    and does it off this process's GIL. Yields its URL; it exits when the
    block ends (its stdin closes).
    """
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", _FAST_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
