"""A JSON Schema (draft 2020-12) of the file form, for editors and validators.

The schema checks the shape of a document: kinds, keys, types, ranges and
the ``${...}`` and import path syntax. What it cannot see (whether an import
path imports, whether a variable exists) :func:`plait.load` still checks.
"""

from __future__ import annotations

from typing import Any

from ._form import KINDS, ON_ERROR, REQUIRED

__all__ = ["json_schema"]

_IDENTIFIER = r"^[^\W\d]\w*$"
_DOTTED = r"[^\W\d]\w*(\.[^\W\d]\w*)*"
_IMPORT_PATH = rf"^{_DOTTED}:{_DOTTED}$"
_VAR_SHORTHAND = r"^\$\{[^\s${}.]+(\.[^\s${}.]+)*\}$"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a workflow document; see :func:`plait.json_schema`."""
    seconds = _nullable(
        {"type": "number", "exclusiveMinimum": 0, "description": "Seconds."}
    )
    count = {"type": "integer", "minimum": 1}
    import_path = {
        "type": "string",
        "pattern": _IMPORT_PATH,
        "description": "An import path, 'module:attr'.",
    }
    reference = {
        "type": "string",
        "minLength": 1,
        "not": {"pattern": r"^\$\{"},
        "anyOf": [{"not": {"pattern": ":"}}, {"pattern": _IMPORT_PATH}],
    }
    on_error = {
        "enum": list(ON_ERROR),
        "description": "raise: the first failure cancels the rest; collect: "
        "failures become plait.Failure values in place.",
    }
    common = {
        "timeout": {
            **seconds,
            "description": "Seconds: per attempt on a call, for the whole step "
            "otherwise.",
        },
    }

    def kind_schema(kind: str, properties: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"kind": {"const": kind}, **properties, **common},
            "required": ["kind", *REQUIRED[kind]],
        }

    defs: dict[str, Any] = {
        "step_body": {
            "type": "object",
            "required": ["kind"],
            "properties": {"kind": {"enum": list(KINDS)}},
            "allOf": [
                {
                    "if": {
                        "properties": {"kind": {"const": kind}},
                        "required": ["kind"],
                    },
                    "then": _ref(kind),
                }
                for kind in KINDS
            ],
        },
        "step": {
            "$ref": "#/$defs/step_body",
            "properties": {
                "name": {
                    **_nullable({"type": "string", "pattern": _IDENTIFIER}),
                    "description": "Binds the step's output for later steps.",
                }
            },
            "unevaluatedProperties": False,
        },
        "call": kind_schema(
            "call",
            {
                "tool": {
                    **reference,
                    "description": "A registered tool name, a name declared in "
                    "tools, or an import path 'module:attr'.",
                },
                "args": {
                    "description": "Positional arguments (a list) or keyword "
                    "arguments (a mapping).",
                    "anyOf": [
                        {"type": "array", "items": _ref("expression")},
                        {"type": "object", "additionalProperties": _ref("expression")},
                    ],
                },
                "kwargs": {
                    "type": "object",
                    "additionalProperties": _ref("expression"),
                    "description": "Keyword arguments next to a list of args.",
                },
                "retry": _nullable(_ref("retry")),
            },
        )
        | {"dependentSchemas": {"kwargs": {"properties": {"args": {"type": "array"}}}}},
        "sequential": kind_schema(
            "sequential",
            {"steps": {"type": "array", "minItems": 1, "items": _ref("step")}},
        ),
        "parallel": kind_schema(
            "parallel",
            {
                "steps": {
                    "anyOf": [
                        {"type": "array", "minItems": 1, "items": _ref("step")},
                        {
                            "type": "object",
                            "minProperties": 1,
                            "propertyNames": {"minLength": 1},
                            "additionalProperties": _ref("step"),
                        },
                    ]
                },
                "on_error": on_error,
            },
        ),
        "map_reduce": kind_schema(
            "map_reduce",
            {
                "over": {
                    **_ref("expression"),
                    "description": "An iterable, such as '${urls}'.",
                },
                "map": {**_ref("step"), "description": "Run once per element."},
                "reduce": _nullable(
                    {**reference, "description": "A function (acc, value) -> acc."}
                ),
                "initial": _ref("expression"),
                "max_concurrency": _nullable(count),
                "ordered": {"type": "boolean"},
                "item": {"type": "string", "pattern": _IDENTIFIER},
                "on_error": on_error,
                "remote": {
                    "type": "boolean",
                    "description": "Run the elements on the engine's executor.",
                },
            },
        ),
        "expression": {
            "description": "A value; '${x.y}', {var: ...}, {lit: ...} and "
            "{fn: ..., args: [...]} are expressions.",
            "anyOf": [
                {"type": ["null", "boolean", "number"]},
                {
                    "type": "string",
                    "anyOf": [
                        {"not": {"pattern": r"^\$\{"}},
                        {"pattern": _VAR_SHORTHAND},
                    ],
                },
                {"type": "array", "items": _ref("expression")},
                {
                    "type": "object",
                    "properties": {
                        "var": {"type": "string", "pattern": r"^[^.]+(\.[^.]+)*$"}
                    },
                    "required": ["var"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "required": ["lit"],
                    "additionalProperties": False,
                    "properties": {"lit": True},
                },
                {
                    "type": "object",
                    "properties": {
                        "fn": reference,
                        "args": {"type": "array", "items": _ref("expression")},
                    },
                    "required": ["fn"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "not": {
                        "anyOf": [
                            {"required": ["var"]},
                            {"required": ["lit"]},
                            {"required": ["fn"]},
                        ]
                    },
                    "additionalProperties": _ref("expression"),
                },
            ],
        },
        "retry": {
            "type": "object",
            "properties": {
                "attempts": {**count, "description": "Tries, the first included."},
                "backoff": {"type": "number", "minimum": 1},
                "initial_delay": {"type": "number", "minimum": 0},
                "max_delay": {"type": "number", "minimum": 0},
                "jitter": {"type": "boolean"},
                "retry_on": {
                    "description": "Exception classes ('OSError', 'module:Class'), "
                    "or the import path of a predicate.",
                    "anyOf": [
                        {"type": "string", "minLength": 1},
                        {"type": "array", "items": {"type": "string", "minLength": 1}},
                    ],
                },
            },
            "additionalProperties": False,
        },
        "rate_limit": {
            "type": "object",
            "properties": {
                "rate": {"type": "number", "exclusiveMinimum": 0},
                "per": {"type": "number", "exclusiveMinimum": 0},
                "burst": _nullable(count),
            },
            "required": ["rate"],
            "additionalProperties": False,
        },
        "tool": {
            "anyOf": [
                import_path,
                {
                    "type": "object",
                    "properties": {
                        "import": import_path,
                        "concurrency_limit": _nullable(count),
                        "timeout": seconds,
                        "retry": _nullable(_ref("retry")),
                        "rate_limit": _nullable(_ref("rate_limit")),
                    },
                    "required": ["import"],
                    "additionalProperties": False,
                },
            ]
        },
    }
    declared_name = {"minLength": 1, "not": {"pattern": ":"}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "plait workflow",
        "description": "A plait workflow document: the root step, plus the "
        "workflow's name, description, inputs, tools and functions.",
        "type": "object",
        "$ref": "#/$defs/step_body",
        "properties": {
            "name": {
                "type": ["string", "null"],
                "description": "The workflow's name.",
            },
            "description": {"type": ["string", "null"]},
            "inputs": {
                "type": ["array", "null"],
                "items": {"type": "string", "pattern": _IDENTIFIER},
                "uniqueItems": True,
                "description": "The variables a run must be given.",
            },
            "tools": {
                "type": "object",
                "propertyNames": declared_name,
                "additionalProperties": _ref("tool"),
                "description": "Tools by name: an import path, or a mapping with "
                "import and options.",
            },
            "functions": {
                "type": "object",
                "propertyNames": declared_name,
                "additionalProperties": import_path,
                "description": "Functions (for fn and reduce) by name.",
            },
        },
        "unevaluatedProperties": False,
        "$defs": defs,
    }
