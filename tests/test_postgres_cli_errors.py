"""The CLI on a PostgreSQL store that cannot be reached or refuses: `search`, `ingest` and
`stats` exit 1 with one line on stderr naming what to fix, no traceback, no password (in
the URL or in PGPASSWORD), and the store's documents still there afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_cluster import PgCluster, free_port, running_cluster

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SECRET = "Cli-Secret-pw-77"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(4):
        (folder / f"note{i}.txt").write_text(
            f"Note {i} on legacy modernization and cooking recipe number {i}.\n", encoding="utf-8")
    return folder


def cli(*args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PYTHONPATH=str(REPO), MLFLOW_RAG_CACHE_DIR=str(cwd / "cache"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "mlflow_rag.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=300)


def commands(store: str, corpus: Path) -> dict[str, tuple[str, ...]]:
    return {
        "search": ("search", "legacy modernization", "--store", store, "--mode", "bm25"),
        "ingest": ("ingest", str(corpus), "--store", store, "--embedder", "tfidf", "--no-track"),
        "stats": ("stats", "--store", store),
    }


def assert_one_line(proc: subprocess.CompletedProcess[str], *, names: str, says: str,
                    secrets: tuple[str, ...]) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("error: ") and names in err and says in err, err
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr
    return err


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    pytest.importorskip("psycopg")
    with running_cluster() as cluster:
        yield cluster


def test_cli_failures_against_postgresql_are_one_line(own_cluster: PgCluster, corpus: Path,
                                                      tmp_path: Path) -> None:
    cluster = own_cluster
    database = cluster.new_database()
    store = cluster.dsn(database)
    made = cli(*commands(store, corpus)["ingest"], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    secrets = (cluster.password, SECRET)
    where = f"127.0.0.1:{cluster.port}/{database}"
    seen = []

    def fails(case: str, location: str, names: str, says: str, *, only: tuple[str, ...] = (),
              extra_env: dict[str, str] | None = None) -> None:
        for name, args in commands(location, corpus).items():
            if only and name not in only:
                continue
            proc = cli(*args, cwd=tmp_path, extra_env=extra_env)
            seen.append(f"{case} / {name}: " + assert_one_line(proc, names=names, says=says,
                                                               secrets=secrets))

    fails("wrong password", cluster.dsn(database, password=SECRET), where, "password")
    fails("wrong PGPASSWORD", store.replace(f":{cluster.password}@", "@"), where, "password",
          only=("stats",), extra_env={"PGPASSWORD": SECRET})
    fails("no such database", cluster.dsn("no_such_db"), f"{cluster.port}/no_such_db",
          "does not exist", only=("search", "stats"))
    port = free_port()
    fails("nothing listening", f"postgresql://rag_admin:{SECRET}@127.0.0.1:{port}/db",
          f"127.0.0.1:{port}/db", "cannot connect", only=("search", "stats"))
    with cluster.connect(database) as admin:
        admin.execute("CREATE ROLE outsider LOGIN PASSWORD 'Cli-Secret-pw-77'")
    fails("no USAGE", cluster.dsn(database, user="outsider", password=SECRET), where,
          "GRANT USAGE ON SCHEMA mlflow_rag TO outsider")
    fails("no such schema", store + "?schema=absent", where, "no store at",
          only=("search", "stats"))

    cluster.stop("immediate")
    fails("server stopped", store, where, "cannot connect")
    cluster.start()
    after = cli("stats", "--store", store, "--json", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    stats = json.loads(after.stdout)
    assert stats["documents"] == 4 and stats["embeddings"] == stats["chunks"]
    found = cli(*commands(store, corpus)["search"], "--json", cwd=tmp_path)
    assert found.returncode == 0 and json.loads(found.stdout)
    print("\n" + "\n".join(seen))


def test_the_server_stopped_during_an_ingest_is_one_line_and_a_rerun_completes_it(
        own_cluster: PgCluster, tmp_path: Path) -> None:
    """`pg_ctl stop -m immediate` once the first of an ingest's transactions (256 documents
    each) is committed: exit 1, one line, no traceback; after the restart the store holds
    whole documents only (every committed batch, none in part), and the same command again
    writes the rest."""
    import time

    cluster = own_cluster
    database = cluster.new_database()
    store = cluster.dsn(database)
    rows = 3000
    source = tmp_path / "notes.csv"
    source.write_text("id,text\n" + "".join(
        f"n{i},Note {i} on legacy modernization topic {i % 37} and recipe {i % 11}\n"
        for i in range(rows)), encoding="utf-8")
    args = ("ingest", str(source), "--store", store, "--embedder", "tfidf", "--no-track",
            "--id-column", "id", "--text-columns", "text")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PYTHONPATH=str(REPO), MLFLOW_RAG_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_rag.cli", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def committed() -> int:
        try:
            with cluster.connect(database) as conn:
                return int(conn.execute("SELECT count(*) FROM mlflow_rag.documents").fetchone()[0])
        except Exception:  # the schema is not made yet
            return 0

    deadline = time.monotonic() + 240
    while committed() == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    cluster.stop("immediate")
    out, err = proc.communicate(timeout=120)
    cluster.start()
    before = committed()
    assert 0 < before < rows, f"the stop missed the ingest: {before} documents committed"
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"127.0.0.1:{cluster.port}/{database}" in err and cluster.password not in out + err
    with cluster.connect(database) as conn:
        conn.execute("SET search_path TO mlflow_rag")
        half = conn.execute(
            "SELECT count(*) FROM documents d WHERE NOT EXISTS (SELECT 1 FROM chunks c "
            "WHERE c.document_id = d.id) OR EXISTS (SELECT 1 FROM chunks c WHERE "
            "c.document_id = d.id AND NOT EXISTS (SELECT 1 FROM embeddings e "
            "WHERE e.chunk_id = c.id))").fetchone()[0]
    assert half == 0 and before % 256 == 0, (half, before)
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    stats = json.loads(cli("stats", "--store", store, "--json", cwd=tmp_path).stdout)
    assert stats["documents"] == rows and stats["embeddings"] == stats["chunks"]
    print(f"\nstopped after {before} of {rows} documents: {err.strip()}")
