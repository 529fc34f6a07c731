"""The thread bridge: sync tools run on worker threads, never on the loop.

Calls run on plait's own worker threads (:mod:`._threads`), under the
caller's thread limit. A thread cannot be killed. When a sync tool's call times out or is
cancelled, the task stops waiting for it at once, but the thread runs on;
until it really returns it keeps its concurrency slots, so a tool that hangs
can never make the process start threads without bound. The slots are given
back exactly once: by the task when the function finished (or never
started), or by the worker thread when it finishes after its task has left.

Sync tools can stop early on their own: :func:`check_cancelled` raises in
the worker thread once its call was cancelled or timed out.

A sync function that returns an awaitable (a sync ``run`` method handing back
a coroutine, say) has it awaited on the event loop, still holding the
call's slots and under its timeout: the awaitable is the real work, and
returning it un-awaited as a "result" is a bug users of other agent
frameworks keep meeting.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import sniffio

from ._limits import Limiter
from ._threads import current_inbox, submit

__all__ = ["Cancelled", "check_cancelled", "run_in_thread"]

_local = threading.local()


class Cancelled(BaseException):
    """Raised by :func:`check_cancelled` in a worker thread whose call ended.

    A ``BaseException``, like every backend's cancellation, so that
    ``except Exception`` in the tool does not swallow it. Nobody waits for
    the thread's result any more, so it goes nowhere: it only unwinds the
    tool.
    """


def check_cancelled() -> None:
    """Raise if the plait call running in this worker thread was cancelled.

    Call it now and then inside a long sync tool so that a timeout or a
    cancellation stops the work instead of leaving it to finish unobserved.
    What it raises is a ``BaseException`` (so that ``except Exception`` in
    the tool lets it through) whose only job is to unwind the tool: nobody
    waits for the thread's result any more. Outside a worker thread started
    by plait it does nothing, so the tool can still be called as a plain
    function.
    """
    handoff = getattr(_local, "handoff", None)
    if handoff is not None and handoff.task_gone:
        raise Cancelled(
            "the plait call running in this thread was cancelled or timed out"
        )


class _Handoff:
    """Decides who gives the slots back: the task or the worker thread."""

    __slots__ = ("_lock", "_release", "_running", "abandoned", "task_gone")

    def __init__(self, release: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._release = release
        self._running = False
        self.task_gone = False
        self.abandoned = False

    def thread_starts(self) -> bool:
        with self._lock:
            if self.task_gone:
                return False
            self._running = True
            return True

    def thread_ends(self) -> None:
        with self._lock:
            self._running = False
            release = self.task_gone
        if release:
            self._release()

    def task_leaves(self) -> None:
        with self._lock:
            self.task_gone = True
            release = not self._running
            self.abandoned = self._running
        if release:
            self._release()


# A job run on a worker thread; it returns what wakes its task, if it ran.
Job = Callable[[], Callable[[], None] | None]


class _Lane:
    """The jobs of one thread limit: at most its total run at once.

    A job that finds every slot taken waits in the lane's queue, not in its
    task: the thread that finishes a job takes the next one itself, so a
    limit of one runs its jobs back to back, without a trip through an
    event loop (and a wake-up of a task, and of a thread) between two.
    Taking a slot and queueing, and giving a slot back and emptying the
    queue, happen under one lock: a queued job always has a thread coming.
    """

    __slots__ = ("_jobs", "_lock", "_threads")

    def __init__(self, threads: Limiter) -> None:
        self._threads = threads
        self._jobs: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        """Run ``job`` on a thread now, or once a slot is free.

        ``job()`` returns what wakes its task (None when it did not run):
        that runs after the slot is given back or passed on, so that a woken
        task finds the limit as the job left it.
        """
        with self._lock:
            if not self._threads.try_acquire():
                self._jobs.append(job)
                return
        submit(functools.partial(self._run, job))

    def discard(self, job: Job) -> None:
        """Take ``job`` out of the queue, if it still waits there."""
        with self._lock, contextlib.suppress(ValueError):
            self._jobs.remove(job)

    def _run(self, job: Job | None) -> None:
        """On a worker thread holding a slot: ``job``, then the queued ones."""
        jobs = self._jobs
        while job is not None:
            wake = job()
            with self._lock:
                if jobs:
                    job = jobs.popleft()
                else:
                    job = None
                    self._threads.release()
            if wake is not None:
                wake()


_lanes: weakref.WeakKeyDictionary[Limiter, _Lane] = weakref.WeakKeyDictionary()
_lanes_lock = threading.Lock()


def _lane(threads: Limiter) -> _Lane:
    """The lane of ``threads`` (made on first use, gone with the limiter)."""
    lane = _lanes.get(threads)
    if lane is None:
        with _lanes_lock:
            lane = _lanes.get(threads)
            if lane is None:
                lane = _lanes[threads] = _Lane(threads)
    return lane


def _in_worker(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> Any:
    # Run in a copy of the caller's context, which says "asyncio" or "trio":
    # in the worker thread no event loop runs.
    sniffio.current_async_library_cvar.set(None)
    return fn(*args, **kwargs)


async def run_in_thread(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    release: Callable[[], None],
    threads: Limiter,
    on_abandon: Callable[..., None] | None = None,
    abandon_args: tuple[Any, ...] = (),
) -> Any:
    """Run ``fn(*args, **kwargs)`` on a worker thread; ``release`` frees its slots.

    ``threads`` bounds the worker threads running at once; a thread holds
    its slot of it until it really returns. ``release`` is called exactly
    once, when the function has returned (or will never run) and any
    awaitable it returned has been awaited. ``on_abandon(*abandon_args)`` is
    called when the task stops waiting while the thread still runs. The
    function runs in a copy of the caller's context variables.
    """
    handoff = _Handoff(release)
    outcome: list[tuple[bool, Any]] = []  # (raised, result or exception)
    try:
        done = anyio.Event()
        inbox = current_inbox()
        context = contextvars.copy_context()

        def job() -> Callable[[], None] | None:
            if not handoff.thread_starts():
                return None
            _local.handoff = handoff
            try:
                outcome.append((False, context.run(_in_worker, fn, args, kwargs)))
            except BaseException as exc:
                outcome.append((True, exc))
            finally:
                _local.handoff = None
                handoff.thread_ends()
            return functools.partial(inbox.post, done)

        lane = _lane(threads)
        lane.submit(job)
        try:
            await done.wait()
        except BaseException:
            lane.discard(job)  # still queued: it leaves the queue now
            raise
        raised, result = outcome[0]
        if raised:
            raise result
        if inspect.isawaitable(result):
            result = await result
        return result
    finally:
        handoff.task_leaves()
        if handoff.abandoned and on_abandon is not None:
            on_abandon(*abandon_args)
