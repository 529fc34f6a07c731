"""Workflow files: loaded with their own directory importable.

A workflow file names its tools by import path (``corpus_tools:count_words``),
and the module usually sits next to the file. So while a command works on a
file, the file's directory is the first entry of ``sys.path``, as the
directory of a script is for ``python script.py``. With ``--imports`` (a file
not trusted as code) it is the last entry instead, so that a module placed
next to the file cannot stand in for an installed one.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from .._io import load
from .._model._steps import Workflow
from ._exit import CommandError

__all__ = ["importable_dir", "load_file"]


@contextlib.contextmanager
def importable_dir(file: Path, imports: list[str] | None = None) -> Iterator[None]:
    """Put the directory of ``file`` on ``sys.path`` for the block.

    First, as for a script; last when ``imports`` restricts what the file may
    import (see the module's docstring).
    """
    directory = str(file.resolve().parent)
    if imports is None:
        sys.path.insert(0, directory)
    else:
        sys.path.append(directory)
    try:
        yield
    finally:
        # The entry added above, even if the block added others before it.
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)


def load_file(file: Path, imports: list[str] | None = None) -> Workflow:
    """Load the workflow in ``file`` (call it inside :func:`importable_dir`).

    Args:
        file: the workflow file.
        imports: ``--imports`` prefixes (``[]`` for ``--no-imports``), or
            None to allow every import.

    Raises:
        CommandError: there is no such file.
        WorkflowError: the file's problems, from :func:`plait.load`.
    """
    if not file.exists():
        raise CommandError(f"no such file: {file}")
    if file.is_dir():
        raise CommandError(f"{file} is a directory, not a workflow file")
    return load(file, imports=imports)
