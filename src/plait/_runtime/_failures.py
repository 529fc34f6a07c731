"""Turning a step's error into the :class:`plait.Failure` collect mode keeps."""

from __future__ import annotations

from .._model._errors import StepFailed, StepTimeout
from .._model._results import Failure

__all__ = ["to_failure"]


def to_failure(error: BaseException, path: str) -> Failure:
    """The :class:`Failure` for ``error`` raised by the step at ``path``."""
    if isinstance(error, StepFailed):
        return Failure(error.error, error.path)
    if isinstance(error, StepTimeout):
        return Failure(error, error.path)
    if isinstance(error, BaseExceptionGroup):
        inner = [to_failure(e, path).error for e in error.exceptions]
        return Failure(ExceptionGroup(str(error.message), inner), path)  # type: ignore[type-var]
    return Failure(error, path)
