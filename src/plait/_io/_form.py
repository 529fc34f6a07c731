"""The file form of a workflow: its kinds, keys, defaults and string patterns.

One place that :mod:`._load`, :mod:`._dump` and :mod:`._schema` read, so that
the three always agree on what a document may hold.
"""

from __future__ import annotations

import re

__all__ = [
    "EXPRESSION_KEYS",
    "KINDS",
    "MAX_DEPTH",
    "ON_ERROR",
    "REQUIRED",
    "STEP_DEFAULTS",
    "STEP_KEYS",
    "TOOL_KEYS",
    "VAR_SHORTHAND",
    "WORKFLOW_KEYS",
    "escape_string",
    "unescape_string",
    "var_shorthand",
]

KINDS = ("call", "sequential", "parallel", "map_reduce")

# Keys of each kind of step, in the order dump writes them.
STEP_KEYS: dict[str, tuple[str, ...]] = {
    "call": ("kind", "tool", "args", "kwargs", "name", "timeout", "retry"),
    "sequential": ("kind", "steps", "name", "timeout"),
    "parallel": ("kind", "steps", "on_error", "name", "timeout"),
    "map_reduce": (
        "kind",
        "over",
        "map",
        "reduce",
        "initial",
        "max_concurrency",
        "ordered",
        "item",
        "on_error",
        "remote",
        "name",
        "timeout",
    ),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "call": ("tool",),
    "sequential": ("steps",),
    "parallel": ("steps",),
    "map_reduce": ("over", "map"),
}
# Values dump leaves out because load fills them in.
STEP_DEFAULTS: dict[str, object] = {
    "name": None,
    "timeout": None,
    "retry": None,
    "reduce": None,
    "initial": None,
    "max_concurrency": None,
    "ordered": True,
    "item": "item",
    "on_error": "raise",
    "remote": False,
}
ON_ERROR = ("raise", "collect")

# Keys only the top of a document may hold; its `name` is the workflow's.
WORKFLOW_KEYS = ("name", "description", "inputs", "tools", "functions")

# Keys of a tool declared in `tools:` as a mapping.
TOOL_KEYS = ("import", "concurrency_limit", "timeout", "retry", "rate_limit")

# A mapping holding one of these keys is an expression, never a plain value.
EXPRESSION_KEYS = frozenset({"var", "lit", "fn"})

# "${x.field.0}": the whole string is one dotted variable path.
VAR_SHORTHAND = re.compile(r"\$\{([^\s${}.]+(?:\.[^\s${}.]+)*)\}")
_VAR_PART = re.compile(r"[^\s${}.]+")


# Documents nest at most this deep (mappings and lists, all levels counted).
MAX_DEPTH = 100

_ESCAPED = re.compile(r"\$+\{")


def unescape_string(text: str) -> str | None:
    """The literal a string stands for, or None when it is ``${...}`` syntax.

    ``"$${x}"`` is the literal ``"${x}"`` (one ``$`` is dropped from a run of
    two or more before ``{``); ``"${...}"`` is a variable reference (None);
    any other string is itself.
    """
    match = _ESCAPED.match(text)
    if match is None:
        return text
    if match.end() > 2:
        return text[1:]
    return None


def escape_string(text: str) -> str:
    """How a literal string is written so that load reads it back unchanged."""
    return "$" + text if _ESCAPED.match(text) else text


def var_shorthand(path: str) -> str | None:
    """``"${path}"`` when the shorthand can spell ``Var(path)``, else None."""
    parts = path.split(".")
    if all(_VAR_PART.fullmatch(p) for p in parts):
        return "${" + path + "}"
    return None
