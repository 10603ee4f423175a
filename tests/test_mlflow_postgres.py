"""MLflow's tracking server on PostgreSQL (issue 13): the README's walkthrough, from ingest to a
served champion, against `mlflow server --backend-store-uri postgresql+psycopg://...` with a
local artifacts destination; runs, registered model and alias are rows in PostgreSQL.

The embedder is TF-IDF, not the README's MiniLM: what is under test is the tracking server's
backend, and MiniLM would add torch's start-up to each of three processes."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_rag.serving import OUTPUT_COLUMNS
from tests.helpers_mlflow import free_port, post_json, server_process, subprocess_env
from tests.pg_cluster import PgCluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

MODEL = "speakers-retriever"


class Clock:
    """Seconds per step, printed (-s) so the slow suite's cost stays visible."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.laps)


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "mlflow_rag.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mlflow-rag {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return done


def test_the_readme_walkthrough_on_a_tracking_server_backed_by_postgresql(
        pg_cluster: PgCluster, shared_data: Path, tmp_path: Path) -> None:
    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    if not csv.is_file():
        pytest.skip(f"{csv} not found (set MLFLOW_RAG_SHARED_DATA)")
    database = pg_cluster.new_database("mlflow")
    # The password goes through libpq's PGPASSWORD, not the URI: a command line is readable
    # by every local user (/proc/PID/cmdline), and MLflow may print its backend URI.
    backend = pg_cluster.sqlalchemy_uri(database).replace(f":{pg_cluster.password}@", "@")
    assert pg_cluster.password not in backend
    artifacts = tmp_path / "mlartifacts"
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    server_args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                   "--artifacts-destination", str(artifacts), "--serve-artifacts",
                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server_log = tmp_path / "server.log"
    env = subprocess_env(MLFLOW_TRACKING_URI=server_url, HF_HUB_OFFLINE="1",
                         TRANSFORMERS_OFFLINE="1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
                         NO_PROXY="127.0.0.1,localhost")
    clock = Clock()
    with server_process(server_args, health_url=f"{server_url}/health", log_path=server_log,
                        cwd=tmp_path, env={**env, "PGPASSWORD": pg_cluster.password}):
        clock.lap("mlflow server up (migrations included)")
        ingest = cli("ingest", str(csv), "--store", "speakers", "--embedder", "tfidf",
                     cwd=tmp_path, env=env)
        match = re.search(r"logged ingest run (\w+)", ingest.stderr)
        assert match, ingest.stderr
        ingest_run = match.group(1)
        clock.lap("ingest")
        logged = cli("log-model", "--store", "speakers", "--register", MODEL, "--alias", "champion",
                     cwd=tmp_path, env=env)
        assert f"models:/{MODEL}@champion" in logged.stdout.splitlines(), logged.stdout
        clock.lap("log-model + register")

        serve_port = free_port()
        serve_args = [sys.executable, "-m", "mlflow", "models", "serve", "-m",
                      f"models:/{MODEL}@champion", "--env-manager", "local",
                      "-h", "127.0.0.1", "-p", str(serve_port)]
        with server_process(serve_args, health_url=f"http://127.0.0.1:{serve_port}/ping",
                            log_path=tmp_path / "serve.log", cwd=tmp_path, env=env):
            clock.lap("models serve up")
            status, body = post_json(f"http://127.0.0.1:{serve_port}/invocations", {
                "dataframe_split": {"columns": ["query"], "data": [["legacy modernization"]]},
                "params": {"k": 3, "mode": "hybrid"}})
        assert status == 200, body
        rows = body["predictions"]
        assert len(rows) == 3 and all(list(row) == list(OUTPUT_COLUMNS) for row in rows)
        assert [row["rank"] for row in rows] == [1, 2, 3]
        assert all(row["source_path"].endswith(csv.name) for row in rows)

    clock.lap("invocations + servers stopped")
    print(f"\nmlflow on PostgreSQL: {clock}")
    # What the server stored: in PostgreSQL, and its artifacts in the local destination.
    with pg_cluster.connect(database) as conn:
        runs = dict(conn.execute(
            "SELECT r.run_uuid, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "AND t.key = 'mlflow_rag.run_type'").fetchall())
        assert runs.get(ingest_run) == "ingest", runs
        version = conn.execute(
            "SELECT a.version, v.run_id, v.source FROM registered_model_aliases a "
            "JOIN model_versions v ON v.name = a.name AND v.version = a.version "
            "WHERE a.name = %s AND a.alias = 'champion'", (MODEL,)).fetchone()
        assert version is not None and version[0] == 1, version
        assert conn.execute("SELECT count(*) FROM registered_models WHERE name = %s",
                            (MODEL,)).fetchone() == (1,)
        stored = " ".join(str(value) for table in ("params", "tags", "model_versions")
                          for row in conn.execute(f"SELECT * FROM {table}").fetchall()
                          for value in row)
    assert pg_cluster.password not in stored
    assert list(artifacts.rglob("manifest.json")), "the bundle is not in the artifacts destination"
    assert pg_cluster.password not in server_log.read_text(errors="replace")
