"""Tools, functions and exceptions that test documents name by import path.

Test documents refer to them as ``_sample_tools:<name>`` (``tests/`` is on
``sys.path`` while the tests run).
"""

from __future__ import annotations

from typing import Any

import anyio

import plait


@plait.tool
async def double(x: int) -> int:
    await anyio.sleep(0)
    return 2 * x


@plait.tool(concurrency_limit=2, timeout=5.0, retry=plait.Retry(attempts=2))
def shout(text: str) -> str:
    return text.upper()


def greet(name: str, punctuation: str = "!") -> str:
    return f"hello {name}{punctuation}"


async def fetch(url: str) -> int:
    await anyio.sleep(0)
    return len(url)


def add(acc: int, value: int) -> int:
    return acc + value


def join(*parts: Any) -> str:
    return "".join(str(p) for p in parts)


async def async_add(acc: int, value: int) -> int:
    return acc + value


class Flaky(Exception):
    """A transient failure, for retry_on."""


def is_transient(error: BaseException) -> bool:
    return isinstance(error, Flaky)


NOT_CALLABLE = 3
