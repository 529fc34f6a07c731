"""SharedContext: one dict that agents running at once read and change safely.

Every operation holds one lock, so a read-modify-write through
:meth:`SharedContext.modify` is atomic even when the function it applies
awaits. The lock is a :class:`plait.Limiter` of one slot, so the same context
works on asyncio, uvloop and Trio, across event loops, and from blocking
agents on worker threads (through :attr:`SharedContext.sync`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .._concurrency._limits import Limiter
from .._concurrency._wakeup import running_async_library

__all__ = ["SharedContext", "SyncContext"]

_MISSING: Any = object()


class SharedContext:
    """An async-safe shared dict for agents running at once.

    Example::

        ctx = SharedContext({"seen": 0})
        await ctx.modify("seen", lambda n: n + 1)   # atomic
        await ctx.snapshot()                        # {"seen": 1}
    """

    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(initial or {})
        self._lock = Limiter(1, "SharedContext")
        self.sync = SyncContext(self)

    def __repr__(self) -> str:
        return f"<SharedContext keys={sorted(map(str, self._data))}>"

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        async with self._locked():
            return self._data.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value``."""
        async with self._locked():
            self._data[key] = value

    async def update(self, mapping: Mapping[str, Any] = {}, /, **kwargs: Any) -> None:
        """Set several keys at once (atomically)."""
        async with self._locked():
            self._data.update(mapping, **kwargs)

    async def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (``default`` if absent, else KeyError)."""
        async with self._locked():
            if default is _MISSING:
                return self._data.pop(key)
            return self._data.pop(key, default)

    async def snapshot(self) -> dict[str, Any]:
        """A shallow copy of the whole dict, taken atomically."""
        async with self._locked():
            return dict(self._data)

    async def modify(
        self, key: str, fn: Callable[[Any], Any], default: Any = _MISSING
    ) -> Any:
        """Atomically set ``key`` to ``fn(current value)`` and return the new value.

        ``fn`` may be sync or async; nobody else reads or writes the context
        until it returns. A missing key is ``default``, or a ``KeyError``
        when no default is given. If ``fn`` raises, nothing changes.
        """
        async with self._locked():
            new = fn(self._current(key, default))
            if inspect.isawaitable(new):
                new = await new
            self._data[key] = new
            return new

    def _current(self, key: str, default: Any) -> Any:
        try:
            return self._data[key]
        except KeyError:
            if default is _MISSING:
                raise KeyError(
                    f"SharedContext has no key {key!r}; pass default= to modify() "
                    "to start from a value"
                ) from None
            return default

    def _locked(self) -> _AsyncHold:
        return _AsyncHold(self._lock)


class _AsyncHold:
    __slots__ = ("_lock",)

    def __init__(self, lock: Limiter) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


class SyncContext:
    """The blocking face of a :class:`SharedContext`, for agents on worker threads.

    The same operations without ``await``. Calling them in a thread that runs
    an event loop raises ``RuntimeError`` (blocking would freeze the loop).
    """

    def __init__(self, shared: SharedContext) -> None:
        self._shared = shared

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        library = running_async_library()
        if library is not None:
            raise RuntimeError(
                f"SharedContext.sync cannot be used with a running {library} event "
                "loop in this thread; await the SharedContext's own methods instead"
            )
        lock = self._shared._lock
        lock.acquire_blocking()
        try:
            yield self._shared._data
        finally:
            lock.release()

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        with self._locked() as data:
            return data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value``."""
        with self._locked() as data:
            data[key] = value

    def update(self, mapping: Mapping[str, Any] = {}, /, **kwargs: Any) -> None:
        """Set several keys at once (atomically)."""
        with self._locked() as data:
            data.update(mapping, **kwargs)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (``default`` if absent, else KeyError)."""
        with self._locked() as data:
            if default is _MISSING:
                return data.pop(key)
            return data.pop(key, default)

    def snapshot(self) -> dict[str, Any]:
        """A shallow copy of the whole dict, taken atomically."""
        with self._locked() as data:
            return dict(data)

    def modify(
        self, key: str, fn: Callable[[Any], Any], default: Any = _MISSING
    ) -> Any:
        """Atomically set ``key`` to ``fn(current value)`` (``fn`` is sync here).

        Raises:
            TypeError: ``fn`` returned an awaitable (an ``async def``), which
                nothing here could await; the key is left unchanged.
        """
        with self._locked() as data:
            new = fn(self._shared._current(key, default))
            if inspect.isawaitable(new):
                if inspect.iscoroutine(new):
                    new.close()  # never awaited: no "never awaited" warning
                raise TypeError(
                    f"SharedContext.sync.modify({key!r}, fn) needs a sync fn, but "
                    f"{fn!r} returned an awaitable; await SharedContext.modify "
                    "for async ones"
                )
            data[key] = new
            return new
