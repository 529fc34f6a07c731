from __future__ import annotations

import anyio
import pytest

import plait

pytestmark = pytest.mark.anyio


async def test_map_reduce_then_parallel() -> None:
    @plait.tool
    async def double(x: int) -> int:
        await anyio.sleep(0)
        return 2 * x

    @plait.tool
    def inc(x: int) -> int:
        return x + 1

    wf = plait.Sequential(
        plait.MapReduce(plait.Var("xs"), double, name="d"),
        plait.Parallel(a=plait.Call("inc", plait.Var("d.0")), b=plait.Call(inc, 41)),
    )
    engine = plait.Engine(tools=[double, inc])
    assert await engine.run(wf, {"xs": [1, 2, 3]}) == {"a": 3, "b": 42}
