"""A call step's arguments: compiled expressions to ``(args, kwargs)``, per shape.

The common shapes (one positional argument, one keyword, a few of each)
get a function of their own, so that evaluating them builds no
intermediate list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._model._expr import Evaluator

__all__ = ["Evaluate", "arguments"]

Evaluate = Callable[[dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]

_NO_KWARGS: dict[str, Any] = {}  # only ever unpacked, never changed


def arguments(
    positional: Sequence[Evaluator], keywords: Sequence[tuple[str, Evaluator]]
) -> Evaluate:
    """``scope -> (args, kwargs)`` for these compiled argument expressions."""
    if not keywords:
        if len(positional) == 1:
            only = positional[0]
            return lambda scope: ((only(scope),), _NO_KWARGS)
        return lambda scope: (tuple([ev(scope) for ev in positional]), _NO_KWARGS)
    if not positional and len(keywords) == 1:
        ((name, value),) = keywords
        return lambda scope: ((), {name: value(scope)})
    pos = tuple(positional)
    kws = tuple(keywords)
    return lambda scope: (
        tuple([ev(scope) for ev in pos]),
        {k: ev(scope) for k, ev in kws},
    )
