"""Options mappings of a document into :class:`Retry`, :class:`RateLimit` and tools.

cattrs structures the mappings (unknown keys, missing keys, one hook per
field); the hooks here take each value as it is (``"3"`` is not an int,
``1`` is not a bool) and check it by the rule of its field in the class
(see :mod:`plait._model._validate`), and :func:`structure` turns cattrs'
exception groups into problems with document locations, so that every bad
key of a mapping is reported at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, override

from .._model._backpressure import Adaptive
from .._model._errors import ConfigError, WorkflowError
from .._model._expr import did_you_mean
from .._model._imports import (
    ANY_IMPORT,
    ImportPathError,
    Imports,
    exception_class,
    resolve,
)
from .._model._ratelimit import RateLimit
from .._model._retry import Retry
from .._model._tools import Tool
from .._model._validate import field_rule
from ._form import TOOL_KEYS
from ._problems import Loc, Problems, describe

__all__ = ["UNSET", "ToolDecl", "structure"]

T = TypeVar("T")
Hook = Callable[[Any, Any], Any]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@attrs.frozen(kw_only=True)
class ToolDecl:
    """A tool declared in ``tools:`` as a mapping; UNSET options keep the tool's."""

    target: str  # the document's `import` key
    concurrency_limit: Any = UNSET
    timeout: Any = UNSET
    retry: Any = UNSET
    rate_limit: Any = UNSET


# Document key names that differ from the attribute names.
_RENAMED = {(ToolDecl, "target"): "import"}


class Invalid(Exception):
    """A value that does not fit its key.

    Either ``expected`` (the message becomes ``key must be <expected>, got
    <value>``) or a whole ``message``.
    """

    def __init__(
        self, expected: str | None, value: object = None, message: str | None = None
    ) -> None:
        super().__init__(message or expected)
        self.expected = expected
        self.value = value
        self.message = message


class InvalidItems(Exception):
    """Problems with elements of a list value: ``(index, message)`` pairs."""

    def __init__(self, items: list[tuple[int, str]]) -> None:
        super().__init__(items)
        self.items = items


def _ruled(cls: type, field: str) -> Hook:
    """The value as it is, checked by the rule of ``cls``'s ``field``."""
    rule = field_rule(cls, field)
    assert rule is not None, f"{cls.__name__}.{field} has no rule"

    def hook(value: Any, _: Any) -> Any:
        if not rule.ok(value):
            raise Invalid(
                None, message=rule.message(f"{cls.__name__}.{field}", value, describe)
            )
        return value

    return hook


def _ruled_fields(cls: type, *fields: str, owner: type | None = None) -> dict[str, Any]:
    """cattrs overrides checking ``fields`` by their rules in ``owner`` (or ``cls``)."""
    return {f: override(struct_hook=_ruled(owner or cls, f)) for f in fields}


def _optional(hook: Hook) -> Hook:
    def optional(value: Any, type_: Any) -> Any:
        if value is None:
            return None
        try:
            return hook(value, type_)
        except Invalid as e:
            if e.expected is not None:
                raise Invalid(f"{e.expected} or null", e.value) from None
            raise

    return optional


def _concurrency_limit(value: Any, _: Any) -> Any:
    """An int as it is, or a mapping of :class:`Adaptive`'s fields."""
    if isinstance(value, Mapping):
        extra = sorted(set(value) - {"initial", "min", "max"}, key=repr)
        if extra:
            raise Invalid(
                None,
                message=f"unknown key {extra[0]!r} in an adaptive concurrency_limit"
                "; the keys here are initial, min, max",
            )
        try:
            return Adaptive(**value)
        except ConfigError as e:
            raise Invalid(None, message=str(e)) from None
    return _ruled(Tool, "concurrency_limit")(value, _)


def _import_path(value: Any, _: Any) -> Any:
    if not isinstance(value, str) or ":" not in value:
        raise Invalid("an import path 'module:attr'", value)
    return value


def _retry_on(imports: Imports) -> Hook:
    def hook(value: Any, _: Any) -> Any:
        return _exceptions_or_predicate(value, imports)

    return hook


def _exceptions_or_predicate(value: Any, imports: Imports) -> Any:
    if isinstance(value, str):
        try:
            if ":" not in value:
                return (exception_class(value),)
            found = resolve(value, imports)
        except ImportPathError as e:
            raise Invalid(None, message=str(e)) from None
        if isinstance(found, type) and issubclass(found, Exception):
            return (found,)
        if callable(found) and not isinstance(found, type):
            return found
        raise Invalid(
            None,
            message=f"retry_on: {value!r} is neither an Exception subclass nor "
            f"a predicate (exception) -> bool, got {found!r:.60}",
        )
    if not isinstance(value, list):
        raise Invalid(
            "a list of exception classes such as [OSError, TimeoutError], "
            "or the import path of a predicate 'module:function'",
            value,
        )
    classes: list[type[Exception]] = []
    bad: list[tuple[int, str]] = []
    for i, name in enumerate(value):
        if not isinstance(name, str):
            bad.append(
                (
                    i,
                    f"retry_on[{i}] must be an exception class such as 'OSError' "
                    f"or 'module:Class', got {describe(name)}",
                )
            )
            continue
        try:
            classes.append(exception_class(name, imports))
        except ImportPathError as e:
            bad.append((i, str(e)))
    if bad:
        raise InvalidItems(bad)
    return tuple(classes)


def _nested(conv: cattrs.Converter, cls: type[Any], what: str) -> Hook:
    def hook(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise Invalid(f"a mapping of {what} options", value)
        return conv.structure(value, cls)

    return hook


@functools.lru_cache(maxsize=8)
def _converter(imports: Imports) -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(
        Retry,
        make_dict_structure_fn(
            Retry,
            conv,
            **_ruled_fields(
                Retry, "attempts", "backoff", "initial_delay", "max_delay", "jitter"
            ),
            retry_on=override(struct_hook=_retry_on(imports)),
        ),
    )
    conv.register_structure_hook(
        RateLimit,
        make_dict_structure_fn(
            RateLimit, conv, **_ruled_fields(RateLimit, "rate", "per", "burst")
        ),
    )
    conv.register_structure_hook(
        ToolDecl,
        make_dict_structure_fn(
            ToolDecl,
            conv,
            target=override(rename="import", struct_hook=_import_path),
            concurrency_limit=override(struct_hook=_concurrency_limit),
            **_ruled_fields(ToolDecl, "timeout", owner=Tool),
            retry=override(struct_hook=_optional(_nested(conv, Retry, "retry"))),
            rate_limit=override(
                struct_hook=_optional(_nested(conv, RateLimit, "rate limit"))
            ),
        ),
    )
    return conv


def structure(
    data: object,
    cls: type[T],
    loc: Loc,
    problems: Problems,
    what: str,
    imports: Imports = ANY_IMPORT,
) -> T | None:
    """Structure the mapping ``data`` at ``loc`` as ``cls``; None if invalid.

    Every problem (unknown and missing keys, bad values, import paths that
    ``imports`` does not allow) is added to ``problems`` with its location.
    """
    if not isinstance(data, Mapping):
        problems.add(loc, f"{what} must be a mapping, got {describe(data)}")
        return None
    try:
        return _converter(imports).structure(data, cls)
    except ClassValidationError as group:
        _report(group, cls, data, loc, problems)
    except WorkflowError as e:
        problems.add((*loc, e.path) if e.path else loc, e.message)
    return None


def _keys(cls: type[Any]) -> list[str]:
    if cls is ToolDecl:
        return list(TOOL_KEYS)
    return [a.name for a in attrs.fields(cls)]


def _report(
    group: ClassValidationError,
    cls: type[Any],
    data: Mapping[Any, Any],
    loc: Loc,
    problems: Problems,
) -> None:
    with_notes, others = group.group_exceptions()
    for exc, note in with_notes:
        key = _RENAMED.get((cls, note.name), note.name)
        sub = (*loc, key)
        inner = data.get(key)
        if isinstance(exc, KeyError) and key not in data:
            problems.add(loc, f"missing required key {key!r}")
        elif isinstance(exc, ClassValidationError) and isinstance(inner, Mapping):
            _report(exc, exc.cl, inner, sub, problems)
        elif isinstance(exc, Invalid):
            problems.add(
                sub,
                exc.message
                or f"{key} must be {exc.expected}, got {describe(exc.value)}",
            )
        elif isinstance(exc, InvalidItems):
            for i, message in exc.items:
                problems.add((*sub, i), message)
        else:
            problems.add(sub, f"{key}: {type(exc).__name__}: {exc}")
    for exc in others:
        if isinstance(exc, ForbiddenExtraKeysError):
            allowed = _keys(cls)
            for extra in sorted(exc.extra_fields, key=repr):
                name = extra if isinstance(extra, str) else repr(extra)
                problems.add(
                    (*loc, name),
                    f"unknown key {extra!r}{did_you_mean(name, allowed)}; "
                    f"the keys here are {', '.join(allowed)}",
                )
        elif isinstance(exc, WorkflowError):
            # A check of the options class itself: its path is the field name.
            problems.add((*loc, exc.path) if exc.path else loc, exc.message)
        else:
            problems.add(loc, f"{type(exc).__name__}: {exc}")
