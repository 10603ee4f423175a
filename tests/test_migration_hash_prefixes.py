"""Migration 6 (hash prefixes): a store made before it (schema version 5, the full-hash
indexes ``idx_documents_hash`` and ``idx_chunks_text_hash``) migrates in place when opened,
keeps every document, chunk, vector and filter result, and its hash lookups (the embedding
cache, ``content_hash`` filters) still run on an index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.store.checks import content_hash
from mlflow_rag.store.store import Store
from tests.conftest import make_record

DIM = 8
# What the release before migration 6 held instead of the prefix indexes.
DOWNGRADE = (
    "DROP INDEX idx_documents_hash_prefix",
    "DROP INDEX idx_chunks_text_hash_prefix",
    "CREATE INDEX idx_documents_hash ON documents(content_hash)",
    "CREATE INDEX idx_chunks_text_hash ON chunks(text_hash)",
    "DELETE FROM schema_migrations WHERE version = 6",
)


def as_version_5(location: str) -> None:
    """Turn a closed store into what the release before migration 6 made."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute('SET search_path TO "mlflow_rag"')
            for statement in DOWNGRADE:
                conn.execute(statement)
        return
    import sqlite3

    conn = sqlite3.connect(Path(location) / "metadata.db", isolation_level=None)
    try:
        for statement in DOWNGRADE:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 5")
    finally:
        conn.close()


def fingerprint(store: Store, hashes: list[str]) -> dict[str, Any]:
    documents = {d.id: d for d in store.find_documents(None, limit=1000)}
    first = documents["doc0"].content_hash
    return {
        "stats": store.stats().documents,
        "documents": sorted((d.id, d.content_hash, d.metadata.get("group"))
                            for d in documents.values()),
        "chunks": {doc_id: [(c.id, c.text) for c in store.get_document(doc_id).chunks]
                   for doc_id in sorted(documents)},
        "by_hash": [d.id for d in store.find_documents({"content_hash": first})],
        "by_hashes": sorted(d.id for d in store.find_documents(
            {"content_hash": {"$in": [first, documents["doc3"].content_hash, "nope"]}})),
        "by_field": sorted(d.id for d in store.find_documents({"group": "a"})),
        "dense_by_hash": [h.document_id for h in store.dense_search(
            np.ones(DIM, np.float32), model="m", k=5, filters={"content_hash": first})],
        "vectors": [a.tolist() for a in store.backend.vectors_after("m", 0, DIM)],
        "cache": {h: v.tolist() for h, v in store.catalog.cached_vectors("m", hashes).items()},
    }


def test_a_version_5_store_migrates_in_place_and_keeps_everything(store_location: str) -> None:
    rng = np.random.default_rng(6)
    texts = [[f"document {i} chunk {j}" for j in range(3)] for i in range(12)]
    with Store.open(store_location, create=True) as store:
        store.ensure_model("m", DIM, index_type="flat")
        store.write([
            make_record(f"doc{i}", chunk_texts, vectors=rng.normal(size=(3, DIM)),
                        metadata={"group": "a" if i % 3 == 0 else "b"})
            for i, chunk_texts in enumerate(texts)
        ])
    as_version_5(store_location)
    hashes = [content_hash(t) for t in (texts[0][0], texts[5][2], "never stored")]

    with Store.open(store_location, read_only=True) as old:
        assert old.backend.schema_version() == 5
        before = fingerprint(old, hashes)
    with Store.open(store_location) as store:  # a writable open migrates
        assert store.backend.schema_version() == 6
        schema = store.backend.schema_sql()
        assert "idx_chunks_text_hash_prefix" in schema and "idx_documents_hash_prefix" in schema
        assert "idx_chunks_text_hash ON" not in schema and "idx_documents_hash ON" not in schema
        after = fingerprint(store, hashes)
        report = store.verify()
        assert report["integrity_check"] == "ok"
        assert report["models"]["m"]["ids_equal"] and report["models"]["m"]["vectors"] == 36
    assert after == before
    assert before["by_hash"] == ["doc0"] and before["by_hashes"] == ["doc0", "doc3"]
    assert before["dense_by_hash"] == ["doc0"] * 3
    assert sorted(before["cache"]) == sorted(hashes[:2])
    assert len(before["documents"]) == 12


def test_hash_lookups_use_the_prefix_indexes(tmp_path: Path) -> None:
    """The embedding cache and content_hash filters search an index, never scan (SQLite
    without statistics, as a store runs)."""
    from mlflow_rag.store.filters import as_plan
    from mlflow_rag.store.sqlite.filter_sql import condition_ids_sql

    with Store.open(tmp_path / "s", create=True) as store:
        store.ensure_model("m", DIM, index_type="flat")
        rng = np.random.default_rng(0)
        store.write([make_record(f"d{i}", [f"text {i}"], vectors=rng.normal(size=(1, DIM)))
                     for i in range(300)])
        conn = store.backend.conn
        traced: list[str] = []
        conn.set_trace_callback(traced.append)
        hit = content_hash("text 7")
        assert list(store.catalog.cached_vectors("m", [hit, content_hash("no")])) == [hit]
        conn.set_trace_callback(None)
        lookup = next(s for s in traced if "text_hash" in s)
        plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + lookup))
        assert "idx_chunks_text_hash_prefix" in plan, plan
        stored = store.get_document("d7").content_hash
        for spec in ({"content_hash": stored}, {"content_hash": {"$in": [stored, "x"]}}):
            sql, params = condition_ids_sql(as_plan(spec))  # type: ignore[arg-type]
            plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
            assert "idx_documents_hash_prefix" in plan, (spec, plan)
            assert conn.execute(sql, params).fetchall() == [("d7",)]
        # A non-string value compares as SQLite compares it (text affinity), unindexed.
        assert store.find_documents({"content_hash": 5}) == []
