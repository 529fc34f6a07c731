"""``plait show``: a workflow's step tree as indented text or a Mermaid chart.

Both forms spell steps the way the file form does: kinds are ``call``,
``sequential``, ``parallel`` and ``map_reduce``, variables are ``${x}``, and
each step is labelled with its part of the path (``steps[1]``, ``map``), so
what ``show`` prints matches the paths in errors and events.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .._model._expr import Fn, Lit, Var
from .._model._imports import import_path_of
from .._model._paths import index
from .._model._ratelimit import RateLimit
from .._model._retry import Retry
from .._model._steps import Call, MapReduce, Parallel, Sequential, Step, Workflow
from .._model._tools import Tool
from ._tracker import KINDS

__all__ = ["mermaid", "text"]

_RETRY_DEFAULTS = Retry()


@attrs.frozen
class _Node:
    """One step as both forms show it."""

    part: str  # its part of the path: "", "steps[1]", "steps.web", "map"
    kind: str
    detail: str  # the tool and arguments of a call, the input of a map
    options: list[str]
    children: list[_Node]
    ordered: bool  # children run one after another (a sequential)


def text(workflow: Workflow) -> str:
    """The workflow's metadata, then its step tree, one step a line."""
    lines = [f"{key}: {value}" for key, value in _metadata(workflow)]

    def walk(node: _Node, depth: int) -> None:
        head = f"{node.part}: " if node.part else ""
        line = f"{'  ' * depth}{head}{node.kind}"
        if node.detail:
            line += f" {node.detail}"
        if node.options:
            line += "  " + " ".join(node.options)
        lines.append(line)
        for c in node.children:
            walk(c, depth + 1)

    walk(_node(workflow.step, ""), 0)
    return "\n".join(lines) + "\n"


def mermaid(workflow: Workflow) -> str:
    """The step tree as a Mermaid flowchart (``flowchart TD``).

    Shapes tell the kinds apart: a call is a rectangle, a sequential a
    rounded box (its edges are numbered in order), a parallel a hexagon and
    a map_reduce a subroutine box, with its map step under an edge ``map``.
    """
    lines = ["flowchart TD"]
    numbers = iter(range(1 << 30))

    def walk(node: _Node) -> str:
        me = f"n{next(numbers)}"
        label = [f"{node.part}: {node.kind}" if node.part else node.kind]
        if node.detail:
            label.append(node.detail)
        if node.options:
            label.append(" ".join(node.options))
        text = "<br/>".join(_mermaid_escape(s) for s in label)
        opening, closing = _SHAPES[node.kind]
        lines.append(f'  {me}{opening}"{text}"{closing}')
        for n, c in enumerate(node.children, start=1):
            them = walk(c)
            if node.ordered:
                arrow = f"-->|{n}|"
            elif node.kind == "map_reduce":
                arrow = "-->|map|"
            else:
                arrow = "-->"
            lines.append(f"  {me} {arrow} {them}")
        return me

    walk(_node(workflow.step, ""))
    return "\n".join(lines) + "\n"


_SHAPES = {
    "call": ("[", "]"),
    "sequential": ("(", ")"),
    "parallel": ("{{", "}}"),
    "map_reduce": ("[[", "]]"),
}


def _mermaid_escape(text: str) -> str:
    """Text safe inside a quoted Mermaid label (entity codes for the rest)."""
    return (
        text.replace("#", "#35;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
    )


def _metadata(workflow: Workflow) -> Iterator[tuple[str, str]]:
    if workflow.name:
        yield "workflow", workflow.name
    if workflow.description:
        yield "description", " ".join(workflow.description.split())
    if workflow.inputs:
        yield "inputs", ", ".join(workflow.inputs)


def _node(step: Step, part: str) -> _Node:
    kind = KINDS[type(step).__name__]
    options: list[str] = []
    detail = ""
    children: list[_Node] = []
    if step.name is not None:
        options.append(f"name={step.name}")
    if isinstance(step, Call):
        args = [_expr(a) for a in step.args]
        args += [f"{k}={_expr(v)}" for k, v in step.kwargs.items()]
        detail = f"{step.tool_name}({', '.join(args)})"
        if step.timeout is not None:
            options.append(f"timeout={step.timeout:g}")
        if step.retry is not None:
            options.append(f"retry={_retry(step.retry)}")
        if isinstance(step.target, Tool):
            options += _tool_options(step.target)
    elif isinstance(step, Sequential):
        children = [_node(s, index("steps", i)) for i, s in enumerate(step.steps)]
    elif isinstance(step, Parallel):
        if isinstance(step.steps, dict):
            children = [_node(s, f"steps.{k}") for k, s in step.steps.items()]
        else:
            children = [_node(s, index("steps", i)) for i, s in enumerate(step.steps)]
        if step.on_error != "raise":
            options.append(f"on_error={step.on_error}")
    elif isinstance(step, MapReduce):
        detail = f"over {_expr(step.over)}"
        if step.item != "item":
            detail += f" as {step.item}"
        if step.reduce is not None:
            options.append(f"reduce={_function(step.reduce)}")
        if step.initial is not None:
            options.append(f"initial={_expr(step.initial)}")
        if step.max_concurrency is not None:
            options.append(f"max_concurrency={step.max_concurrency}")
        if not step.ordered:
            options.append("ordered=false")
        if step.on_error != "raise":
            options.append(f"on_error={step.on_error}")
        children = [_node(step.map, "map")]
    if step.timeout is not None and not isinstance(step, Call):
        options.append(f"timeout={step.timeout:g}")
    return _Node(
        part=part,
        kind=kind,
        detail=detail,
        options=options,
        children=children,
        ordered=isinstance(step, Sequential),
    )


def _tool_options(tool: Tool) -> list[str]:
    """The tool's own limits and policies, as ``tool.<option>=...``."""
    out = []
    if tool.concurrency_limit is not None:
        out.append(f"tool.concurrency_limit={tool.concurrency_limit}")
    if tool.timeout is not None:
        out.append(f"tool.timeout={tool.timeout:g}")
    if tool.retry is not None:
        out.append(f"tool.retry={_retry(tool.retry)}")
    if tool.rate_limit is not None:
        out.append(f"tool.rate_limit={_rate_limit(tool.rate_limit)}")
    return out


def _retry(retry: Retry) -> str:
    fields = []
    for key in ("attempts", "backoff", "initial_delay", "max_delay", "jitter"):
        value = getattr(retry, key)
        if value != getattr(_RETRY_DEFAULTS, key):
            fields.append(f"{key}={_scalar(value)}")
    if retry.retry_on != _RETRY_DEFAULTS.retry_on:
        if isinstance(retry.retry_on, tuple):
            names = ", ".join(c.__name__ for c in retry.retry_on)
            fields.append(f"retry_on=[{names}]")
        else:
            fields.append(f"retry_on={_function(retry.retry_on)}")
    return f"retry({', '.join(fields)})"


def _rate_limit(limit: RateLimit) -> str:
    fields = [f"rate={limit.rate:g}"]
    if limit.per != 1.0:
        fields.append(f"per={limit.per:g}")
    if limit.burst is not None:
        fields.append(f"burst={limit.burst}")
    return f"rate_limit({', '.join(fields)})"


def _function(fn: str | Callable[..., Any]) -> str:
    if isinstance(fn, str):
        return fn
    path = import_path_of(fn)
    if path is not None:
        return path
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def _expr(value: Any) -> str:
    """An expression as the file form writes it, on one line."""
    if isinstance(value, Var):
        return f"${{{value.path}}}"
    if isinstance(value, Lit):
        return _scalar(value.value)
    if isinstance(value, Fn):
        return f"{_function(value.fn)}({', '.join(_expr(a) for a in value.args)})"
    if isinstance(value, list | tuple):
        return f"[{', '.join(_expr(v) for v in value)}]"
    if isinstance(value, dict):
        items = ", ".join(f"{_scalar(k)}: {_expr(v)}" for k, v in value.items())
        return f"{{{items}}}"
    return _scalar(value)


def _scalar(value: Any) -> str:
    """A constant as JSON when it is plain data, else its repr."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
