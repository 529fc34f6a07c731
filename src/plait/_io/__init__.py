"""Workflows as data: :func:`load`, :func:`dump` and :func:`json_schema`.

The file form is described in ``docs/reference/workflow-format.md``. The
modules behind these functions (PyYAML, cattrs) are imported on first use,
so that ``import plait`` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from .._model._steps import Step, Workflow

__all__ = ["dump", "json_schema", "load"]


def load(
    source: Mapping[str, Any] | str | os.PathLike[str],
    *,
    imports: Iterable[str] | None = None,
) -> Workflow:
    """Read a workflow from a document and check all of it before anything runs.

    Args:
        source: the document as a mapping; YAML or JSON text; or the path of
            a ``.yaml``, ``.yml`` or ``.json`` file (a ``pathlib.Path``, or a
            ``str`` with no newline that ends in one of those suffixes).
        imports: the modules the document may import from, for documents
            you do not trust as code: prefixes of module names
            (``("myapp.tools",)`` allows ``myapp.tools`` and the modules
            under it) or ``()`` for none, so that the document may only name
            tools and functions registered on the engine. Any other import
            path is a problem at its line, refused before anything is
            imported from it; under a restriction a path may not name a
            private attribute (``_name``) either. None (the default) allows
            every module.

    Returns:
        A :class:`plait.Workflow` (always, with or without metadata in the
        document). Tools and functions the document names by import path
        (``"module:attr"``) are imported and placed in the steps, so an
        engine runs it without registering them; other tool and function
        names are looked up in the engine when it runs.

    Raises:
        WorkflowError: anything wrong with the document. Its message lists
            every problem found, one per line, each with its path in the
            document (``steps[1].map.args.url``) and, for text and files, its
            line; ``.errors`` holds them as separate ``WorkflowError`` objects
            with ``.path`` and ``.line``.
        TypeError: ``imports`` is not None or an iterable of str.
        ConfigError: an entry of ``imports`` is not a module name.
    """
    from ._load import load as load_document

    return load_document(source, imports)


def dump(workflow: Workflow | Step, format: Literal["yaml", "json"] = "yaml") -> str:
    """Write a workflow as a YAML or JSON document that :func:`load` reads back.

    ``load(dump(w)) == w`` for a :class:`plait.Workflow` (a bare step comes
    back wrapped in one). Tools and functions given as objects are written as
    import paths, so they must be defined at the top level of a module. A
    ``Call("pkg.mod:fn")`` is written with that same path; it loads back as a
    call of the tool found there, which runs the same.

    Raises:
        WorkflowError: something in the workflow has no file form (a lambda
            as a tool, an object that is not plain data as an argument, a
            name on the root step), naming its path.
        ValueError: ``format`` is neither ``"yaml"`` nor ``"json"``.
    """
    from ._dump import dump as dump_document

    return dump_document(workflow, format)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a workflow document, for editors.

    A new dict on each call. It checks the shape of a document (kinds, keys,
    types, ranges); :func:`load` checks more (imports, variable paths).
    """
    from ._schema import json_schema as schema

    return schema()
