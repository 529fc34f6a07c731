"""Shared limits on Redis: what one admission costs, and how they hold under load.

Usage::

    python benchmarks/shared_limits.py [--quick] [--url URL] [--json PATH]
        [--calls N] [--processes P] [--tasks T] [--seconds S]

Without ``--url`` it starts its own ``redis-server`` on loopback (as the
tests do). Two parts, each side by side in one run:

**Uncontended.** For each road an admission can take, on each backend
(plait's own RESP client, the default, on asyncio, uvloop and Trio; the
older roads through redis-py: its asyncio client on asyncio, its sync
client on plait's worker threads), ``--calls`` admissions, each released
at once, of one call under a shared concurrency limit of 10, timed until
the last release has reached the server. The roads take turns within each
repeat, so a noisy machine slows them alike. Beside each, two floors: a
``PING`` round trip through redis-py's sync client and through a bare
blocking socket. Then the same no-op tool called through an engine with
and without ``shared_limits``: the extra microseconds per call are what
sharing costs a real call. Two rows without an event loop close the table:
the admit and release scripts through redis-py from one thread, and the
floor of any road: one ``ADMIT`` that carries the previous call's release,
sent from one thread on a blocking socket.

**Contended.** ``--processes`` processes of ``--tasks`` tasks each call
one tool with ``concurrency_limit=10`` and ``RateLimit(50)`` (a 50-token
burst) for ``--seconds`` seconds. It reports the admission script calls
per admitted call (from each process's own count), all script calls
(``INFO commandstats``: admissions, releases, renewals) per admitted call,
the steady rate achieved after the burst against the limit, the most calls
in any 1 s window of the merged start times against ``rate + burst``, and
the most calls in flight at once against 10.

Targets (loopback): <= 150 us per uncontended admit + release; <= 3 script
calls per admitted call under contention; achieved rate within 2% of the
limit and never above it in any window beyond the burst.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

import plait
from plait.redis import RedisLimits, _resp, _scripts

RATE, CONCURRENCY = 50, 10
TARGET_UNCONTENDED_US = 150.0
TARGET_SCRIPTS_PER_CALL = 3.0
TARGET_RATE_ERROR = 0.02
#: (backend, road shown, RedisLimits._road), in the order they take turns.
ROADS = [
    ("asyncio", "own RESP client", "native"),
    ("asyncio", "redis-py asyncio client", "asyncio"),
    ("asyncio", "redis-py sync client on threads", "threads"),
    ("uvloop", "own RESP client", "native"),
    ("uvloop", "redis-py sync client on threads", "threads"),
    ("trio", "own RESP client", "native"),
    ("trio", "redis-py sync client on threads", "threads"),
]
FLOORS = [
    ("none", "redis-py scripts, one thread"),
    ("none", "floor: one ADMIT on a blocking socket"),
]
BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


@contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _servers import redis_server

    with redis_server() as started:
        yield started


def _limits(url: str, road: str) -> RedisLimits:
    limits = RedisLimits(url, namespace=f"bench-{uuid.uuid4().hex[:8]}")
    limits._road = road
    return limits


def _run(backend: str, func: Any, *args: Any) -> Any:
    name, options = BACKENDS[backend]
    return anyio.run(func, *args, backend=name, backend_options=options)


# -- uncontended ----------------------------------------------------------------


async def _admit_release(limits: RedisLimits, calls: int) -> float:
    """Microseconds per admit + release, until the last release is in.

    The door is used as an engine's call uses it, without the rest of the
    engine: no road needs a run around it.
    """
    door = limits.door(("tool:bench",), ())
    slots = [("tool:bench", CONCURRENCY)]

    async def one() -> None:
        while True:
            got = await door.admit(slots, [], lambda name: None)
            if hasattr(got, "release"):
                got.release()
                return
            await door.wait(got)  # type: ignore[arg-type]

    for _ in range(50):
        await one()
    started = time.perf_counter()
    for _ in range(calls):
        await one()
    live = limits._process()
    while live._flushing or live._releasing:
        await anyio.sleep(0.0005)
    return (time.perf_counter() - started) / calls * 1e6


def _raw_pair(limits: RedisLimits, calls: int) -> float:
    """Microseconds per admit + release script pair from one thread, no loop.

    The floor under the roads above: the two round trips and the scripts,
    without a thread hop, an event loop or the release going to a thread.
    """
    live = limits._process()
    door = live.door(("tool:raw",), ())
    slot, queue = door._pair("slot", "tool:raw")
    keys = [live.key("limits"), live.key("declared"), slot, queue]

    def pair(i: int) -> None:
        args = [
            f"raw:{i}",
            door.waiter,
            live.ttl_us,
            1,
            0,
            live.poll_us,
            0,
            0,
            live.channel,
        ]
        live.conn.sync_script(_scripts.ADMIT, keys, [*args, "tool:raw", CONCURRENCY])
        live.conn.sync_script(
            _scripts.RELEASE, [slot, queue], [live.channel, f"raw:{i}"]
        )

    for i in range(50):
        pair(i)
    started = time.perf_counter()
    for i in range(calls):
        pair(i)
    return (time.perf_counter() - started) / calls * 1e6


def _socket_floor(limits: RedisLimits, calls: int) -> float:
    """Microseconds per ``ADMIT`` carrying the previous call's release.

    What an admit + release costs when the release rides along, as it does
    in the roads above, with nothing but a blocking socket around it: one
    round trip and the script, the floor under every road.
    """
    live = limits._process()
    door = live.door(("tool:floor",), ())
    slot, queue = door._pair("slot", "tool:floor")
    keys = [live.key("limits"), live.key("declared"), slot, queue, slot, queue]
    sha = live.conn.sync.script_load(_scripts.ADMIT)
    head = [door.waiter, live.ttl_us, 1, 0, live.poll_us, 0, 1, live.channel]
    sock = _socket(limits.url)

    def admit(i: int) -> None:
        args = [f"floor:{i}", *head, "tool:floor", CONCURRENCY, f"floor:{i - 1}"]
        sock.sendall(_resp.command(["EVALSHA", sha, len(keys), *keys, *args]))
        reader = _resp.Reader()
        while (reply := reader.reply()) is _resp.NOT_YET:
            reader.feed(sock.recv(65536))
        assert reply[0] == 1, reply

    for i in range(50):
        admit(i)
    started = time.perf_counter()
    for i in range(50, 50 + calls):
        admit(i)
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed / calls * 1e6


def _socket(url: str) -> socket.socket:
    where = urlsplit(url)
    sock = socket.create_connection((where.hostname, where.port or 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _socket_ping_us(url: str, calls: int) -> float:
    sock = _socket(url)
    sock.sendall(b"PING\r\n")
    sock.recv(64)
    started = time.perf_counter()
    for _ in range(calls):
        sock.sendall(b"PING\r\n")
        sock.recv(64)
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed / calls * 1e6


@plait.tool(name="bench", concurrency_limit=CONCURRENCY)
async def _noop(i: int) -> int:
    return i


async def _engine_calls(limits: RedisLimits | None, calls: int) -> float:
    engine = plait.Engine(tools=[_noop], shared_limits=limits)
    step = plait.Sequential(*[plait.Call("bench", i) for i in range(50)])
    await engine.run(step)
    started = time.perf_counter()
    for _ in range(max(1, calls // 50)):
        await engine.run(step)
    return (time.perf_counter() - started) / (max(1, calls // 50) * 50) * 1e6


def _ping_us(url: str, calls: int) -> float:
    import redis

    client = redis.Redis.from_url(url)
    client.ping()
    started = time.perf_counter()
    for _ in range(calls):
        client.ping()
    client.close()
    return (time.perf_counter() - started) / calls * 1e6


def uncontended(url: str, calls: int, repeat: int) -> list[dict[str, Any]]:
    """One row per road, then the floors; the roads take turns each repeat."""
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}

    def add(row: tuple[str, str], **values: float) -> None:
        got = samples.setdefault(row, {})
        for name, value in values.items():
            got.setdefault(name, []).append(value)

    for _ in range(repeat):
        for backend, road, key in ROADS:
            limits = _limits(url, key)
            add(
                (backend, road),
                ping=_ping_us(url, max(1, calls // 4)),
                socket_ping=_socket_ping_us(url, max(1, calls // 4)),
                pair=_run(backend, _admit_release, limits, calls),
                shared=_run(backend, _engine_calls, limits, calls),
                local=_run(backend, _engine_calls, None, calls),
            )
            limits.close()
        limits = _limits(url, "threads")
        add(
            FLOORS[0],
            ping=_ping_us(url, max(1, calls // 4)),
            socket_ping=_socket_ping_us(url, max(1, calls // 4)),
            pair=_raw_pair(limits, calls),
        )
        add(
            FLOORS[1],
            ping=_ping_us(url, max(1, calls // 4)),
            socket_ping=_socket_ping_us(url, max(1, calls // 4)),
            pair=_socket_floor(limits, calls),
        )
        limits.close()
    rows = []
    for (backend, road), got in samples.items():
        pair = statistics.median(got["pair"])
        rows.append(
            {
                "backend": backend,
                "road": road,
                "ping_us": statistics.median(got["ping"]),
                "socket_ping_us": statistics.median(got["socket_ping"]),
                "admit_release_us": pair,
                "engine_extra_us": (
                    statistics.median(got["shared"]) - statistics.median(got["local"])
                    if "shared" in got
                    else None
                ),
                "passed": pair <= TARGET_UNCONTENDED_US,
            }
        )
    return rows


# -- contended ------------------------------------------------------------------


def _worker(url: str, namespace: str, tasks: int, seconds: float) -> None:
    """One process of the contended part; prints its calls as JSON."""
    limits = RedisLimits(url, namespace=namespace)
    conn_script = None
    admits = 0

    @plait.tool(
        name="quota", concurrency_limit=CONCURRENCY, rate_limit=plait.RateLimit(RATE)
    )
    async def quota(i: int) -> tuple[float, float]:
        start = time.time()
        await anyio.sleep(0.1)
        return start, time.time()

    async def main() -> list[tuple[float, float]]:
        nonlocal conn_script
        engine = plait.Engine(tools=[quota], shared_limits=limits)
        conn = limits._process().conn
        conn_script = conn.script

        async def counted(*args: Any) -> Any:
            nonlocal admits
            admits += 1
            return await conn_script(*args)  # type: ignore[misc]

        conn.script = counted  # type: ignore[method-assign]
        spans: list[tuple[float, float]] = []

        async def loop() -> None:
            while True:
                spans.append(await engine.run(plait.Call("quota", 0)))

        print("ready", flush=True)
        sys.stdin.readline()
        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as tg:
                for _ in range(tasks):
                    tg.start_soon(loop)
        return spans

    spans = anyio.run(main)
    print(json.dumps({"spans": spans, "admits": admits}), flush=True)


def contended(url: str, processes: int, tasks: int, seconds: float) -> dict[str, Any]:
    import redis

    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    before = _script_calls(client)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                url,
                namespace,
                str(tasks),
                str(seconds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    before = _script_calls(client)
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 120)
        results.append(json.loads(out.strip().splitlines()[-1]))
    time.sleep(0.2)  # the last releases
    scripts = _script_calls(client) - before
    client.close()
    spans = sorted(tuple(s) for r in results for s in r["spans"])
    starts = [s[0] for s in spans]
    calls = len(starts)
    admits = sum(r["admits"] for r in results)
    burst = RATE  # RateLimit(50): a bucket of 50 tokens
    worst, j = 0, 0
    for i, start in enumerate(starts):
        while j < calls and starts[j] < start + 1.0:
            j += 1
        worst = max(worst, j - i)
    steady = (calls - burst) / (starts[-1] - starts[0]) if calls > burst else 0.0
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    error = abs(steady - RATE) / RATE
    return {
        "processes": processes,
        "tasks": tasks,
        "seconds": seconds,
        "calls": calls,
        "admit_scripts_per_call": admits / calls,
        "all_scripts_per_call": scripts / calls,
        "steady_rate": steady,
        "rate_error": error,
        "max_in_1s": worst,
        "window_bound": RATE + burst,
        "peak_in_flight": peak,
        "passed": (
            scripts / calls <= TARGET_SCRIPTS_PER_CALL
            and error <= TARGET_RATE_ERROR
            and steady <= RATE * (1 + 1e-9) + 0.5
            and worst <= RATE + burst
            and peak <= CONCURRENCY
        ),
    }


def _script_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(
        stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "evalsha")
    )


# -- output -----------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        _worker(argv[1], argv[2], int(argv[3]), float(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--url", help="an existing Redis server (else one is started)")
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    calls = args.calls or (200 if args.quick else 2000)
    repeat = args.repeat or (1 if args.quick else 5)
    processes = args.processes or (3 if args.quick else 20)
    seconds = args.seconds or (2.0 if args.quick else 10.0)

    with _server(args.url) as url:
        rows = uncontended(url, calls, repeat)
        load = contended(url, processes, args.tasks, seconds)

    print(f"\nUncontended, median of {repeat} x {calls} calls, one limit of 10:\n")
    print(
        _table(
            [
                "backend",
                "road",
                "PING redis-py us",
                "PING socket us",
                "admit+release us",
                "engine +us/call",
                "<=150",
            ],
            [
                [
                    r["backend"],
                    r["road"],
                    f"{r['ping_us']:.0f}",
                    f"{r['socket_ping_us']:.0f}",
                    f"{r['admit_release_us']:.0f}",
                    ""
                    if r["engine_extra_us"] is None
                    else f"{r['engine_extra_us']:.0f}",
                    "ok" if r["passed"] else "over",
                ]
                for r in rows
            ],
        )
    )
    print(
        f"\nContended: {load['processes']} processes x {load['tasks']} tasks, "
        f"RateLimit({RATE}) and concurrency_limit={CONCURRENCY}, "
        f"{load['seconds']:g} s, {load['calls']} calls:\n"
    )
    print(
        _table(
            ["measure", "value", "target"],
            [
                [
                    "admission scripts per call",
                    f"{load['admit_scripts_per_call']:.2f}",
                    "",
                ],
                ["all scripts per call", f"{load['all_scripts_per_call']:.2f}", "<= 3"],
                ["steady rate /s", f"{load['steady_rate']:.2f}", f"{RATE} +- 2%"],
                [
                    "most in any 1 s",
                    str(load["max_in_1s"]),
                    f"<= {load['window_bound']}",
                ],
                ["most in flight", str(load["peak_in_flight"]), f"<= {CONCURRENCY}"],
            ],
        )
    )
    print("\ncontended targets:", "met" if load["passed"] else "NOT met")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"uncontended": rows, "contended": load}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
