"""Import paths: ``"package.module:attr"`` to an object, and back.

A document names the Python functions, tools and exception classes it uses
by import path; :func:`resolve` imports them when the document is loaded, and
:func:`import_path_of` finds the path of an object when a workflow is dumped.
"""

from __future__ import annotations

import builtins
import importlib
import sys
from collections.abc import Callable
from typing import Any

from .._model._expr import did_you_mean
from ._form import IMPORT_PATH

__all__ = ["ImportPathError", "exception_class", "import_path_of", "resolve"]


class ImportPathError(Exception):
    """An import path that does not name an object; the message says why."""


def resolve(path: str) -> Any:
    """Import the object at ``path`` (``"module:attr.attr"``).

    Raises:
        ImportPathError: ``path`` is malformed, its module does not import,
            or it has no such attribute.
    """
    match = IMPORT_PATH.fullmatch(path)
    if match is None:
        raise ImportPathError(
            f"{path!r} is not an import path: expected 'module:attr', "
            "such as 'mypackage.tools:search'"
        )
    module_name, attrs_path = match.groups()
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name + ".").startswith(e.name + "."):
            raise ImportPathError(
                f"cannot import {path!r}: no module named {e.name!r}"
            ) from None
        raise ImportPathError(
            f"cannot import {path!r}: importing module {module_name!r} raised "
            f"ModuleNotFoundError: {e}"
        ) from None
    except Exception as e:  # the module itself raised while importing
        raise ImportPathError(
            f"cannot import {path!r}: importing module {module_name!r} raised "
            f"{type(e).__name__}: {e}"
        ) from None
    owner = module_name
    for part in attrs_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            known = [n for n in dir(obj) if not n.startswith("_")]
            raise ImportPathError(
                f"cannot import {path!r}: {owner!r} has no attribute {part!r}"
                f"{did_you_mean(part, known)}"
            ) from None
        owner += f".{part}" if ":" in owner else f":{part}"
    return obj


def exception_class(name: str) -> type[Exception]:
    """An ``Exception`` subclass named by a builtin name or an import path.

    Raises:
        ImportPathError: ``name`` names nothing, or not an exception class.
    """
    if ":" in name:
        obj = resolve(name)
    else:
        obj = getattr(builtins, name, None)
        if obj is None:
            known = [
                n
                for n, v in vars(builtins).items()
                if isinstance(v, type) and issubclass(v, Exception)
            ]
            raise ImportPathError(
                f"{name!r} is not a builtin exception{did_you_mean(name, known)}; "
                "name other exception classes by import path, 'module:Class'"
            )
    if not (isinstance(obj, type) and issubclass(obj, Exception)):
        raise ImportPathError(f"{name!r} is not an Exception subclass, got {obj!r}")
    return obj


def import_path_of(
    obj: object, accept: Callable[[object], bool] | None = None
) -> str | None:
    """The import path that finds ``obj`` again, or None if there is none.

    Only modules already imported are searched, shortest public name first:
    ``plait:ToolTimeout`` rather than ``plait._model._errors:ToolTimeout``.
    ``accept`` decides whether what a path finds counts as ``obj`` (by
    default: the very same object).
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if "<" in qualname:  # a lambda, or a function defined inside a function
        return None
    if accept is None:

        def accept(found: object) -> bool:
            return found is obj

    parts = module.split(".")
    candidates = [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
    public = parts[0].lstrip("_")
    if public and public != parts[0]:
        candidates.insert(0, public)  # operator:add, not _operator:add
    for name in candidates:
        found: Any = sys.modules.get(name)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is not None and accept(found):
            path = f"{name}:{qualname}"
            if IMPORT_PATH.fullmatch(path):
                return path
    return None
