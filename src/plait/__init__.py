"""plait: a structured-concurrency workflow engine for agent and tool calls.

Workflows are plain data (:class:`Call`, :class:`Sequential`,
:class:`Parallel`, :class:`MapReduce`); an :class:`Engine` runs them on
asyncio, uvloop or Trio with every tool call bounded by concurrency limits,
rate limits, timeouts and retries, and every task owned by a task group.
"""

from __future__ import annotations

from . import tools
from ._calls._current import CallInfo, current_call
from ._calls._middleware import KeyedLimit, KeyedRateLimit, Middleware, Next, ToolCall
from ._concurrency._bridge import check_cancelled
from ._concurrency._limits import Limiter, LimiterRegistry
from ._io import dump, json_schema, load
from ._journal._codec import JsonCodec
from ._journal._postgres import PostgresJournal
from ._journal._protocol import Codec, Journal, JournalRecord, JournalRun, RunInfo
from ._journal._sqlite import SqliteJournal
from ._model._backpressure import Adaptive
from ._model._errors import (
    ConfigError,
    ExpressionError,
    JournalError,
    LeaseLost,
    LimitBackendUnavailable,
    PlaitError,
    RateLimited,
    RemoteError,
    StepFailed,
    StepTimeout,
    ToolTimeout,
    UnknownTool,
    WorkflowError,
)
from ._model._events import Event, EventBus, EventKind, Subscription
from ._model._expr import Fn, Lit, Var
from ._model._ratelimit import RateLimit
from ._model._results import Failure, RunResult
from ._model._retry import Retry
from ._model._stats import RunStats, ToolStats
from ._model._steps import Call, MapReduce, Parallel, Sequential, Step, Workflow
from ._model._tools import Tool, tool
from ._public import publish
from ._runtime._engine import Engine
from ._runtime._run import run

__version__ = "0.1.0.dev0"

__all__ = [
    # steps and expressions
    "Call",
    "Sequential",
    "Parallel",
    "MapReduce",
    "Workflow",
    "Step",
    "Var",
    "Lit",
    "Fn",
    # workflows as data
    "load",
    "dump",
    "json_schema",
    # running
    "Engine",
    "run",
    "RunResult",
    "RunStats",
    "ToolStats",
    "Failure",
    # tools and policies
    "Tool",
    "tool",
    "tools",
    "Retry",
    "RateLimit",
    "Limiter",
    "LimiterRegistry",
    "check_cancelled",
    # backpressure from services
    "RateLimited",
    "Adaptive",
    # durable runs
    "SqliteJournal",
    "PostgresJournal",
    "Journal",
    "JournalRun",
    "JournalRecord",
    "RunInfo",
    "Codec",
    "JsonCodec",
    "current_call",
    "CallInfo",
    # middleware
    "Middleware",
    "Next",
    "ToolCall",
    "KeyedRateLimit",
    "KeyedLimit",
    # events
    "Event",
    "EventBus",
    "EventKind",
    "Subscription",
    # errors
    "PlaitError",
    "WorkflowError",
    "UnknownTool",
    "ConfigError",
    "ExpressionError",
    "ToolTimeout",
    "StepTimeout",
    "StepFailed",
    "JournalError",
    "RemoteError",
    "LimitBackendUnavailable",
    "LeaseLost",
]

publish(__name__, globals())
del publish
