"""How a ready-made tool's factory (``shell_tool``, ``http_tool``) makes its tool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._model._backpressure import Adaptive
from .._model._errors import ConfigError
from .._model._ratelimit import RateLimit
from .._model._retry import Retry
from .._model._tools import Tool

__all__ = ["make_tool"]


def make_tool(
    factory: str,
    fn: Callable[..., Any],
    name: str,
    *,
    concurrency_limit: int | Adaptive | None,
    timeout: float | None,
    retry: Retry | None,
    rate_limit: RateLimit | None,
) -> Tool:
    """The :class:`plait.Tool` of ``fn``; a bad setting raises ``ConfigError``.

    The error names ``factory`` (the public function the user called), not
    the ``Tool`` it made.
    """
    try:
        return Tool(
            fn,
            name,
            concurrency_limit=concurrency_limit,
            timeout=timeout,
            retry=retry,
            rate_limit=rate_limit,
        )
    except ValueError as error:
        raise ConfigError(f"{factory}: {error}") from None
