"""DaskExecutor: remote map steps on a Dask cluster, in chunks.

The coordinator talks to the cluster through ``distributed``'s synchronous
client, on worker threads (``anyio.to_thread``): the client runs its own
event loop thread, so the coordinator may run on asyncio, uvloop or Trio
alike, and a slow scheduler never blocks the coordinator's loop (submitting
a chunk only queues a message).

One run of a remote map step is a :class:`_DaskRun`: a run id, a stop
``distributed.Event``, a heartbeat ``distributed.Variable`` bumped every
second by a thread the run owns, the scope values scattered once, and the
futures of the chunks in flight. Leaving it with an error or a cancellation
sets the stop event (every running chunk of the run is cancelled by its
worker's watch, see :mod:`plait.dask._worker`) and waits, bounded, until
every chunk in flight has answered: when ``run`` returns or raises, no
worker runs any of its calls (sync tools blocked in a thread excepted, as
locally: see the docs).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread
import attrs

from .._model._errors import ConfigError, WorkflowError
from .._model._validate import Rule, check_count, one_of
from .._runtime._executor import ChunkOutcome, ChunkPlace, ChunkSession, RemoteTask
from ._wire import WireSpec, wire_spec
from ._worker import beat_name, check_document, run_chunk, stop_name

# distributed's objects (Client, Future...) are typed Any here: the package
# is optional, and its API is only partly annotated.
Client = Any
__all__ = ["DaskExecutor"]

_LIMITS = one_of("shared", "per-worker")
_THREADS = Rule(
    "'worker' or an int >= 1",
    lambda v: (
        v == "worker" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
    ),
).or_none()
# Seconds to wait for the chunks of a stopped run to answer.
ACK_TIMEOUT = 10.0
# Seconds between two heartbeats of a run.
HEARTBEAT = 1.0
# Seconds to connect to a scheduler (a server that never answers counts as
# unreachable: see "never a hang" in the docs).
CONNECT_TIMEOUT = 5.0
# Seconds a finished run's stop event stays set for the workers to see it.
_EVENT_KEEP = 30.0
# How long one wait for completed chunks blocks its thread.
_WAIT_SLICE = 0.25


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ImportError(
            'plait.dask needs the distributed package: pip install "plait[dask]"'
        ) from None
    return distributed


class DaskExecutor:
    """Run the elements of ``MapReduce(..., remote=True)`` steps on Dask.

    Args:
        client: a ``distributed.Client``, a scheduler address
            (``"tcp://host:8786"``), or None to start a ``LocalCluster`` of
            worker processes (one per core, one thread each) listening on
            loopback only, with no dashboard, owned by the executor.
        chunk_size: elements per Dask task. Each task costs about a
            millisecond of scheduling; a chunk of 256 makes that a few
            microseconds per element.
        limits: ``"shared"`` (the default): a tool with a
            ``concurrency_limit`` or ``rate_limit`` in a remote map needs
            limits shared across the cluster, else the run is refused with
            :class:`plait.ConfigError`; ``"per-worker"``: each worker
            process holds every limit on its own.
        window: chunks in flight at once per run of a step; by default
            twice the cluster's worker threads.
        threads: sync tool calls a worker process runs at once, across all
            the chunks it runs: ``"worker"`` (the default) for the worker's
            own thread count (``--nthreads``, ``threads_per_worker``), as
            Dask runs plain tasks; an int; or None for no bound but the
            map's own limits, as a local run. CPU-bound sync tools run
            fastest at the default (more threads than cores only fight over
            the GIL); blocking I/O tools want more threads per worker or
            None. Async tools are never bound by it.

    The cluster starts on first use (or when entering ``with`` / ``async
    with``); :meth:`close` shuts down what the executor started and leaves a
    given client or cluster running. Workers must be able to import the
    tools by their import path (same code, same ``sys.path``; see the
    scale-out guide).
    """

    def __init__(
        self,
        client: Client | str | None = None,
        *,
        chunk_size: int = 256,
        limits: str = "shared",
        window: int | None = None,
        threads: int | str | None = "worker",
    ) -> None:
        if not isinstance(client, str | None) and not hasattr(client, "submit"):
            raise ConfigError(
                "DaskExecutor.client must be a distributed.Client, a scheduler "
                f"address or None, got {client!r}"
            )
        self.chunk_size = check_count(chunk_size, "DaskExecutor.chunk_size")
        _LIMITS.check(limits, "DaskExecutor.limits")
        self.limits = limits
        self.window = (
            None if window is None else check_count(window, "DaskExecutor.window")
        )
        _THREADS.check(threads, "DaskExecutor.threads")
        self.threads = threads
        self._given = client
        self._client: Any = None if isinstance(client, str | None) else client
        self._cluster: Any = None
        self._lock = threading.Lock()
        self._checked: set[str] = set()
        self._closed = False
        self._ended: list[tuple[float, str]] = []

    def __repr__(self) -> str:
        where = "local cluster" if self._given is None else repr(self._given)
        return f"<DaskExecutor {where} chunk_size={self.chunk_size} limits={self.limits!r}>"

    # -- the cluster ------------------------------------------------------------
    @property
    def client(self) -> Client:
        """The ``distributed.Client``, connecting (or starting) on first use."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this DaskExecutor is closed")
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Client:
        distributed = _distributed()
        if isinstance(self._given, str):
            return distributed.Client(self._given, timeout=CONNECT_TIMEOUT)
        self._cluster = distributed.LocalCluster(
            n_workers=os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        return distributed.Client(self._cluster)

    def close(self) -> None:
        """Shut down the client and cluster the executor started (idempotent)."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            cluster, self._cluster = self._cluster, None
        if client is not None and client is not self._given:
            client.close()
        if cluster is not None:
            cluster.close()

    def __enter__(self) -> DaskExecutor:
        _ = self.client
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> DaskExecutor:
        await anyio.to_thread.run_sync(lambda: self.client)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close)

    def _retire(self, run_id: str) -> None:
        """Clear the stop events of runs that ended a while ago."""
        now = time.monotonic()
        with self._lock:
            self._ended.append((now, run_id))
            old = [r for t, r in self._ended if now - t > _EVENT_KEEP]
            self._ended = [(t, r) for t, r in self._ended if now - t <= _EVENT_KEEP]
        if old:
            distributed = _distributed()
            for r in old:
                with contextlib.suppress(Exception):
                    distributed.Event(stop_name(r), client=self.client).clear()

    # -- the executor protocol --------------------------------------------------
    def prepare(self, task: RemoteTask) -> WireSpec:
        """Write the step for the workers and check that every worker loads it.

        Raises:
            WorkflowError: a tool or function has no import path, or does not
                import on a worker.
        """
        spec = attrs.evolve(wire_spec(task), threads=self.threads)
        if spec.document not in self._checked:
            answers = self.client.run(check_document, spec.document)
            for worker, problem in sorted(answers.items()):
                if problem is not None:
                    raise WorkflowError(
                        f"the remote map does not load on worker {worker}: {problem}; "
                        "install the tools' modules on the workers (or put them on "
                        "their sys.path)",
                        task.path,
                    )
            self._checked.add(spec.document)
        return spec

    @asynccontextmanager
    async def session(
        self, prepared: WireSpec, scope: dict[str, Any], place: ChunkPlace | None = None
    ) -> AsyncIterator[ChunkSession]:
        """One run of a prepared remote map step (see the module doc)."""
        run = _DaskRun(self, prepared, place)
        await anyio.to_thread.run_sync(run.open, scope)
        try:
            yield run
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(run.stop)
            raise
        else:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(run.close)


class _DaskRun:
    """One run of one remote map step on the cluster: a :class:`ChunkSession`."""

    def __init__(
        self, executor: DaskExecutor, spec: WireSpec, place: ChunkPlace | None
    ) -> None:
        self.executor = executor
        self.client: Any = executor.client
        self.spec = spec
        self.place = place
        # Elements submitted so far: the index of the next chunk's first one.
        self.submitted = 0
        self.chunk_size = executor.chunk_size
        self.window = executor.window or 2
        self.run_id = uuid.uuid4().hex
        self.futures: dict[int, Any] = {}
        # The futures change in the thread of completed() and are read by
        # stop(), which may run while an abandoned completed() still does.
        self._futures_lock = threading.Lock()
        self.scope: Any = None
        self._beating = threading.Event()
        self._heart: threading.Thread | None = None
        self._window_given = executor.window is not None

    # -- opening and closing (on worker threads) ---------------------------------
    def open(self, scope: dict[str, Any]) -> None:
        distributed = _distributed()
        client = self.client
        if not self._window_given:
            self.window = max(2, 2 * sum(client.nthreads().values()))
        self._beat = distributed.Variable(beat_name(self.run_id), client=client)
        self._stop = distributed.Event(stop_name(self.run_id), client=client)
        self._beat.set(0)
        self.scope = client.scatter(scope, broadcast=False, hash=False) if scope else {}
        self._heart = threading.Thread(
            target=self._heartbeat, name=f"plait-heartbeat-{self.run_id}", daemon=True
        )
        self._heart.start()

    def _heartbeat(self) -> None:
        count = 0
        while not self._beating.wait(HEARTBEAT):
            count += 1
            # The scheduler may be away; then the workers notice the silence.
            with contextlib.suppress(Exception):
                self._beat.set(count)

    def stop(self) -> None:
        """Stop every chunk of the run and wait (bounded) until they answered."""
        distributed = _distributed()
        try:
            self._stop.set()
            with self._futures_lock:
                futures = list(self.futures.values())
            if futures:
                distributed.wait(futures, timeout=ACK_TIMEOUT)
        except Exception:  # timed out, or the cluster is away: nothing to wait for
            pass
        self.close()

    def close(self) -> None:
        self._beating.set()
        if self._heart is not None:
            self._heart.join()
        try:
            # Set at the end of every run, so that the workers' watches of
            # the run end now; the executor clears it later (``_retire``).
            self._stop.set()
            self._beat.delete()
        except Exception:
            pass
        self.executor._retire(self.run_id)
        with self._futures_lock:
            futures = list(self.futures.values())
            self.futures.clear()
        for future in futures:
            future.release()
        if isinstance(self.scope, dict):
            for future in self.scope.values():
                future.release()

    # -- the ChunkSession protocol --------------------------------------------------
    def submit(self, number: int, elements: list[Any]) -> None:
        future = self.client.submit(
            run_chunk,
            self.spec,
            self.run_id,
            self.scope,
            elements,
            self.place,
            self.submitted,
            key=f"plait-chunk-{self.run_id}-{number}",
            pure=False,
        )
        self.submitted += len(elements)
        with self._futures_lock:
            self.futures[number] = future

    async def completed(self) -> list[tuple[int, ChunkOutcome]]:
        return await anyio.to_thread.run_sync(self._completed, abandon_on_cancel=True)

    def _completed(self) -> list[tuple[int, ChunkOutcome]]:
        distributed = _distributed()
        with self._futures_lock:
            pending = dict(self.futures)
        by_future = {id(f): n for n, f in pending.items()}
        while True:
            try:
                done, _ = distributed.wait(
                    list(pending.values()),
                    timeout=_WAIT_SLICE,
                    return_when="FIRST_COMPLETED",
                )
                break
            except TimeoutError:
                if self._beating.is_set():  # the run was stopped meanwhile
                    return []
        finished = [f for f in done if f.status == "finished"]
        failed = [f for f in done if f.status != "finished"]
        if failed:
            failed[0].result()  # raises what the task raised
        outcomes = self.client.gather(finished)
        out = []
        for future, outcome in zip(finished, outcomes, strict=True):
            number = by_future[id(future)]
            with self._futures_lock:
                self.futures.pop(number, None)
            future.release()
            out.append((number, outcome))
        return out
