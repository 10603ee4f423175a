"""The schema: migrations reach the checked-in snapshot; JSON columns hold valid JSON."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mlflow_rag.errors import ForeignStore, SchemaTooNew, StoreNotFound
from mlflow_rag.store.schema import MIGRATIONS, SCHEMA_VERSION
from mlflow_rag.store.sqlite import connection as db
from mlflow_rag.store.store import Store

SNAPSHOT = Path(__file__).parent / "snapshots" / "schema.sql"


def test_empty_database_plus_all_migrations_equals_the_snapshot(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "m.db")
    assert db.migrate(conn, tmp_path / "m.db") == SCHEMA_VERSION
    # To accept an intended change: python -m tests.test_schema > tests/snapshots/schema.sql
    assert db.schema_sql(conn) == SNAPSHOT.read_text(encoding="utf-8")


def test_migrations_are_ordered_and_recorded(tmp_path: Path) -> None:
    versions = [m.version for m in MIGRATIONS]
    # increasing, without repeats (numbers are handed out to changes before they land, so a
    # branch may hold 1 and 3 while 2 is on its way)
    assert versions == sorted(set(versions)) and versions[0] == 1
    store = Store.open(tmp_path / "s", create=True)
    rows = store.backend.conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert rows == [(m.version, m.name) for m in MIGRATIONS]
    store.close()


def test_reopening_does_not_migrate_twice(tmp_path: Path) -> None:
    Store.open(tmp_path / "s", create=True).close()
    store = Store.open(tmp_path / "s")
    applied = store.backend.conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
    assert applied == len(MIGRATIONS)
    store.close()


def test_every_table_and_index_of_the_design_exists(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", create=True)
    conn = store.backend.conn
    columns = {
        table: [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        for table in ("documents", "chunks", "embeddings", "queries", "retrievals")
    }
    assert columns["documents"][:8] == ["id", "source_path", "source_type", "content_hash",
                                        "imported_at", "updated_at", "metadata", "raw_text"]
    assert columns["chunks"][:9] == ["id", "document_id", "chunk_index", "chunk_type", "text",
                                     "start_char", "end_char", "token_count", "metadata"]
    assert {"id", "chunk_id", "model_name", "model_version", "vector_dimension", "vector",
            "created_at", "metadata", "vector_id"} <= set(columns["embeddings"])
    assert columns["queries"] == ["id", "query_text", "query_embedding", "model_name",
                                  "timestamp", "metadata"]
    assert columns["retrievals"] == ["id", "query_id", "chunk_id", "rank", "score", "metadata"]
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    # the design's content-hash index, narrowed to a prefix by migration 6
    assert {"idx_documents_source", "idx_documents_hash_prefix", "idx_chunks_document", "idx_chunks_type",
            "idx_embeddings_chunk", "idx_embeddings_model", "idx_queries_timestamp",
            "idx_retrievals_query", "idx_retrievals_chunk"} <= indexes
    store.close()


def test_json_columns_refuse_invalid_json(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", create=True)
    with pytest.raises(sqlite3.IntegrityError):
        store.backend.conn.execute(
            "INSERT INTO documents(id, source_path, source_type, imported_at, metadata) "
            "VALUES ('x', 'p', 'text', '2026', '{not json')"
        )
    store.close()


def test_a_newer_schema_is_refused_with_a_message_naming_both_versions(tmp_path: Path) -> None:
    Store.open(tmp_path / "s", create=True).close()
    conn = sqlite3.connect(tmp_path / "s" / "metadata.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match=f"{SCHEMA_VERSION + 1}.*upgrade"):
        Store.open(tmp_path / "s")


def test_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    path = tmp_path / "s" / "metadata.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(ForeignStore, match="not a mlflow-rag store"):
        Store.open(tmp_path / "s")
    assert path.read_bytes() == before


def test_a_directory_with_other_files_is_not_taken_for_a_store(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ForeignStore):
        Store.open(tmp_path)
    with pytest.raises(StoreNotFound, match="no store at"):
        Store.open(tmp_path / "missing")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        c = db.connect(Path(tmp) / "m.db")
        db.migrate(c, Path(tmp) / "m.db")
        print(db.schema_sql(c), end="")
