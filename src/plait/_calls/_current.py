"""``plait.current_call()``: which call a tool is running in, and its key.

The attempt layer sets one context variable around the tool (a tuple, no
formatting); the path and the idempotency key are made only when a tool
asks. Sync tools see it too: their worker thread runs in a copy of the
calling task's context.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from typing import Any

import attrs

from .._model._paths import fill

__all__ = [
    "CHUNK_ITEM",
    "CURRENT",
    "PLACE",
    "CallInfo",
    "current_call",
    "idempotency_key",
    "placed",
]

#: ``(run_id, path template, element indexes, attempt)`` of the running call.
CURRENT: ContextVar[tuple[str, str, tuple[int, ...], int] | None] = ContextVar(
    "plait_current_call", default=None
)

#: The item template of a remote map's chunk step, as a worker compiles it.
CHUNK_ITEM = "map[{}]"

#: Where the chunk step running in this context sits in its coordinator's
#: run: ``(item template, outer element indexes, index of the chunk's first
#: element)``; None outside a remote map's chunk (see :func:`placed`).
PLACE: ContextVar[tuple[str, tuple[int, ...], int] | None] = ContextVar(
    "plait_chunk_place", default=None
)


def placed(
    template: str, loc: tuple[int, ...], place: tuple[str, tuple[int, ...], int]
) -> tuple[str, tuple[int, ...]]:
    """A chunk step's call path as its coordinator's: template and indexes.

    A worker runs a remote map's chunk as a ``MapReduce`` of its own, whose
    calls sit at ``map[j]...``; locally the same call sits at the remote
    map's item template with element ``first + j`` after the outer indexes.
    Journal records and idempotency keys use the coordinator's path, so that
    a call has one key wherever it runs.
    """
    item, outer, first = place
    if not template.startswith(CHUNK_ITEM) or not loc:
        return template, loc
    return item + template[len(CHUNK_ITEM) :], (*outer, first + loc[0], *loc[1:])


@attrs.frozen
class CallInfo:
    """The tool call running now, as :func:`plait.current_call` gives it.

    Attributes:
        run_id: the run's id (``RunResult.run_id``; the one given to
            ``run_id=``, or a new one).
        path: the call's path, with element indexes (``steps[1].map[17]``).
        attempt: the attempt, counted from 1 within this run.
        idempotency_key: the same for every attempt and every resume of
            this call, different in another run id or at another path: give
            it to an API that deduplicates requests by key.
    """

    run_id: str
    path: str
    attempt: int
    idempotency_key: str


def idempotency_key(run_id: str, path: str) -> str:
    """The key of the call at ``path`` in run ``run_id`` (32 hex digits)."""
    data = f"{run_id}\x00{path}".encode()
    return hashlib.blake2b(data, digest_size=16, person=b"plait.call").hexdigest()


def current_call() -> CallInfo | None:
    """The tool call running now, or None outside a tool call.

    Call it inside a tool (sync or async), with or without a journal::

        @plait.tool
        async def pay(order: str) -> str:
            key = plait.current_call().idempotency_key
            return await payments.charge(order, idempotency_key=key)
    """
    here: Any = CURRENT.get()
    if here is None:
        return None
    run_id, template, loc, attempt = here
    place = PLACE.get()
    if place is not None:  # a call of a remote map, on a worker
        template, loc = placed(template, loc, place)
    path = fill(template, loc)
    return CallInfo(run_id, path, attempt, idempotency_key(run_id, path))
