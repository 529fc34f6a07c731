"""Ready-made tools for workflows.

:data:`shell` runs a command as a subprocess: at most four at once per
engine, each in a temporary working directory of its own that is removed
afterwards, its output captured and capped, its result a
:class:`ShellResult`. A command that times out or is cancelled is killed
together with everything it started (its whole process group), so no
process outlives its call. It works on asyncio, uvloop and Trio::

    import plait

    out = plait.run(plait.Call("shell", "echo hi"), tools=[plait.tools.shell])
    print(out.stdout)  # hi

:func:`shell_tool` makes variants with other names, limits and defaults;
:func:`run_shell` is the same thing as a plain async function.

:data:`http` sends HTTP requests on httpx (``pip install "plait[http]"``):
one pooled client per run, its result an :class:`HttpResponse`; a 429 or
503 raises :class:`plait.RateLimited`, so the tool's calls pause and its
adaptive limit shrinks. :func:`http_tool` makes variants, one per service.
"""

from __future__ import annotations

from .._model._errors import CommandFailed, HttpError, HttpServerError
from .._public import publish
from ._http import DEFAULT_HTTP_CONCURRENCY, HttpResponse, http, http_tool
from ._shell import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_OUTPUT,
    ShellResult,
    run_shell,
    shell,
    shell_tool,
)

__all__ = [
    "shell",
    "shell_tool",
    "run_shell",
    "ShellResult",
    "CommandFailed",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_OUTPUT",
    "http",
    "http_tool",
    "HttpResponse",
    "HttpError",
    "HttpServerError",
    "DEFAULT_HTTP_CONCURRENCY",
]

publish(__name__, globals())
del publish
