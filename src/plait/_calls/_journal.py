"""The journal layer: the outermost layer of a journaled tool's calls.

Before the call: the digest of the tool's name and arguments, and the
journaled success at the call's path, if any; a success with the same
digest is the call's output (its tool is not called), one with another
digest is a :class:`plait.JournalError`. After the call: its success (or its
failure, which a resume runs again) goes to the run's writer; with
``"sync"`` durability the output goes on once it is committed.

An argument or output the codec cannot encode is not journaled: the call
runs (and runs again on resume) and a ``call.not_journaled`` event says why.
"""

from __future__ import annotations

import inspect
import typing
from contextvars import ContextVar
from typing import Any

from .._journal._codec import args_digest
from .._journal._protocol import JournalRecord
from .._model._errors import JournalError
from .._model._events import EventKind
from .._model._paths import fill
from .._model._tools import Tool
from ._attempt import Attempt
from ._durable import CHUNK, RunJournal
from ._invoker import Invoker
from ._report import CallReport

__all__ = ["counting_attempts", "return_annotation", "with_journal"]

_NOT_JOURNALED = EventKind.CALL_NOT_JOURNALED

# The number of the last attempt a journaled call made, set by its attempt
# layer in the call's task and read by the journal layer when the call ends.
_LAST_ATTEMPT: ContextVar[int] = ContextVar("plait_last_attempt", default=1)


def counting_attempts(attempt: Attempt) -> Attempt:
    """``attempt``, noting its number for the journal layer around it."""
    note = _LAST_ATTEMPT.set

    def counted(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
        number: int = 1,
        admission: Any = None,
    ) -> Any:
        note(number)
        return attempt(args, kwargs, template, loc, number, admission)

    return counted


def return_annotation(fn: Any) -> Any:
    """The type a tool's outputs are structured back to on replay, or None."""
    target = getattr(fn, "__call__", fn) if not inspect.isroutine(fn) else fn  # noqa: B004
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that does not evaluate: take JSON as is
        return None
    annotation = hints.get("return")
    if annotation in (None, Any, object, type(None)):
        return None
    return annotation


def with_journal(
    inner: Invoker, tool: Tool, journal: RunJournal, report: CallReport
) -> Invoker:
    """Answer ``inner``'s calls from ``journal``, and journal what it returns."""
    name = tool.name
    annotation = return_annotation(tool.fn)
    codec = journal.codec
    site_of = journal.site
    record = journal.record
    chunk = journal.chunk

    async def invoke(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        template: str,
        loc: tuple[int, ...],
    ) -> Any:
        try:
            digest = args_digest(name, args, kwargs)
        except (TypeError, ValueError) as error:
            report.note(_NOT_JOURNALED, template, loc, 1, error=error)
            return await inner(args, kwargs, template, loc)
        site, element = site_of(template, loc)
        if not journal.fresh:
            records = chunk(site, element)
            if records is None:
                records = await journal.load(site, element)
            found = records.pop(element, None)
            if not element % CHUNK:  # a chunk's first element (or -1: no map)
                await journal.read_ahead(site, element)
            if found is not None:
                return _replay(found, digest, template, loc)
        try:
            value = await inner(args, kwargs, template, loc)
        except Exception as error:
            failed = f"{type(error).__name__}: {error}"
            record(
                JournalRecord(
                    site, element, _LAST_ATTEMPT.get(), False, name, digest, failed
                )
            )
            raise
        try:
            text = codec.encode(value)
        except Exception as error:
            report.note(_NOT_JOURNALED, template, loc, _LAST_ATTEMPT.get(), error=error)
            return value
        attempt = _LAST_ATTEMPT.get()
        committed = record(
            JournalRecord(site, element, attempt, True, name, digest, text)
        )
        if committed is not None:
            await journal.committed(committed)
        return value

    def _replay(
        found: JournalRecord, digest: bytes, template: str, loc: tuple[int, ...]
    ) -> Any:
        if found.digest != digest:
            path = fill(template, loc)
            raise JournalError(
                f"the call of {name!r} at {path} has other arguments than the "
                f"ones journaled for run {journal.run_id!r} (is the workflow's "
                "input, or its 'over', different or not deterministic?); resume "
                "with the same inputs, or use another run_id",
                journal.run_id,
                path,
            )
        try:
            return codec.decode(found.output, annotation)
        except Exception as error:
            path = fill(template, loc)
            raise JournalError(
                f"the journaled output of {name!r} at {path} cannot be read back "
                f"as {annotation!r}: {type(error).__name__}: {error}",
                journal.run_id,
                path,
            ) from error

    return invoke
