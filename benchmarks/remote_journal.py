"""Journaled remote map steps: what a PostgresJournal adds per element on Dask.

Usage::

    python benchmarks/remote_journal.py --postgres DSN [--quick]
                                        [--elements N] [--repeat R]

(or ``PLAIT_BENCH_POSTGRES=DSN``). On a 2-worker Dask LocalCluster, side by
side in one run, medians of ``--repeat``, each over ``N`` elements in
chunks of 256: ``MapReduce(Var("xs"), inc, remote=True)`` with no journal,
with ``PostgresJournal(durability="batch")`` and ``"sync"``, and the resume
of a finished batch run under the same run id (every call answered from
the journal on the workers). Each row gives microseconds per element and
its ratio to the run with no journal. ``PLAIT_BENCH_CHUNK`` sets the chunk
size (each chunk opens the run on the server once, so larger chunks spread
that cost thinner).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # remote_tools, for workers

import plait
import remote_tools as tools
from plait import MapReduce, Var
from remote import local_cluster

CHUNK = int(os.environ.get("PLAIT_BENCH_CHUNK", "256"))  # elements per chunk


def measure(client: Any, dsn: str, elements: int, repeat: int) -> list[dict[str, Any]]:
    """The rows: ``what``, ``us_per_element`` and ``ratio`` to no journal."""
    from plait.dask import DaskExecutor

    xs = list(range(elements))
    step = MapReduce(Var("xs"), tools.inc, remote=True)
    journals = {
        "batch": plait.PostgresJournal(dsn),
        "sync": plait.PostgresJournal(dsn, durability="sync"),
    }
    samples: dict[str, list[float]] = {
        "no journal": [],
        "postgres batch": [],
        "postgres sync": [],
        "resume (replay)": [],
    }
    with DaskExecutor(client, chunk_size=CHUNK) as executor:

        def timed(journal: Any = None, run_id: str | None = None) -> float:
            started = time.perf_counter()
            out = plait.run(
                step, {"xs": xs}, executor=executor, journal=journal, run_id=run_id
            )
            assert out[-1] == elements
            return time.perf_counter() - started

        timed(journals["batch"])  # warm the workers and their connections
        for _ in range(repeat):
            samples["no journal"].append(timed())
            run_id = f"bench-{uuid.uuid4().hex}"
            samples["postgres batch"].append(timed(journals["batch"], run_id))
            samples["resume (replay)"].append(timed(journals["batch"], run_id))
            samples["postgres sync"].append(timed(journals["sync"]))
    base = statistics.median(samples["no journal"])
    return [
        {
            "what": what,
            "us_per_element": statistics.median(s) / elements * 1e6,
            "ratio": statistics.median(s) / base,
        }
        for what, s in samples.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("PLAIT_BENCH_POSTGRES"))
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--elements", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.postgres:
        parser.error("give --postgres DSN (or PLAIT_BENCH_POSTGRES)")
    elements = args.elements or (2_048 if args.quick else 50_000)
    repeat = args.repeat or (1 if args.quick else 5)
    with local_cluster() as client:
        rows = measure(client, args.postgres, elements, repeat)
    print(f"{elements} elements, chunks of {CHUNK}, median of {repeat}")
    for row in rows:
        print(
            f"{row['what']:16} {row['us_per_element']:8.1f} us/element  "
            f"{row['ratio']:5.2f}x no journal"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
