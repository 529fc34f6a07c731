"""Import paths: ``"package.module:attr"`` to an object, and back.

Documents name the functions, tools and exception classes they use by import
path, and so may ``Call("pkg.mod:fn")`` in Python: :func:`resolve` imports
them (for a document, only from the modules its :class:`Imports` allows), and
:func:`import_path_of` finds the path of an object when a workflow is dumped.
The loader and the engine both resolve through here, so a path means the same
thing in a document and in code.
"""

from __future__ import annotations

import builtins
import importlib
import re
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ._errors import ConfigError, WorkflowError
from ._tools import Tool
from ._validate import did_you_mean, show_value

__all__ = [
    "ANY_IMPORT",
    "IMPORT_PATH",
    "ImportPath",
    "ImportPathError",
    "Imports",
    "as_tool",
    "exception_class",
    "import_path_of",
    "import_tool",
    "resolve",
]

_DOTTED = r"[^\W\d]\w*(?:\.[^\W\d]\w*)*"
#: ``"package.module:attr.attr"``
IMPORT_PATH = re.compile(rf"({_DOTTED}):({_DOTTED})")
_MODULE = re.compile(_DOTTED)


class ImportPathError(Exception):
    """An import path that does not name an object, or may not; the message says why."""


class ImportPath(str):
    """A tool named by import path in code: the target of ``Call("pkg.mod:fn")``.

    It is the string itself (equal to it, hashed and written as it); its type
    records that the path came from code, which the engine imports when it
    runs the step. A tool name from anywhere else, such as the tool calls a
    model asks for through ``Engine.call_tools``, is only ever looked up among
    the registered tools, never imported.
    """

    __slots__ = ()


def _check_prefixes(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # one prefix, not its characters
        value = (value,)
    if not isinstance(value, Iterable):
        raise TypeError(
            "imports must be None or module name prefixes such as "
            f"('myapp.tools',), got {show_value(value)}"
        )
    prefixes = tuple(value)
    for prefix in prefixes:
        if not isinstance(prefix, str):
            raise TypeError(
                "imports must hold module names such as 'myapp.tools', got "
                f"{show_value(prefix)}"
            )
        if not _MODULE.fullmatch(prefix):
            raise ConfigError(
                "imports must hold module names such as 'myapp.tools', got "
                f"{show_value(prefix)}"
            )
    return prefixes


@attrs.frozen
class Imports:
    """Which modules a document may import from.

    ``prefixes=None`` allows every module; otherwise a module is allowed when
    its name is a prefix or starts with a prefix and a dot (``"myapp.tools"``
    allows ``myapp.tools`` and ``myapp.tools.web``, not ``myapp.toolsets``),
    and ``()`` allows none. Under a restriction an import path may not reach
    a private attribute (``_name``) or, through an attribute, a module that is
    not allowed (``myapp.tools:os.system``).
    """

    prefixes: tuple[str, ...] | None = attrs.field(
        default=None, converter=_check_prefixes
    )

    def allows(self, module: str) -> bool:
        """Whether ``module`` may be imported."""
        if self.prefixes is None:
            return True
        return any(module == p or module.startswith(p + ".") for p in self.prefixes)

    def _refuse(self, path: str, why: str) -> ImportPathError:
        if not self.prefixes:
            allowed = "this document may not import anything"
        else:
            allowed = f"the allowed imports are {', '.join(self.prefixes)}"
        return ImportPathError(f"import path {path!r} refused: {why}; {allowed}")

    def check_module(self, path: str, module: str) -> None:
        """Raise ImportPathError if ``path``'s ``module`` is not allowed."""
        if not self.allows(module):
            raise self._refuse(path, f"module {module!r} is not allowed")

    def check_name(self, path: str, part: str) -> None:
        """Raise ImportPathError if ``path`` may not name the attribute ``part``."""
        if self.prefixes is not None and part.startswith("_"):
            raise self._refuse(path, f"{part!r} is a private name")

    def check_found(self, path: str, part: str, found: object) -> None:
        """Raise ImportPathError if ``path`` may not reach ``found`` (at ``part``)."""
        if (
            self.prefixes is not None
            and isinstance(found, types.ModuleType)
            and not self.allows(found.__name__)
        ):
            raise self._refuse(
                path, f"{part!r} is the module {found.__name__!r}, which is not allowed"
            )


#: Every module may be imported: code, and documents loaded without ``imports=``.
ANY_IMPORT = Imports()


def resolve(path: str, imports: Imports = ANY_IMPORT) -> Any:
    """Import the object at ``path`` (``"module:attr.attr"``).

    A module that ``imports`` does not allow is refused before it is imported.

    Raises:
        ImportPathError: ``path`` is malformed, not allowed, its module does
            not import, or it has no such attribute.
    """
    match = IMPORT_PATH.fullmatch(path)
    if match is None:
        raise ImportPathError(
            f"{path!r} is not an import path: expected 'module:attr', "
            "such as 'mypackage.tools:search'"
        )
    module_name, attrs_path = match.groups()
    imports.check_module(path, module_name)
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
        imports.check_name(path, part)
        try:
            obj = getattr(obj, part)
        except AttributeError:
            known = [n for n in dir(obj) if not n.startswith("_")]
            raise ImportPathError(
                f"cannot import {path!r}: {owner!r} has no attribute {part!r}"
                f"{did_you_mean(part, known)}"
            ) from None
        imports.check_found(path, part, obj)
        owner += f".{part}" if ":" in owner else f":{part}"
    return obj


def as_tool(found: object, path: str) -> Tool:
    """What ``path`` found, as a tool: a :class:`plait.Tool` or a function.

    Raises:
        ImportPathError: ``found`` is neither.
    """
    if isinstance(found, Tool):
        return found
    if callable(found):
        return Tool.of(found)
    raise ImportPathError(
        f"{path!r} is not a function or a plait.Tool, got {show_value(found)}"
    )


def import_tool(path: str, where: str) -> Tool:
    """The tool at ``path``, for a call in code (no :class:`Imports` applies).

    Raises:
        WorkflowError: ``path`` does not import or names neither a function
            nor a :class:`plait.Tool`; its path is ``where``, the step's.
    """
    try:
        return as_tool(resolve(path), path)
    except ImportPathError as e:
        raise WorkflowError(str(e), where) from None


def exception_class(name: str, imports: Imports = ANY_IMPORT) -> type[Exception]:
    """An ``Exception`` subclass named by a builtin name or an import path.

    Raises:
        ImportPathError: ``name`` names nothing (or nothing ``imports``
            allows), or not an exception class.
    """
    if ":" in name:
        obj = resolve(name, imports)
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
        raise ImportPathError(
            f"{name!r} is not an Exception subclass, got {show_value(obj)}"
        )
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
