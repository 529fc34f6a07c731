"""The ``plait`` command line: run, validate and show workflow files.

``plait run`` shows live progress with rich when it is installed
(``pip install "plait[cli]"``) and plain progress lines otherwise; the core
package never imports rich. See ``docs/reference/cli.md``.
"""

from __future__ import annotations

from ._exit import ExitCode
from ._main import main

__all__ = ["ExitCode", "main"]
