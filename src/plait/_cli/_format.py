"""Numbers and times as the progress lines and the summary print them."""

from __future__ import annotations

import math

__all__ = ["count", "duration", "latency", "rate"]


def duration(seconds: float) -> str:
    """A span of time: ``0.4s``, ``12s``, ``3m05s``, ``2h07m``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def latency(seconds: float | None) -> str:
    """A latency: ``85us``, ``12.3ms``, ``1.20s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def rate(per_second: float | None) -> str:
    """A rate of items: ``85.0/s``; ``-/s`` when unknown."""
    if per_second is None:
        return "-/s"
    if per_second >= 1000:
        return f"{per_second:,.0f}/s"
    return f"{per_second:.1f}/s"


def count(n: int, what: str) -> str:
    """``1 retry``, ``2 retries``, ``3 failed``: a count and its noun."""
    if what.endswith("y") and n != 1:
        return f"{n:,} {what[:-1]}ies"
    if what.endswith(("ed", "s")) or n == 1:
        return f"{n:,} {what}"
    return f"{n:,} {what}s"
