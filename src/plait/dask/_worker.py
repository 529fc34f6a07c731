"""The workers' side: run one chunk under a plait engine, and obey stops.

A chunk is one Dask task: :func:`run_chunk` runs the chunk step (a
``MapReduce`` over the chunk's elements) with ``anyio.run`` in the task's
thread, under an engine built once per worker process from the
:class:`~plait.dask._wire.WireSpec` (so per-worker limits hold per process,
across the chunks that process runs at once).

Dask's ``Future.cancel`` does not stop a running task, so each worker
process keeps a :class:`_Watch` per coordinator run it has chunks of: one
thread that waits on the run's ``distributed.Event`` (set by the
coordinator to stop the run) and reads the run's heartbeat ``Variable``
(bumped by the coordinator every second). When the event is set, or the
heartbeat stays still for ``WireSpec.stale_after`` seconds (its coordinator is gone),
the watch cancels every chunk of the run in this process and every chunk
of it that starts afterwards returns at once.

A chunk runs as a part of its coordinator's run (:func:`_run_placed`): under
the coordinator's run id, with its calls at their coordinator paths for
``plait.current_call()`` and for the journal. With a journal, the chunk opens
the coordinator's run in it without claiming it (the coordinator holds the
run's lease), answers the calls journaled before from it, and returns only
once every call it finished is committed: the coordinator never folds an
element whose record could still be lost.
"""

from __future__ import annotations

import contextlib
import contextvars
import pickle
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from .._calls._context import RunContext
from .._calls._current import PLACE, placed
from .._calls._durable import RunJournal, open_store
from .._concurrency._limits import Limiter
from .._io import load
from .._journal._protocol import Journal, JournalRecord, JournalRun
from .._model._errors import JournalError, RemoteError, StepFailed, StepTimeout
from .._model._events import Event
from .._model._results import Failure
from .._model._steps import Workflow
from .._runtime._engine import Engine
from .._runtime._executor import CHUNK_VAR, ChunkOutcome, ChunkPlace
from ._wire import WireSpec

__all__ = ["beat_name", "check_document", "run_chunk", "stop_name"]

# How long a watch thread waits on the stop event between heartbeat reads.
_POLL = 0.5
# Seconds a watch outlives its run's last chunk here, running or stopped.
_IDLE = 5.0
_KEEP_STOPPED = 60.0
# Engines kept per worker process (one per remote map step seen).
_ENGINES = 16


def stop_name(run_id: str) -> str:
    """The name of the ``distributed.Event`` that stops run ``run_id``."""
    return f"plait-stop-{run_id}"


def beat_name(run_id: str) -> str:
    """The name of run ``run_id``'s heartbeat ``distributed.Variable``."""
    return f"plait-beat-{run_id}"


def check_document(document: str) -> str | None:
    """Load ``document`` here: None, or why it does not load (its tools...)."""
    try:
        load(document)
    except Exception as e:
        return str(e)
    return None


# -- one chunk -----------------------------------------------------------------


def run_chunk(
    spec: WireSpec,
    run_id: str,
    scope: dict[str, Any],
    elements: list[Any],
    place: ChunkPlace | None = None,
    first: int = 0,
) -> ChunkOutcome:
    """Run the chunk step over ``elements``; runs in a Dask worker's thread.

    ``run_id`` names the executor's session (its stop event and heartbeat);
    ``place`` is where the session sits in the coordinator's run, and
    ``first`` the index of the chunk's first element in the remote map.
    """
    watch = _WATCHES.join(run_id, spec.stale_after)
    try:
        if watch.stopped:
            return ChunkOutcome(stopped=True)
        return anyio.run(_run, spec, watch, scope, elements, place, first)
    finally:
        _WATCHES.leave(watch)


# Where the events of the chunk running in this context go.
_SINK: contextvars.ContextVar[list[Event] | None] = contextvars.ContextVar(
    "plait_dask_sink", default=None
)


async def _run(
    spec: WireSpec,
    watch: _Watch,
    scope: dict[str, Any],
    elements: list[Any],
    place: ChunkPlace | None,
    first: int,
) -> ChunkOutcome:
    engine, workflow = worker_engine(spec)
    events: list[Event] = []
    _SINK.set(events)
    inputs = {**scope, CHUNK_VAR: elements}
    values: list[Any] | None = None
    error: BaseException | None = None
    run = engine._new_run(None if place is None else place.run_id)
    with anyio.CancelScope() as cancel:
        stop = watch.add(anyio.lowlevel.current_token(), cancel)
        try:
            values = await _run_placed(
                engine, run, workflow, inputs, place, first, watch
            )
        except Exception as e:
            error = _portable_error(e)
        finally:
            watch.remove(stop)
    if cancel.cancelled_caught:
        return ChunkOutcome(stopped=True)
    if values is not None:
        values = [
            Failure(_portable(v.error), v.path) if isinstance(v, Failure) else v
            for v in values
        ]
    portable = tuple(_event_portable(e) for e in events if e.path.startswith("map["))
    return ChunkOutcome(
        values=values, error=error, events=portable, counters=run.counters
    )


async def _run_placed(
    engine: Engine,
    run: RunContext,
    workflow: Workflow,
    inputs: dict[str, Any],
    place: ChunkPlace | None,
    first: int,
    watch: _Watch,
) -> Any:
    """Run the chunk as a part of the coordinator's run (see the module doc).

    Without a ``place`` (an executor driven on its own), as a run of its own.
    """
    step, scope = engine._prepare(workflow, inputs)
    if place is None:
        root = engine._compile(run, step, scope)
        return (await engine._execute(run, root, scope, None)).output
    where = (place.item_template, place.loc, first)
    journal: _PlacedJournal | None = None
    if place.journal is not None:
        store = await anyio.to_thread.run_sync(watch.store, place.journal, place.run_id)
        journal = _PlacedJournal(place.journal, store, place.run_id)
        journal.place = where
        run.journal = journal
    token = PLACE.set(where)
    finished = False
    try:
        root = engine._compile(run, step, scope)
        result = await engine._execute(run, root, scope, None)
        finished = True
        return result.output
    except BaseExceptionGroup as group:
        # As Engine.execute: calls that met the journal's refusal at once.
        refused = group.subgroup(JournalError)
        if refused is None:
            raise
        error: BaseException = refused
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        raise error from None
    finally:
        PLACE.reset(token)
        if journal is not None:
            # Commits every finished call (shielded); without a claim the
            # run's status and lease stay the coordinator's.
            try:
                await journal.close("finished")
            except Exception:
                watch.drop_store()  # the next chunk connects again
                if finished:
                    raise


class _KeptRun:
    """A run opened in a journal store, kept for the chunks of one session.

    Opening a run on a server costs its connections (milliseconds): this
    process opens it once per session of the coordinator (a run of one
    remote map step) and its chunks share it; the session's watch finishes
    it when no chunk of the session runs here any more. Every chunk looks
    its calls up (``fresh`` is False): records of other chunks and of
    other workers come and go meanwhile.
    """

    fresh = False

    def __init__(self, store: JournalRun) -> None:
        self.inner = store
        self.inline_reads = bool(getattr(store, "inline_reads", False))

    def fetch(self, site: str, first: int, last: int) -> Sequence[JournalRecord]:
        return self.inner.fetch(site, first, last)

    def write(self, records: Sequence[JournalRecord]) -> None:
        self.inner.write(records)

    def finish(self, status: str) -> None:
        """A chunk ends: the store stays open for the session's next chunk."""


def _open_kept(journal: Journal, run_id: str) -> _KeptRun:
    return _KeptRun(open_store(journal, run_id, "", "", claim=False))


def _finish_kept(kept: _KeptRun | None) -> None:
    if kept is not None:
        # Without a claim, finishing only closes the connections.
        with contextlib.suppress(Exception):
            kept.inner.finish("finished")


class _PlacedJournal(RunJournal):
    """A chunk's side of its coordinator's run: records at coordinator paths."""

    place: tuple[str, tuple[int, ...], int] = ("", (), 0)

    def site(self, template: str, loc: tuple[int, ...]) -> tuple[str, int]:
        template, loc = placed(template, loc, self.place)
        return super().site(template, loc)


# -- the engine of each remote map step, once per process ------------------------

_engines: OrderedDict[WireSpec, tuple[Engine, Workflow]] = OrderedDict()
_engines_lock = threading.Lock()


def worker_engine(spec: WireSpec) -> tuple[Engine, Workflow]:
    """The engine and chunk workflow of ``spec`` in this process (cached).

    The one place a worker's engine is built, with the coordinator
    engine's rate limit and shared limits (a journal joins it here too).
    """
    with _engines_lock:
        found = _engines.get(spec)
        if found is not None:
            _engines.move_to_end(spec)
            return found
    workflow = load(spec.document)
    engine = Engine(
        max_concurrency=spec.max_concurrency,
        rate_limit=spec.rate_limit,
        shared_limits=spec.shared_limits,
    )
    engine._thread_limiter = process_threads(spec.threads)
    if spec.event_kinds:
        engine.subscribe(_to_sink, spec.event_kinds)
    with _engines_lock:
        found = _engines.setdefault(spec, (engine, workflow))
        while len(_engines) > _ENGINES:
            _engines.popitem(last=False)
    return found


# One bound on the sync tool calls of this process per size, shared by the
# engines (and so the chunks) that ask for it.
_threads: dict[int, Limiter] = {}


def process_threads(threads: int | str | None) -> Limiter | None:
    """The limiter of this worker process for ``WireSpec.threads``.

    ``"worker"`` is the thread count of the Dask worker running the calling
    task (one when called outside a worker). None: no bound.
    """
    if threads is None:
        return None
    if threads == "worker":
        threads = _worker_threads()
    assert isinstance(threads, int)
    with _engines_lock:
        limiter = _threads.get(threads)
        if limiter is None:
            limiter = _threads[threads] = Limiter(threads, "dask worker threads")
    return limiter


def _worker_threads() -> int:
    import distributed

    try:
        return int(distributed.get_worker().state.nthreads)
    except ValueError:  # not in a worker (a test calling run_chunk itself)
        return 1


def _to_sink(event: Event) -> None:
    sink = _SINK.get()
    if sink is not None:
        sink.append(event)


# -- errors that travel ------------------------------------------------------------


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives a pickle round trip, else a RemoteError."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RemoteError(
            f"{type(error).__module__}.{type(error).__qualname__}",
            str(error),
            "".join(traceback.format_exception(error)),
        )
    return error


def _portable_error(error: BaseException) -> BaseException:
    """What a chunk raised, its original exceptions made portable."""
    if isinstance(error, StepFailed):
        return StepFailed(error.path, _portable(error.error))
    if isinstance(error, StepTimeout):
        return error
    if isinstance(error, BaseExceptionGroup):
        return error.derive([_portable_error(e) for e in error.exceptions])
    return _portable(error)


def _event_portable(event: Event) -> Event:
    if event.error is None:
        return event
    import attrs

    return attrs.evolve(event, error=_portable(event.error))


# -- stopping ---------------------------------------------------------------------


class _Watch:
    """One coordinator run's chunks in this process, and its stop watcher.

    The watcher thread outlives its last chunk by ``_IDLE`` seconds (chunks
    of one run come one after another) and ends when it stops the run; a
    stopped watch stays ``_KEEP_STOPPED`` seconds, so that the run's chunks
    that start later return at once. A run that ends normally is stopped
    too: its watches then end at once.
    """

    def __init__(self, run_id: str, registry: _Watches, stale_after: float) -> None:
        self.run_id = run_id
        self.stale_after = stale_after
        self.registry = registry
        self.users = 0
        self.idle_since = time.monotonic()
        self.stopped = False
        self._chunks: dict[int, tuple[Any, anyio.CancelScope]] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._kept: _KeptRun | None = None
        self._store_lock = threading.Lock()

    def start(self) -> None:
        import distributed

        dask: Any = distributed  # partly annotated
        client = dask.get_client()
        stop = dask.Event(stop_name(self.run_id), client=client)
        beat = dask.Variable(beat_name(self.run_id), client=client)
        # A chunk that starts after its run was stopped must not start a call.
        self.stopped = bool(stop.is_set())
        threading.Thread(
            target=self._watch,
            args=(stop, beat),
            name=f"plait-watch-{self.run_id}",
            daemon=True,
        ).start()

    def store(self, journal: Journal, run_id: str) -> _KeptRun:
        """The session's run in ``journal``, opened by the first chunk here."""
        with self._store_lock:
            if self._kept is None:
                self._kept = _open_kept(journal, run_id)
            return self._kept

    def drop_store(self) -> None:
        """Finish the kept store (a chunk found it broken, or the session ended)."""
        with self._store_lock:
            kept, self._kept = self._kept, None
        _finish_kept(kept)

    def add(self, token: Any, scope: anyio.CancelScope) -> int:
        with self._lock:
            self._next += 1
            self._chunks[self._next] = (token, scope)
            stopped = self.stopped
        if stopped:
            scope.cancel()
        return self._next

    def remove(self, key: int) -> None:
        with self._lock:
            self._chunks.pop(key, None)

    def _watch(self, event: Any, beat: Any) -> None:
        last, seen = None, time.monotonic()
        while True:
            try:
                if event.wait(timeout=_POLL):
                    break
                value = beat.get(timeout=_POLL)
            except Exception:
                value = last
            now = time.monotonic()
            if value != last:
                last, seen = value, now
            elif now - seen > self.stale_after:
                break
            if self.registry.retire(self, _IDLE):
                return
        self._stop_all()

    def _stop_all(self) -> None:
        with self._lock:
            self.stopped = True
            chunks = list(self._chunks.values())
        for token, scope in chunks:
            _cancel_in(token, scope.cancel)
        self.registry.release(self)


def _cancel_in(token: Any, cancel: Callable[[], None]) -> None:
    # That chunk's loop may have ended already.
    with contextlib.suppress(Exception):
        anyio.from_thread.run_sync(cancel, token=token)


class _Watches:
    """The watches of this process, one per coordinator run with chunks here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}

    def join(self, run_id: str, stale_after: float) -> _Watch:
        with self._lock:
            self._forget_stopped()
            watch = self._watches.get(run_id)
            if watch is None:
                watch = self._watches[run_id] = _Watch(run_id, self, stale_after)
                watch.start()
            watch.users += 1
            return watch

    def leave(self, watch: _Watch) -> None:
        with self._lock:
            watch.users -= 1
            if not watch.users:
                watch.idle_since = time.monotonic()
            done = watch.stopped and not watch.users
        if done:
            watch.drop_store()

    def release(self, watch: _Watch) -> None:
        """A stopped watch: finish its store now if no chunk uses it."""
        with self._lock:
            idle = not watch.users
        if idle:
            watch.drop_store()

    def _forget_stopped(self) -> None:
        now = time.monotonic()
        for run_id, watch in list(self._watches.items()):
            if (
                watch.stopped
                and not watch.users
                and now - watch.idle_since > _KEEP_STOPPED
            ):
                del self._watches[run_id]

    def retire(self, watch: _Watch, idle: float) -> bool:
        """Remove ``watch`` if no chunk used it for ``idle`` seconds."""
        with self._lock:
            if watch.users or time.monotonic() - watch.idle_since < idle:
                return False
            del self._watches[watch.run_id]
        watch.drop_store()
        return True


# The process-wide registry of watches: Dask runs chunks of many runs in
# one worker process, and a stop must reach all of a run's chunks there.
_WATCHES = _Watches()
