"""SIMULATED agents and tools for the agent pipeline (``agents.py``, ``agents.yaml``).

Nothing here calls a language model or a network service. Every "agent" and
"tool" is a deterministic local function that sleeps for a realistic,
fixed latency (tens of milliseconds) and returns made-up but repeatable
results, so the pipeline can show plait's limits, rate limits, retries,
timeouts and collect mode without any account, key or network:

- :func:`simulated_llm` stands in for a language model: planning,
  summarizing and answering, 30-60 ms a call;
- :func:`web_search` stands in for a search API that is *deliberately
  flaky*: for some queries every other request fails with a
  ``ConnectionError``, so the first attempt fails and a retry succeeds;
- :func:`kb_lookup` stands in for a knowledge-base service that *hangs* on
  topics it does not know, so its timeout fires;
- :func:`crunch_numbers` is a *blocking* (sync) estimate, standing in for a
  legacy SDK or CPU-bound code; plait runs it on a worker thread.

The tools carry no policies: ``agents.py`` and ``agents.yaml`` give them
their names, limits, rate limit, retry and timeouts. ``agents.yaml`` names
them by import path (``"agents_tools:web_search"``), so this directory must
be on ``sys.path`` when it is loaded (``plait run`` puts it there).
"""

from __future__ import annotations

import math
import re
import threading
import time
import zlib
from typing import Any

import anyio

import plait

SIMULATED = "SIMULATED: no model, network or real service was used"

_STOP = (
    "a an and are can do does for how in is it keep of on or the to what when "
    "where which who why with"
)
STOPWORDS = frozenset(_STOP.split())

# What the simulated knowledge base knows; any other topic makes it hang.
KNOWLEDGE = {
    "agent": "an agent is a loop that asks a model what to do and calls tools",
    "pipeline": "a pipeline chains steps; plait runs each step in a task group",
    "rate": "a token bucket lets `burst` calls start at once, then `rate` per second",
    "limits": "a concurrency limit bounds the calls in flight per tool",
    "retries": "retries with backoff absorb transient errors such as resets",
    "timeouts": "a timeout is a cancel scope: the call is cancelled, not abandoned",
}


def _stable(text: str) -> int:
    """A hash that is the same in every process (``hash()`` is salted)."""
    return zlib.crc32(text.encode("utf-8"))


def _latency(kind: str, text: str, low: float, high: float) -> float:
    return low + (high - low) * (_stable(f"{kind}:{text}") % 1000) / 999


def keywords(question: str) -> list[str]:
    """The question's content words, in order, each once."""
    seen: dict[str, None] = {}
    for word in re.findall(r"[a-z]+", question.lower()):
        if len(word) > 3 and word not in STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)


# -- the "language model" ------------------------------------------------------


async def simulated_llm(task: str, payload: Any, question: str = "") -> Any:
    """SIMULATED language model: a canned planner, summarizer and writer.

    Args:
        task: ``"plan"`` (payload: the question), ``"summarize"`` (payload:
            search hits) or ``"answer"`` (payload: every finding; ``question``
            the question).
    """
    await anyio.sleep(_latency("llm", f"{task}:{payload!r}", 0.03, 0.06))
    if task == "plan":
        return _plan(str(payload))
    if task == "summarize":
        return _summarize(payload)
    if task == "answer":
        return _answer(question, payload)
    raise ValueError(f"simulated_llm: unknown task {task!r}")


def _plan(question: str) -> dict[str, Any]:
    words = keywords(question) or ["question"]
    return {
        "searches": words[:4],
        "lookups": words[-3:],
        "estimates": [
            {"name": "fan-out", "calls": 40 * len(words), "seconds": 0.05, "width": 8},
            {
                "name": "sequential",
                "calls": 40 * len(words),
                "seconds": 0.05,
                "width": 1,
            },
        ],
    }


def _summarize(hits: list[dict[str, str]]) -> dict[str, Any]:
    query = hits[0]["query"] if hits else "?"
    return {
        "query": query,
        "summary": f"on {query!r}, {len(hits)} sources were found and summarized",
        "sources": [h["url"] for h in hits],
    }


def _answer(question: str, findings: Any) -> dict[str, Any]:
    sentences: list[str] = []
    sources: list[str] = []
    gaps: list[str] = []

    def branch(name: str) -> list[Any]:
        value = findings.get(name, []) if isinstance(findings, dict) else []
        if isinstance(value, plait.Failure):
            gaps.append(f"{name}: {type(value.error).__name__}: {value.error}")
            return []
        return list(value)

    for item in branch("research"):
        if isinstance(item, plait.Failure):
            gaps.append(f"search at {item.path}: {item.error}")
        else:
            sentences.append(item["summary"].capitalize() + ".")
            sources += item["sources"]
    for item in branch("knowledge"):
        if isinstance(item, plait.Failure):
            gaps.append(f"knowledge base at {item.path}: {item.error}")
        else:
            sentences.append(f"{item['topic'].capitalize()}: {item['fact']}.")
    for item in branch("numbers"):
        if isinstance(item, plait.Failure):
            gaps.append(f"estimate at {item.path}: {item.error}")
        else:
            sentences.append(
                f"Estimate {item['name']!r}: {item['calls']} calls of "
                f"{item['seconds'] * 1000:.0f} ms, {item['width']} at a time, take "
                f"about {item['wall_seconds']:.2f} s."
            )
    return {
        "question": question,
        "answer": " ".join(sentences),
        "sources": sources,
        "gaps": gaps,
        "note": SIMULATED,
    }


# -- the tools -----------------------------------------------------------------


class FlakyBackend:
    """SIMULATED unreliable service: for some queries every other request fails.

    Which queries are flaky depends only on the query text, and the failing
    request is always the odd-numbered one for that query, so a run that
    retries once after each failure sees the same failures every time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, int] = {}

    @staticmethod
    def is_flaky(query: str) -> bool:
        """Whether the service drops every other request for ``query``."""
        return _stable(query) % 2 == 0

    def respond(self, query: str) -> None:
        """Raise ``ConnectionError`` when this request is one that fails."""
        if not self.is_flaky(query):
            return
        with self._lock:
            count = self._requests[query] = self._requests.get(query, 0) + 1
        if count % 2 == 1:
            raise ConnectionError(f"simulated connection reset searching {query!r}")


SEARCH_BACKEND = FlakyBackend()
"""The one simulated search service of this process."""


async def web_search(query: str) -> list[dict[str, str]]:
    """SIMULATED web search: two or three made-up hits, 20-50 ms; flaky."""
    await anyio.sleep(_latency("search", query, 0.02, 0.05))
    SEARCH_BACKEND.respond(query)
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")
    return [
        {
            "query": query,
            "title": f"{query.capitalize()} in practice, part {i + 1}",
            "url": f"https://{slug}.example.invalid/{i + 1}",
        }
        for i in range(2 + _stable(query) % 2)
    ]


async def kb_lookup(topic: str) -> dict[str, str]:
    """SIMULATED knowledge base: 15 ms for a known topic, hangs on others."""
    fact = KNOWLEDGE.get(topic)
    if fact is None:
        await anyio.sleep(30)  # an unresponsive backend: only a timeout ends this
        raise LookupError(topic)
    await anyio.sleep(0.015)
    return {"topic": topic, "fact": fact}


def crunch_numbers(estimate: dict[str, Any]) -> dict[str, Any]:
    """SIMULATED blocking computation (30 ms of ``time.sleep``): wall time of a job.

    A sync function: plait runs it on a worker thread, never on the loop.
    """
    time.sleep(0.03)
    rounds = math.ceil(estimate["calls"] / estimate["width"])
    return {**estimate, "wall_seconds": round(rounds * estimate["seconds"], 3)}
