"""Audit every Python file under a directory: a fan-out/fan-in plait workflow.

One tool lists the files; then, for each file, two checks run side by side
(a ``Parallel`` inside the ``MapReduce``'s map step):

- a sync tool reads the file and checks it with ``ast`` on a worker thread
  (the thread bridge): size, definitions, missing docstrings, long lines;
- the ready-made ``plait.tools.shell`` tool compiles it to bytecode in a
  separate interpreter, a real subprocess (``python -I -W error -c
  "compile(...)" FILE``) with warnings as errors, so that an invalid escape
  sequence fails too. The shell tool runs at most 4 of them at once, each in
  a temporary directory of its own that is removed afterwards; nothing is
  written next to the audited files.

A reduce folds each file's pair of results into one report, in input order,
with at most 8 files in flight; a file that cannot be checked at all becomes
a ``plait.Failure`` (collect mode) instead of stopping the audit.

Run it from the repository root::

    python workflows/code_audit.py                 # audits plait's own source
    python workflows/code_audit.py path/to/project --backend trio
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import threading
from pathlib import Path
from typing import Any

import anyio

import plait
from plait.tools import ShellResult

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


_PARSE_LOCK = threading.Lock()
Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _public_definitions(path: str, tree: ast.Module) -> list[Definition]:
    """Public module-level definitions and methods of public classes.

    A private module (``_name.py``) has none, and ``@overload`` stubs are
    not definitions that need their own docstring.
    """
    if Path(path).name.startswith("_") and Path(path).name != "__init__.py":
        return []
    found: list[Definition] = []
    for node in tree.body:
        if not isinstance(node, Definition) or node.name.startswith("_"):
            continue
        found.append(node)
        if isinstance(node, ast.ClassDef):
            found += [
                m
                for m in node.body
                if isinstance(m, Definition) and not m.name.startswith("_")
            ]
    return [n for n in found if not _is_overload(n)]


def _is_overload(node: Definition) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id == "overload")
        or (isinstance(d, ast.Attribute) and d.attr == "overload")
        for d in node.decorator_list
    )


@plait.tool(concurrency_limit=8, timeout=10.0)
def audit_file(path: str) -> dict[str, Any]:
    """Read one file and report its size, definitions and problems."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    problems = []
    try:
        # CPython 3.11's parser is not safe to run in several threads at once
        # (it can fail with "AST constructor recursion depth mismatch").
        with _PARSE_LOCK:
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
    undocumented = 0
    for node in _public_definitions(path, tree):
        if ast.get_docstring(node) is None:
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


def merge_reports(summary: dict[str, Any], checks: dict[str, Any]) -> dict[str, Any]:
    """Fold one file's two checks into the running summary (a pure function)."""
    report: dict[str, Any] = checks["report"]
    compiled: ShellResult = checks["compiled"]
    problems = list(report["problems"])
    if not compiled.ok:
        lines = compiled.stderr.strip().splitlines() or [f"exit {compiled.returncode}"]
        problems.append(f"does not compile with -W error: {lines[-1]}")
    return {
        "files": summary["files"] + 1,
        "lines": summary["lines"] + report["lines"],
        "functions": summary["functions"] + report["functions"],
        "classes": summary["classes"] + report["classes"],
        "undocumented": summary["undocumented"] + report["undocumented"],
        "largest": max(summary["largest"], (report["lines"], report["path"])),
        "compiled": summary["compiled"] + compiled.ok,
        "problems": summary["problems"] + [f"{report['path']}: {p}" for p in problems],
    }


EMPTY = {
    "files": 0,
    "lines": 0,
    "functions": 0,
    "classes": 0,
    "undocumented": 0,
    "largest": (0, ""),
    "compiled": 0,
    "problems": [],
}

# Compile in a fresh, isolated interpreter with warnings as errors. Unlike
# `python -m py_compile`, this writes no .pyc next to the audited file.
COMPILE_SCRIPT = (
    "import pathlib, sys; "
    "compile(pathlib.Path(sys.argv[1]).read_bytes(), sys.argv[1], 'exec')"
)
COMPILE = plait.Call(
    "shell",
    [sys.executable, "-I", "-W", "error", "-c", COMPILE_SCRIPT, plait.Var("path")],
)

WORKFLOW = plait.Workflow(
    plait.Sequential(
        plait.Call("list_python_files", plait.Var("root"), name="files"),
        plait.MapReduce(
            over=plait.Var("files"),
            map=plait.Parallel(
                report=plait.Call("audit_file", plait.Var("path")),
                compiled=COMPILE,
            ),
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
        tools=[list_python_files, audit_file, plait.tools.shell],
        functions=[merge_reports],
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
    print(
        f"  compiled with -W error in subprocesses: {summary['compiled']} of "
        f"{summary['files']} files ok"
    )
    print(f"  problems: {len(summary['problems'])}")
    shown = 10
    for line in summary["problems"][:shown]:
        print(f"    {line}")
    if len(summary["problems"]) > shown:
        print(f"    ... and {len(summary['problems']) - shown} more (--json shows all)")
    for failure in result.failures:
        print(f"  could not audit {failure.path}: {failure.error}", file=sys.stderr)
    for name in ("audit_file", "shell"):
        stats = result.stats.tools.get(name)
        if stats is not None and stats.p50 is not None and stats.p95 is not None:
            print(
                f"  {name}: {stats.calls} calls, p50 {stats.p50 * 1000:.2f} ms, "
                f"p95 {stats.p95 * 1000:.2f} ms"
            )
    print(f"  run took {result.stats.duration:.2f} s")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
