"""One module per system, each doing the six jobs its own way.

A system module is imported by ``runner.py`` in the system's environment
and provides:

* ``PACKAGES``: the distributions whose versions the report names;
* ``BACKENDS``: the event loops it runs on (``"asyncio"``, ``"uvloop"``,
  ``"trio"``; ``"threads"`` for a system with no event loop);
* ``TUNED_ONLY``: True for the floor, which has no defaults of its own;
* ``UNSUPPORTED``: job key -> why the system cannot do that job;
* ``sleep``: the async sleep its async agents await;
* one function per job it can do, where ``width`` is None for the system's
  defaults and the bound on calls in flight otherwise:

  - ``blocking(agents, width, backend) -> list`` and
    ``async_agents(agents, width, backend) -> list``: every agent's
    ``run(TASK)``, outputs in input order;
  - ``fanout(n, width, backend) -> int``: the sum of ``call(x=i)`` (``2 * i``,
    after one yield to the event loop) for ``i`` in ``range(n)``;
  - ``rate(n, limit, log, backend) -> int``: the same sum under a token
    bucket of ``limit`` calls a second, each call noting its start in
    ``log``;
  - ``failfast(siblings, seconds, backend) -> None``: ``siblings.pending``
    siblings and one failing call (see ``_jobs.Siblings``); the error must
    reach the code that started them, which calls ``siblings.caught``;
  - ``memory(items, width, backend) -> int``: the sum of ``call(x=i)`` over
    a lazy iterator.
"""
