"""Fetching from a service with a quota nobody told you: backpressure at work.

The example starts its own service on loopback (a thread of this process):
a catalogue API that serves at most ``--rate`` requests a second, bursts of
10, 8 at once, 50 ms each, and answers ``429 Too Many Requests`` with a
``Retry-After`` beyond that. The workflow fetches ``--items`` catalogue
entries through a 64-wide ``MapReduce`` of the ready-made HTTP tool and
sums their prices. The tool's limit is ``plait.Adaptive``: it starts at 8,
is cut when the service pushes back, and grows while calls succeed; every
429 also pauses the tool's other calls for the ``Retry-After``. The report
says how often the service said no, how close to its quota the run went,
and where the limit settled.

Run it::

    python workflows/quota_fetch.py
    python workflows/quota_fetch.py --items 1000 --rate 200 --backend trio
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio

import plait

BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


class Catalogue:
    """The service's quota (a token bucket and a cap in flight) and its counts."""

    def __init__(self, rate: float, burst: int = 10, in_flight: int = 8) -> None:
        self.rate = rate
        self.burst = burst
        self.cap = in_flight
        self.lock = threading.Lock()
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.in_flight = 0
        self.served = 0
        self.refused = 0

    def admit(self) -> float | None:
        """None when the request may go on, else the seconds to come back in."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.in_flight >= self.cap or self.tokens < 1:
                self.refused += 1
                return max(0.0, 1 - self.tokens) / self.rate or 0.05
            self.tokens -= 1
            self.in_flight += 1
            return None

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self.served += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a burst of new connections is not dropped


@contextmanager
def catalogue_service(rate: float) -> Iterator[tuple[str, Catalogue]]:
    """Run the catalogue API on a free loopback port; yields its URL."""
    catalogue = Catalogue(rate)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            wait = catalogue.admit()
            if wait is not None:
                self.answer(429, {"error": "slow down"}, retry_after=f"{wait:.3f}")
                return
            try:
                time.sleep(0.05)
                item = int(self.path.rsplit("/", 1)[-1])
            finally:
                catalogue.done()
            self.answer(200, {"item": item, "price": item % 7 + 1})

        def answer(self, status: int, body: dict[str, Any], **headers: str) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(data)

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", catalogue
    finally:
        server.shutdown()
        server.server_close()


def total_price(total: int, response: plait.tools.HttpResponse) -> int:
    return total + int(response.json["price"])


def workflow(base_url: str) -> tuple[plait.Workflow, plait.Tool]:
    """The workflow, and the HTTP tool it calls (adaptive, retried)."""
    catalogue = plait.tools.http_tool(
        "catalogue",
        base_url=base_url,
        concurrency_limit=plait.Adaptive(initial=8, min=1, max=64),
        retry=plait.Retry(attempts=20, initial_delay=0.01, max_delay=1.0),
    )
    fetch_all = plait.MapReduce(
        over=plait.Fn("item_paths", plait.Var("items")),
        map=plait.Call("catalogue", "GET", plait.Var("item")),
        reduce=total_price,
        initial=0,
        max_concurrency=64,
    )
    return plait.Workflow(fetch_all, inputs=["items"]), catalogue


def item_paths(n: int) -> list[str]:
    return [f"/items/{i}" for i in range(n)]


async def fetch(items: int, rate: float) -> dict[str, Any]:
    """Run the workflow against a fresh catalogue service; what happened."""
    with catalogue_service(rate) as (url, catalogue):
        flow, tool = workflow(url)
        engine = plait.Engine(tools=[tool], functions=[item_paths], max_concurrency=64)
        result = await engine.execute(flow, {"items": items})
    stats = result.stats.tools["catalogue"]
    seen = catalogue.served + catalogue.refused
    return {
        "total_price": result.output,
        "expected_price": sum(i % 7 + 1 for i in range(items)),
        "requests_seen": seen,
        "share_429": catalogue.refused / seen,
        "share_of_quota": items / result.stats.duration / rate,
        "limit": stats.limit,
        "pushed_back": stats.pushed_back,
        "seconds": result.stats.duration,
    }


def report(found: dict[str, Any], rate: float) -> str:
    return "\n".join(
        [
            f"total price {found['total_price']:,} "
            f"(expected {found['expected_price']:,})",
            f"the service saw {found['requests_seen']:,} requests, "
            f"{found['share_429']:.1%} of them refused with 429",
            f"{found['share_of_quota']:.0%} of its quota of {rate:g}/s, "
            f"in {found['seconds']:.1f}s",
            f"the adaptive limit settled at {found['limit']} "
            f"({found['pushed_back']} push-backs)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    args = parser.parse_args(argv)
    backend, options = BACKENDS[args.backend]
    found = anyio.run(
        fetch, args.items, args.rate, backend=backend, backend_options=options
    )
    print(report(found, args.rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
