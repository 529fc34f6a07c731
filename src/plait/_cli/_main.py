"""The ``plait`` command: its arguments, its commands and how errors end it.

Every error is one message on stderr, ``plait: error: ...``, without a
traceback unless ``--debug`` is given; the exit code says what kind of
error it was (see :class:`ExitCode`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._concurrency._groups import leaves
from .._model._errors import JournalError, StepFailed, WorkflowError
from .._model._imports import Imports
from .._model._paths import show_path
from .._model._validate import COUNT, Rule, number
from .._runtime._run import BACKENDS
from ._exit import CommandError, ExitCode

__all__ = ["build_parser", "main"]

_EXIT_CODES = """\
exit codes:
  0    success
  1    the workflow failed, could not be loaded, or validate found errors
  2    usage error (bad options, -i, --inputs, or inputs)
  3    the run finished, but collect mode recorded failures
  130  interrupted (Ctrl-C)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``plait`` command line and return its exit code.

    Args:
        argv: the arguments after ``plait``; None means ``sys.argv[1:]``,
            as the ``plait`` script and ``python -m plait`` do. Only then,
            after Ctrl-C, the process exits at once instead of waiting for
            worker threads of sync tools that are still running (a thread
            cannot be cancelled).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a usage error
        return exit.code if isinstance(exit.code, int) else ExitCode.USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("plait: interrupted", file=sys.stderr)
        if argv is None:
            _exit_now_if_threads_run(ExitCode.INTERRUPTED)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away: `plait ... | head`
        if argv is None:
            # Python flushes stdout again at exit: send that to /dev/null.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.FAILED
    except Exception as error:
        return report(error, debug=args.debug)


def report(error: Exception, *, debug: bool) -> int:
    """Print ``error`` on stderr (with its traceback under ``--debug``)."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    print(f"plait: error: {describe(error)}", file=sys.stderr)
    return error.code if isinstance(error, CommandError) else ExitCode.FAILED


def describe(error: BaseException) -> str:
    """The message of an error for the command line."""
    if isinstance(error, CommandError | WorkflowError | StepFailed | JournalError):
        return str(error)
    if isinstance(error, BaseExceptionGroup):
        errors = list(leaves(error))
        lines = [f"{len(errors)} steps failed:"]
        lines += [f"  {describe(e)}" for e in errors]
        return "\n".join(lines)
    if isinstance(error, ImportError) and "pip install" in str(error):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _exit_now_if_threads_run(code: int) -> None:
    """Exit without waiting for threads that are still running sync tools."""
    others = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon
    ]
    if others:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# -- arguments ----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``plait`` and its commands."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="plait",
        description="Run, check and show plait workflow files (YAML or JSON).",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"plait {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show the traceback of an error"
    )
    # For the commands that load a file: what the file may import.
    loading = argparse.ArgumentParser(add_help=False)
    allowed = loading.add_mutually_exclusive_group()
    allowed.add_argument(
        "--imports",
        action="append",
        type=_module_name,
        metavar="PREFIX",
        help="let the file import only from the module PREFIX and the modules "
        "under it (repeat for several); for files you do not trust as code. "
        "By default a file may import any module",
    )
    allowed.add_argument(
        "--no-imports",
        dest="imports",
        action="store_const",
        const=[],
        help="let the file import nothing (so it can name no tools: the command "
        "registers none); to check files you do not trust as code",
    )
    commands = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )

    run = commands.add_parser(
        "run",
        parents=[common, loading],
        help="run a workflow file and print its output as JSON",
        description=(
            "Run a workflow file and print its output as JSON on stdout. Tools "
            "are named in the file by import path ('module:function'); the "
            "file's directory is put first on sys.path (last with --imports), "
            "so a module next to the file imports. Progress and a summary go "
            "to stderr."
        ),
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "file", type=Path, metavar="FILE", help="a .yaml, .yml or .json file"
    )
    run.add_argument(
        "-i",
        "--input",
        dest="input",
        action="append",
        default=[],
        type=_key_value,
        metavar="KEY=VALUE",
        help="an input of the run; VALUE is read as JSON if it parses, else "
        "taken as a string (repeat for several; overrides --inputs)",
    )
    run.add_argument(
        "--inputs",
        metavar="FILE",
        help="a JSON file holding an object of inputs ('-' reads stdin)",
    )
    run.add_argument(
        "--backend",
        choices=BACKENDS,
        help="the event loop (default: uvloop when installed, else asyncio)",
    )
    run.add_argument(
        "--max-concurrency",
        type=_positive_int,
        metavar="N",
        help="tool calls in flight at once across the run (default 100)",
    )
    run.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the remote: true map steps on a Dask cluster: a scheduler "
        "address, or 'local' for a cluster of worker processes on this machine "
        '(pip install "plait[dask]")',
    )
    run.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write the output JSON to FILE instead of stdout",
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="print only the output, no progress"
    )
    run.add_argument(
        "--plain",
        action="store_true",
        help="plain progress lines on stderr instead of the live display "
        "(the default when stdout or stderr is not a terminal)",
    )
    run.add_argument(
        "--interval",
        type=_positive_float,
        metavar="SECONDS",
        help="seconds between progress reports (default: 2 for plain lines, "
        "0.1 for the live display)",
    )
    run.add_argument(
        "--journal",
        metavar="PATH_OR_DSN",
        help="journal every tool call in this SQLite file (made if missing) or "
        "PostgreSQL server (a postgresql:// DSN), so that the run can be resumed "
        "with --run-id",
    )
    run.add_argument(
        "--run-id",
        type=_run_id,
        metavar="ID",
        help="the run's id; with --journal, an id that ran before resumes that "
        "run: calls that succeeded are not made again (default: a new id, "
        "printed on stderr)",
    )
    run.set_defaults(handler=_run)

    runs = commands.add_parser(
        "runs",
        parents=[common],
        help="list the runs kept in a journal",
        description="List the runs kept in a journal (a SQLite file or a "
        "postgresql:// DSN): id, workflow, status, calls done and failures, "
        "the latest first. A run whose process died shows as running.",
    )
    runs.add_argument("journal", metavar="PATH_OR_DSN")
    runs.set_defaults(handler=_runs)

    validate = commands.add_parser(
        "validate",
        parents=[common, loading],
        help="check workflow files and list every problem",
        description=(
            "Load each file and list every problem found, as FILE:LINE: PATH: "
            "MESSAGE. Exits with 1 when any file has problems."
        ),
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(handler=_validate)

    show = commands.add_parser(
        "show",
        parents=[common, loading],
        help="print the step tree of a workflow file",
        description="Print the step tree of a workflow file: kinds, names, "
        "tools and options, as indented text or as a Mermaid flowchart.",
    )
    show.add_argument("file", type=Path, metavar="FILE")
    show.add_argument(
        "--mermaid", action="store_true", help="print a Mermaid flowchart instead"
    )
    show.set_defaults(handler=_show)

    schema = commands.add_parser(
        "schema",
        parents=[common],
        help="print the JSON Schema of workflow files",
        description="Print the JSON Schema (draft 2020-12) of workflow files, "
        "for editors.",
    )
    schema.set_defaults(handler=_schema)
    return parser


def _key_value(text: str) -> tuple[str, Any]:
    from ._run import parse_value

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY a variable name, got {text!r}"
        )
    return key, parse_value(value)


def _parsed(parse: Callable[[str], Any], rule: Rule) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text, then check it by ``rule``."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not rule.ok(value):
            raise argparse.ArgumentTypeError(f"expected {rule.expected}, got {text!r}")
        return value

    return convert


_positive_int = _parsed(int, COUNT)
_positive_float = _parsed(float, number())


def _run_id(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty run id")
    return text


def _module_name(text: str) -> str:
    try:
        Imports((text,))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a module name such as 'myapp.tools', got {text!r}"
        ) from None
    return text


# -- commands -----------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    from ._run import run_command

    return run_command(args)


def _runs(args: argparse.Namespace) -> int:
    from ._runs import runs_command

    return runs_command(args)


def _validate(args: argparse.Namespace) -> int:
    from ._files import importable_dir, load_file

    invalid = 0
    for file in args.files:
        try:
            with importable_dir(file, args.imports):
                load_file(file, args.imports)
        except CommandError as error:
            invalid += 1
            print(f"{file}: {error}")
        except WorkflowError as error:
            invalid += 1
            for problem in error.errors or [error]:
                where = f"{file}:{problem.line}" if problem.line else str(file)
                print(f"{where}: {show_path(problem.path)}: {problem.message}")
        else:
            print(f"{file}: ok")
    if len(args.files) > 1:
        print(f"{len(args.files)} files checked, {invalid} with problems")
    return ExitCode.FAILED if invalid else ExitCode.OK


def _show(args: argparse.Namespace) -> int:
    from ._files import importable_dir, load_file
    from ._tree import mermaid, text

    with importable_dir(args.file, args.imports):
        workflow = load_file(args.file, args.imports)
    sys.stdout.write(mermaid(workflow) if args.mermaid else text(workflow))
    return ExitCode.OK


def _schema(args: argparse.Namespace) -> int:
    from .._io import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
    return ExitCode.OK
