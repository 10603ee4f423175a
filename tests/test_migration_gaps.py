"""Migrations are applied by their missing rows, not by the highest number: a PostgreSQL
store made before migration 3 (governance) existed holds 1, 2 and 4, and opening it applies 3
and keeps its data; on SQLite a store at user_version 3 without 3's row gets it the same way
(as one at 3 would get a lower number handed out ahead)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_rag.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from mlflow_rag.store.schema import MIGRATIONS
from mlflow_rag.store.store import Store
from tests.conftest import make_record


def test_a_sqlite_store_missing_a_migration_below_its_version_gets_it(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", create=True) as store:
        store.write([make_record("kept", ["written before"])])
        conn = store.backend.conn
        conn.execute("DROP TABLE ingest_runs")
        conn.execute("DROP TABLE document_versions")
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")
        conn.commit()
    with Store.open(tmp_path / "s") as store:
        rows = store.backend.conn.execute("SELECT version FROM schema_migrations").fetchall()
        assert sorted(r[0] for r in rows) == [m.version for m in MIGRATIONS]
        store.write([make_record("kept", ["replaced"])])
        assert [v.version for v in store.governance.document_history("kept")] == [1, 2]


@pytest.mark.postgres
def test_a_store_at_1_and_4_gets_migration_3_on_open(pg_cluster) -> None:
    database = pg_cluster.new_database()
    location = pg_cluster.dsn(database)
    with Store.open(location, create=True) as store:
        store.write([make_record("kept", ["a document written before the migration"])])
    with pg_cluster.connect(database) as conn:  # as a store made by the previous release
        conn.execute('SET search_path TO "mlflow_rag"')
        conn.execute("DROP TABLE ingest_runs, document_versions")
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")
    with Store.open(location) as store:
        rows = store.backend.conn.execute(
            "SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [m.version for m in PG_MIGRATIONS]
        store.write([make_record("kept", ["the document, replaced"])])
        assert [v.version for v in store.governance.document_history("kept")] == [1, 2]
        assert store.get_document("kept").raw_text == "the document, replaced"
