"""Expressions: how a step reads the inputs and earlier outputs of a run.

``Var("x.field.0")`` reads a variable and walks into it (mapping keys,
sequence indexes, attributes), ``Lit(value)`` is a constant and
``Fn(name, *args)`` applies a registered pure function. A plain value where
an expression is expected is a constant; lists, tuples and dicts that hold
expressions are evaluated element by element.

Expressions are *compiled* once per run into plain closures over the scope (a
dict of variables), after every variable and function name has been checked,
so evaluating one for a map element costs a dict lookup, not a tree walk.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ._errors import ExpressionError, WorkflowError
from ._paths import child, index, key
from ._tools import is_async_callable
from ._validate import did_you_mean, fail

__all__ = ["Evaluator", "Fn", "Lit", "Var", "compile_expr", "did_you_mean"]

Scope = dict[str, Any]
Evaluator = Callable[[Scope], Any]


def _check_var_path(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value or "" in value.split("."):
        fail(inst, attr.name, "a dotted path such as 'x' or 'x.field.0'", value)


@attrs.frozen(repr=False)
class Var:
    """Read a variable: an input of the run, a step's ``name=`` or a map item.

    ``Var("x.field")``, ``Var("x.0")``: after the variable, each dotted part
    is looked up as a mapping key, then (for digits) a sequence index, then
    an attribute.
    """

    path: str = attrs.field(validator=_check_var_path)

    def __repr__(self) -> str:
        return f"Var({self.path!r})"

    @property
    def root(self) -> str:
        """The variable's name: the part before the first dot."""
        return self.path.split(".", 1)[0]


@attrs.frozen(repr=False)
class Lit:
    """A constant, even when it looks like an expression or holds some."""

    value: Any

    def __repr__(self) -> str:
        return f"Lit({self.value!r})"


def _check_fn_target(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, str):
        if not value:
            fail(inst, attr.name, "a registered function name or a callable", value)
        return
    if not callable(value):
        fail(inst, attr.name, "a registered function name or a callable", value)
    if is_async_callable(value):
        fail(inst, attr.name, "a plain (not async) function", value)


@attrs.frozen(init=False)
class Fn:
    """Apply a pure function to evaluated arguments: ``Fn("len", Var("xs"))``.

    ``fn`` is the name of a function registered with the engine
    (``Engine(functions=...)``) or a plain callable.
    """

    fn: str | Callable[..., Any] = attrs.field(validator=_check_fn_target)
    args: tuple[Any, ...] = attrs.field(default=())

    def __init__(self, fn: str | Callable[..., Any], *args: Any) -> None:
        self.__attrs_init__(fn, args)

    def __repr__(self) -> str:
        parts = [repr(self.fn), *(repr(a) for a in self.args)]
        return f"Fn({', '.join(parts)})"


def is_expression(value: object) -> bool:
    """Whether ``value`` needs evaluating (holds a Var, Fn or Lit somewhere).

    A ``Lit`` inside a list, tuple or dict counts: it is unwrapped when the
    container is evaluated, as it is next to a ``Var``.
    """
    if isinstance(value, Var | Fn | Lit):
        return True
    if isinstance(value, list | tuple):
        return any(is_expression(v) for v in value)
    if isinstance(value, dict):
        return any(is_expression(v) for v in value.values())
    return False


def _lookup(value: Any, part: str, number: int | None, var: str) -> Any:
    if type(value) is dict and part in value:  # the common case, without an ABC check
        return value[part]
    if isinstance(value, Mapping):
        if part in value:
            return value[part]
        if number is not None and number in value:
            return value[number]
        raise ExpressionError(
            f"Var({var!r}): {type(value).__name__} has no key {part!r}"
            f"{did_you_mean(part, value.keys())}"
        )
    if number is not None and isinstance(value, Sequence):
        try:
            return value[number]
        except IndexError:
            raise ExpressionError(
                f"Var({var!r}): index {number} is out of range for a "
                f"{type(value).__name__} of length {len(value)}"
            ) from None
    try:
        return getattr(value, part)
    except AttributeError:
        raise ExpressionError(
            f"Var({var!r}): {type(value).__name__} value has no attribute "
            f"or key {part!r}"
        ) from None


def _compile_var(var: Var, env: frozenset[str], path: str) -> Evaluator:
    root, *rest = var.path.split(".")
    if root not in env:
        known = ", ".join(sorted(env)) or "none"
        raise WorkflowError(
            f"unknown variable {root!r} in Var({var.path!r})"
            f"{did_you_mean(root, env)}; variables known here: {known}",
            path,
        )
    if not rest:
        # A C-level getter: this runs once per map element.
        return operator.itemgetter(root)
    parts = tuple((p, int(p) if p.lstrip("-").isdigit() else None) for p in rest)
    full = var.path

    def get_path(scope: Scope) -> Any:
        value = scope[root]
        for part, number in parts:
            value = _lookup(value, part, number, full)
        return value

    return get_path


def compile_expr(
    expr: Any,
    env: frozenset[str],
    functions: Mapping[str, Callable[..., Any]],
    path: str,
) -> Evaluator:
    """Check ``expr`` against the names visible at ``path`` and compile it.

    Raises:
        WorkflowError: an unknown variable or function, naming it and ``path``.
    """
    if isinstance(expr, Var):
        return _compile_var(expr, env, path)
    if isinstance(expr, Fn):
        if isinstance(expr.fn, str):
            try:
                fn = functions[expr.fn]
            except KeyError:
                raise WorkflowError(
                    f"unknown function {expr.fn!r}{did_you_mean(expr.fn, functions)};"
                    " register it with Engine(functions=...)",
                    path,
                ) from None
        else:
            fn = expr.fn
        args = [
            compile_expr(a, env, functions, index(child(path, "args"), i))
            for i, a in enumerate(expr.args)
        ]

        def call_fn(scope: Scope) -> Any:
            return fn(*[a(scope) for a in args])

        return call_fn
    if isinstance(expr, Lit) or not is_expression(expr):
        value = expr.value if isinstance(expr, Lit) else expr

        def constant(scope: Scope) -> Any:
            return value

        return constant
    if isinstance(expr, dict):
        items = [
            (k, compile_expr(v, env, functions, key(path, str(k))))
            for k, v in expr.items()
        ]
        return lambda scope: {k: ev(scope) for k, ev in items}
    elements = [
        compile_expr(v, env, functions, index(path, i)) for i, v in enumerate(expr)
    ]
    if isinstance(expr, tuple):
        return lambda scope: tuple(ev(scope) for ev in elements)
    return lambda scope: [ev(scope) for ev in elements]
