"""Audit every Python file under a directory: a fan-out/fan-in plait workflow.

One tool lists the files, a sync tool reads and checks each file on a worker
thread (parsing with ``ast``), and a reduce folds the per-file reports into a
summary, in input order, with at most ``--concurrency`` files in flight.

Run it from the repository root::

    python workflows/code_audit.py                 # audits plait's own source
    python workflows/code_audit.py path/to/project --backend trio
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

import anyio

import plait

BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "src"
LONG_LINE = 100


@plait.tool
def list_python_files(root: str) -> list[str]:
    """Every ``*.py`` file under ``root``, sorted, skipping hidden and venv dirs."""
    base = Path(root)
    if not base.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    skip = {".venv", "venv", ".git", ".tox", "__pycache__", "node_modules"}
    return sorted(
        str(p)
        for p in base.rglob("*.py")
        if not any(
            part in skip or part.startswith(".")
            for part in p.relative_to(base).parts[:-1]
        )
    )


@plait.tool(concurrency_limit=8, timeout=10.0)
def audit_file(path: str) -> dict[str, Any]:
    """Read one file and report its size, definitions and problems."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    problems = []
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as error:
        return {
            "path": path,
            "lines": len(lines),
            "functions": 0,
            "classes": 0,
            "undocumented": 0,
            "problems": [f"syntax error: {error.msg} (line {error.lineno})"],
        }
    functions = sum(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(tree)
    )
    classes = sum(isinstance(n, ast.ClassDef) for n in ast.walk(tree))
    # Public API: module-level definitions and the methods of module-level classes.
    public = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    public += [m for c in public for m in c.body]
    public += tree.body
    undocumented = 0
    for node in public:
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and not node.name.startswith("_")
            and ast.get_docstring(node) is None
        ):
            undocumented += 1
            problems.append(
                f"line {node.lineno}: public {node.name!r} has no docstring"
            )
    for number, line in enumerate(lines, 1):
        if len(line) > LONG_LINE:
            problems.append(f"line {number}: {len(line)} characters")
        if "TODO" in line or "FIXME" in line:
            problems.append(f"line {number}: {line.strip()[:60]}")
    return {
        "path": path,
        "lines": len(lines),
        "functions": functions,
        "classes": classes,
        "undocumented": undocumented,
        "problems": problems,
    }


def merge_reports(summary: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """Fold one file's report into the running summary (a pure function)."""
    return {
        "files": summary["files"] + 1,
        "lines": summary["lines"] + report["lines"],
        "functions": summary["functions"] + report["functions"],
        "classes": summary["classes"] + report["classes"],
        "undocumented": summary["undocumented"] + report["undocumented"],
        "largest": max(summary["largest"], (report["lines"], report["path"])),
        "problems": summary["problems"]
        + [f"{report['path']}: {p}" for p in report["problems"]],
    }


EMPTY = {
    "files": 0,
    "lines": 0,
    "functions": 0,
    "classes": 0,
    "undocumented": 0,
    "largest": (0, ""),
    "problems": [],
}

WORKFLOW = plait.Workflow(
    plait.Sequential(
        plait.Call("list_python_files", plait.Var("root"), name="files"),
        plait.MapReduce(
            over=plait.Var("files"),
            map=plait.Call("audit_file", plait.Var("path")),
            item="path",
            reduce="merge_reports",
            initial=plait.Lit(EMPTY),
            max_concurrency=8,
            on_error="collect",
        ),
    ),
    name="code-audit",
    inputs=("root",),
    description="Audit every Python file under a directory.",
)


def make_engine() -> plait.Engine:
    """The engine this workflow needs: its tools and its reduce function."""
    return plait.Engine(
        tools=[list_python_files, audit_file], functions=[merge_reports]
    )


async def audit(root: str) -> plait.RunResult:
    """Run the audit inside an already running event loop (any backend)."""
    return await make_engine().execute(WORKFLOW, {"root": root})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(DEFAULT_ROOT))
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    backend, options = BACKENDS[args.backend]
    result = anyio.run(audit, args.root, backend=backend, backend_options=options)
    summary = result.output
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"audited {summary['files']} Python files under {args.root}")
    print(
        f"  {summary['lines']} lines, {summary['functions']} functions, "
        f"{summary['classes']} classes"
    )
    print(f"  largest: {summary['largest'][1]} ({summary['largest'][0]} lines)")
    print(f"  public definitions without a docstring: {summary['undocumented']}")
    print(f"  problems: {len(summary['problems'])}")
    for line in summary["problems"][:10]:
        print(f"    {line}")
    for failure in result.failures:
        print(f"  could not audit {failure.path}: {failure.error}", file=sys.stderr)
    stats = result.stats.tools["audit_file"]
    print(
        f"  audit_file: {stats.calls} calls, p50 {stats.p50 * 1000:.2f} ms, "
        f"p95 {stats.p95 * 1000:.2f} ms, run took {result.stats.duration:.2f} s"
    )
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
