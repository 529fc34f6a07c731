"""``plait run``: load a workflow file, run it with progress, print its output.

The run happens in ``anyio.run`` (through plait's own ``run_sync``, which
turns Ctrl-C into a bare ``KeyboardInterrupt`` on every backend). The
progress display and the summary read a :class:`RunTracker` kept outside
the run, so that after Ctrl-C the summary can still say what finished: by
then the engine's task groups have cancelled every running call (and killed
the subprocesses of tools that started any).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from .._model._errors import UnknownTool, WorkflowError
from .._model._results import RunResult
from .._model._steps import Workflow
from .._runtime._engine import Engine
from .._runtime._run import resolve_backend, run_sync
from ._display import Display, LiveDisplay, NoDisplay, PlainDisplay
from ._exit import CommandError, ExitCode
from ._files import importable_dir, load_file
from ._json import to_json
from ._runs import journal_at
from ._summary import Outcome, Summary, print_plain, print_rich
from ._tracker import RunTracker

__all__ = ["parse_value", "read_inputs", "run_command"]

#: Seconds between plain progress reports, and between redraws of the live display.
PLAIN_INTERVAL = 2.0
LIVE_INTERVAL = 0.1


def parse_value(text: str) -> Any:
    """An input value from the command line: JSON if it parses, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The run's inputs: ``--inputs`` (a JSON object), then each ``-i`` over it.

    Raises:
        CommandError: the ``--inputs`` file cannot be read or is not a JSON
            object (a usage error).
    """
    inputs: dict[str, Any] = {}
    if args.inputs is not None:
        where = "stdin" if str(args.inputs) == "-" else str(args.inputs)
        try:
            text = (
                sys.stdin.read()
                if str(args.inputs) == "-"
                else Path(args.inputs).read_text(encoding="utf-8-sig")
            )
        except OSError as e:
            raise CommandError(
                f"cannot read --inputs {where}: {e.strerror or e}", ExitCode.USAGE
            ) from None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise CommandError(
                f"--inputs {where} is not valid JSON: {e}", ExitCode.USAGE
            ) from None
        if not isinstance(data, Mapping):
            raise CommandError(
                f"--inputs {where} must hold a JSON object of input names to values, "
                f"got a JSON {type(data).__name__}",
                ExitCode.USAGE,
            )
        inputs.update(data)
    for key, value in args.input:
        inputs[key] = value
    return inputs


def _check_inputs(workflow: Workflow, inputs: Mapping[str, Any]) -> None:
    """Missing and unexpected inputs, reported in terms of the command line."""
    if not workflow.inputs:
        return
    declared = ", ".join(workflow.inputs)
    missing = [n for n in workflow.inputs if n not in inputs]
    if missing:
        raise CommandError(
            f"missing input {missing[0]!r}: the workflow takes {declared}; "
            f"give it with -i {missing[0]}=VALUE or in an --inputs JSON file",
            ExitCode.USAGE,
        )
    extra = sorted(set(inputs) - set(workflow.inputs))
    if extra:
        raise CommandError(
            f"unexpected input {extra[0]!r}: the workflow takes {declared}",
            ExitCode.USAGE,
        )


def _rich_console() -> Any:
    """A rich console on stderr, or None when rich is not installed."""
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(stderr=True)


def run_command(args: argparse.Namespace) -> int:
    """``plait run FILE``; returns the exit code."""
    file = Path(args.file)
    inputs = read_inputs(args)
    with importable_dir(file, args.imports):
        workflow = load_file(file, args.imports)
        _check_inputs(workflow, inputs)
        return _run(args, file, workflow, inputs)


def _run(
    args: argparse.Namespace,
    file: Path,
    workflow: Workflow,
    inputs: dict[str, Any],
) -> int:
    # Checked before the display starts; None becomes the name of the default.
    uvloop = bool(resolve_backend(args.backend)[1])
    backend = args.backend or ("uvloop" if uvloop else "asyncio")
    executor = _executor(args.dask)
    try:
        return _run_on(args, file, workflow, inputs, backend, executor)
    finally:
        if executor is not None:
            executor.close()


def _executor(dask: str | None) -> Any:
    """The executor of ``--dask ADDRESS|local``, or None."""
    if dask is None:
        return None
    from ..dask import DaskExecutor  # imported only when asked for

    return DaskExecutor(None if dask == "local" else dask)


def _run_on(
    args: argparse.Namespace,
    file: Path,
    workflow: Workflow,
    inputs: dict[str, Any],
    backend: str,
    executor: Any,
) -> int:
    options: dict[str, Any] = {"executor": executor}
    if args.max_concurrency is not None:
        options["max_concurrency"] = args.max_concurrency
    if args.journal is not None:
        options["journal"] = journal_at(args.journal)
    engine = Engine(**options)
    run_id = args.run_id or uuid.uuid4().hex
    if args.journal is not None and not args.quiet:
        print(
            f"plait: run id {run_id} (resume it with --run-id {run_id})",
            file=sys.stderr,
        )
    tracker = RunTracker(workflow)
    instrumented = tracker.instrument(workflow, inputs)
    console = None
    display: Display
    if args.quiet:
        display = NoDisplay()
    else:
        ttys = sys.stdout.isatty() and sys.stderr.isatty()
        console = None if args.plain or not ttys else _rich_console()
        title = workflow.name or file.name
        if console is not None:
            display = LiveDisplay(
                tracker, console, args.interval or LIVE_INTERVAL, title
            )
        else:
            if ttys and not args.plain:
                print(
                    'plait: for a live progress display, pip install "plait[cli]"',
                    file=sys.stderr,
                )
            display = PlainDisplay(
                tracker,
                sys.stderr,
                args.interval or PLAIN_INTERVAL,
                f"plait: running {file} on {backend}",
            )

    async def main() -> tuple[RunResult | None, Exception | None]:
        outcome: list[Any] = [None, None]

        async def work() -> None:
            try:
                outcome[0] = await engine.execute(instrumented, inputs, run_id=run_id)
            except Exception as error:
                outcome[1] = error
            finally:
                tg.cancel_scope.cancel()

        tracker.start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(display.run)
            tg.start_soon(work)
        tracker.stop()
        return outcome[0], outcome[1]

    def summarize(summary: Summary) -> None:
        if args.quiet:
            return
        if console is not None:
            print_rich(summary, console)
        else:
            print_plain(summary, sys.stderr)

    # Events cost time per call; with nothing to show, nobody listens.
    listening = contextlib.nullcontext() if args.quiet else engine.subscribe(tracker)
    with listening:
        try:
            with display:
                result, error = run_sync(main, backend=backend, what="plait run")
        except KeyboardInterrupt:
            tracker.stop()
            summarize(Summary.of_tracker(tracker, Outcome.INTERRUPTED))
            raise
    if error is not None:
        if not isinstance(error, WorkflowError):  # those come before any step ran
            summarize(Summary.of_tracker(tracker, Outcome.FAILED))
        if isinstance(error, UnknownTool):
            raise CommandError(
                f"{error}\nthe plait command registers no tools of its own: in the "
                "file, name each tool by import path ('module:function'), or declare "
                "it under tools:; the file's directory is on sys.path"
            ) from error
        raise error
    assert result is not None
    summarize(
        Summary(
            outcome=Outcome.FINISHED,
            duration=result.stats.duration,
            tools=dict(sorted(result.stats.tools.items())),
            failures=result.failures,
            abandoned_threads=tracker.abandoned_threads,
        )
    )
    _write_output(result.output, args.output)
    return ExitCode.OK if result.ok else ExitCode.FAILURES


def _write_output(output: Any, path: Path | None) -> None:
    text = to_json(output) + "\n"
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise CommandError(f"cannot write --output {path}: {e.strerror or e}") from None
