"""Public names carry their public module, as trio and anyio do it.

``plait.Call`` is defined in ``plait._model._steps``; :func:`publish` sets its
``__module__`` to ``"plait"``, so that tracebacks, reprs, docs and pickles
name it as users import it, and pickles do not depend on where it is
defined.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["publish"]


def publish(module: str, namespace: Mapping[str, Any]) -> None:
    """Set ``__module__`` to ``module`` on the classes and functions of ``__all__``.

    Only names defined in a private module of plait (one with a ``_`` part)
    change, with the methods and nested classes defined inside them.
    """
    seen: set[int] = set()
    for name in namespace["__all__"]:
        _fix(namespace[name], module, seen)


def _private(module: object) -> bool:
    if not isinstance(module, str) or not module.startswith("plait."):
        return False
    return any(part.startswith("_") for part in module.split(".")[1:])


def _fix(obj: Any, module: str, seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if not (isinstance(obj, type) or inspect.isfunction(obj)):
        return
    if not _private(getattr(obj, "__module__", None)):
        return
    if isinstance(obj, type):
        _resolve_annotations(obj)
    obj.__module__ = module
    if isinstance(obj, type):
        inside = obj.__qualname__ + "."
        for member in vars(obj).values():
            if isinstance(member, classmethod | staticmethod):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            if getattr(member, "__qualname__", "").startswith(inside):
                _fix(member, module, seen)


def _resolve_annotations(cls: type) -> None:
    """Turn ``cls``'s own string annotations into the objects they name.

    ``typing.get_type_hints`` (and cattrs, through it) reads string
    annotations in the namespace of ``cls.__module__``: once that is
    ``plait``, names that only the defining module imports would not be
    found. An annotation that cannot be evaluated stays as it is.
    """
    module = sys.modules.get(cls.__module__)
    if module is None:
        return
    own = inspect.get_annotations(cls)
    for name, value in own.items():
        # Not every annotation evaluates: a name imported only for type
        # checkers, a generic that is not subscriptable at run time.
        with contextlib.suppress(Exception):
            if isinstance(value, str):
                own[name] = eval(value, vars(module), dict(vars(cls)))
    cls.__annotations__ = own
