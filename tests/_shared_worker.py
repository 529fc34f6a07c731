"""One process of the shared-limits tests: runs calls, prints what it saw.

python _shared_worker.py rate URL NAMESPACE SECONDS
    calls a tool under RateLimit(20, per=1, burst=5) for SECONDS; prints
    one start time (time.time()) per line.
python _shared_worker.py slots URL NAMESPACE CALLS
    CALLS calls of a tool with concurrency_limit=4 (8 at once locally);
    prints "start end" per call.
python _shared_worker.py hold URL NAMESPACE LEASE_TTL
    takes the one slot of a tool with concurrency_limit=1, prints
    "holding" and sleeps until killed.
"""

from __future__ import annotations

import sys
import time

import anyio

import plait
from plait.redis import RedisLimits


async def rate(url: str, namespace: str, seconds: float) -> None:
    @plait.tool(name="quota", rate_limit=plait.RateLimit(20, per=1, burst=5))
    async def quota(i: int) -> float:
        return time.time()

    engine = plait.Engine(
        tools=[quota], shared_limits=RedisLimits(url, namespace=namespace)
    )
    stamps: list[float] = []
    with anyio.move_on_after(seconds):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(_loop, engine, stamps)
    print("\n".join(repr(s) for s in stamps), flush=True)


async def _loop(engine: plait.Engine, stamps: list[float]) -> None:
    while True:
        stamps.append(await engine.run(plait.Call("quota", 0)))


async def slots(url: str, namespace: str, calls: int) -> None:
    @plait.tool(name="four", concurrency_limit=4)
    async def four(i: int) -> tuple[float, float]:
        start = time.time()
        await anyio.sleep(0.02)
        return start, time.time()

    engine = plait.Engine(
        tools=[four], shared_limits=RedisLimits(url, namespace=namespace)
    )
    spans = await engine.run(
        plait.MapReduce(
            plait.Var("xs"), plait.Call("four", plait.Var("item")), max_concurrency=8
        ),
        {"xs": list(range(calls))},
    )
    print("\n".join(f"{a!r} {b!r}" for a, b in spans), flush=True)


async def hold(url: str, namespace: str, lease_ttl: float) -> None:
    @plait.tool(name="one", concurrency_limit=1)
    async def one() -> None:
        print("holding", flush=True)
        await anyio.sleep(3600)

    limits = RedisLimits(url, namespace=namespace, lease_ttl=lease_ttl)
    await plait.Engine(tools=[one], shared_limits=limits).run(plait.Call("one"))


def main() -> None:
    mode, url, namespace, value = sys.argv[1:5]
    if mode == "rate":
        anyio.run(rate, url, namespace, float(value))
    elif mode == "slots":
        anyio.run(slots, url, namespace, int(value))
    else:
        anyio.run(hold, url, namespace, float(value))


if __name__ == "__main__":
    main()
