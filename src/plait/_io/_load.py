"""A document (plain data) into a :class:`plait.Workflow`, checked throughout.

The loader walks the whole document once and records every problem it finds
(with its location, and line when the document was text) instead of stopping
at the first; a subtree with a problem is not built, its siblings still are
checked. Only when nothing was found are the step objects built, and a check
that the step classes make themselves is reported like any other problem.

Import paths in the document (``"module:attr"``) are imported here: tools
become :class:`plait.Tool` objects in ``Call.target``, functions become the
callables in ``Fn`` and ``MapReduce.reduce``, so the engine needs no
registration for them. Names without a ``:`` that the document does not
declare stay names, for the engine's registered tools and functions. With
``imports=`` only the modules it allows are imported; any other import path
is a problem at its line, found before anything is imported from it.

The value of an option (``timeout``, ``max_concurrency``, ``on_error``...)
is checked by the rule of its field in the step class (see
:mod:`plait._model._validate`), so a document and Python code get the same
message for the same mistake.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .._model._errors import WorkflowError
from .._model._expr import Fn, Lit, Var, did_you_mean
from .._model._imports import ImportPathError, Imports, as_tool, resolve
from .._model._retry import Retry
from .._model._steps import Call, MapReduce, Parallel, Sequential, Step, Workflow
from .._model._tools import Tool, is_async_callable
from .._model._validate import field_rule
from ._form import (
    EXPRESSION_KEYS,
    KINDS,
    MAX_DEPTH,
    REQUIRED,
    STEP_KEYS,
    VAR_SHORTHAND,
    WORKFLOW_KEYS,
    unescape_string,
)
from ._options import UNSET, ToolDecl, structure
from ._problems import Loc, Problems, describe, key_part
from ._source import read_source

__all__ = ["load"]

_TOOL_OPTIONS = ("concurrency_limit", "timeout", "retry", "rate_limit")
_ITEM_PATH = re.compile(r"(\w+)\[(\d+)\]")

_CLASSES: dict[str, type[Step]] = {
    "call": Call,
    "sequential": Sequential,
    "parallel": Parallel,
    "map_reduce": MapReduce,
}
# Keys whose value in the document is the step's field as it is, so the
# field's rule checks it.
_OPTIONS: dict[str, tuple[str, ...]] = {
    "call": ("name", "timeout"),
    "sequential": ("name", "timeout"),
    "parallel": ("on_error", "name", "timeout"),
    "map_reduce": (
        "max_concurrency",
        "ordered",
        "item",
        "on_error",
        "remote",
        "name",
        "timeout",
    ),
}


def load(source: object, imports: Iterable[str] | None = None) -> Workflow:
    """Read, check and build a workflow; see :func:`plait.load`."""
    allowed = Imports(imports)  # checks `imports` before the document is read
    data, problems = read_source(source)
    workflow = _Loader(problems, allowed).workflow(data)
    problems.check()
    assert workflow is not None  # no problem was found, so it was built
    return workflow


def _kind_label(kind: str) -> str:
    return f"a {kind} step"


class _Loader:
    def __init__(self, problems: Problems, imports: Imports) -> None:
        self.problems = problems
        self.imports = imports
        self.tools: dict[str, Tool] = {}
        self.functions: dict[str, Callable[..., Any]] = {}
        self.broken_tools: set[str] = set()
        self.broken_functions: set[str] = set()
        self.resolved: dict[str, Any] = {}

    def add(self, loc: Loc, message: str) -> None:
        self.problems.add(loc, message)

    @property
    def count(self) -> int:
        return len(self.problems.found)

    def construct(self, loc: Loc, make: Callable[[], Any]) -> Any:
        """Build an object; a check of its class becomes a problem at ``loc``."""
        try:
            return make()
        except WorkflowError as e:
            self.add(_field_loc(loc, e.path), e.message)
            return None

    # -- the document ---------------------------------------------------------
    def workflow(self, doc: object) -> Workflow | None:
        if not isinstance(doc, Mapping):
            self.add(
                (),
                "a workflow document must be a mapping: a step with a kind key, "
                "plus optional name, description, inputs, tools and functions; "
                f"got {describe(doc)}",
            )
            return None
        before = self.count
        metadata = self.options(Workflow, doc, (), ("name", "description"))
        inputs = self.inputs(doc.get("inputs"), ("inputs",))
        if "tools" in doc:
            self.declare_tools(doc["tools"], ("tools",))
        if "functions" in doc:
            self.declare_functions(doc["functions"], ("functions",))
        step = self.step(doc, (), root=True)
        if self.count > before or step is None:
            return None
        built: Workflow | None = self.construct(
            (), lambda: Workflow(step, inputs=inputs, **metadata)
        )
        return built

    def options(
        self, cls: type, data: Mapping[Any, Any], loc: Loc, keys: tuple[str, ...]
    ) -> dict[str, Any]:
        """The values of ``keys`` in ``data``, each checked by its field's rule."""
        out: dict[str, Any] = {}
        for key in keys:
            if key not in data:
                continue
            rule = field_rule(cls, key)
            assert rule is not None, f"{cls.__name__}.{key} has no rule"
            try:
                rule.check_field(cls, key, data[key], describe)
            except WorkflowError as e:
                self.add((*loc, key), e.message)
            else:
                out[key] = data[key]
        return out

    def inputs(self, value: object, loc: Loc) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.add(
                loc,
                "inputs must be a list of variable names such as [urls, query], "
                f"got {describe(value)}",
            )
            return ()
        seen: set[str] = set()
        for i, name in enumerate(value):
            if not isinstance(name, str) or not name.isidentifier():
                self.add(
                    (*loc, i),
                    f"inputs[{i}] must be an identifier such as 'urls', "
                    f"got {describe(name)}",
                )
            elif name in seen:
                self.add((*loc, i), f"input {name!r} is listed twice")
            else:
                seen.add(name)
        return tuple(value)

    # -- declared tools and functions -----------------------------------------
    def declare_tools(self, value: object, loc: Loc) -> None:
        if not isinstance(value, Mapping):
            self.add(
                loc,
                "tools must be a mapping of tool names to import paths "
                f"('module:attr') or to mappings with an import key, got {describe(value)}",
            )
            return
        for name, spec in value.items():
            sub = (*loc, key_part(name))
            if not self.declared_name(name, sub, "tool"):
                continue
            before = self.count
            tool = self.declared_tool(name, spec, sub)
            if tool is None or self.count > before:
                self.broken_tools.add(name)
            else:
                self.tools[name] = tool

    def declared_name(self, name: object, loc: Loc, what: str) -> bool:
        if isinstance(name, str) and name and ":" not in name:
            return True
        self.add(
            loc,
            f"{what} names must be non-empty strings without ':', got {describe(name)}",
        )
        return False

    def declared_tool(self, name: str, spec: object, loc: Loc) -> Tool | None:
        if isinstance(spec, str):
            if ":" not in spec:
                self.add(
                    loc,
                    f"tools.{name} must be an import path 'module:attr' or a mapping "
                    f"with an import key, got {describe(spec)}",
                )
                return None
            decl: ToolDecl | None = ToolDecl(target=spec)
            where = loc
        elif isinstance(spec, Mapping):
            decl = structure(
                spec, ToolDecl, loc, self.problems, f"tools.{name}", self.imports
            )
            where = (*loc, "import")
        else:
            self.add(
                loc,
                f"tools.{name} must be an import path 'module:attr' or a mapping "
                f"with an import key, got {describe(spec)}",
            )
            return None
        if decl is None:
            target = spec.get("import") if isinstance(spec, Mapping) else None
            if isinstance(target, str) and ":" in target:
                self.tool_at(target, where)  # report a bad import path as well
            return None
        base = self.tool_at(decl.target, where)
        if base is None:
            return None
        options = {
            k: getattr(decl, k) for k in _TOOL_OPTIONS if getattr(decl, k) is not UNSET
        }
        built: Tool | None = self.construct(
            loc, lambda: attrs.evolve(base, name=name, **options)
        )
        return built

    def declare_functions(self, value: object, loc: Loc) -> None:
        if not isinstance(value, Mapping):
            self.add(
                loc,
                "functions must be a mapping of function names to import paths "
                f"('module:attr'), got {describe(value)}",
            )
            return
        for name, path in value.items():
            sub = (*loc, key_part(name))
            if not self.declared_name(name, sub, "function"):
                continue
            fn = None
            if not isinstance(path, str) or ":" not in path:
                self.add(
                    sub,
                    f"functions.{name} must be an import path 'module:attr', "
                    f"got {describe(path)}",
                )
            else:
                fn = self.function_at(path, sub)
            if fn is None:
                self.broken_functions.add(name)
            else:
                self.functions[name] = fn

    # -- imports --------------------------------------------------------------
    def imported(self, path: str, loc: Loc) -> Any:
        if path not in self.resolved:
            try:
                self.resolved[path] = resolve(path, self.imports)
            except ImportPathError as e:
                self.resolved[path] = e
        found = self.resolved[path]
        if isinstance(found, ImportPathError):
            self.add(loc, str(found))
            return None
        return found

    def tool_at(self, path: str, loc: Loc) -> Tool | None:
        found = self.imported(path, loc)
        if found is None:
            return None
        try:
            return as_tool(found, path)
        except ImportPathError as e:
            self.add(loc, str(e))
            return None

    def function_at(self, path: str, loc: Loc) -> Callable[..., Any] | None:
        found = self.imported(path, loc)
        if found is None:
            return None
        if not callable(found):
            self.add(loc, f"{path!r} is not callable, got {found!r:.60}")
            return None
        if is_async_callable(found):
            self.add(
                loc,
                f"{path!r} is an async function; functions (fn, reduce) must be "
                "plain functions",
            )
            return None
        return found  # type: ignore[no-any-return]

    # -- references -----------------------------------------------------------
    def reference(self, value: object, loc: Loc, what: str) -> str | None:
        """A tool or function reference: a non-empty name or import path."""
        if not isinstance(value, str) or not value:
            self.add(
                loc,
                f"{what} must be the name of a registered {_what_kind(what)} or an "
                f"import path 'module:attr', got {describe(value)}",
            )
            return None
        if value.startswith("${"):
            self.add(
                loc,
                f"{what} must name a {_what_kind(what)}; expressions such as "
                f"{value!r} are not allowed here",
            )
            return None
        return value

    def tool_ref(self, value: object, loc: Loc) -> str | Tool | None:
        ref = self.reference(value, loc, "tool")
        if ref is None:
            return None
        if ":" in ref:
            return self.tool_at(ref, loc)
        if ref in self.tools:
            return self.tools[ref]
        if ref in self.broken_tools:
            self.add(loc, f"tool {ref!r} is declared in tools but could not be loaded")
            return None
        return ref

    def function_ref(
        self, value: object, loc: Loc, what: str
    ) -> str | Callable[..., Any] | None:
        ref = self.reference(value, loc, what)
        if ref is None:
            return None
        if ":" in ref:
            return self.function_at(ref, loc)
        if ref in self.functions:
            return self.functions[ref]
        if ref in self.broken_functions:
            self.add(
                loc,
                f"function {ref!r} is declared in functions but could not be loaded",
            )
            return None
        return ref

    # -- steps ----------------------------------------------------------------
    def step(self, data: object, loc: Loc, *, root: bool = False) -> Step | None:
        if len(loc) > MAX_DEPTH:
            self.add(loc, f"the document nests more than {MAX_DEPTH} levels deep")
            return None
        if not isinstance(data, Mapping):
            self.add(
                loc,
                "expected a step: a mapping with kind: call, sequential, parallel "
                f"or map_reduce, got {describe(data)}",
            )
            return None
        before = self.count
        for k in data:
            if not isinstance(k, str):
                hint = (
                    " (YAML reads unquoted yes, no, on, off, true and false as "
                    "booleans; quote the key)"
                    if isinstance(k, bool)
                    else ""
                )
                self.add(
                    (*loc, key_part(k)),
                    f"keys must be strings, got {describe(k)}{hint}",
                )
        kind = self.kind(data, loc)
        if kind is None:
            return None
        allowed = STEP_KEYS[kind] + (WORKFLOW_KEYS if root else ())
        for k in data:
            if isinstance(k, str) and k not in allowed:
                self.unknown_key(loc, k, kind, root)
        for key in REQUIRED[kind]:
            if key not in data:
                self.add(loc, f"missing required key {key!r} of {_kind_label(kind)}")
        # At the top of a document `name` is the workflow's name.
        keys = tuple(k for k in _OPTIONS[kind] if not (root and k == "name"))
        options = self.options(_CLASSES[kind], data, loc, keys)
        build = {
            "call": self.call,
            "sequential": self.sequential,
            "parallel": self.parallel,
            "map_reduce": self.map_reduce,
        }[kind]
        make = build(data, loc, options)
        if self.count > before:
            return None
        step: Step | None = self.construct(loc, make)
        return step

    def kind(self, data: Mapping[Any, Any], loc: Loc) -> str | None:
        """The step's kind; a likely kind (and a problem) when it is missing or bad."""
        kinds = ", ".join(KINDS)
        if "kind" not in data:
            guess = _guess_kind(data)
            hint = f" (this looks like kind: {guess})" if guess else ""
            self.add(
                loc,
                "missing required key 'kind': every step has a kind, one of "
                f"{kinds}{hint}",
            )
            return guess
        kind = data["kind"]
        if isinstance(kind, str) and kind in KINDS:
            return kind
        text = kind if isinstance(kind, str) else ""
        self.add(
            (*loc, "kind"),
            f"kind must be one of {kinds}, got {describe(kind)}"
            f"{did_you_mean(text, KINDS) if text else ''}",
        )
        close = difflib.get_close_matches(text, KINDS, n=1) if text else []
        return close[0] if close else _guess_kind(data)

    def unknown_key(self, loc: Loc, key: str, kind: str, root: bool) -> None:
        takes = ", ".join(STEP_KEYS[kind][1:])
        if root:
            takes += "; the top of a document also takes " + ", ".join(WORKFLOW_KEYS)
        if key in WORKFLOW_KEYS:
            message = f"{key!r} is only allowed at the top of the document"
        else:
            owners = [k for k in KINDS if key in STEP_KEYS[k]]
            allowed = STEP_KEYS[kind] + (WORKFLOW_KEYS if root else ())
            if owners:
                message = (
                    f"{_kind_label(kind)} has no key {key!r} (it belongs to "
                    f"{' and '.join(owners)} steps); {_kind_label(kind)} takes {takes}"
                )
            else:
                message = (
                    f"unknown key {key!r} in {_kind_label(kind)}"
                    f"{did_you_mean(key, allowed)}; {_kind_label(kind)} takes {takes}"
                )
        self.add((*loc, key), message)

    def call(
        self, data: Mapping[Any, Any], loc: Loc, options: dict[str, Any]
    ) -> Callable[[], Step]:
        target = self.tool_ref(data["tool"], (*loc, "tool")) if "tool" in data else None
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        raw = data.get("args")
        if isinstance(raw, list):
            args = [self.expr(v, (*loc, "args", i)) for i, v in enumerate(raw)]
        elif isinstance(raw, Mapping):
            kwargs = self.keywords(raw, (*loc, "args"))
        elif "args" in data:
            self.add(
                (*loc, "args"),
                "args must be a list of positional arguments or a mapping of keyword "
                f"arguments, got {describe(raw)}",
            )
        if "kwargs" in data:
            extra = data["kwargs"]
            if isinstance(raw, Mapping):
                self.add(
                    (*loc, "kwargs"),
                    "kwargs is only for keyword arguments next to a list of positional "
                    "args; with args as a mapping, give every keyword argument there",
                )
            elif not isinstance(extra, Mapping):
                self.add(
                    (*loc, "kwargs"),
                    f"kwargs must be a mapping of keyword arguments, got {describe(extra)}",
                )
            else:
                kwargs = self.keywords(extra, (*loc, "kwargs"))
        retry = None
        if data.get("retry") is not None:
            retry = structure(
                data["retry"],
                Retry,
                (*loc, "retry"),
                self.problems,
                "retry",
                self.imports,
            )
        return lambda: Call(
            target,  # type: ignore[arg-type]  # None only when a problem was found
            *args,
            retry=retry,
            arguments=kwargs,
            **options,
        )

    def keywords(self, data: Mapping[Any, Any], loc: Loc) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in data.items():
            if not isinstance(k, str):
                self.add(
                    (*loc, key_part(k)),
                    f"argument names must be strings, got {describe(k)}",
                )
                continue
            out[k] = self.expr(v, (*loc, k))
        return out

    def sequential(
        self, data: Mapping[Any, Any], loc: Loc, options: dict[str, Any]
    ) -> Callable[[], Step]:
        steps = self.step_list(data, loc, "sequential")
        return lambda: Sequential(*steps, **options)

    def step_list(self, data: Mapping[Any, Any], loc: Loc, kind: str) -> list[Any]:
        raw = data.get("steps")
        if "steps" not in data:
            return []
        sub = (*loc, "steps")
        if kind == "parallel" and isinstance(raw, Mapping):
            return []
        if not isinstance(raw, list):
            also = " or a mapping of named branches" if kind == "parallel" else ""
            self.add(sub, f"steps must be a list of steps{also}, got {describe(raw)}")
            return []
        if not raw:
            self.add(
                sub,
                f"steps must not be empty: {_kind_label(kind)} runs at least one step",
            )
        return [self.step(s, (*sub, i)) for i, s in enumerate(raw)]

    def parallel(
        self, data: Mapping[Any, Any], loc: Loc, options: dict[str, Any]
    ) -> Callable[[], Step]:
        raw = data.get("steps")
        if isinstance(raw, Mapping):
            sub = (*loc, "steps")
            if not raw:
                self.add(
                    sub,
                    "steps must not be empty: a parallel step runs at least one step",
                )
            branches: dict[str, Any] = {}
            for k, s in raw.items():
                if not isinstance(k, str) or not k:
                    self.add(
                        (*sub, key_part(k)),
                        f"branch names must be non-empty strings, got {describe(k)}",
                    )
                    continue
                branches[k] = self.step(s, (*sub, k))
            return lambda: Parallel(branches, **options)
        steps = self.step_list(data, loc, "parallel")
        return lambda: Parallel(*steps, **options)

    def map_reduce(
        self, data: Mapping[Any, Any], loc: Loc, options: dict[str, Any]
    ) -> Callable[[], Step]:
        over = self.expr(data["over"], (*loc, "over")) if "over" in data else None
        body = self.step(data["map"], (*loc, "map")) if "map" in data else None
        reduce = None
        if data.get("reduce") is not None:
            reduce = self.function_ref(data["reduce"], (*loc, "reduce"), "reduce")
        initial = (
            self.expr(data["initial"], (*loc, "initial")) if "initial" in data else None
        )
        return lambda: MapReduce(over, body, reduce, initial, **options)

    # -- expressions ----------------------------------------------------------
    def expr(self, value: object, loc: Loc) -> Any:
        """An expression or a plain value, with expressions inside lists and mappings."""
        if len(loc) > MAX_DEPTH:
            self.add(loc, f"the document nests more than {MAX_DEPTH} levels deep")
            return None
        if isinstance(value, str):
            return self.string(value, loc)
        if isinstance(value, Mapping):
            if any(isinstance(k, str) and k in EXPRESSION_KEYS for k in value):
                return self.expression(value, loc)
            return {k: self.expr(v, (*loc, key_part(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expr(v, (*loc, i)) for i, v in enumerate(value)]
        return value

    def string(self, text: str, loc: Loc) -> Any:
        literal = unescape_string(text)
        if literal is not None:
            return literal
        match = VAR_SHORTHAND.fullmatch(text)
        if match is not None:
            return Var(match.group(1))
        self.add(
            loc,
            f"{describe(text)} is not a variable reference: '${{x}}' or "
            "'${x.field.0}' must be the whole string (there is no interpolation; "
            "build strings with {fn: ..., args: [...]}); to write the text "
            "literally, start it with '$${'",
        )
        return None

    def expression(self, value: Mapping[Any, Any], loc: Loc) -> Any:
        found = sorted(k for k in value if isinstance(k, str) and k in EXPRESSION_KEYS)
        wrap = (
            "to pass a mapping with such a key as a plain value, wrap it in {lit: ...}"
        )
        if len(found) > 1:
            self.add(
                loc,
                f"a mapping with the keys {' and '.join(map(repr, found))} is not an "
                f"expression: an expression has exactly one of var, lit or fn; {wrap}",
            )
            return None
        (kind,) = found
        allowed = ("fn", "args") if kind == "fn" else (kind,)
        before = self.count
        for k in value:
            if k not in allowed:
                text = k if isinstance(k, str) else ""
                takes = (
                    "{fn: ...} takes fn and args"
                    if kind == "fn"
                    else f"{{{kind}: ...}} takes no other key"
                )
                self.add(
                    (*loc, key_part(k)),
                    f"unknown key {k!r} in a {{{kind}: ...}} expression"
                    f"{did_you_mean(text, allowed) if text else ''}; {takes}; {wrap}",
                )
        if kind == "lit":
            return Lit(value["lit"])
        if kind == "var":
            path = value["var"]
            if not isinstance(path, str) or not path or "" in path.split("."):
                self.add(
                    (*loc, "var"),
                    "var must be a dotted variable path such as 'x' or 'x.field.0', "
                    f"got {describe(path)}",
                )
                return None
            return Var(path)
        fn = self.function_ref(value["fn"], (*loc, "fn"), "fn")
        raw = value.get("args", [])
        args: list[Any] = []
        if isinstance(raw, list):
            args = [self.expr(a, (*loc, "args", i)) for i, a in enumerate(raw)]
        else:
            self.add(
                (*loc, "args"),
                f"args must be a list of the function's arguments, got {describe(raw)}",
            )
        if self.count > before or fn is None:
            return None
        return self.construct(loc, lambda: Fn(fn, *args))


def _what_kind(what: str) -> str:
    return "tool" if what == "tool" else "function"


def _guess_kind(data: Mapping[Any, Any]) -> str | None:
    if "tool" in data:
        return "call"
    if "over" in data or "map" in data:
        return "map_reduce"
    if "on_error" in data or isinstance(data.get("steps"), Mapping):
        return "parallel"
    if "steps" in data:
        return "sequential"
    return None


def _field_loc(loc: Loc, path: str) -> Loc:
    """The location of a field named in a step class's error (``steps[2]``)."""
    if not path:
        return loc
    if path == "arguments":
        return (*loc, "args")
    match = _ITEM_PATH.fullmatch(path)
    if match is not None:
        return (*loc, match.group(1), int(match.group(2)))
    return (*loc, *path.split("."))
