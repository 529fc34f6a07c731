"""The example workflows under workflows/ run, and their YAML forms agree."""

from __future__ import annotations

import importlib
import re
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import plait

pytestmark = pytest.mark.anyio

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"


@pytest.fixture
def workflows(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Import an example by module name, with workflows/ on sys.path.

    ``plait run`` puts a YAML file's directory on ``sys.path`` so that its
    import paths (``corpus_tools:...``) resolve; the examples rely on it.
    """
    monkeypatch.syspath_prepend(str(WORKFLOWS))

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)

    return load


# -- code_audit.py -------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="the shell tool needs POSIX")
@pytest.mark.filterwarnings("ignore:invalid escape sequence")  # ast.parse's own
async def test_code_audit_checks_files_with_ast_and_subprocesses(
    workflows: Any, tmp_path: Path
) -> None:
    code_audit = workflows("code_audit")
    (tmp_path / "good.py").write_text('"""Fine."""\n\n\ndef f():\n    """Doc."""\n')
    (tmp_path / "todo.py").write_text("x = 1  # TODO: more\n")
    # Valid syntax, but a warning that -W error turns into a compile error.
    (tmp_path / "escape.py").write_text('pattern = "\\d+"\n')
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "skipped.py").write_text("def f(:\n")

    result = await code_audit.audit(str(tmp_path))

    assert result.ok
    summary = result.output
    assert summary["files"] == 4
    assert summary["compiled"] == 2
    problems = "\n".join(summary["problems"])
    assert "todo.py: line 1: x = 1  # TODO: more" in problems
    assert "broken.py: syntax error" in problems
    assert re.search(r"escape\.py: does not compile with -W error: .*escape", problems)
    assert re.search(r"broken\.py: does not compile with -W error", problems)
    assert "good.py" not in problems
    assert "skipped" not in problems
    assert result.stats.tools["shell"].calls == 4
    assert result.stats.tools["audit_file"].calls == 4


@pytest.mark.skipif(sys.platform == "win32", reason="the shell tool needs POSIX")
def test_code_audit_main_with_no_arguments(
    workflows: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code_audit = workflows("code_audit")
    assert code_audit.main([]) == 0
    out = capsys.readouterr().out
    assert re.search(r"audited \d+ Python files under .*src", out)
    assert "compiled with -W error in subprocesses" in out
    assert re.search(r"shell: \d+ calls", out)


# -- corpus.py / corpus.yaml ----------------------------------------------------


def reference_report(directory: Path) -> tuple[int, int, list[list[Any]]]:
    """Documents, words and the top 10 content words, by plain Python."""
    corpus_tools = sys.modules["corpus_tools"]
    counts: Counter[str] = Counter()
    paths = sorted(directory.glob("*.txt"))
    for path in paths:
        body = "\n".join(
            line for line in path.read_text().splitlines() if not line.startswith("#")
        )
        counts.update(re.findall(r"[a-z']+", body.lower()))
    content = [[w, n] for w, n in counts.items() if w not in corpus_tools.STOPWORDS]
    content.sort(key=lambda wn: (-wn[1], wn[0]))
    return len(paths), sum(counts.values()), content[:10]


async def test_corpus_python_and_yaml_forms_agree(workflows: Any) -> None:
    corpus = workflows("corpus")
    loaded = plait.load(WORKFLOWS / "corpus.yaml")
    assert loaded == corpus.CORPUS
    assert plait.load(plait.dump(corpus.CORPUS)) == corpus.CORPUS

    from_python = await corpus.analyse(corpus.CORPUS)
    from_yaml = await corpus.analyse(loaded)

    assert from_python.ok
    assert from_yaml.output == from_python.output
    report = from_python.output
    documents, words, top = reference_report(WORKFLOWS / "data" / "corpus")
    assert (report["documents"], report["words"]) == (documents, words) == (24, words)
    assert report["top_words"] == top
    assert [d["document"] for d in report["per_document"]] == [
        f"doc-{i:03d}" for i in range(24)
    ]
    assert sum(d["words"] for d in report["per_document"]) == words
    assert from_python.stats.tools["document_stats"].calls == 24


def test_shipped_corpus_is_what_the_generator_writes(
    workflows: Any, tmp_path: Path
) -> None:
    corpus_tools = workflows("corpus_tools")
    written = corpus_tools.generate_corpus(tmp_path)
    shipped = sorted((WORKFLOWS / "data" / "corpus").glob("*.txt"))
    assert [Path(p).name for p in written] == [p.name for p in shipped]
    for new, old in zip(written, shipped, strict=True):
        assert Path(new).read_bytes() == old.read_bytes()
    size = sum(p.stat().st_size for p in (WORKFLOWS / "data").rglob("*") if p.is_file())
    assert size < 200_000


def test_corpus_main(workflows: Any, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = workflows("corpus")
    assert corpus.main(["--documents", "40", "--seed", "3", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "corpus (generated, seed 3): 40 documents" in out
    assert (
        out.count(
            ",", out.index("top words:"), out.index("\n", out.index("top words:"))
        )
        == 4
    )
    assert corpus.main(["--yaml", "--backend", "trio"]) == 0
    assert "corpus (from corpus.yaml): 24 documents" in capsys.readouterr().out


# -- agents.py / agents.yaml -----------------------------------------------------


async def test_agents_python_and_yaml_forms_agree(workflows: Any) -> None:
    agents = workflows("agents")
    loaded = plait.load(WORKFLOWS / "agents.yaml")
    assert loaded == agents.AGENTS

    log: list[str] = []
    from_python = await agents.ask(agents.AGENTS, agents.QUESTION, log)
    from_yaml = await agents.ask(loaded, agents.QUESTION)

    assert from_yaml.output == from_python.output
    answer = from_python.output
    assert "SIMULATED" in answer["note"]
    assert answer["answer"].startswith("On 'rate', 3 sources")
    assert len(answer["sources"]) == 10
    # The lookup of an unknown topic hangs; its timeout fires and collect
    # mode keeps everything else.
    assert len(answer["gaps"]) == 1
    assert "timed out after 0.15s" in answer["gaps"][0]
    for result in (from_python, from_yaml):
        (failure,) = result.failures
        assert isinstance(failure.error, plait.ToolTimeout)
        assert failure.path == "steps[1].steps.knowledge.map[2]"
        tools = result.stats.tools
        assert tools["search"].retries == 2  # the flaky queries, retried once
        assert tools["search"].failures == 0
        assert tools["lookup"].timeouts == 1
        assert tools["llm"].calls == 6
        assert tools["llm"].rate_limited >= 1
        assert tools["crunch"].calls == 2
    assert sum("call.retried search" in line for line in log) == 2


def test_agents_main(workflows: Any, capsys: pytest.CaptureFixture[str]) -> None:
    agents = workflows("agents")
    assert agents.main(["--backend", "trio", "--question", "Why use retries?"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[SIMULATED")
    assert "answer:" in out
    assert "retries" in out


# -- many_agents.py --------------------------------------------------------------


async def test_many_agents_keeps_order_and_every_output(workflows: Any) -> None:
    many_agents = workflows("many_agents")
    result = await many_agents.research_desk(agents=60, batch_size=8, timeout=0.3)
    outputs = result["outputs"]
    assert len(outputs) == 60
    failures = {f.path: type(f.error) for f in result["failures"]}
    assert failures == {"agents[20]": ConnectionError, "agents[40]": plait.ToolTimeout}
    for i, out in enumerate(outputs):
        if f"agents[{i}]" not in failures:
            assert out.startswith(f"analyst-{i}: ")
    assert result["reports"] == 58  # every analyst that finished, counted once
    assert result["elapsed"] < 5  # the stuck analyst did not hold the run


def test_many_agents_main_prints_the_report(
    workflows: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    many_agents = workflows("many_agents")
    assert (
        many_agents.main(["--agents", "20", "--batch-size", "4", "--timeout", "0.3"])
        == 0
    )
    out = capsys.readouterr().out
    assert "20 analysts studied" in out
    assert "agents[6]: ConnectionError" in out
    assert "agents[13]: ToolTimeout" in out


# -- quota_fetch.py ------------------------------------------------------------


async def test_quota_fetch_gets_every_item_from_its_own_service(
    workflows: Any,
) -> None:
    quota_fetch = workflows("quota_fetch")
    found = await quota_fetch.fetch(80, 200.0)
    assert found["total_price"] == found["expected_price"]
    assert found["requests_seen"] >= 80
    assert found["requests_seen"] == 80 + found["pushed_back"]
    assert 1 <= found["limit"] <= 64


def test_quota_fetch_main(workflows: Any, capsys: pytest.CaptureFixture[str]) -> None:
    quota_fetch = workflows("quota_fetch")
    assert quota_fetch.main(["--items", "40", "--rate", "200"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"total price 1\d\d \(expected 1\d\d\)", out)
    assert "refused with 429" in out
    assert "the adaptive limit settled at" in out
