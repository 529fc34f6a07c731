"""A workflow into its canonical document, as YAML or JSON text.

The canonical form: every step has its ``kind``; defaults are left out; a
``Var`` is written ``"${x.y}"``; a plain value is written as itself (strings
that would read as ``${...}`` get the ``$`` escape) and only ``Lit`` objects
and plain mappings with a ``var``, ``lit`` or ``fn`` key are written as
``{lit: ...}``. Tools and functions given as objects are written as import
paths; a tool whose options differ from the object at its import path is
declared under its name in ``tools:``. So ``load(dump(w)) == w``, except
that a ``Call("pkg.mod:fn")`` is written as that path and comes back as a
call of the tool found there (the step runs the same).
"""

from __future__ import annotations

import builtins
import datetime
import json
import math
from collections.abc import Callable
from typing import Any, Literal

import yaml

from .._model._errors import WorkflowError
from .._model._expr import Fn, Lit, Var, is_expression
from .._model._imports import ImportPath, import_path_of, resolve
from .._model._ratelimit import RateLimit
from .._model._retry import Retry
from .._model._steps import Call, MapReduce, Parallel, Sequential, Step, Workflow
from .._model._tools import Tool
from ._form import (
    EXPRESSION_KEYS,
    STEP_DEFAULTS,
    STEP_KEYS,
    escape_string,
    var_shorthand,
)
from ._problems import Loc, key_part, show_loc

__all__ = ["dump"]

Format = Literal["yaml", "json"]

_TOOL_OPTIONS = ("concurrency_limit", "timeout", "retry", "rate_limit")
_RETRY_DEFAULTS = Retry()


def dump(workflow: Workflow | Step, format: Format = "yaml") -> str:
    """Write a workflow as YAML or JSON text; see :func:`plait.dump`."""
    if format not in ("yaml", "json"):
        raise ValueError(f'format must be "yaml" or "json", got {format!r}')
    if isinstance(workflow, Step):
        workflow = Workflow(workflow)
    elif not isinstance(workflow, Workflow):
        raise WorkflowError(
            f"expected a plait.Workflow or a step, got {type(workflow).__name__}"
        )
    document = _Writer(format).document(workflow)
    if format == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
    )


class _Dumper(yaml.SafeDumper):
    """SafeDumper that indents list items under their key, as people write them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


# YAML 1.1 line breaks that PyYAML writes unescaped (and so reads back as
# folded spaces) unless the string is double-quoted.
_BREAKS = frozenset("\x85\u2028\u2029")


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = '"' if _BREAKS.intersection(text) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def _fail(loc: Loc, message: str) -> WorkflowError:
    return WorkflowError(message, show_loc(loc))


def _is_default(key: str, value: object) -> bool:
    if key not in STEP_DEFAULTS:
        return False
    default = STEP_DEFAULTS[key]
    if default is None:
        return value is None
    return type(value) is type(default) and value == default


class _Writer:
    def __init__(self, format: Format) -> None:
        self.json = format == "json"
        # Tools declared in `tools:`, by name: the tool and its entry.
        self.tools: dict[str, tuple[Tool, Any]] = {}
        # Tool names (not objects) that calls use, with a location of one.
        self.names: dict[str, Loc] = {}

    def document(self, workflow: Workflow) -> dict[str, Any]:
        head: dict[str, Any] = {}
        for key in ("name", "description"):
            value = getattr(workflow, key)
            if value is not None:
                head[key] = str(value)
        if workflow.inputs:
            head["inputs"] = list(workflow.inputs)
        if workflow.step.name is not None:
            raise _fail(
                ("name",),
                f"the root step's name={workflow.step.name!r} cannot be written: at "
                "the top of a document, name is the workflow's name; leave the root "
                "step unnamed (a root step's name only labels it)",
            )
        body = self.step(workflow.step, ())
        for name, loc in self.names.items():
            if name in self.tools:
                raise _fail(
                    loc,
                    f"the tool name {name!r} here and a plait.Tool of that name "
                    "elsewhere cannot both be written: in a document, a name declared "
                    "in tools means that tool",
                )
        if self.tools:
            head["tools"] = {name: entry for name, (_, entry) in self.tools.items()}
        return {**head, **body}

    # -- steps ----------------------------------------------------------------
    def step(self, step: Step, loc: Loc) -> dict[str, Any]:
        fields: dict[str, Any]
        if isinstance(step, Call):
            fields = {"kind": "call", "tool": self.tool(step.target, (*loc, "tool"))}
            if step.args:
                fields["args"] = [
                    self.value(a, (*loc, "args", i)) for i, a in enumerate(step.args)
                ]
                if step.kwargs:
                    fields["kwargs"] = self.keywords(step.kwargs, (*loc, "kwargs"))
            elif step.kwargs:
                fields["args"] = self.keywords(step.kwargs, (*loc, "args"))
            if step.retry is not None:
                fields["retry"] = self.retry(step.retry, (*loc, "retry"))
        elif isinstance(step, Sequential):
            fields = {
                "kind": "sequential",
                "steps": [
                    self.step(s, (*loc, "steps", i)) for i, s in enumerate(step.steps)
                ],
            }
        elif isinstance(step, Parallel):
            steps: Any
            if isinstance(step.steps, dict):
                steps = {
                    k: self.step(s, (*loc, "steps", k)) for k, s in step.steps.items()
                }
            else:
                steps = [
                    self.step(s, (*loc, "steps", i)) for i, s in enumerate(step.steps)
                ]
            fields = {"kind": "parallel", "steps": steps, "on_error": step.on_error}
        elif isinstance(step, MapReduce):
            fields = {
                "kind": "map_reduce",
                "over": self.value(step.over, (*loc, "over")),
                "map": self.step(step.map, (*loc, "map")),
                "max_concurrency": step.max_concurrency,
                "ordered": step.ordered,
                "item": step.item,
                "on_error": step.on_error,
                "remote": step.remote,
            }
            if step.reduce is not None:
                fields["reduce"] = self.function(step.reduce, (*loc, "reduce"))
            if step.initial is not None:
                fields["initial"] = self.value(step.initial, (*loc, "initial"))
        else:
            raise _fail(loc, f"cannot write a {type(step).__name__} step")
        fields["name"] = step.name
        fields["timeout"] = step.timeout
        order = STEP_KEYS[fields["kind"]]
        return {
            k: fields[k] for k in order if k in fields and not _is_default(k, fields[k])
        }

    def keywords(self, kwargs: dict[str, Any], loc: Loc) -> dict[str, Any]:
        return {k: self.value(v, (*loc, k)) for k, v in kwargs.items()}

    # -- tools, functions, options --------------------------------------------
    def tool(self, target: str | Tool, loc: Loc) -> str:
        if isinstance(target, ImportPath):
            return str(target)  # the path as the code gave it
        if isinstance(target, str):
            self.name(target, loc, "tool")
            self.names.setdefault(target, loc)
            return target
        fn = target.fn
        path = import_path_of(
            fn,
            lambda found: found is fn or (isinstance(found, Tool) and found.fn is fn),
        )
        if path is None:
            raise _fail(
                loc,
                f"cannot write tool {target.name!r}: its function "
                f"{_qualname(fn)} cannot be imported as 'module:attr' (a lambda, a "
                "nested function, or not found at the top level of its module); "
                "define it at the top level of a module",
            )
        found = resolve(path)
        base = found if isinstance(found, Tool) else Tool.of(found)
        if base == target:
            return path
        if ":" in target.name:
            raise _fail(
                loc,
                f"cannot write tool {target.name!r}: a tool declared in tools needs "
                "a name without ':'",
            )
        options = {
            k: self.option(k, getattr(target, k), (*loc, k))
            for k in _TOOL_OPTIONS
            if getattr(target, k) != getattr(base, k)
        }
        entry: Any = {"import": path, **options} if options else path
        known = self.tools.get(target.name)
        if known is not None and known[0] != target:
            raise _fail(
                loc,
                f"two different tools are named {target.name!r}; a document declares "
                "each tool name once, so give one of them another name",
            )
        self.tools[target.name] = (target, entry)
        return target.name

    def option(self, key: str, value: object, loc: Loc) -> Any:
        if isinstance(value, Retry):
            return self.retry(value, loc)
        if isinstance(value, RateLimit):
            out: dict[str, Any] = {"rate": value.rate}
            if value.per != 1.0:
                out["per"] = value.per
            if value.burst is not None:
                out["burst"] = value.burst
            return out
        return value

    def retry(self, retry: Retry, loc: Loc) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("attempts", "backoff", "initial_delay", "max_delay", "jitter"):
            value = getattr(retry, key)
            if value != getattr(_RETRY_DEFAULTS, key):
                out[key] = value
        if retry.retry_on != _RETRY_DEFAULTS.retry_on:
            sub = (*loc, "retry_on")
            if isinstance(retry.retry_on, tuple):
                out["retry_on"] = [
                    self.exception(c, (*sub, i)) for i, c in enumerate(retry.retry_on)
                ]
            else:
                out["retry_on"] = self.callable(
                    retry.retry_on, sub, "retry_on predicate"
                )
        return out

    def exception(self, cls: type[BaseException], loc: Loc) -> str:
        name: str = cls.__qualname__
        if cls.__module__ == "builtins" and getattr(builtins, name, None) is cls:
            return name
        return self.callable(cls, loc, "exception class")

    def function(self, fn: str | Callable[..., Any], loc: Loc) -> str:
        if isinstance(fn, str):
            self.name(fn, loc, "function")
            return fn
        return self.callable(fn, loc, "function")

    def callable(self, obj: object, loc: Loc, what: str) -> str:
        path = import_path_of(obj)
        if path is None:
            raise _fail(
                loc,
                f"cannot write the {what} {_qualname(obj)}: it cannot be imported "
                "as 'module:attr' (a lambda, a nested function, or not found at "
                "the top level of its module); define it at the top level of a module",
            )
        return path

    def name(self, name: str, loc: Loc, what: str) -> None:
        if ":" in name or name.startswith("${"):
            raise _fail(
                loc,
                f"cannot write the {what} name {name!r}: in a document a name with "
                "':' is an import path, and '${' starts an expression",
            )

    # -- values ---------------------------------------------------------------
    def value(self, value: object, loc: Loc) -> Any:
        """An expression or plain value, so that load reads back the same."""
        if isinstance(value, Var):
            return var_shorthand(value.path) or {"var": value.path}
        if isinstance(value, Lit):
            return {"lit": self.raw(value.value, (*loc, "lit"))}
        if isinstance(value, Fn):
            out: dict[str, Any] = {"fn": self.function(value.fn, (*loc, "fn"))}
            if value.args:
                out["args"] = [
                    self.value(a, (*loc, "args", i)) for i, a in enumerate(value.args)
                ]
            return out
        if isinstance(value, str):
            return escape_string(str(value))
        if isinstance(value, list | tuple):
            return [self.value(v, (*loc, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if any(isinstance(k, str) and k in EXPRESSION_KEYS for k in value):
                if is_expression(value):
                    raise _fail(
                        loc,
                        "cannot write a mapping with a 'var', 'lit' or 'fn' key that "
                        "holds expressions: in a document such a mapping is an "
                        "expression itself",
                    )
                return {"lit": self.raw(value, (*loc, "lit"))}
            return {
                self.key(k, loc): self.value(v, (*loc, key_part(k)))
                for k, v in value.items()
            }
        return self.scalar(value, loc)

    def raw(self, value: object, loc: Loc) -> Any:
        """Data inside ``{lit: ...}``: written as it is, nothing escaped."""
        if isinstance(value, Var | Lit | Fn | Step):
            raise _fail(
                loc, f"cannot write a {type(value).__name__} inside a Lit as data"
            )
        if isinstance(value, str):
            return str(value)
        if isinstance(value, list | tuple):
            return [self.raw(v, (*loc, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {
                self.key(k, loc): self.raw(v, (*loc, key_part(k)))
                for k, v in value.items()
            }
        return self.scalar(value, loc)

    def key(self, key: object, loc: Loc) -> Any:
        if isinstance(key, str):
            return str(key)
        if not self.json and (key is None or isinstance(key, bool | int | float)):
            return self.scalar(key, loc)
        raise _fail(
            loc,
            f"cannot write the mapping key {key!r}: "
            + ("JSON keys are strings" if self.json else "keys must be scalars"),
        )

    def scalar(self, value: object, loc: Loc) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            if self.json and not math.isfinite(value):
                raise _fail(loc, f"cannot write {value!r} as JSON; use format='yaml'")
            return float(value)
        if not self.json and isinstance(value, datetime.date | bytes):
            return value
        raise _fail(
            loc,
            f"cannot write a {type(value).__name__} value ({value!r:.40}): a document "
            "holds only null, booleans, numbers, strings, lists and mappings",
        )


def _qualname(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or repr(obj)
    return f"{module}.{name}" if module else str(name)
