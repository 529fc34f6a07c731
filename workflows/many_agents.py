"""Many agents at once with plait.agents: a simulated research desk.

``--agents`` simulated analysts (half blocking, half async; deterministic
local functions with realistic latencies, no network) each study one
market, at most ``--batch-size`` at once and each for at most ``--timeout``
seconds. A few are built to misbehave: one raises, one hangs past its time
limit. Every analyst counts its work in a :class:`plait.agents.SharedContext`
with an atomic ``modify``. The report shows that every output came back in
input order and that the misbehaving analysts left a ``Failure`` in their
place without losing anyone else's work.

Run it::

    python workflows/many_agents.py
    python workflows/many_agents.py --agents 1000 --batch-size 100 --backend trio
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import anyio

import plait
from plait.agents import SharedContext, arun_agents_with_timeout

BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
MARKETS = ("rates", "energy", "tech", "retail", "metals", "fx", "credit", "crypto")


class BlockingAnalyst:
    """An analyst whose ``run`` blocks, like a sync HTTP client would."""

    def __init__(self, n: int, ctx: SharedContext, latency: float) -> None:
        self.agent_name = f"analyst-{n}"
        self.ctx = ctx
        self.latency = latency

    def run(self, market: str) -> str:
        time.sleep(self.latency)
        self.ctx.sync.modify("reports", lambda n: n + 1)
        return f"{self.agent_name}: {market} looks steady"


class AsyncAnalyst:
    """An analyst whose ``run`` awaits, like an async HTTP client would."""

    def __init__(self, n: int, ctx: SharedContext, latency: float) -> None:
        self.agent_name = f"analyst-{n}"
        self.ctx = ctx
        self.latency = latency

    async def run(self, market: str) -> str:
        await anyio.sleep(self.latency)
        await self.ctx.modify("reports", lambda n: n + 1)
        return f"{self.agent_name}: {market} is volatile"


class BrokenAnalyst:
    """Fails at once, as an agent whose upstream refuses the request does."""

    agent_name = "analyst-broken"

    def run(self, market: str) -> str:
        raise ConnectionError(f"the {market} data feed refused the connection")


class StuckAnalyst:
    """Blocks far past any time limit, like a call with no timeout of its own."""

    agent_name = "analyst-stuck"

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def run(self, market: str) -> str:
        self.release.wait(30)
        return "too late"


async def research_desk(
    agents: int = 200,
    batch_size: int = 32,
    timeout: float = 0.5,  # noqa: ASYNC109 (each analyst's own time limit)
    seed: int = 1,
) -> dict[str, Any]:
    """Run the desk; return the outputs and what the report is made of."""
    rng = random.Random(seed)
    ctx = SharedContext({"reports": 0})
    release = threading.Event()
    team: list[Any] = []
    for n in range(agents):
        latency = rng.uniform(0.005, 0.03)
        kind = BlockingAnalyst if n % 2 == 0 else AsyncAnalyst
        team.append(kind(n, ctx, latency))
    if agents >= 4:
        team[agents // 3] = BrokenAnalyst()
        team[2 * agents // 3] = StuckAnalyst(release)
    market = MARKETS[seed % len(MARKETS)]
    started = time.perf_counter()
    try:
        outputs = await arun_agents_with_timeout(
            team, market, timeout, batch_size=batch_size
        )
    finally:
        release.set()  # let the stuck analyst's thread go home
    elapsed = time.perf_counter() - started
    failures = [o for o in outputs if isinstance(o, plait.Failure)]
    return {
        "outputs": outputs,
        "failures": failures,
        "reports": (await ctx.snapshot())["reports"],
        "elapsed": elapsed,
        "market": market,
    }


def report(result: dict[str, Any]) -> str:
    """The desk's report as text."""
    outputs = result["outputs"]
    lines = [
        f"{len(outputs)} analysts studied {result['market']} in "
        f"{result['elapsed']:.2f}s; {result['reports']} reports filed",
    ]
    for failure in result["failures"]:
        lines.append(
            f"  {failure.path}: {type(failure.error).__name__}: {failure.error}"
        )
    ok = [o for o in outputs if not isinstance(o, plait.Failure)]
    lines.append(f"  first: {ok[0]}")
    lines.append(f"  last:  {ok[-1]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    args = parser.parse_args(argv)
    backend, options = BACKENDS[args.backend]
    result = anyio.run(
        research_desk,
        args.agents,
        args.batch_size,
        args.timeout,
        args.seed,
        backend=backend,
        backend_options=options,
    )
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
