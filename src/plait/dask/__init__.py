"""Remote map steps on a Dask cluster (extra ``plait[dask]``).

``MapReduce(..., remote=True)`` marks a map whose elements may run
elsewhere; ``Engine(executor=DaskExecutor(...))`` runs them on a Dask
cluster, in chunks, each chunk under a plait engine on a worker, while the
coordinator pulls the input, folds the values and keeps failures, events
and cancellation as they are locally. ``distributed`` is imported only when
the executor first talks to a cluster.
"""

from __future__ import annotations

from .._public import publish
from ._executor import DaskExecutor

__all__ = ["DaskExecutor"]

publish(__name__, globals())
del publish
