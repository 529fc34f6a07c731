"""Limits shared across processes and machines, kept on a Redis server.

::

    limits = plait.redis.RedisLimits("redis://localhost:6379/0", namespace="acme")
    engine = plait.Engine(tools=[search], shared_limits=limits)

Every engine given the same server and namespace then shares its tools'
``concurrency_limit`` and ``rate_limit``, the engines' ``rate_limit`` and
the :class:`plait.KeyedLimit` / :class:`plait.KeyedRateLimit` limits (see
docs/how-to/shared-limits.md). Needs ``pip install "plait[redis]"``; the
redis client is imported when a :class:`RedisLimits` is first used, not
when ``plait`` is imported.
"""

from __future__ import annotations

from .._public import publish
from ._limits import RedisLimits

__all__ = ["RedisLimits"]

publish(__name__, globals())
del publish
