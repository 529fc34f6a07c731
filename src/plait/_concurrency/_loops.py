"""Starting an event loop: which backend a name means, and running a coroutine on it.

The one place that imports uvloop and Trio to see whether they are there.
"""

from __future__ import annotations

import functools
from typing import Any

import anyio

from ._groups import leaves
from ._wakeup import running_async_library

__all__ = ["BACKENDS", "resolve_backend", "run_sync"]

BACKENDS = ("asyncio", "uvloop", "trio")


def resolve_backend(backend: str | None) -> tuple[str, dict[str, Any]]:
    """``(anyio backend, backend options)`` for a plait backend name.

    None means uvloop when it is installed, else asyncio.

    Raises:
        ValueError: an unknown backend name.
        ImportError: the backend's package is missing, with the pip command.
    """
    if backend is None:
        try:
            import uvloop
        except ImportError:
            return "asyncio", {}
        return "asyncio", {"use_uvloop": True}
    if backend == "asyncio":
        return "asyncio", {}
    if backend == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise ImportError(
                'backend "uvloop" needs uvloop: pip install "plait[uvloop]"'
            ) from None
        return "asyncio", {"use_uvloop": True}
    if backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise ImportError(
                'backend "trio" needs trio: pip install "plait[trio]"'
            ) from None
        return "trio", {}
    raise ValueError(
        f"backend must be None or one of {', '.join(BACKENDS)}; got {backend!r}"
    )


def run_sync(
    func: Any,
    *args: Any,
    backend: str | None = None,
    what: str,
    instead: str = "await engine.run(...)",
) -> Any:
    """Run ``await func(*args)`` on a new event loop of ``backend``.

    ``what`` names the sync function and ``instead`` its async twin, for the
    error raised inside a running loop.
    Ctrl-C comes out as a bare ``KeyboardInterrupt`` on every backend.
    """
    library = running_async_library()
    if library is not None:
        raise RuntimeError(
            f"{what} cannot be called with a running {library} event loop in this "
            f"thread; use `{instead}` instead"
        )
    name, options = resolve_backend(backend)
    call = functools.partial(func, *args)

    async def main() -> tuple[bool, Any]:
        # A KeyboardInterrupt or SystemExit raised by a tool is carried out
        # of the loop as a value: escaping the main task, asyncio would leave
        # that task with an exception nobody retrieves (logged at exit).
        try:
            return True, await call()
        except (KeyboardInterrupt, SystemExit) as exc:
            return False, exc

    try:
        ok, value = anyio.run(main, backend=name, backend_options=options)
    except BaseExceptionGroup as group:
        # A Ctrl-C that surfaced inside a task group on Trio.
        for exc in leaves(group):
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise exc from None
        raise
    if not ok:
        raise value
    return value
