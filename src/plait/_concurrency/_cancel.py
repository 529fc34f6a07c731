"""Cancelling a task's cancel scope from another thread.

A scope may only be cancelled on its own event loop; a thread that learns a
call must stop (the renewer of shared limits' leases) hands the
cancellation to that loop with the loop's thread-safe "run soon" call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import anyio

from ._wakeup import _soon_in_this_loop

__all__ = ["canceller"]


def canceller(scope: anyio.CancelScope) -> Callable[[], None]:
    """A function that cancels ``scope`` from any thread; call this on its loop.

    Calling the function after the loop has closed, or after the scope was
    left, does nothing.
    """
    soon = _soon_in_this_loop()

    def cancel() -> None:
        # A closed loop raises: nothing runs there any more.
        with contextlib.suppress(Exception):
            soon(scope.cancel)

    return cancel
