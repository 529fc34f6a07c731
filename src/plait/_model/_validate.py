"""Small attrs validators whose errors name the class, the field and the value."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NoReturn

import attrs

from ._errors import ConfigError, WorkflowError

__all__ = [
    "check_seconds",
    "fail",
    "number",
    "optional_number",
    "optional_count",
    "count",
    "one_of",
]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def fail(inst: object, field: str, expected: str, value: object) -> NoReturn:
    """Raise the standard ``Class.field must be <expected>, got <value>`` error."""
    raise WorkflowError(
        f"{type(inst).__name__}.{field} must be {expected}, got {value!r}", field
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def number(*, minimum: float = 0.0, strict: bool = True) -> Validator:
    """A finite int or float above ``minimum`` (or equal, with ``strict=False``)."""
    sign = ">" if strict else ">="
    expected = f"a number {sign} {minimum:g}"

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if not _is_number(value) or not _finite(value):
            fail(inst, attr.name, expected, value)
        if value <= minimum if strict else value < minimum:
            fail(inst, attr.name, expected, value)

    return check


def optional_number(*, minimum: float = 0.0, strict: bool = True) -> Validator:
    """Like :func:`number`, and ``None`` passes."""
    inner = number(minimum=minimum, strict=strict)

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            inner(inst, attr, value)

    return check


def count(*, minimum: int = 1) -> Validator:
    """An int (not a bool) of at least ``minimum``."""

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            fail(inst, attr.name, f"an int >= {minimum}", value)

    return check


def optional_count(*, minimum: int = 1) -> Validator:
    """Like :func:`count`, and ``None`` passes."""
    inner = count(minimum=minimum)

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            inner(inst, attr, value)

    return check


def one_of(*choices: str) -> Validator:
    """One of a few strings."""
    expected = " or ".join(repr(c) for c in choices)

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            fail(inst, attr.name, expected, value)

    return check


def check_seconds(value: object, what: str) -> float | None:
    """``value`` as a float of seconds > 0, or None; else :class:`ConfigError`."""
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or math.isnan(value)
        or value <= 0
    ):
        raise ConfigError(
            f"{what} must be a number of seconds > 0 or None, got {value!r}"
        )
    return float(value)
