"""Tools for the workflow files in tests/cli/, which name them by import path.

``plait`` puts the directory of a workflow file first on ``sys.path``, so
``cli_tools:count_words`` imports from here wherever the command runs.
"""

from __future__ import annotations

import anyio

import plait


@plait.tool
async def count_words(text: str) -> int:
    await anyio.sleep(0)
    return len(text.split())


def shout(text: str) -> str:
    return text.upper()


def check(text: str) -> str:
    if "bad" in text:
        raise ValueError(f"bad text: {text!r}")
    return text


def numbers(n: int) -> list[int]:
    return list(range(n))


@plait.tool(concurrency_limit=4)
async def nap(x: int) -> int:
    await anyio.sleep(0.05)
    return x


def echo(value: object) -> object:
    return value
