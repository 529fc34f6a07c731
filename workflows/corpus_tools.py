"""Tools and functions of the corpus workflow (``corpus.py``, ``corpus.yaml``).

``corpus.yaml`` names them by import path (``"corpus_tools:document_stats"``),
so this directory must be on ``sys.path`` when it is loaded: running
``python workflows/corpus.py`` does that, and so does ``plait run``.

The corpus itself is synthetic: :func:`generate_corpus` writes documents
built from a fixed vocabulary with a seeded random generator, so the same
seed always gives the same bytes. ``data/corpus/`` holds 24 documents made
with the default seed (``python workflows/corpus_tools.py`` rewrites them).
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import plait

DATA_DIR = Path(__file__).resolve().parent / "data" / "corpus"
DEFAULT_DOCUMENTS = 24
DEFAULT_SEED = 2024

# -- the synthetic corpus ------------------------------------------------------

TOPICS = {
    "harbor": "ship tide pier lantern gull rope sailor fog cargo anchor",
    "orchard": "apple ladder blossom bee basket frost pruner cider root branch",
    "observatory": "telescope comet lens dome star orbit chart night mirror clock",
    "market": "stall coin spice merchant bread scale awning crowd ledger cart",
    "library": "book shelf reader lamp index page archive scribe ink catalogue",
    "mountain": "ridge glacier pass goat cairn snow summit boulder trail hut",
}
WORDS = {
    "adjectives": "old quiet bright narrow heavy small distant patient green cold "
    "early careful broken golden hidden",
    "verbs": "watches carries finds follows mends counts guards crosses opens keeps "
    "marks gathers",
    "places": "valley town road coast square bridge gate field",
    "names": "Ada Bruno Chen Dara Emil Farah Ines Jonas",
    "prepositions": "near beyond across under beside toward",
    "stopwords": "a an and at by every in of the to while before",
}
ADJECTIVES = WORDS["adjectives"].split()
VERBS = WORDS["verbs"].split()
ADVERBS = ["slowly", "again", "carefully", "at once", "in silence", "before dawn"]
PLACES = WORDS["places"].split()
NAMES = WORDS["names"].split()
PREPOSITIONS = WORDS["prepositions"].split()
TEMPLATES = (
    "The {adj} {noun} {verb} the {noun2} {prep} the {place}.",
    "A {noun} {verb} the {adj} {noun2}, and the {noun3} {verb2} {adv}.",
    "{name} {verb} the {noun} {prep} the {adj} {place}.",
    "Every {noun} in the {place} {verb} a {adj} {noun2}.",
    "By the {place}, the {noun} {verb} {adv} while {name} {verb2} the {noun2}.",
)
ARTICLE = re.compile(r"\ba ([aeiou])")


def _pick(rng: random.Random, words: list[str]) -> str:
    """A Zipf-weighted choice: the first word is the most common.

    Only ``rng.random()`` is used, whose sequence Python keeps stable for a
    seed, so the corpus is the same on every Python version.
    """
    weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))
    return words[bisect.bisect(weights, rng.random() * weights[-1])]


def make_document(index: int, seed: int = DEFAULT_SEED) -> str:
    """The text of document ``index`` of the corpus of ``seed``."""
    rng = random.Random(seed * 1_000_003 + index)
    topic = sorted(TOPICS)[index % len(TOPICS)]
    nouns = TOPICS[topic].split()
    paragraphs = []
    for _ in range(3 + int(rng.random() * 3)):
        sentences = []
        for _ in range(4 + int(rng.random() * 4)):
            template = TEMPLATES[int(rng.random() * len(TEMPLATES))]
            text = template.format(
                adj=_pick(rng, ADJECTIVES),
                noun=_pick(rng, nouns),
                noun2=_pick(rng, nouns),
                noun3=_pick(rng, nouns),
                verb=_pick(rng, VERBS),
                verb2=_pick(rng, VERBS),
                adv=_pick(rng, ADVERBS),
                prep=_pick(rng, PREPOSITIONS),
                place=_pick(rng, PLACES),
                name=_pick(rng, NAMES),
            )
            text = ARTICLE.sub(r"an \1", text)
            sentences.append(text[0].upper() + text[1:])
        paragraphs.append(" ".join(sentences))
    return f"# {topic} {index:03d}\n\n" + "\n\n".join(paragraphs) + "\n"


def generate_corpus(
    directory: str | Path,
    documents: int = DEFAULT_DOCUMENTS,
    seed: int = DEFAULT_SEED,
) -> list[str]:
    """Write ``documents`` text files into ``directory``; return their paths."""
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(documents):
        path = base / f"doc-{i:03d}.txt"
        path.write_text(make_document(i, seed), encoding="utf-8")
        paths.append(str(path))
    return paths


# -- the tools -----------------------------------------------------------------

STOPWORDS = frozenset(WORDS["stopwords"].split() + [n.lower() for n in NAMES])
WORD = re.compile(r"[a-z']+")


@plait.tool
def list_documents(directory: str | None = None) -> list[str]:
    """The ``*.txt`` files of ``directory`` (default: the shipped corpus), sorted."""
    base = Path(directory) if directory is not None else DATA_DIR
    if not base.is_dir():
        raise NotADirectoryError(f"corpus directory not found: {base}")
    return sorted(str(p) for p in base.glob("*.txt"))


@plait.tool(concurrency_limit=8)
def document_stats(path: str) -> dict[str, Any]:
    """Read one document (on a worker thread) and count its words (the map)."""
    text = Path(path).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    words = WORD.findall(body.lower())
    counts = Counter(words)
    content = Counter({w: n for w, n in counts.items() if w not in STOPWORDS})
    return {
        "document": Path(path).stem,
        "words": len(words),
        "unique": len(counts),
        "sentences": body.count("."),
        "top": [w for w, _ in _top(content, 3)],
        "counts": dict(counts),
    }


def empty_totals() -> dict[str, Any]:
    """The start of the fold: a fresh, empty accumulator for every run."""
    return {"documents": [], "counts": {}}


def merge_counts(totals: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Fold one document's stats into the totals (the reduce; a pure function)."""
    counts = Counter(totals["counts"])
    counts.update(stats["counts"])
    document = {k: v for k, v in stats.items() if k != "counts"}
    return {"documents": [*totals["documents"], document], "counts": dict(counts)}


@plait.tool
def summarize(totals: dict[str, Any], top: int = 10) -> dict[str, Any]:
    """The corpus report: totals, the top content words, per-document stats."""
    documents = totals["documents"]
    counts = Counter(totals["counts"])
    content = Counter({w: n for w, n in counts.items() if w not in STOPWORDS})
    words = sum(counts.values())

    def diversity(d: dict[str, Any]) -> float:
        return round(d["unique"] / d["words"], 3) if d["words"] else 0.0

    return {
        "documents": len(documents),
        "words": words,
        "vocabulary": len(counts),
        "sentences": sum(d["sentences"] for d in documents),
        "mean_words": round(words / len(documents), 1) if documents else 0.0,
        "top_words": [[w, n] for w, n in _top(content, top)],
        "longest": max(documents, key=lambda d: d["words"])["document"]
        if documents
        else None,
        "most_diverse": max(documents, key=diversity)["document"]
        if documents
        else None,
        "per_document": [{**d, "diversity": diversity(d)} for d in documents],
    }


def _top(counts: Counter[str], n: int) -> list[tuple[str, int]]:
    """The ``n`` most common words, ties broken alphabetically (deterministic)."""
    return sorted(counts.items(), key=lambda wn: (-wn[1], wn[0]))[:n]


if __name__ == "__main__":
    # Rewrite the shipped corpus (it must not change unless the generator does).
    written = generate_corpus(DATA_DIR)
    print(f"wrote {len(written)} documents to {DATA_DIR}", file=sys.stderr)
