"""Tools of benchmarks/remote.py, importable by the Dask workers by path."""

from __future__ import annotations

import time

import anyio


def inc(x: int) -> int:
    return x + 1


def inc_chunk(xs: list[int]) -> list[int]:
    """The baseline's task: the same work as a chunk, with no plait."""
    return [inc(x) for x in xs]


def spin(n: int) -> int:
    """CPU-bound pure Python."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


async def sleep_logged(x: int, seconds: float) -> float:
    """Sleep; return when it ended (never reached when cancelled)."""
    await anyio.sleep(seconds)
    return time.time()
