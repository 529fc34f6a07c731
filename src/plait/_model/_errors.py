"""Every exception plait raises, under one base class.

Paths in messages use the format described in :mod:`plait._model._paths`
(``steps[1].map[17]``); the root step's path is the empty string, shown as
``<root>``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ._paths import show_path

__all__ = [
    "CommandFailed",
    "ConfigError",
    "ExpressionError",
    "HttpError",
    "HttpServerError",
    "LeaseLost",
    "LimitBackendUnavailable",
    "PlaitError",
    "JournalError",
    "RateLimited",
    "RemoteError",
    "StepFailed",
    "StepTimeout",
    "ToolTimeout",
    "UnknownTool",
    "WorkflowError",
]


class PlaitError(Exception):
    """Base class of every error plait raises itself."""


class WorkflowError(PlaitError, ValueError):
    """A workflow definition is invalid.

    Raised when a step is built, when a workflow is checked against an engine
    (unknown tools, functions or variables) and when inputs are missing, always
    before any tool runs.

    Attributes:
        path: where the problem is, e.g. ``steps[2].over`` or, for an error
            found while a step object is being built, the field name
            (``max_concurrency``).
        line: the line in the YAML or JSON text the problem is on, for errors
            from :func:`plait.load`; else None.
        errors: for an error from :func:`plait.load`, every problem found in
            the document, one ``WorkflowError`` each (the message lists them
            all, one per line); else empty.
    """

    def __init__(
        self,
        message: str,
        path: str = "",
        *,
        line: int | None = None,
        errors: Sequence[WorkflowError] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.errors = list(errors)

    def __str__(self) -> str:
        if self.errors:
            return self.message
        where = show_path(self.path) if self.path else ""
        if self.line is not None:
            where = f"{where}, line {self.line}" if where else f"line {self.line}"
        return f"{self.message} (at {where})" if where else self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.message, self.path),
            {"line": self.line, "errors": self.errors},
        )


class UnknownTool(WorkflowError):
    """A step names a tool that the engine does not know."""


class ConfigError(PlaitError, ValueError):
    """An engine, tool or limit was configured with an invalid value."""


class ExpressionError(PlaitError, LookupError):
    """An expression could not be evaluated against the data of a run.

    Raised at run time, for example when ``Var("user.email")`` meets a value
    without an ``email`` key or attribute.
    """


class ToolTimeout(PlaitError, TimeoutError):
    """One attempt of a tool call ran past its timeout."""

    def __init__(self, tool: str, timeout: float) -> None:
        super().__init__(f"tool {tool!r} timed out after {timeout:g}s")
        self.tool = tool
        self.timeout = timeout

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.tool, self.timeout))


class StepTimeout(PlaitError, TimeoutError):
    """A step's ``timeout=`` or the run's ``deadline=`` expired.

    Attributes:
        path: the path of the step whose timeout fired (``""`` for the root
            step and for the run's deadline).
        timeout: the timeout in seconds.
        deadline: True when it was the run's ``deadline=``.
    """

    def __init__(self, path: str, timeout: float, deadline: bool = False) -> None:
        what = "the run's deadline" if deadline else "step timeout"
        super().__init__(f"{what} of {timeout:g}s expired at {show_path(path)}")
        self.path = path
        self.timeout = timeout
        self.deadline = deadline

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.timeout, self.deadline))


class StepFailed(PlaitError):
    """A step raised; the original exception is ``__cause__`` (and ``.error``).

    Attributes:
        path: the path of the step that failed (the innermost one).
        error: the original exception, the same object as ``__cause__``.
    """

    def __init__(self, path: str, error: BaseException) -> None:
        super().__init__(
            f"step {show_path(path)} failed: {type(error).__name__}: {error}"
        )
        self.path = path
        self.error = error
        self.__cause__ = error

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.error))


class CommandFailed(PlaitError, subprocess.CalledProcessError):
    """A command run with ``check=True`` exited with a non-zero status.

    Raised by :mod:`plait.tools`' shell tool. It is also a
    :class:`subprocess.CalledProcessError`, so code written for
    ``subprocess.run(..., check=True)`` catches it unchanged.

    Attributes:
        cmd: the command, as given (a string or a sequence of arguments).
        returncode: its exit status; ``-N`` when signal ``N`` killed it.
        stdout: its captured standard output, as text (also ``output``).
        stderr: its captured standard error, as text.
    """

    def __init__(
        self,
        returncode: int,
        cmd: str | Sequence[str],
        output: str = "",
        stderr: str = "",
    ) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, cmd, output, stderr)
        self.args = (returncode, cmd, output, stderr)

    def __str__(self) -> str:
        code = self.returncode
        status = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        tail = str(self.stderr or "").strip()[-300:]
        detail = f"; stderr: {tail!r}" if tail else ""
        return (
            f"command {self.cmd!r} {status}{detail} "
            "(pass check=False to get the result instead of this error)"
        )


class RateLimited(PlaitError):
    """A service pushed back: too many requests, try again later.

    Raise it from a tool (the ready-made HTTP tool does on 429 and 503), or
    map a client library's own error onto it in a middleware. The default
    :class:`plait.Retry` retries it, waiting at least ``retry_after``
    seconds, and meanwhile the tool's other calls in the engine wait too;
    with :class:`plait.Adaptive` the tool's limit shrinks.

    Args:
        message: what the service said.
        retry_after: seconds to wait (a number, or the text of a
            ``Retry-After`` header: seconds or an HTTP date); None when the
            service did not say. A negative or unreadable value is ignored
            (the run reports it in a ``call.retry_after_ignored`` event).

    Attributes:
        retry_after: the wait in seconds, or None.
        retry_after_given: the value given, as it was.
    """

    def __init__(self, message: str = "", *, retry_after: object = None) -> None:
        from ._backpressure import retry_after_seconds

        super().__init__(message or "the service asked to slow down")
        self.message = message
        self.retry_after_given = retry_after
        self.retry_after = retry_after_seconds(retry_after)

    @property
    def retry_after_ignored(self) -> bool:
        """True when a ``retry_after`` was given but could not be used."""
        return self.retry_after_given is not None and self.retry_after is None

    def __reduce__(self) -> tuple[object, ...]:
        return (_rate_limited, (self.message, self.retry_after_given))


def _rate_limited(message: str, retry_after: object) -> RateLimited:
    return RateLimited(message, retry_after=retry_after)


class HttpError(PlaitError):
    """An HTTP request got an error status (4xx or 5xx, but 429 and 503).

    Raised by the ready-made HTTP tool. A 4xx is not retried by the default
    :class:`plait.Retry`; a 5xx is an :class:`HttpServerError`, which is.

    Attributes:
        status: the status code.
        method: the request's method.
        url: the request's URL.
        body: the response's body, as text (at most 2,000 characters).
    """

    def __init__(self, status: int, method: str, url: str, body: str = "") -> None:
        body = body[:2000]
        super().__init__(f"{method} {url} returned {status}: {body[:200]!r}")
        self.status = status
        self.method = method
        self.url = url
        self.body = body

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.status, self.method, self.url, self.body))


class HttpServerError(HttpError, ConnectionError):
    """An HTTP request got a 5xx status: transient, so retried by default."""


class JournalError(PlaitError):
    """A run's journal refuses to go on, or could not be read or written.

    Raised for a run id that holds another workflow's calls, a call whose
    arguments differ from the ones journaled at its path (a non-deterministic
    ``over`` or input), a run id that another process is running at the same
    time, and a journal store that failed or did not answer in time.

    Attributes:
        run_id: the run the journal belongs to.
        path: the call's path when one call is concerned, else ``""``.
    """

    def __init__(self, message: str, run_id: str = "", path: str = "") -> None:
        super().__init__(message)
        self.run_id = run_id
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.run_id, self.path))


class RemoteError(PlaitError):
    """An exception raised on a worker that could not travel back as itself.

    A remote map's :class:`plait.Failure` (or ``StepFailed.error``) is the
    worker's original exception when it can be pickled; otherwise it is
    this, with what could be kept.

    Attributes:
        type_name: the original exception's class, ``module.QualName``.
        message: ``str()`` of the original exception.
        traceback: the worker's formatted traceback text.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.traceback))


class LimitBackendUnavailable(PlaitError, OSError):
    """The server holding shared limits (``plait.redis``) could not be reached.

    Raised instead of a call's admission when the server refuses the
    connection, does not answer within the client's timeouts, or is
    restarting. It is an :class:`OSError`, so the default :class:`plait.Retry`
    tries the call again after its backoff; no call runs without its limits.
    """


class LeaseLost(PlaitError, OSError):
    """A running call's shared slot was found gone; the call was cancelled.

    A shared concurrency slot is a lease that the process renews while the
    call runs. When a renewal finds it gone (the server restarted, or the
    process could not renew it within ``lease_ttl``), another process may
    already hold that slot, so the call is cancelled to keep the limit
    true. An :class:`OSError`, so the default :class:`plait.Retry` tries the
    call again under a fresh lease.

    Attributes:
        tool: the tool whose call lost its lease.
    """

    def __init__(self, tool: str) -> None:
        super().__init__(
            f"tool {tool!r} lost its shared concurrency slot (lease) while running, "
            "so it was cancelled; see docs/how-to/shared-limits.md"
        )
        self.tool = tool

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.tool,))
