"""The thread bridge: sync tools run on worker threads, never on the loop.

A thread cannot be killed. When a sync tool's call times out or is
cancelled, the task stops waiting for it at once, but the thread runs on;
until it really returns it keeps its concurrency slots, so a tool that hangs
can never make the process start threads without bound. The slots are given
back exactly once: by the task when the function finished (or never
started), or by the worker thread when it finishes after its task has left.

Sync tools can stop early on their own: :func:`check_cancelled` raises in
the worker thread once its call was cancelled or timed out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

__all__ = ["check_cancelled", "run_in_thread"]

_local = threading.local()


def check_cancelled() -> None:
    """Raise if the plait call running in this worker thread was cancelled.

    Call it now and then inside a long sync tool so that a timeout or a
    cancellation stops the work instead of leaving it to finish unobserved.
    Outside a worker thread started by plait it does nothing, so the tool can
    still be called as a plain function.
    """
    if getattr(_local, "in_plait_thread", False):
        anyio.from_thread.check_cancelled()


class _Handoff:
    """Decides who gives the slots back: the task or the worker thread."""

    __slots__ = ("_lock", "_release", "_running", "_task_gone", "abandoned")

    def __init__(self, release: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._release = release
        self._running = False
        self._task_gone = False
        self.abandoned = False

    def thread_starts(self) -> bool:
        with self._lock:
            if self._task_gone:
                return False
            self._running = True
            return True

    def thread_ends(self) -> None:
        with self._lock:
            self._running = False
            release = self._task_gone
        if release:
            self._release()

    def task_leaves(self) -> None:
        with self._lock:
            self._task_gone = True
            release = not self._running
            self.abandoned = self._running
        if release:
            self._release()


async def run_in_thread(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    release: Callable[[], None],
    thread_limiter: anyio.CapacityLimiter,
    on_abandon: Callable[[], None] | None = None,
) -> Any:
    """Run ``fn(*args, **kwargs)`` on a worker thread; ``release`` frees its slots.

    ``release`` is called exactly once, when the function has returned (or
    will never run). ``on_abandon`` is called when the task stops waiting
    while the thread still runs.
    """
    handoff = _Handoff(release)

    def worker() -> Any:
        if not handoff.thread_starts():
            return None
        _local.in_plait_thread = True
        try:
            return fn(*args, **kwargs)
        finally:
            _local.in_plait_thread = False
            handoff.thread_ends()

    try:
        return await anyio.to_thread.run_sync(
            worker, abandon_on_cancel=True, limiter=thread_limiter
        )
    finally:
        handoff.task_leaves()
        if handoff.abandoned and on_abandon is not None:
            on_abandon()
