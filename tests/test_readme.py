"""The README and the docs tell the truth.

Every command in the README's ```bash blocks is either run here, as written, in a temporary
working directory laid out like the checkout (``evaluations/`` beside it, the shared data at
``../shared/data``), or listed in ``ELSEWHERE`` with the test or CI step that exercises it. A
```text block right after a ```bash block holds lines its last command must print.

What is substituted, and why: the servers get a free port instead of 5000/5001 (tests run in
parallel with other work), and ``../shared/data/scifact-train`` is a slice of the real SciFact
data (the first 50 judged claims, every abstract judged for them and distractors up to 500
abstracts) so the evaluation takes seconds, not minutes; ``MLFLOW_RAG_README_FULL=1`` uses the
full corpus instead. Everything else (the speakers CSV, the legacy JSON, MiniLM) is the real
thing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import shared_data_dir

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
VENV_BIN = Path(sys.executable).parent
OUTPUT_COLUMNS = ["query_index", "rank", "score", "chunk_id", "document_id", "chunk_type", "text",
                  "source_path", "metadata"]

# README command (its first words) -> where it is exercised, and a string that file must hold.
ELSEWHERE: dict[tuple[str, ...], tuple[str, str]] = {
    ("make", "demo"): ("tests/test_readme.py", "def test_make_demo_runs_the_demo_script_offline"),
    ("make", "test"): (".ci/run", "make test"),
    ("source", ".venv/bin/activate"): (
        "tests/test_readme.py", "PATH"),  # the walkthrough runs with the venv's bin first on PATH
    ("python", "scripts/screenshots.py"): (
        "tests/test_readme.py", "def test_the_screenshot_script_is_one_command_with_help"),
}
# The full SciFact grid: CI runs it through scripts/eval_scifact.sh after the tests.
FULL_GRID = "evaluations/scifact.yaml"
SERVERS = {("mlflow", "ui"): "/health", ("mlflow", "models", "serve"): "/ping"}


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence


@dataclass(frozen=True)
class Command:
    text: str
    line: int
    expected: tuple[str, ...] = ()  # lines its output must contain (from a ```text block)

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)


def fenced_blocks(path: Path) -> list[Block]:
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if match:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append(Block(match.group(1), "\n".join(lines[i + 1:end]), i + 1))
            i = end
        i += 1
    return blocks


def readme_commands() -> list[Command]:
    """The commands of the README's bash blocks (continuation lines joined, comments and
    blank lines skipped), each with the output lines a ```text block right after expects."""
    blocks = fenced_blocks(README)
    lines = README.read_text(encoding="utf-8").splitlines()
    commands: list[Command] = []
    for index, block in enumerate(blocks):
        if block.lang != "bash":
            continue
        pending, start = "", 0
        for offset, raw in enumerate(block.text.splitlines(), start=1):
            line = raw.rstrip()
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            start = start if pending else block.line + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            commands.append(Command(pending + line, start))
            pending = ""
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        if following and following.lang == "text":
            closing = block.line + len(block.text.splitlines()) + 1  # the closing fence
            if not any(line.strip() for line in lines[closing:following.line - 1]):
                expected = tuple(line for line in following.text.splitlines() if line.strip())
                commands[-1] = Command(commands[-1].text, commands[-1].line, expected)
    return commands


def how_exercised(command: Command) -> str:
    """'run' (here), 'server' (run here in the background) or 'elsewhere'."""
    words = command.words
    for prefix in ELSEWHERE:
        if tuple(words[:len(prefix)]) == prefix:
            return "elsewhere"
    if words[:2] == ["mlflow-rag", "evaluate"] and FULL_GRID in words:
        return "elsewhere"
    if any(tuple(words[:len(prefix)]) == prefix for prefix in SERVERS):
        return "server"
    if words[0] in ("mlflow-rag", "curl", "export"):
        return "run"
    return "unknown"


# --------------------------------------------------------------------------- fast checks


def test_readme_opens_with_make_demo_and_make_test() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# mlflow-rag"
    first = fenced_blocks(README)[0]
    assert first.line == 3 and first.lang == "bash"
    assert [line.split("#")[0].strip() for line in first.text.splitlines()] == ["make demo",
                                                                                "make test"]


def test_readme_says_what_it_is_and_for_whom_in_three_lines_after_the_commands() -> None:
    text = README.read_text(encoding="utf-8")
    paragraph = text.split("```\n\n", 1)[1].split("\n\n", 1)[0]
    assert len(paragraph.splitlines()) == 3
    assert "is the metadata store and evaluation harness" in paragraph
    assert "It is for" in paragraph


def test_the_walkthrough_goes_ingest_search_ui_evaluate_register_serve_curl() -> None:
    firsts = [" ".join(c.words[:2]) for c in readme_commands()]
    order = ["mlflow-rag ingest", "mlflow-rag search", "mlflow ui", "mlflow-rag evaluate",
             "mlflow-rag log-model", "mlflow models", "curl -s"]
    positions = [firsts.index(step) for step in order]
    assert positions == sorted(positions), firsts


def test_every_readme_command_is_run_here_or_exercised_elsewhere() -> None:
    commands = readme_commands()
    assert len(commands) >= 12
    unknown = [c.text for c in commands if how_exercised(c) == "unknown"]
    assert not unknown, f"add these README commands to tests/test_readme.py: {unknown}"
    for (_, (path, evidence)) in ELSEWHERE.items():
        assert evidence in (REPO / path).read_text(encoding="utf-8"), (path, evidence)
    # the full grid: .ci/run runs scripts/eval_scifact.sh, which evaluates that grid file
    assert "scripts/eval_scifact.sh" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    script = REPO / "scripts" / "eval_scifact.sh"
    assert script.is_file(), "the README's full-grid command is exercised by this script"
    assert FULL_GRID in script.read_text(encoding="utf-8")
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:.*\n\t.*bash scripts/demo\.sh", makefile, re.M)
    assert re.search(r"^test:.*\n\t.*-m \"not slow\".*\n\t.*-m slow", makefile, re.M)


@pytest.mark.parametrize("path", [README, *sorted(DOCS.glob("*.md"))],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_images_point_at_files_in_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    for link in links:
        if re.match(r"^[a-z]+://", link) or link.startswith(("#", "mailto:")):
            continue
        target = (path.parent / link.split("#")[0]).resolve()
        assert target.exists(), f"{path.name}: {link} does not exist"
        if link.endswith(".png"):
            assert target.stat().st_size > 10_000 and target.read_bytes()[:4] == b"\x89PNG"


def test_the_readme_shows_the_pictures_the_screenshot_script_makes() -> None:
    text = README.read_text(encoding="utf-8")
    for name in ("mlflow-compare.png", "metrics_by_variant.png", "recall_at_k.png"):
        assert f"](docs/images/{name})" in text
    script = (REPO / "scripts" / "screenshots.py").read_text(encoding="utf-8")
    assert "mlflow-compare.png" in script and '"plots"' in script


def test_the_screenshot_script_is_one_command_with_help() -> None:
    result = subprocess.run([sys.executable, "scripts/screenshots.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--chromium" in result.stdout


def environment_variables_in_code() -> set[str]:
    found: set[str] = set()
    patterns = (r"environ(?:\.get|\.setdefault)?\(\s*\"([A-Z][A-Z0-9_]+)\"",
                r"environ\[\s*\"([A-Z][A-Z0-9_]+)\"\s*\]", r"getenv\(\s*\"([A-Z][A-Z0-9_]+)\"",
                r"^\w*ENV\w* = \"([A-Z][A-Z0-9_]+)\"")
    for path in (REPO / "mlflow_rag").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for pattern in patterns:
            found.update(re.findall(pattern, text, re.M))
    return found


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    names = environment_variables_in_code()
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_RAG_QUERY_LOG", "OPENAI_API_KEY"} <= names
    documented = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = sorted(n for n in names if f"`{n}`" not in documented)
    assert not missing, f"add to docs/configuration.md: {missing}"


def test_every_mlflow_rag_variable_of_scripts_and_tests_is_documented() -> None:
    documented = (DOCS / "configuration.md").read_text(encoding="utf-8")
    names: set[str] = set()
    for folder, pattern in (("scripts", "*"), ("tests", "*.py"), ("benchmarks", "*.py")):
        for path in (REPO / folder).glob(pattern):
            if path.is_file():
                names.update(re.findall(r"\b(MLFLOW_RAG_[A-Z_]+)\b", path.read_text("utf-8")))
    missing = sorted(n for n in names if f"`{n}`" not in documented)
    assert not missing, f"add to docs/configuration.md: {missing}"


def test_the_store_doc_names_every_table_of_the_schema_snapshot() -> None:
    schema = (REPO / "tests" / "snapshots" / "schema.sql").read_text(encoding="utf-8")
    store_doc = (DOCS / "store.md").read_text(encoding="utf-8")
    assert "tests/snapshots/schema.sql" in store_doc
    tables = re.findall(r"^CREATE (?:VIRTUAL )?TABLE (\w+)", schema, re.M)
    assert len(tables) >= 10
    for table in tables:
        assert f"`{table}`" in store_doc, f"docs/store.md does not describe table {table}"


def test_every_filter_example_in_the_filters_doc_compiles() -> None:
    from mlflow_rag.store.sqlite.filter_sql import compile_filter

    examples = [b.text for b in fenced_blocks(DOCS / "filters.md") if b.lang == "json"]
    assert len(examples) >= 5
    for example in examples:
        compile_filter(example)


def test_the_python_api_doc_names_functions_that_exist() -> None:
    import importlib

    text = (DOCS / "python-api.md").read_text(encoding="utf-8")
    names = set(re.findall(r"`(mlflow_rag(?:\.\w+)+)", text))
    assert len(names) >= 8
    for name in sorted(names):
        module, _, attribute = name.rpartition(".")
        try:
            target = importlib.import_module(name)
        except ImportError:
            target = getattr(importlib.import_module(module), attribute, None)
        assert target is not None, f"docs/python-api.md names {name}, which does not exist"


def test_the_serving_doc_lists_the_response_columns_in_order() -> None:
    from mlflow_rag.serving import OUTPUT_COLUMNS as served

    assert list(served) == OUTPUT_COLUMNS
    text = (DOCS / "serving.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| (?:int|float|string) \|", text, re.M)
    assert rows == OUTPUT_COLUMNS
    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert ", ".join(OUTPUT_COLUMNS) in readme


# --------------------------------------------------------------------------- the walkthrough


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def background(command: str, *, cwd: Path, env: dict[str, str], health: str,
               log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server started by this test in its own process group, stopped (the group) on exit."""
    with open(log, "wb") as out:
        process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, f"{command!r} exited:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as reply:
                if reply.status == 200:
                    break
            assert time.monotonic() < deadline, f"no answer from {health}"
            time.sleep(1)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return dict(json.loads(reply.read()))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """``ROOT/work`` (the working directory, laid out like the checkout) and
    ``ROOT/shared/data`` (the real speakers data; SciFact sliced unless asked for in full)."""
    from scripts.screenshots import scifact_slice

    data = shared_data_dir()
    needed = [data / "chatboti" / "2025-09-02-speaker-bio.csv", data / "scifact-train"]
    for path in needed:
        if not path.exists():
            pytest.skip(f"{path} not found (set MLFLOW_RAG_SHARED_DATA): the README uses it")
    root = tmp_path_factory.mktemp("readme")
    work, shared = root / "work", root / "shared" / "data"
    work.mkdir()
    shared.mkdir(parents=True)
    for name in ("evaluations", "examples", "scripts"):
        (work / name).symlink_to(REPO / name)
    (shared / "chatboti").symlink_to(data / "chatboti")
    if os.environ.get("MLFLOW_RAG_README_FULL") == "1":
        (shared / "scifact-train").symlink_to(data / "scifact-train")
    else:
        scifact_slice(data / "scifact-train", shared / "scifact-train", queries=50, corpus=500)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_EXPERIMENT", "MLFLOW_RUN"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg", TOKENIZERS_PARALLELISM="false",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", NO_PROXY="127.0.0.1,localhost")
    return work, env


def run(command: str, *, cwd: Path, env: dict[str, str], line: int) -> str:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, (
        f"README line {line}: {command}\nexit {result.returncode}\n{result.stderr[-3000:]}")
    return result.stdout


def check_runs_in_the_ui(url: str) -> None:
    """The ingest runs the README just made are what the UI's server shows."""
    experiments = post(f"{url}/api/2.0/mlflow/experiments/search", {"max_results": 100})
    by_name = {e["name"]: e["experiment_id"]
               for e in experiments["experiments"]}  # type: ignore[union-attr]
    assert "mlflow-rag" in by_name, by_name
    runs = post(f"{url}/api/2.0/mlflow/runs/search",
                {"experiment_ids": [by_name["mlflow-rag"]], "max_results": 100})
    kinds = [{t["key"]: t["value"] for t in r["data"]["tags"]}.get("mlflow_rag.run_type")
             for r in runs["runs"]]  # type: ignore[union-attr]
    assert kinds.count("ingest") >= 3, kinds  # speakers twice, legacy once


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(sandbox: tuple[Path, dict[str, str]]) -> None:
    work, base_env = sandbox
    env = dict(base_env)
    serve_port = free_port()
    with contextlib.ExitStack() as servers:
        for command in readme_commands():
            kind, words = how_exercised(command), command.words
            if kind == "elsewhere":
                continue
            if kind == "server":
                port = free_port() if words[1] == "ui" else serve_port
                text = command.text.replace("-p 5001", f"-p {port}")
                if words[1] == "ui":
                    text += f" --host 127.0.0.1 --port {port}"
                health = next(path for prefix, path in SERVERS.items()
                              if tuple(words[:len(prefix)]) == prefix)
                context = background(text, cwd=work, env=env, log=work / f"{words[1]}.log",
                                     health=f"http://127.0.0.1:{port}{health}")
                if words[1] == "ui":
                    with context:
                        check_runs_in_the_ui(f"http://127.0.0.1:{port}")
                else:
                    servers.enter_context(context)
                continue
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                env[name] = value
                continue
            text = command.text.replace("127.0.0.1:5001", f"127.0.0.1:{serve_port}")
            out = run(text, cwd=work, env=env, line=command.line)
            for expected in command.expected:
                assert expected in out.splitlines(), (
                    f"README line {command.line}: {command.text}\nexpected the line "
                    f"{expected!r} in:\n{out}")
            check_claims(command, out, cwd=work, env=env)


def check_claims(command: Command, out: str, *, cwd: Path, env: dict[str, str]) -> None:
    """What the README says around a command, checked on its real output."""
    words = command.words
    if words[:2] == ["mlflow-rag", "ingest"] and "--store" in words:
        again = run(command.text, cwd=cwd, env=env, line=command.line)  # "Run it again"
        assert "13 unchanged" in again and "0 embedded" in again, again
    elif words[:2] == ["mlflow-rag", "search"] and "--json" in words:
        hits = json.loads(out)
        assert hits and all(h["document_metadata"]["Country"] in ("Germany & UK", "UK")
                            for h in hits)
        for hit in hits:  # PII (the e-mail column) stays hidden
            assert "_pii" not in hit["document_metadata"]
            assert not re.search(r"[\w.+-]+@[\w-]+\.\w+", json.dumps(hit)), hit
    elif words[:2] == ["mlflow-rag", "search"]:
        assert out.splitlines()[0].startswith("  1. ")
    elif words[:2] == ["mlflow-rag", "ask"]:
        assert "Sources:" in out and out.splitlines()[-1].startswith("output id: "), out
    elif words[:2] == ["mlflow-rag", "feedback"]:  # the output id came from `ask`
        assert out.startswith("recorded feedback on ") and "(and on its trace)" in out, out
    elif words[:2] == ["mlflow-rag", "report"]:
        assert out.splitlines()[-1].startswith("report run "), out
    elif words[:2] == ["mlflow-rag", "evaluate"]:
        assert "best by ndcg_at_10:" in out and "evaluation run " in out
        assert all(name in out for name in ("bm25", "dense-tfidf", "hybrid-tfidf"))
    elif words[:2] == ["mlflow-rag", "log-model"]:
        assert "models:/speakers-retriever@champion" in out.splitlines()
    elif words[0] == "curl":
        body = json.loads(out)
        rows = body["predictions"]
        assert len(rows) == 3 and all(list(row) == OUTPUT_COLUMNS for row in rows)
        assert [row["rank"] for row in rows] == [1, 2, 3]


@pytest.mark.slow
def test_the_readme_python_example_runs(sandbox: tuple[Path, dict[str, str]]) -> None:
    work, env = sandbox
    code = "\n".join(b.text for b in fenced_blocks(README) if b.lang == "python")
    code += ("\nassert hits and all(h.document_metadata['Country'] == 'Germany & UK' for h in hits)"
             "\nassert doc.chunks and context and uk\n")
    (work / "readme_example.py").write_text(code, encoding="utf-8")
    out = run(f"{sys.executable} readme_example.py", cwd=work, env=env, line=0)
    ranks = [line.split()[0] for line in out.splitlines()]
    assert ranks == [str(i) for i in range(1, len(ranks) + 1)] and ranks, out


@pytest.mark.slow
def test_the_python_api_doc_examples_run_in_order(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(REPO / "examples")
    code = "\n".join(b.text for b in fenced_blocks(DOCS / "python-api.md") if b.lang == "python")
    (tmp_path / "api_examples.py").write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(MPLBACKEND="Agg", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    out = run(f"{sys.executable} api_examples.py", cwd=tmp_path, env=env, line=0)
    assert "documents: 4 new" in out and "evaluation run" in out


@pytest.mark.slow
def test_make_demo_runs_the_demo_script_offline(tmp_path: Path) -> None:
    data = shared_data_dir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
               MLFLOW_RAG_SHARED_DATA=str(data), MLFLOW_RAG_DEMO_STORE=str(tmp_path / "store"),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlruns.db'}")
    out = run("bash scripts/demo.sh", cwd=REPO, env=env, line=4)
    assert "== search: legacy modernization" in out
    assert "  1. " in out and "model minilm:" in out
    assert (tmp_path / "store" / "metadata.db").is_file() and (tmp_path / "mlruns.db").is_file()
