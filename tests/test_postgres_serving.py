"""A live model over a PostgreSQL store, as a team runs it: `log-model --live` names the store
(never its password), `mlflow models serve --workers 2` answers from it, a document ingested
afterwards is served without a new model version, and both workers log their queries into the
store's own query log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers_mlflow import (
    copy_tracking_store,
    free_port,
    post_json,
    server_process,
    subprocess_env,
    tracking_template,  # noqa: F401  (a fixture)
)
from tests.pg_cluster import PgCluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "mlflow_rag.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mlflow-rag {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return done


def test_a_live_model_serves_documents_ingested_after_it_was_logged(
        pg_cluster: PgCluster, shared_data: Path, tmp_path: Path, tracking_template: Path) -> None:  # noqa: F811
    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    database = pg_cluster.new_database("live")
    with_password = pg_cluster.dsn(database) + "?schema=speakers"
    store = with_password.replace(f":{pg_cluster.password}@", "@")  # what the model records
    tracking = copy_tracking_store(tracking_template, tmp_path)
    env = subprocess_env(MLFLOW_TRACKING_URI=tracking, PGPASSWORD=pg_cluster.password,
                         MLFLOW_RAG_CACHE_DIR=str(tmp_path / "writer-cache"),
                         HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cli("ingest", str(csv), "--store", with_password, "--embedder", "tfidf", "--no-track",
        cwd=tmp_path, env=env)
    logged = cli("log-model", "--store", with_password, "--live", "--register", "live-rag",
                 "--alias", "champion", cwd=tmp_path, env=env)
    assert "models:/live-rag@champion" in logged.stdout
    model_files = [p for p in (tmp_path / "mlruns").rglob("*") if p.is_file()]
    assert model_files and not any(p.name == "manifest.json" for p in model_files)  # no bundle
    for path in model_files:
        assert pg_cluster.password.encode() not in path.read_bytes(), path
    config = next(p for p in model_files if p.name == "MLmodel").read_text()
    assert store.split("?")[0] in config

    port = free_port()
    serve_env = {**env, "MLFLOW_RAG_CACHE_DIR": str(tmp_path / "server-cache"),
                 "MLFLOW_RAG_QUERY_LOG": store}
    args = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/live-rag@champion",
            "--env-manager", "local", "--workers", "2", "-h", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}/invocations"
    request = {"dataframe_split": {"columns": ["query"], "data": [["quantum knitting"]]},
               "params": {"k": 3, "mode": "bm25"}}
    with server_process(args, health_url=f"http://127.0.0.1:{port}/ping",
                        log_path=tmp_path / "serve.log", cwd=tmp_path, env=serve_env):
        status, body = post_json(url, request)
        assert status == 200, body
        assert not any("knitting" in row["text"] for row in body["predictions"])
        late = tmp_path / "late.md"
        late.write_text("# Quantum knitting\n\nA talk on quantum knitting patterns.\n")
        # --refit always: one new document would not refit (it is under the 10 % rule), and
        # the dense step below is about the refitted vocabulary reaching the servers
        cli("ingest", str(late), "--store", with_password, "--embedder", "tfidf", "--no-track",
            "--refit", "always", cwd=tmp_path, env=env)
        for _ in range(4):  # both workers, whichever answers
            status, body = post_json(url, request)
            assert status == 200, body
            assert body["predictions"][0]["document_id"] == "late.md", body
        for mode in ("dense", "hybrid"):  # the refitted TF-IDF vocabulary reaches the servers
            status, body = post_json(url, {**request, "params": {"k": 3, "mode": mode}})
            assert status == 200 and body["predictions"][0]["document_id"] == "late.md", body
        # the database goes away under the running server, and comes back
        pg_cluster.stop("immediate")
        try:
            status, body = post_json(url, request)
            assert status == 503, (status, body)
            message = body["message"]
            assert len(message.splitlines()) == 1 and "Traceback" not in message, message
            assert pg_cluster.password not in message
        finally:
            pg_cluster.start()
        for _ in range(4):  # both workers reconnect on their next request
            status, body = post_json(url, request)
            assert status == 200 and body["predictions"][0]["document_id"] == "late.md", body
    log_text = (tmp_path / "serve.log").read_text(errors="replace")
    assert pg_cluster.password not in log_text
    with pg_cluster.connect(database) as conn:
        conn.execute("SET search_path TO speakers")
        logged_queries = conn.execute("SELECT count(*), count(DISTINCT metadata::jsonb->>'pid') "
                                      "FROM queries").fetchone()
        retrieved = conn.execute("SELECT count(*) FROM retrievals").fetchone()[0]
    # every answered request, none lost at shutdown (the one the outage refused is not a query)
    assert logged_queries[0] == 11, logged_queries
    assert retrieved > 0
    print(f"\nlive model: {logged_queries[0]} queries logged by {logged_queries[1]} worker(s), "
          f"{retrieved} retrievals; server log {json.dumps(len(log_text))} bytes")
