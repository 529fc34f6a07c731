"""Word statistics of a text corpus: a map-reduce plait workflow.

It demonstrates a ``MapReduce`` whose map is a sync tool on worker threads
(the thread bridge), with a pure ``reduce`` folding the results in input
order and an ``initial`` value computed by a function for every run, and
the same workflow written twice: in Python here (:data:`CORPUS`) and as a
file, ``corpus.yaml``, loaded with :func:`plait.load`. Both give the same
result.

1. ``list_documents`` lists the corpus' ``*.txt`` files;
2. ``document_stats`` reads each one and counts its words, at most 8 at
   once (the map);
3. ``merge_counts`` folds each document's counts into the totals (the
   reduce);
4. ``summarize`` reports the top words and per-document statistics.

The corpus is synthetic and deterministic (see ``corpus_tools.py``): 24
documents under ``data/corpus/``, or ``--documents N --seed S`` to generate
a fresh one in a temporary directory.

Run it from the repository root::

    python workflows/corpus.py
    python workflows/corpus.py --yaml --backend trio
    python workflows/corpus.py --documents 500 --seed 7 --top 5
    plait run workflows/corpus.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

import plait
from corpus_tools import (
    DEFAULT_SEED,
    document_stats,
    empty_totals,
    generate_corpus,
    list_documents,
    merge_counts,
    summarize,
)

BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
YAML_FILE = Path(__file__).resolve().parent / "corpus.yaml"


def build_workflow(directory: str | None = None, top: int = 10) -> plait.Workflow:
    """The corpus workflow over ``directory`` (default: the shipped corpus)."""
    listing = (
        plait.Call(list_documents, name="paths")
        if directory is None
        else plait.Call(list_documents, directory, name="paths")
    )
    return plait.Workflow(
        plait.Sequential(
            listing,
            plait.MapReduce(
                over=plait.Var("paths"),
                map=plait.Call(document_stats, plait.Var("item")),
                reduce=merge_counts,
                initial=plait.Fn(empty_totals),
                max_concurrency=8,
                name="totals",
            ),
            plait.Call(summarize, plait.Var("totals"), top=top),
        ),
        name="corpus-stats",
        description=(
            "Count the words of every document of a text corpus on worker "
            "threads, fold the counts together, and report the top words and "
            "per-document statistics."
        ),
    )


CORPUS = build_workflow()
"""The workflow over the shipped corpus: equal to ``plait.load("corpus.yaml")``."""


async def analyse(workflow: plait.Workflow) -> plait.RunResult:
    """Run the workflow inside an already running event loop (any backend)."""
    return await plait.Engine().execute(workflow)


def show(result: plait.RunResult, where: str) -> None:
    """Print the report."""
    report: dict[str, Any] = result.output
    print(
        f"corpus {where}: {report['documents']} documents, {report['words']} words, "
        f"{report['vocabulary']} distinct, {report['sentences']} sentences, "
        f"{report['mean_words']} words per document"
    )
    print("top words: " + ", ".join(f"{w} {n}" for w, n in report["top_words"]))
    print(f"longest: {report['longest']}, most diverse: {report['most_diverse']}")
    print(f"{'document':<10} {'words':>6} {'unique':>6} {'diversity':>9}  top words")
    for doc in report["per_document"][:8]:
        print(
            f"{doc['document']:<10} {doc['words']:>6} {doc['unique']:>6} "
            f"{doc['diversity']:>9.3f}  {', '.join(doc['top'])}"
        )
    if len(report["per_document"]) > 8:
        print(f"... and {len(report['per_document']) - 8} more")
    stats = result.stats.tools["document_stats"]
    p50 = (stats.p50 or 0.0) * 1000
    print(
        f"document_stats: {stats.calls} calls on worker threads, p50 {p50:.2f} ms; "
        f"run took {result.stats.duration:.3f} s"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the workflow, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    parser.add_argument(
        "--yaml", action="store_true", help="run corpus.yaml instead (plait.load)"
    )
    parser.add_argument(
        "--documents", type=int, help="generate a corpus of N documents instead"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--top", type=int, default=10, help="how many top words")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.yaml and (args.documents is not None or args.top != 10):
        parser.error("--yaml runs corpus.yaml as it is: no --documents or --top")

    backend, options = BACKENDS[args.backend]
    with tempfile.TemporaryDirectory(prefix="plait-corpus-") as scratch:
        if args.yaml:
            workflow, where = plait.load(YAML_FILE), f"(from {YAML_FILE.name})"
        elif args.documents is not None:
            generate_corpus(scratch, args.documents, args.seed)
            workflow = build_workflow(scratch, args.top)
            where = f"(generated, seed {args.seed})"
        else:
            workflow, where = build_workflow(top=args.top), "(data/corpus)"
        result = anyio.run(analyse, workflow, backend=backend, backend_options=options)
    if args.json:
        print(json.dumps(result.output, indent=2))
    else:
        show(result, where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
