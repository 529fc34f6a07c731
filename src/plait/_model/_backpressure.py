"""Backpressure from services, as data: an adaptive limit, a ``Retry-After``.

:class:`Adaptive` is the spec of a concurrency limit that follows what a
service takes; its live controller is
:class:`plait._concurrency._adaptive.AdaptiveLimit`.
:func:`retry_after_seconds` reads the wait a service asked for (HTTP's
``Retry-After``: delta-seconds or an HTTP date).
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime
from typing import Any

import attrs

from ._validate import COUNT, Rule

__all__ = ["Adaptive", "retry_after_seconds"]


def _setting(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    COUNT.check(value, f"Adaptive.{attr.name}")


@attrs.frozen
class Adaptive:
    """A concurrency limit that adapts to what the service takes.

    Give it as a tool's ``concurrency_limit`` (or to
    :class:`plait.KeyedLimit`): the tool starts with ``initial`` calls at
    once at most; the limit shrinks multiplicatively when the service pushes
    back (a call raises :class:`plait.RateLimited`) or when the median
    latency of a window of 32 successful calls climbs above twice its
    recent floor, and grows by one for every window of successful calls
    while it is in use; ``min`` and ``max`` bound it. The current value is
    in the run's stats (``ToolStats.limit``; per key under
    :class:`plait.KeyedLimit`, ``ToolStats.key_limits``) and in
    ``tool.limit_changed`` events.

    Args:
        initial: the limit before any call has finished.
        min: the limit never goes below it.
        max: the limit never goes above it.

    Raises:
        ConfigError: a value that is not an int >= 1, ``min > max``, or
            ``initial`` outside ``min..max``; the message names the field.
    """

    initial: int = attrs.field(default=8, validator=_setting)
    min: int = attrs.field(default=1, validator=_setting)
    max: int = attrs.field(default=64, validator=_setting)

    def __attrs_post_init__(self) -> None:
        Rule(f"an int <= Adaptive.max ({self.max})", lambda v: v <= self.max).check(
            self.min, "Adaptive.min"
        )
        Rule(
            f"an int from Adaptive.min to Adaptive.max ({self.min}..{self.max})",
            lambda v: self.min <= v <= self.max,
        ).check(self.initial, "Adaptive.initial")


def retry_after_seconds(value: object, now: float | None = None) -> float | None:
    """The seconds a service asked to wait, or None when ``value`` says nothing.

    ``value``: a number of seconds, or the text of a ``Retry-After`` header:
    delta-seconds (``"2"``, also ``"0.5"``) or an HTTP date (``"Wed, 21 Oct
    2015 07:28:00 GMT"``, counted from ``now``, ``time.time()`` by default;
    a date in the past means 0). Negative, infinite or unreadable values
    give None.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return retry_after_seconds(float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
