"""Turning a task group's exception group into what the user asked for.

A failing ``Parallel`` or ``MapReduce`` raises the first real error with its
path, not a group: a single :class:`StepFailed` (or :class:`StepTimeout`)
when one branch failed, an ``ExceptionGroup`` only when several did.
``KeyboardInterrupt`` and ``SystemExit`` always come out bare, and a group
made only of cancellations is left alone for the enclosing cancel scope.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

import anyio

__all__ = ["collapse", "leaves", "raise_collapsed"]


def leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    """The exceptions in ``group`` and its nested groups, depth first."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from leaves(exc)
        else:
            yield exc


def collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to raise in place of a task group's ``group``."""
    cancelled = anyio.get_cancelled_exc_class()
    errors: list[Exception] = []
    for exc in leaves(group):
        if isinstance(exc, Exception):
            errors.append(exc)
        elif not isinstance(exc, cancelled):
            return exc  # KeyboardInterrupt, SystemExit, GeneratorExit
    if not errors:
        return group
    if len(errors) == 1:
        return errors[0]
    return ExceptionGroup(f"{len(errors)} steps failed", errors)


def raise_collapsed(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise :func:`collapse` of ``group``, keeping a ``StepFailed``'s cause.

    Call it in the ``except BaseExceptionGroup`` clause around a task group
    (``raise ... from None`` would erase the cause).
    """
    raised = collapse(group)
    raise raised from raised.__cause__
