"""What ``plait.load`` was given, read into plain data and a line map.

A mapping is the document itself. A ``str`` with no newline that ends in
``.yaml``, ``.yml`` or ``.json`` (in any case), or any ``os.PathLike``, is the
path of a file: ``.json`` files are read as JSON, ``.yaml`` and ``.yml`` files
as YAML, other files like text. Any other ``str`` is YAML or JSON text: JSON
when it starts with ``{`` or ``[`` and parses as JSON, else YAML.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._json_lines import parse_json
from ._problems import Problems
from ._yaml_lines import parse_yaml

__all__ = ["FILE_SUFFIXES", "read_source"]

FILE_SUFFIXES = (".yaml", ".yml", ".json")


def read_source(source: object) -> tuple[Any, Problems]:
    """Read ``source`` into plain data; see the module docstring.

    Returns:
        The document, and the :class:`Problems` to check it with: it knows
        the line of each location of text, and holds the problems found while
        reading that do not stop the checks (a repeated key).

    Raises:
        WorkflowError: the file cannot be read, or its text does not parse.
    """
    if isinstance(source, Mapping):
        return source, Problems()
    if isinstance(source, os.PathLike):
        path = os.fspath(source)
        if isinstance(path, str):
            return _read_file(Path(path))
    elif isinstance(source, str):
        if "\n" not in source and source.lower().endswith(FILE_SUFFIXES):
            return _read_file(Path(source))
        return _parse_text(source, Problems())
    Problems().fail(
        (),
        "plait.load takes a mapping, YAML or JSON text, or the path of a .yaml, "
        f".yml or .json file; got {type(source).__name__}",
    )


def _read_file(path: Path) -> tuple[Any, Problems]:
    problems = Problems(origin=str(path))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        problems.fail((), f"no such file: {path}")
    except UnicodeDecodeError as e:
        problems.fail((), f"the file is not UTF-8 text: {e.reason} at byte {e.start}")
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        problems.fail((), f"cannot read the file: {reason}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return parse_json(text, problems), problems
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text, problems), problems
    return _parse_text(text, problems)


def _parse_text(text: str, problems: Problems) -> tuple[Any, Problems]:
    if text.lstrip().startswith(("{", "[")):
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            pass  # YAML flow style, such as {kind: call, tool: search}
        else:
            return parse_json(text, problems), problems
    return parse_yaml(text, problems), problems
