"""The rules that settings and fields follow, each with its one message.

Every check of a single value in plait uses a :class:`Rule` from the table
below: the attrs validators of the specs, the loader reading a document, and
the settings of engines, limiters and agents. So a rule is written once and
says the same thing wherever it fails, in one form::

    MapReduce.max_concurrency must be an int >= 1 or None, got 0

(``or None`` when the field also takes None). As an attrs validator a rule
raises :class:`plait.WorkflowError` whose ``path`` is the field's name; its
:meth:`Rule.check` raises :class:`plait.ConfigError` for a setting.
"""

from __future__ import annotations

import difflib
import functools
import keyword
import math
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar, cast

import attrs

from ._errors import ConfigError, WorkflowError

__all__ = [
    "BOOL",
    "CALLABLE",
    "COUNT",
    "IDENTIFIER",
    "NAME",
    "SECONDS",
    "TEXT",
    "Rule",
    "Validator",
    "check_count",
    "check_optional_count",
    "check_seconds",
    "count",
    "did_you_mean",
    "fail",
    "field_rule",
    "instance_of",
    "number",
    "one_of",
    "optional_count",
    "optional_number",
    "show_value",
]

T = TypeVar("T")
Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]

_SHOWN = 80  # characters of a value shown in a message


def show_value(value: object) -> str:
    """``repr(value)`` for a message: cut short, and safe for huge ints."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python will print
        return f"an int of {value.bit_length()} bits"  # type: ignore[attr-defined]
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def did_you_mean(name: str, known: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` when a close match exists, else ``""``."""
    names = [str(k) for k in known]
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _owner_name(owner: object) -> str:
    return owner.__name__ if isinstance(owner, type) else type(owner).__name__


def fail(inst: object, field: str, expected: str, value: object) -> NoReturn:
    """Raise ``Class.field must be <expected>, got <value>`` as a WorkflowError.

    For the checks that are not a single value's rule (a step's children, a
    pair of fields); a value's rule is a :class:`Rule`.
    """
    raise WorkflowError(
        f"{_owner_name(inst)}.{field} must be {expected}, got {show_value(value)}",
        field,
    )


@attrs.frozen
class Rule:
    """What a value must be (``expected``) and the test that says whether it is.

    A rule is an attrs validator (``attrs.field(validator=COUNT)``); the
    field's public name (its ``__init__`` argument) is the one the message
    names.

    Attributes:
        expected: what the value must be, as the message says it: ``an int >= 1``.
        test: True for a value that follows the rule.
        hint: more words for a value that does not, such as
            `` (did you mean 'collect'?)``; or None.
        optional: None also follows the rule (the message adds ``or None``).
    """

    expected: str
    test: Callable[[Any], bool] = attrs.field(repr=False, eq=False)
    hint: Callable[[Any], str] | None = attrs.field(default=None, repr=False, eq=False)
    optional: bool = False

    def or_none(self) -> Rule:
        """The same rule, with None allowed too."""
        return attrs.evolve(self, optional=True)

    def ok(self, value: object) -> bool:
        """Whether ``value`` follows the rule."""
        return (value is None and self.optional) or self.test(value)

    def message(
        self, what: str, value: object, show: Callable[[object], str] = show_value
    ) -> str:
        """``<what> must be <expected>, got <value>``; ``show`` writes the value."""
        expected = f"{self.expected} or None" if self.optional else self.expected
        hint = self.hint(value) if self.hint is not None else ""
        return f"{what} must be {expected}, got {show(value)}{hint}"

    def check(
        self, value: T, what: str, error: Callable[[str], Exception] = ConfigError
    ) -> T:
        """``value`` if it follows the rule, else raise ``error`` (a ConfigError).

        ``what`` names the setting: ``"Engine.max_concurrency"``.
        """
        if not self.ok(value):
            raise error(self.message(what, value))
        return value

    def check_field(
        self,
        owner: object,
        field: str,
        value: object,
        show: Callable[[object], str] = show_value,
    ) -> None:
        """Raise the WorkflowError of ``owner``'s (a class or an object) ``field``."""
        if not self.ok(value):
            raise WorkflowError(
                self.message(f"{_owner_name(owner)}.{field}", value, show), field
            )

    def __call__(self, inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        """The attrs validator: :meth:`check_field` for ``inst``'s field."""
        if not self.ok(value):
            self.check_field(inst, attr.alias or attr.name, value)


def field_rule(cls: type, field: str) -> Rule | None:
    """The rule of an attrs class's field, if its validator is one."""
    validator = attrs.fields_dict(cls)[field].validator
    return validator if isinstance(validator, Rule) else None


# -- the table ------------------------------------------------------------------
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


@functools.cache
def count(*, minimum: int = 1) -> Rule:
    """An int (not a bool) of at least ``minimum``: ``an int >= 1``."""
    return Rule(f"an int >= {minimum}", lambda v: _is_int(v) and v >= minimum)


@functools.cache
def optional_count(*, minimum: int = 1) -> Rule:
    """:func:`count`, or None."""
    return count(minimum=minimum).or_none()


@functools.cache
def number(*, minimum: float = 0.0, strict: bool = True) -> Rule:
    """A finite int or float above ``minimum`` (or equal, with ``strict=False``)."""
    if strict:
        return Rule(f"a number > {minimum:g}", lambda v: _finite(v) and v > minimum)
    return Rule(f"a number >= {minimum:g}", lambda v: _finite(v) and v >= minimum)


@functools.cache
def optional_number(*, minimum: float = 0.0, strict: bool = True) -> Rule:
    """:func:`number`, or None."""
    return number(minimum=minimum, strict=strict).or_none()


def one_of(*choices: str) -> Rule:
    """One of a few strings: ``'raise' or 'collect'``."""
    return Rule(
        " or ".join(repr(c) for c in choices),
        lambda v: isinstance(v, str) and v in choices,
        hint=lambda v: did_you_mean(v, choices) if isinstance(v, str) else "",
    )


def instance_of(cls: type, name: str | None = None) -> Rule:
    """An instance of ``cls``: ``a plait.Retry``."""
    return Rule(f"a {name or 'plait.' + cls.__name__}", lambda v: isinstance(v, cls))


def _is_identifier(value: object) -> bool:
    return isinstance(value, str) and value.isidentifier()


#: Tool calls, items or slots at once; attempts.
COUNT = count(minimum=1)
#: Timeouts and deadlines.
SECONDS = Rule("a number of seconds > 0", lambda v: _finite(v) and v > 0)
#: A step's ``name=``: a variable later steps read.
NAME = Rule("an identifier such as 'results'", _is_identifier)
#: A map's ``item=``: a variable, so not a Python keyword either.
IDENTIFIER = Rule(
    "an identifier such as 'item'",
    lambda v: _is_identifier(v) and not keyword.iskeyword(v),
)
BOOL = Rule("True or False", lambda v: isinstance(v, bool))
TEXT = Rule("a str", lambda v: isinstance(v, str))
CALLABLE = Rule("a callable", callable)


_SECONDS_OR_NONE = SECONDS.or_none()


def check_count(value: object, what: str, *, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum``; else :class:`ConfigError`.

    ``what`` names the setting: ``Engine.max_concurrency must be an int >= 1,
    got 0``.
    """
    count(minimum=minimum).check(value, what)
    return cast(int, value)


def check_optional_count(value: object, what: str, *, minimum: int = 1) -> int | None:
    """:func:`check_count`, and None passes."""
    optional_count(minimum=minimum).check(value, what)
    return cast("int | None", value)


def check_seconds(value: object, what: str) -> float | None:
    """``value`` as a float of seconds > 0, or None; else :class:`ConfigError`."""
    _SECONDS_OR_NONE.check(value, what)
    return None if value is None else float(value)  # type: ignore[arg-type]
