"""Resource-aware concurrency: fewer agents in flight while the machine is loaded.

A :class:`ResourceMonitor` samples CPU, memory and threads (through psutil)
every ``check_interval`` seconds and changes the total of the limiter that
admits agents. The policy is additive increase, multiplicative decrease, as
TCP does for the same reason (back off fast when overloaded, probe back
slowly):

* over either threshold: the limit is halved, never below ``min_limit``;
* under both: it grows by a quarter of the maximum (at least 1), never
  above the maximum the run was started with.

Lowering a limit never interrupts an agent that is running: it only keeps
new ones from starting until fewer than the new limit are in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import attrs

from .._concurrency._limits import Limiter
from .._model._errors import ConfigError, WorkflowError
from .._model._validate import Validator, count, number

__all__ = ["ResourceMetrics", "ResourceMonitor"]


@attrs.frozen
class ResourceMetrics:
    """One reading of the machine's load.

    Attributes:
        cpu_percent: system-wide CPU use since the previous reading, 0-100.
        memory_percent: system memory in use, 0-100.
        active_threads: threads of this process.
    """

    cpu_percent: float
    memory_percent: float
    active_threads: int

    @classmethod
    def current(cls) -> ResourceMetrics:
        """Read the metrics now (CPU use since the previous call)."""
        import psutil

        return cls(
            cpu_percent=float(psutil.cpu_percent(interval=None)),
            memory_percent=float(psutil.virtual_memory().percent),
            active_threads=threading.active_count(),
        )


def _setting(check: Validator) -> Validator:
    """``check``, raising :class:`plait.ConfigError` as the run functions do.

    A monitor's settings are arguments of
    :func:`run_agents_with_resource_monitoring` too, so a bad threshold must
    fail like a bad ``batch_size``, not as a workflow error.
    """

    def wrapped(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        try:
            check(inst, attr, value)
        except WorkflowError as error:
            raise ConfigError(error.message) from None

    return wrapped


def _check_sample(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise ConfigError(
            f"ResourceMonitor.{attr.name} must be a callable returning "
            f"ResourceMetrics, got {value!r}"
        )


@attrs.define(kw_only=True)
class ResourceMonitor:
    """Watches CPU and memory and sets how many agents may run at once.

    Args:
        cpu_threshold: CPU percent above which the limit is lowered.
        memory_threshold: memory percent above which the limit is lowered.
        check_interval: seconds between readings.
        min_limit: the limit is never lowered below this.
        sample: the function that reads the metrics; the default reads them
            with psutil (tests pass their own).

    Attributes:
        samples: every :class:`ResourceMetrics` read, in order.
        limits: the limit set after each reading (same length as
            ``samples``).

    Raises:
        ConfigError: a setting is out of range; the message names it.
    """

    cpu_threshold: float = attrs.field(
        default=90.0, validator=_setting(number(minimum=0.0, strict=True))
    )
    memory_threshold: float = attrs.field(
        default=90.0, validator=_setting(number(minimum=0.0, strict=True))
    )
    check_interval: float = attrs.field(
        default=1.0, validator=_setting(number(minimum=0.0, strict=True))
    )
    min_limit: int = attrs.field(default=1, validator=_setting(count(minimum=1)))
    sample: Callable[[], ResourceMetrics] = attrs.field(
        default=ResourceMetrics.current, validator=_check_sample
    )
    samples: list[ResourceMetrics] = attrs.field(init=False, factory=list)
    limits: list[int] = attrs.field(init=False, factory=list)

    def overloaded(self, metrics: ResourceMetrics) -> bool:
        """Whether ``metrics`` is over either threshold."""
        return (
            metrics.cpu_percent > self.cpu_threshold
            or metrics.memory_percent > self.memory_threshold
        )

    def next_limit(self, current: int, maximum: int, metrics: ResourceMetrics) -> int:
        """The limit to set after reading ``metrics`` (see the module's policy)."""
        floor = min(self.min_limit, maximum)
        if self.overloaded(metrics):
            return max(floor, current // 2)
        return min(maximum, current + max(1, maximum // 4))

    async def watch(self, limiter: Limiter, maximum: int) -> None:
        """Adjust ``limiter.total`` between 1 and ``maximum`` until cancelled."""
        self.sample()  # the first CPU reading only starts the measurement
        current = maximum
        while True:
            await anyio.sleep(self.check_interval)
            metrics = self.sample()
            current = self.next_limit(current, maximum, metrics)
            limiter.total = current
            self.samples.append(metrics)
            self.limits.append(current)
