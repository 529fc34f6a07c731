"""The workflow steps: frozen data that the interpreter walks.

Every step is a frozen attrs class, checked field by field when it is built.
Every step takes ``name=`` (its output is bound into the enclosing
``Sequential``'s scope for later steps, and labels it in events) and
``timeout=`` (seconds).
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import WorkflowError
from ._expr import Fn, Lit, Var
from ._imports import IMPORT_PATH, ImportPath
from ._retry import Retry
from ._tools import Tool, is_async_callable
from ._validate import (
    BOOL,
    COUNT,
    IDENTIFIER,
    NAME,
    SECONDS,
    TEXT,
    fail,
    instance_of,
    one_of,
)

__all__ = [
    "Call",
    "MapReduce",
    "Parallel",
    "Sequential",
    "Step",
    "Workflow",
]

CALL_RESERVED = frozenset({"name", "timeout", "retry", "arguments"})
PARALLEL_RESERVED = frozenset({"name", "timeout", "on_error"})


ON_ERROR = one_of("raise", "collect")


def _name_field() -> Any:
    return attrs.field(default=None, kw_only=True, validator=NAME.or_none())


def _timeout_field() -> Any:
    return attrs.field(default=None, kw_only=True, validator=SECONDS.or_none())


def _check_step(owner: object, field: str, value: object) -> None:
    if not isinstance(value, Step):
        fail(owner, field, "a step (Call, Sequential, Parallel or MapReduce)", value)


def _fmt_opts(step: object, names: tuple[str, ...]) -> list[str]:
    defaults = {"on_error": "raise", "ordered": True, "item": "item", "remote": False}
    out = []
    for n in names:
        value = getattr(step, n)
        if value is not None and value != defaults.get(n):
            out.append(f"{n}={value!r}")
    return out


@attrs.frozen
class Step:
    """Base class of all steps."""

    if TYPE_CHECKING:
        name: str | None
        timeout: float | None

    def _opts(self) -> list[str]:
        return _fmt_opts(self, ("name", "timeout"))


def _to_target(value: Any) -> str | Tool:
    if isinstance(value, str):
        # "pkg.mod:fn" is an import path, as in documents; see ImportPath.
        return ImportPath(value) if ":" in value else value
    if isinstance(value, Tool):
        return value
    if callable(value):
        return Tool.of(value)
    return value  # type: ignore[no-any-return]  # rejected by the validator


def _check_target(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, ImportPath):
        if not IMPORT_PATH.fullmatch(value):
            fail(inst, attr.name, "an import path 'module:attr'", value)
        return
    if isinstance(value, str) and value:
        return
    if not isinstance(value, Tool):
        fail(
            inst,
            attr.name,
            "a tool name, an import path 'module:attr', a plait.Tool or a function",
            value,
        )


def _plain_keyword(name: str) -> bool:
    """Whether ``name=value`` can be written as a keyword argument of ``Call``."""
    return (
        name.isidentifier()
        and not keyword.iskeyword(name)
        and name not in CALL_RESERVED
    )


@attrs.frozen(init=False, repr=False)
class Call(Step):
    """Call a tool: ``Call("search", Var("query"), limit=5)``.

    Args:
        target: a registered tool name; an import path ``"pkg.mod:fn"`` (a
            str with ``:``) of a function or a :class:`plait.Tool`, imported
            when an engine runs the step, as in documents; a
            :class:`plait.Tool`; or a function (made a tool with default
            options).
        *args: the tool's positional arguments, expressions or constants.
        **kwargs: the tool's keyword arguments, expressions or constants.
        name: bind the result for later steps.
        timeout: per-attempt timeout, overriding the tool's own; raises
            :class:`plait.ToolTimeout`.
        retry: a :class:`plait.Retry` overriding the tool's own.
        arguments: keyword arguments whose names are reserved here
            (``name``, ``timeout``, ``retry``, ``arguments``).
    """

    target: str | Tool = attrs.field(converter=_to_target, validator=_check_target)
    args: tuple[Any, ...] = attrs.field(default=())
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    name: str | None = _name_field()
    timeout: float | None = _timeout_field()
    retry: Retry | None = attrs.field(
        default=None, kw_only=True, validator=instance_of(Retry).or_none()
    )

    def __init__(
        self,
        target: str | Tool | Callable[..., Any],
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
        retry: Retry | None = None,
        arguments: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if arguments is not None:
            if not isinstance(arguments, Mapping) or not all(
                isinstance(k, str) for k in arguments
            ):
                raise WorkflowError(
                    f"Call.arguments must be a dict with str keys, got {arguments!r}",
                    "arguments",
                )
            clash = sorted(set(arguments) & set(kwargs))
            if clash:
                raise WorkflowError(
                    f"Call argument {clash[0]!r} is given twice (as a keyword and "
                    "in arguments=)",
                    "arguments",
                )
            kwargs = {**kwargs, **arguments}
        self.__attrs_init__(
            target, tuple(args), dict(kwargs), name=name, timeout=timeout, retry=retry
        )

    def __getstate__(self) -> dict[str, Any]:
        # A pickle holds the target as a plain str: ImportPath is internal.
        state = {f.name: getattr(self, f.name) for f in attrs.fields(Call)}
        if isinstance(self.target, str):
            state["target"] = str(self.target)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "target", _to_target(self.target))

    @property
    def tool_name(self) -> str:
        """The name of the tool called."""
        return self.target if isinstance(self.target, str) else self.target.name

    def __repr__(self) -> str:
        parts = [repr(self.tool_name), *(repr(a) for a in self.args)]
        plain = {k: v for k, v in self.kwargs.items() if _plain_keyword(k)}
        reserved = {k: v for k, v in self.kwargs.items() if not _plain_keyword(k)}
        parts += [f"{k}={v!r}" for k, v in plain.items()]
        if reserved:
            parts.append(f"arguments={reserved!r}")
        parts += _fmt_opts(self, ("name", "timeout", "retry"))
        return f"Call({', '.join(parts)})"


@attrs.frozen(init=False, repr=False)
class Sequential(Step):
    """Run steps one after another; the output is the last step's output.

    A step with ``name=`` binds its output for the steps after it (and
    everything inside them); bindings do not leave the ``Sequential``.
    """

    steps: tuple[Step, ...]
    name: str | None = _name_field()
    timeout: float | None = _timeout_field()

    def __init__(
        self, *steps: Step, name: str | None = None, timeout: float | None = None
    ) -> None:
        if not steps:
            raise WorkflowError("Sequential needs at least one step", "steps")
        for i, s in enumerate(steps):
            _check_step(self, f"steps[{i}]", s)
        self.__attrs_init__(tuple(steps), name=name, timeout=timeout)

    def __repr__(self) -> str:
        parts = [repr(s) for s in self.steps] + self._opts()
        return f"Sequential({', '.join(parts)})"


@attrs.frozen(init=False, repr=False)
class Parallel(Step):
    """Run steps at once in one task group.

    ``Parallel(a, b)`` outputs a list in step order, ``Parallel(x=a, y=b)`` a
    dict. Branch names that clash with the options (``name``, ``timeout``,
    ``on_error``) are given as one dict: ``Parallel({"name": a, "y": b})``.

    Args:
        on_error: ``"raise"`` (the first failure cancels the other branches
            and the step raises) or ``"collect"`` (every branch runs to its
            end; failed ones become :class:`plait.Failure` values in place).
    """

    steps: tuple[Step, ...] | dict[str, Step]
    name: str | None = _name_field()
    timeout: float | None = _timeout_field()
    on_error: str = attrs.field(default="raise", kw_only=True, validator=ON_ERROR)

    def __init__(
        self,
        *steps: Step | Mapping[str, Step],
        name: str | None = None,
        timeout: float | None = None,
        on_error: str = "raise",
        **branches: Step,
    ) -> None:
        body: tuple[Step, ...] | dict[str, Step]
        if len(steps) == 1 and isinstance(steps[0], Mapping):
            branches = {**steps[0], **branches}
            steps = ()
        if steps and branches:
            raise WorkflowError(
                "Parallel takes positional steps or named branches, not both",
                "steps",
            )
        if branches:
            for k, b in branches.items():
                if not isinstance(k, str) or not k:
                    fail(self, "steps", "branch names that are non-empty str", k)
                _check_step(self, f"steps.{k}", b)
            body = dict(branches)
        elif steps:
            positional: list[Step] = []
            for i, s in enumerate(steps):
                _check_step(self, f"steps[{i}]", s)
                positional.append(s)  # type: ignore[arg-type]
            body = tuple(positional)
        else:
            raise WorkflowError("Parallel needs at least one step", "steps")
        self.__attrs_init__(body, name=name, timeout=timeout, on_error=on_error)

    def __repr__(self) -> str:
        if isinstance(self.steps, dict):
            if all(
                k.isidentifier()
                and not keyword.iskeyword(k)
                and k not in PARALLEL_RESERVED
                for k in self.steps
            ):
                parts = [f"{k}={s!r}" for k, s in self.steps.items()]
            else:
                parts = [repr(self.steps)]
        else:
            parts = [repr(s) for s in self.steps]
        parts += _fmt_opts(self, ("name", "timeout", "on_error"))
        return f"Parallel({', '.join(parts)})"


def _to_map_step(value: Any) -> Any:
    if isinstance(value, Step):
        return value
    if isinstance(value, str | Tool) or callable(value):
        return _MapShorthand(value)
    return value


class _MapShorthand:
    """``map=tool`` means ``map=Call(tool, Var(item))``; resolved in post-init."""

    def __init__(self, target: Any) -> None:
        self.target = target


def _check_reduce(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None or (isinstance(value, str) and value):
        return
    if not callable(value):
        fail(
            inst,
            attr.name,
            "a callable (acc, value) -> acc or a registered function name",
            value,
        )
    if is_async_callable(value):
        fail(inst, attr.name, "a plain (not async) function (acc, value) -> acc", value)


def _check_over(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, Step):
        fail(
            inst,
            attr.name,
            "an expression (Var, Fn, Lit) or a value, not a step",
            value,
        )


@attrs.frozen(repr=False)
class MapReduce(Step):
    """Run ``map`` once per element of ``over``, at most ``max_concurrency`` at once.

    Args:
        over: an expression giving an iterable or an async iterable; it is
            consumed lazily, as map slots free up.
        map: the step run per element, which sees the element as
            ``Var(item)``. A tool (or tool name) is short for
            ``Call(tool, Var(item))``.
        reduce: ``(acc, value) -> acc``, a callable or a registered function
            name, applied serially: in input order with ``ordered=True``, in
            completion order otherwise. Without it the output is the list of
            mapped values in input order.
        initial: the fold's start value (an expression or a constant); without
            it the first mapped value starts the fold, and an empty input
            gives None.
        max_concurrency: map steps in flight; None means the engine's
            ``max_concurrency``.
        ordered: see ``reduce``. With ``ordered=True`` at most
            ``2 * max_concurrency`` elements are pulled ahead of the fold.
        item: the variable name of the element.
        on_error: ``"raise"`` or ``"collect"`` (failed elements become
            :class:`plait.Failure` in the list; a ``reduce`` skips them).
        remote: the elements may run elsewhere: on the cluster of the
            engine's ``executor`` (see :class:`plait.dask.DaskExecutor`),
            in chunks, with ``max_concurrency`` per chunk. Without an
            executor the step runs locally, unchanged.
    """

    over: Any = attrs.field(validator=_check_over)
    map: Step = attrs.field(converter=_to_map_step)
    reduce: str | Callable[[Any, Any], Any] | None = attrs.field(
        default=None, validator=_check_reduce
    )
    initial: Any = attrs.field(default=None)
    max_concurrency: int | None = attrs.field(default=None, validator=COUNT.or_none())
    ordered: bool = attrs.field(default=True, validator=BOOL)
    item: str = attrs.field(default="item", validator=IDENTIFIER)
    on_error: str = attrs.field(default="raise", validator=ON_ERROR)
    remote: bool = attrs.field(default=False, kw_only=True, validator=BOOL)
    name: str | None = _name_field()
    timeout: float | None = _timeout_field()

    def __attrs_post_init__(self) -> None:
        if isinstance(self.map, _MapShorthand):
            object.__setattr__(self, "map", Call(self.map.target, Var(self.item)))
        _check_step(self, "map", self.map)

    def __repr__(self) -> str:
        parts = [f"over={self.over!r}", f"map={self.map!r}"]
        options = tuple(f.name for f in attrs.fields(MapReduce))[2:]
        parts += _fmt_opts(self, options)
        return f"MapReduce({', '.join(parts)})"


def _to_names(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):  # one name, not its characters
        return (value,)
    return tuple(value)


def _check_inputs(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not all(isinstance(v, str) and v.isidentifier() for v in value):
        fail(inst, attr.name, "a tuple of identifiers", value)


@attrs.frozen(repr=False)
class Workflow:
    """A step with metadata: ``Workflow(step, name=..., inputs=(...))``.

    ``inputs`` names the variables a run must be given; when it is set,
    ``Engine.run`` rejects missing and unexpected inputs before anything runs.

    Args:
        step: the root step.
        name: the workflow's name, for people and logs.
        inputs: the names of the run's inputs, or empty to accept any.
        description: what the workflow does, for people and tools.
    """

    step: Step = attrs.field()
    name: str | None = attrs.field(default=None, kw_only=True, validator=TEXT.or_none())
    inputs: tuple[str, ...] = attrs.field(
        default=(), kw_only=True, converter=_to_names, validator=_check_inputs
    )
    description: str | None = attrs.field(
        default=None, kw_only=True, validator=TEXT.or_none()
    )

    def __attrs_post_init__(self) -> None:
        _check_step(self, "step", self.step)

    def __repr__(self) -> str:
        parts = [repr(self.step)]
        if self.name is not None:
            parts.append(f"name={self.name!r}")
        if self.inputs:
            parts.append(f"inputs={self.inputs!r}")
        if self.description is not None:
            parts.append(f"description={self.description!r}")
        return f"Workflow({', '.join(parts)})"


# Expressions accepted where a step's data is read.
Expression = Var | Lit | Fn
