"""A call step's arguments: compiled expressions to ``(args, kwargs)`` in one call.

This runs once per call, a million times in a big ``MapReduce``, so the
function is generated for the step's exact shape (as attrs generates an
``__init__``): ``scope -> ((a0(scope), a1(scope)), {"x": k0(scope)})``, with
no loop, comprehension or intermediate list. Only generated names and
``repr``'d keyword names appear in the generated source.
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
    names: dict[str, Any] = {"_NO_KWARGS": _NO_KWARGS}
    args = []
    for i, ev in enumerate(positional):
        names[f"a{i}"] = ev
        args.append(f"a{i}(scope), ")
    kwargs = []
    for i, (key, ev) in enumerate(keywords):
        names[f"k{i}"] = ev
        kwargs.append(f"{key!r}: k{i}(scope), ")
    kw_source = "{" + "".join(kwargs) + "}" if kwargs else "_NO_KWARGS"
    source = f"def evaluate(scope):\n    return ({''.join(args)}), {kw_source}\n"
    exec(compile(source, "<plait call arguments>", "exec"), names)
    evaluate: Evaluate = names["evaluate"]
    return evaluate
