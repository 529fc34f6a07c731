"""An agent-style pipeline, plan -> parallel tool calls -> merge (SIMULATED).

SIMULATED: the "agents" and "tools" are deterministic local functions in
``agents_tools.py`` with realistic latencies (async sleeps of tens of
milliseconds, and one blocking sync function); no language model, network
or real service is used, and the output says so. What is real is how plait
runs them:

1. a planner "LLM" call turns the question into searches, knowledge-base
   lookups and estimates;
2. three branches run in parallel (a ``Parallel`` of ``MapReduce`` steps):
   each search is followed by a summarizing "LLM" call; lookups and
   estimates run beside them;
3. a writer "LLM" call merges everything into one answer, naming what
   failed.

Engine features on show:

- per-tool concurrency limits (``llm`` 2, ``search`` 3, ``lookup`` 4,
  ``crunch`` 2);
- a ``RateLimit`` on the ``llm`` tool: a burst of 2 calls, then 10 a second;
- a ``Retry`` on the deliberately flaky ``search`` tool: for some queries
  every other request fails with ``ConnectionError``, and the retry
  succeeds;
- timeouts: ``lookup`` hangs on topics it does not know and its 0.15 s
  timeout fires; the whole parallel phase has a 5 s step timeout;
- collect mode: a failed lookup becomes a ``plait.Failure`` in place, and
  the answer is still written, listing the gap;
- the blocking ``crunch`` tool runs on worker threads (the thread bridge);
- the same workflow as Python data (:data:`AGENTS`) and as a file,
  ``agents.yaml``, with the tools' policies declared in the file.

Run it from the repository root::

    python workflows/agents.py
    python workflows/agents.py --yaml --backend trio
    python workflows/agents.py --question "Why do agents need timeouts?"
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio

import plait
from agents_tools import (
    SIMULATED,
    crunch_numbers,
    kb_lookup,
    simulated_llm,
    web_search,
)

BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
YAML_FILE = Path(__file__).resolve().parent / "agents.yaml"
QUESTION = "How do rate limits, retries and timeouts keep an agent pipeline reliable?"

# The tools' policies live with the workflow, not in the tool code.
LLM = plait.Tool(
    simulated_llm,
    "llm",
    concurrency_limit=2,
    timeout=2,
    rate_limit=plait.RateLimit(10, per=1, burst=2),
)
SEARCH = plait.Tool(
    web_search,
    "search",
    concurrency_limit=3,
    timeout=1,
    retry=plait.Retry(
        attempts=3, initial_delay=0.02, jitter=False, retry_on=(ConnectionError,)
    ),
)
LOOKUP = plait.Tool(kb_lookup, "lookup", concurrency_limit=4, timeout=0.15)
CRUNCH = plait.Tool(crunch_numbers, "crunch", concurrency_limit=2, timeout=1)

AGENTS = plait.Workflow(
    plait.Sequential(
        plait.Call(LLM, "plan", plait.Var("question"), name="plan"),
        plait.Parallel(
            research=plait.MapReduce(
                over=plait.Var("plan.searches"),
                item="query",
                on_error="collect",
                map=plait.Sequential(
                    plait.Call(SEARCH, plait.Var("query"), name="hits"),
                    plait.Call(LLM, "summarize", plait.Var("hits")),
                ),
            ),
            knowledge=plait.MapReduce(
                over=plait.Var("plan.lookups"),
                on_error="collect",
                map=plait.Call(LOOKUP, plait.Var("item")),
            ),
            numbers=plait.MapReduce(
                over=plait.Var("plan.estimates"),
                on_error="collect",
                map=plait.Call(CRUNCH, plait.Var("item")),
            ),
            name="findings",
            timeout=5,
            on_error="collect",
        ),
        plait.Call(
            LLM, "answer", plait.Var("findings"), question=plait.Var("question")
        ),
    ),
    name="research-agents",
    inputs=("question",),
    description=(
        "SIMULATED research agents: a planner splits the question into "
        "searches, knowledge-base lookups and estimates, run in parallel under "
        "per-tool limits, a rate-limited model, retries and timeouts; a writer "
        "merges what came back, naming what failed."
    ),
)
"""The pipeline as Python data: equal to ``plait.load("agents.yaml")``."""


async def ask(
    workflow: plait.Workflow, question: str, log: list[str] | None = None
) -> plait.RunResult:
    """Run the pipeline inside an already running event loop (any backend).

    Retries and timeouts are noted in ``log`` as they happen, if given.
    """
    engine = plait.Engine()

    def note(event: plait.Event) -> None:
        if log is not None and event.kind in (
            plait.EventKind.CALL_RETRIED,
            plait.EventKind.CALL_TIMED_OUT,
        ):
            log.append(f"{event.kind} {event.tool} at {event.path}: {event.error}")

    with engine.subscribe(note):
        return await engine.execute(workflow, {"question": question})


def show(result: plait.RunResult, log: list[str]) -> None:
    """Print the merged answer, what went wrong on the way, and the run stats."""
    answer: dict[str, Any] = result.output
    print(f"[{SIMULATED}]")
    print(f"question: {answer['question']}")
    print("answer:")
    print(
        textwrap.fill(
            answer["answer"], width=80, initial_indent="  ", subsequent_indent="  "
        )
    )
    print(f"sources: {len(answer['sources'])} (simulated URLs)")
    for gap in answer["gaps"]:
        print(f"gap: {gap}")
    for line in log:
        print(f"event: {line}")
    print(
        f"{'tool':<8} {'calls':>5} {'retries':>7} {'timeouts':>8} {'rate-ltd':>8} {'p50 ms':>7}"
    )
    for name, stats in sorted(result.stats.tools.items()):
        p50 = f"{stats.p50 * 1000:.1f}" if stats.p50 is not None else "-"
        print(
            f"{name:<8} {stats.calls:>5} {stats.retries:>7} {stats.timeouts:>8} "
            f"{stats.rate_limited:>8} {p50:>7}"
        )
    print(
        f"failures collected: {len(result.failures)}; "
        f"run took {result.stats.duration:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the pipeline, print the answer and stats."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument(
        "--yaml", action="store_true", help="run agents.yaml instead (plait.load)"
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    args = parser.parse_args(argv)

    workflow = plait.load(YAML_FILE) if args.yaml else AGENTS
    backend, options = BACKENDS[args.backend]
    log: list[str] = []
    result = anyio.run(
        ask, workflow, args.question, log, backend=backend, backend_options=options
    )
    if args.json:
        print(json.dumps(result.output, indent=2))
    else:
        show(result, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
