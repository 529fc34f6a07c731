"""The exit codes of the ``plait`` command, one meaning each."""

from __future__ import annotations

import enum

__all__ = ["CommandError", "ExitCode"]


class ExitCode(enum.IntEnum):
    """What ``plait`` exits with; ``docs/reference/cli.md`` lists them too."""

    #: The command did what it was asked: the run finished with no failure,
    #: every file is valid.
    OK = 0
    #: The run failed (a step raised, a timeout expired, the workflow could
    #: not be loaded or checked), or ``validate`` found errors.
    FAILED = 1
    #: The command line was wrong: an unknown option, a bad ``-i`` or
    #: ``--inputs``, inputs that do not match the workflow's.
    USAGE = 2
    #: The run finished and printed its output, but collect mode recorded
    #: failures (``RunResult.failures`` is not empty).
    FAILURES = 3
    #: Ctrl-C (SIGINT) stopped the command.
    INTERRUPTED = 130


class CommandError(Exception):
    """A problem to report in one line on stderr, with no traceback.

    Attributes:
        code: the :class:`ExitCode` to exit with.
    """

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.code = code
