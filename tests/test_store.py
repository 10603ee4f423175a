"""Store operations and consistency: SQLite is the truth, the FAISS files follow it."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.errors import (
    BundleCorrupt,
    ChunkNotFound,
    DimensionMismatch,
    DocumentNotFound,
    FilterError,
    InvalidInput,
    InvalidVector,
    ModelNotFound,
    RagError,
    UnknownChoice,
)
from mlflow_rag.store.checks import clean_vectors, model_slug
from mlflow_rag.store.store import Store
from tests.conftest import make_record


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    return list(np.argsort(-(unit @ q), kind="stable")[:k])


def test_dense_search_matches_exact_numpy_and_hydrates_every_field(random_store) -> None:
    store, vectors = random_store(n_docs=40, per_doc=3, dim=16)
    query = np.random.default_rng(5).normal(size=16)
    hits = store.dense_search(query, k=5)
    expected = [f"doc{i // 3}#{i % 3}" for i in exact_top(vectors, query, 5)]
    assert [h.chunk_id for h in hits] == expected
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    first = hits[0]
    assert first.text.startswith(f"document {first.document_id[3:]}")
    assert first.source_path == f"/data/{first.document_id}.txt"
    assert first.document_metadata["country"] in {"UK", "Germany", "France"}
    assert first.chunk_metadata == {"position": int(first.chunk_id.split("#")[1])}
    store.close()


def test_unchanged_document_is_reported_and_skipped(random_store) -> None:
    store, vectors = random_store(n_docs=5, per_doc=2, dim=8)
    record = make_record("doc0", ["document 0 chunk 0 topic0", "document 0 chunk 1 topic1"],
                         vectors=vectors[:2],
                         metadata={"country": "UK", "year": 2000, "tags": "even"})
    report = store.write([record])
    assert (report.new, report.updated, report.unchanged) == (0, 0, 1)
    assert report.vectors == 0
    store.close()


def test_changed_document_replaces_its_chunks_and_vectors(random_store) -> None:
    store, _ = random_store(n_docs=5, per_doc=3, dim=8)
    new_vectors = np.eye(8, dtype=np.float32)[:2]
    report = store.write([make_record("doc1", ["fresh text one", "fresh text two"],
                                      vectors=new_vectors)])
    assert (report.new, report.updated) == (0, 1)
    doc = store.get_document("doc1")
    assert [c.text for c in doc.chunks] == ["fresh text one", "fresh text two"]
    assert doc.updated_at is not None and doc.updated_at >= doc.imported_at
    hits = store.dense_search(new_vectors[0], k=1)
    assert hits[0].chunk_id == "doc1#0" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert store.stats().embeddings == 5 * 3 - 3 + 2
    report = store.verify()
    assert report["models"]["m"]["ids_equal"]
    store.close()


def test_delete_cascades_and_removes_vectors_from_the_index(random_store) -> None:
    store, vectors = random_store(n_docs=10, per_doc=2, dim=8)
    store.dense_search(vectors[6], k=1)  # load the index so deletion must be replayed into it
    store.delete("doc3")
    assert store.stats().documents == 9
    assert store.stats().chunks == 18 and store.stats().embeddings == 18
    assert all(h.document_id != "doc3" for h in store.dense_search(vectors[6], k=20))
    with pytest.raises(DocumentNotFound, match="doc3"):
        store.get_document("doc3")
    with pytest.raises(DocumentNotFound, match="nope"):
        store.delete("nope")
    store.close()


def test_get_document_returns_chunks_in_order_and_expand_context_neighbours(random_store) -> None:
    store, _ = random_store(n_docs=3, per_doc=5, dim=8)
    doc = store.get_document("doc2")
    assert [c.chunk_index for c in doc.chunks] == [0, 1, 2, 3, 4]
    around = store.expand_context("doc2#2", n=1)
    assert [c.chunk_index for c in around] == [1, 2, 3]
    edge = store.expand_context("doc2#0", n=2)
    assert [c.chunk_index for c in edge] == [0, 1, 2]
    assert all(c.document_id == "doc2" for c in store.expand_context("doc2#4", n=10))
    with pytest.raises(ChunkNotFound):
        store.expand_context("missing#0")
    store.close()


def test_find_documents_by_metadata_and_dates(random_store) -> None:
    store, _ = random_store(n_docs=12, per_doc=1, dim=8)
    uk = store.find_documents({"country": "UK"})
    assert sorted(d.id for d in uk) == sorted(f"doc{i}" for i in range(12) if i % 3 == 0)
    recent = store.find_documents({"imported_at": {"$gte": "2000-01-01"}, "year": {"$lt": 2003}})
    assert sorted(d.id for d in recent) == ["doc0", "doc1", "doc2"]
    assert store.find_documents({"imported_at": {"$gte": "2999-01-01"}}) == []
    store.close()


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("selectivity", [0.01, 0.1, 0.5])
def test_filtered_search_is_exact_at_every_selectivity(random_store, index_type, selectivity) -> None:
    n_docs = 400
    store, vectors = random_store(n_docs=n_docs, per_doc=1, dim=16, index_type=index_type)
    allowed_docs = list(range(0, n_docs, int(1 / selectivity)))
    ids = [f"doc{i}" for i in allowed_docs]
    rng = np.random.default_rng(1)
    for _ in range(5):
        query = rng.normal(size=16)
        hits = store.dense_search(query, k=10, filters={"document_id": {"$in": ids}})
        expected = [allowed_docs[i] for i in exact_top(vectors[allowed_docs], query, 10)]
        assert [h.document_id for h in hits] == [f"doc{i}" for i in expected]
    store.close()


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_approximate_indexes_find_most_true_neighbours(random_store, index_type) -> None:
    store, vectors = random_store(n_docs=600, per_doc=1, dim=16, index_type=index_type)
    assert store.models()[0].index_type == index_type
    rng = np.random.default_rng(2)
    recalls = []
    for _ in range(10):
        query = rng.normal(size=16)
        got = {h.document_id for h in store.dense_search(query, k=10)}
        want = {f"doc{i}" for i in exact_top(vectors, query, 10)}
        recalls.append(len(got & want) / 10)
    assert np.mean(recalls) >= 0.8
    store.close()


def test_bm25_finds_the_rare_term_and_respects_filters(random_store) -> None:
    store, _ = random_store(n_docs=30, per_doc=2, dim=8)
    hits = store.lexical_search("topic3", k=50)
    assert hits and all("topic3" in h.text for h in hits)
    uk_hits = store.lexical_search("topic3", k=50, filters={"country": "UK"})
    assert uk_hits and all(h.document_metadata["country"] == "UK" for h in uk_hits)
    assert {h.chunk_id for h in uk_hits} < {h.chunk_id for h in hits}
    assert store.lexical_search("!!! ???", k=5) == []
    # FTS syntax in user text is quoted away, not interpreted (no error, no injection)
    assert store.lexical_search('topic3" OR NEAR(x', k=5)
    store.close()


def test_bm25_stays_in_step_after_replace_and_delete(random_store) -> None:
    store, _ = random_store(n_docs=5, per_doc=1, dim=8)
    store.write([make_record("doc2", ["zebra crossing"], vectors=np.ones((1, 8)))])
    assert [h.document_id for h in store.lexical_search("zebra", k=5)] == ["doc2"]
    assert all(h.document_id != "doc2" for h in store.lexical_search("document", k=10))
    store.delete("doc2")
    assert store.lexical_search("zebra", k=5) == []
    store.backend.conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
    store.close()


def test_several_models_share_one_store_with_one_index_file_each(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", create=True)
    store.ensure_model("minilm", 4)
    store.ensure_model("openai:text-embedding-3-small", 6)
    rec = make_record("a", ["alpha text"], vectors=np.ones((1, 4)), model="minilm")
    store.write([rec])
    store.add_vectors("openai:text-embedding-3-small", ["a#0"], np.ones((1, 6)))
    store.close()
    files = sorted(p.name for p in (tmp_path / "s" / "index").iterdir())
    assert files == ["minilm.faiss", "openai-text-embedding-3-small.faiss"]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    entry = manifest["models"]["openai:text-embedding-3-small"]
    assert entry["dimension"] == 6 and entry["vector_count"] == 1 and len(entry["sha256"]) == 64
    store = Store.open(tmp_path / "s")
    with pytest.raises(ModelNotFound, match="several embedding models"):
        store.dense_search(np.ones(4), k=1)
    assert store.dense_search(np.ones(6), model="openai:text-embedding-3-small", k=1)[0].chunk_id == "a#0"
    with pytest.raises(ModelNotFound, match="it has"):
        store.dense_search(np.ones(4), model="nope", k=1)
    store.close()


@pytest.mark.parametrize(
    ("vectors", "error", "message"),
    [
        (np.full((2, 8), np.nan), InvalidVector, "NaN"),
        (np.full((2, 8), np.inf), InvalidVector, "NaN or infinity"),
        (np.ones((2, 5)), DimensionMismatch, "dimension 5"),
        (np.zeros((2, 8)), InvalidVector, "zero length"),
        (np.array([["a"] * 8] * 2), InvalidVector, "real numbers"),
    ],
)
def test_bad_vectors_are_refused_and_nothing_stored_is_lost(random_store, vectors, error, message) -> None:
    store, _ = random_store(n_docs=4, per_doc=2, dim=8)
    before = store.stats()
    bad = make_record("new", ["one", "two"], vectors=vectors)
    good = make_record("fine", ["three", "four"], vectors=np.ones((2, 8)))
    with pytest.raises(error, match=message):
        store.write([good, bad])
    after = store.stats()
    assert (after.documents, after.chunks, after.embeddings) == (
        before.documents, before.chunks, before.embeddings)
    with pytest.raises(DocumentNotFound):
        store.get_document("fine")
    store.close()


def test_non_contiguous_and_float64_vectors_are_normalised_float32() -> None:
    base = np.arange(1, 33, dtype=np.float64).reshape(8, 4)
    cleaned = clean_vectors(base.T, 8)  # a transposed view is not C-contiguous
    assert cleaned.dtype == np.float32 and cleaned.flags.c_contiguous
    assert np.allclose(np.linalg.norm(cleaned, axis=1), 1.0)


def test_duplicate_ids_and_empty_chunks_are_refused(random_store) -> None:
    store, _ = random_store(n_docs=2, per_doc=1, dim=8)
    rec = make_record("x", ["a"], vectors=np.ones((1, 8)))
    with pytest.raises(InvalidInput, match="appears twice"):
        store.write([rec, rec])
    with pytest.raises(InvalidInput, match="empty text"):
        store.write([make_record("y", ["   "], vectors=np.ones((1, 8)))])
    with pytest.raises(InvalidInput, match="k must be"):
        store.dense_search(np.ones(8), k=0)
    store.close()


def test_bad_filters_get_clear_errors(random_store) -> None:
    store, _ = random_store(n_docs=2, per_doc=1, dim=8)
    with pytest.raises(UnknownChoice, match=r"\$regex.*choose from"):
        store.dense_search(np.ones(8), filters={"country": {"$regex": "U.*"}})
    with pytest.raises(FilterError, match="not valid JSON"):
        store.dense_search(np.ones(8), filters="{country: UK")
    store.close()


def test_unknown_index_type_names_the_choices(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", create=True)
    with pytest.raises(UnknownChoice, match=r"Unknown index type 'annoy'; choose from \['auto', 'flat'"):
        store.ensure_model("m", 8, index_type="annoy")
    store.close()


def test_model_dimension_cannot_change(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", create=True)
    store.ensure_model("m", 8)
    with pytest.raises(DimensionMismatch, match="has dimension 8, not 16"):
        store.ensure_model("m", 16)
    store.close()


def test_model_slug_is_file_system_safe() -> None:
    assert model_slug("openai:text-embedding-3-small") == "openai-text-embedding-3-small"
    assert model_slug("../../etc/passwd") == "etc-passwd"
    assert model_slug("") == "model"


# --------------------------------------------------------------------------- index files


def _index_file(store_dir: Path) -> Path:
    return next((store_dir / "index").glob("*.faiss"))


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "delete", "garbage"])
def test_damaged_index_file_is_detected_and_rebuilt(random_store, tmp_path: Path, damage: str) -> None:
    store, vectors = random_store(n_docs=20, per_doc=2, dim=8)
    store.close()
    path = _index_file(tmp_path / "store")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "bitflip":
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(b"\x00garbage" * 100)
    store = Store.open(tmp_path / "store")
    hits = store.dense_search(vectors[7], k=1)
    assert hits[0].chunk_id == "doc3#1"
    assert any("rebuilt index" in e for e in store.events)
    store.close()  # persists the rebuilt index
    again = Store.open(tmp_path / "store")
    again.dense_search(vectors[7], k=1)
    assert again.events == []
    again.close()


def test_index_from_another_store_is_not_trusted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        s = Store.open(tmp_path / name, create=True)
        s.ensure_model("m", 8)
        s.write([make_record(f"{name}{i}", [f"text {i}"], vectors=rng.normal(size=(1, 8)))
                 for i in range(5)])
        s.close()
    for item in ("manifest.json", "index/m.faiss"):
        (tmp_path / "a" / item).write_bytes((tmp_path / "b" / item).read_bytes())
    store = Store.open(tmp_path / "a")
    hits = store.dense_search(rng.normal(size=8), k=5)
    assert {h.document_id[0] for h in hits} == {"a"}
    assert any("another store" in e for e in store.events)
    store.close()


def test_stale_index_is_replayed_not_rebuilt(random_store, tmp_path: Path) -> None:
    store, _ = random_store(n_docs=10, per_doc=1, dim=8)
    store.close()
    writer = Store.open(tmp_path / "store")
    writer.write([make_record("late", ["late text"], vectors=np.eye(8)[:1])])
    writer.delete("doc0")
    writer.close(flush=False)  # as if killed after the commit, before persisting the index
    reader = Store.open(tmp_path / "store")
    hits = reader.dense_search(np.eye(8)[0], k=1)
    assert hits[0].document_id == "late"
    assert reader.events == []  # replayed from the deletion log, no rebuild
    assert reader.verify()["models"]["m"]["ids_equal"]
    reader.close()


def test_reader_process_sees_a_writers_commits_without_reopening(random_store, tmp_path: Path) -> None:
    store, _ = random_store(n_docs=5, per_doc=1, dim=8)
    store.flush()
    reader = Store.open(tmp_path / "store", read_only=True)
    reader.dense_search(np.ones(8), k=1)
    store.write([make_record("new", ["new text"], vectors=-np.ones((1, 8)))])
    store.delete("doc1")
    hits = reader.dense_search(-np.ones(8), k=10)
    assert hits[0].document_id == "new"
    assert "doc1" not in {h.document_id for h in hits}
    reader.close()
    store.close()


def test_read_only_store_refuses_writes(random_store, tmp_path: Path) -> None:
    store, _ = random_store(n_docs=2, per_doc=1, dim=8)
    store.close()
    reader = Store.open(tmp_path / "store", read_only=True)
    with pytest.raises(RagError, match="read-only"):
        reader.delete("doc0")
    reader.close()


# --------------------------------------------------------------------------- bundles


def test_snapshot_is_a_self_contained_verified_bundle(random_store, tmp_path: Path) -> None:
    store, vectors = random_store(n_docs=10, per_doc=2, dim=8)
    bundle = store.snapshot(tmp_path / "bundle")
    store.close()
    names = sorted(p.name for p in bundle.rglob("*") if p.is_file())
    assert names == ["m.faiss", "manifest.json", "metadata.db"]
    conn = sqlite3.connect(bundle / "metadata.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    opened = Store.open(bundle, immutable=True, verify_files=True)
    assert opened.dense_search(vectors[3], k=1)[0].chunk_id == "doc1#1"
    opened.close()
    assert not (bundle / "metadata.db-wal").exists()


@pytest.mark.parametrize("target", ["metadata.db", "index/m.faiss"])
def test_tampered_bundle_is_refused_with_the_file_named(random_store, tmp_path: Path, target: str) -> None:
    store, _ = random_store(n_docs=4, per_doc=1, dim=8)
    bundle = store.snapshot(tmp_path / "bundle")
    store.close()
    path = bundle / target
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleCorrupt, match=target):
        Store.open(bundle, immutable=True, verify_files=True)


# --------------------------------------------------------------------------- query log


def test_query_log_records_hits_and_redacts_and_retention_deletes(random_store) -> None:
    from mlflow_rag.search import redact_emails

    store, vectors = random_store(n_docs=5, per_doc=1, dim=8)
    hits = store.dense_search(vectors[0], k=3)
    qid = store.logs.log_query("mail me at jane@example.com", hits, model_name="m",
                          embedding=vectors[0], redact=redact_emails)
    row = store.backend.conn.execute("SELECT query_text FROM queries WHERE id = ?", (qid,)).fetchone()
    assert row[0] == "mail me at <email>"
    ranks = store.backend.conn.execute(
        "SELECT rank, chunk_id FROM retrievals WHERE query_id = ? ORDER BY rank", (qid,)).fetchall()
    assert ranks == [(h.rank, h.chunk_id) for h in hits]
    assert store.logs.delete_queries_older_than(1) == 0
    store.backend.conn.execute("UPDATE queries SET timestamp = '2000-01-01T00:00:00+00:00'")
    assert store.logs.delete_queries_older_than(1) == 1
    assert store.stats().retrievals == 0
    store.close()


def test_pii_is_hidden_unless_asked_for(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", create=True)
    store.ensure_model("m", 4)
    store.write([make_record("p", ["public talk"], vectors=np.ones((1, 4)),
                             metadata={"name": "Ann", "_pii": {"email": "ann@example.com"}})])
    assert "_pii" not in store.dense_search(np.ones(4), k=1)[0].document_metadata
    assert "_pii" not in store.get_document("p").metadata
    shown = store.dense_search(np.ones(4), k=1, include_pii=True)[0].document_metadata
    assert shown["_pii"] == {"email": "ann@example.com"}
    store.close()


def _sqlite_state(store: Store, model: str) -> tuple[np.ndarray, np.ndarray]:
    rows = store.backend.conn.execute(
        "SELECT vector_id, vector FROM embeddings WHERE model_name = ? ORDER BY vector_id", (model,)
    ).fetchall()
    return (np.array([r[0] for r in rows]),
            np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(rows), -1))


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_writes_extend_the_in_memory_index_to_exactly_what_sqlite_holds(
    tmp_path: Path, index_type: str
) -> None:
    rng = np.random.default_rng(3)

    def check(model: str) -> None:
        index = store._core.index_cache.index_for(store.model(model), store.backend.generation())
        ids, vectors = _sqlite_state(store, model)
        assert index.ids().tolist() == ids.tolist()
        assert np.array_equal(index.vectors_for(ids), vectors)

    with Store.open(tmp_path / "s", create=True) as store:
        store.ensure_model("m", 8, index_type=index_type)
        store.ensure_model("n", 4)
        for start in (0, 30, 60):  # a fresh model, then extensions of its in-memory index
            store.write([make_record(f"d{i}", ["a", "b"], vectors=rng.normal(size=(2, 8)))
                         for i in range(start, start + 30)])
            assert store._core.index_cache.indexes["m"].generation == store.backend.generation()
            check("m")
        store.add_vectors("n", ["d0#0"], rng.normal(size=(1, 4)))
        store.write([make_record("d5", ["changed"], vectors=rng.normal(size=(1, 8)))])  # replace
        store.write([make_record("d999", ["new"], vectors=rng.normal(size=(1, 8)))])
        store.delete("d7")
        check("m")
        check("n")
    reopened = Store.open(tmp_path / "s")
    assert reopened.events == []  # the persisted index checked out against SQLite
    assert reopened.verify(sample=20)["models"]["m"]["ids_equal"]
    reopened.close()


def test_an_auto_index_grown_past_the_exact_limit_is_persisted_as_ivf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow_rag.index import choose

    monkeypatch.setattr(choose, "EXACT_UP_TO", 100)
    rng = np.random.default_rng(4)
    with Store.open(tmp_path / "s", create=True) as store:
        store.ensure_model("m", 8)
        for start in (0, 80, 160):
            store.write([make_record(f"d{i}", ["x"], vectors=rng.normal(size=(1, 8)))
                         for i in range(start, start + 80)])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["models"]["m"]["index_type"] == "ivf"
    assert manifest["models"]["m"]["vector_count"] == 240
    with Store.open(tmp_path / "s", read_only=True) as store:
        hits = store.dense_search(rng.normal(size=8), k=5)
        assert len(hits) == 5 and store.events == []


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17])
def test_block_hashes_of_bytes_and_of_a_file_agree_with_hashlib(tmp_path: Path, size: int) -> None:
    import hashlib

    from mlflow_rag.store.files import block_sha256s, block_sha256s_fd

    data = np.random.default_rng(size).bytes(size)
    expected = [hashlib.sha256(data[i : i + 4096]).hexdigest() for i in range(0, size, 4096)]
    assert block_sha256s(data, block=4096) == expected
    path = tmp_path / "f"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        assert block_sha256s_fd(handle.fileno(), size, block=4096) == expected


def _small_block_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import mlflow_rag.store.index_cache as index_cache_module

    monkeypatch.setattr(index_cache_module, "HASH_BLOCK_BYTES", 4096)
    rng = np.random.default_rng(5)
    with Store.open(tmp_path / "s", create=True) as store:
        store.ensure_model("m", 16, index_type="flat")
        store.write([make_record(f"d{i}", ["x"], vectors=rng.normal(size=(1, 16)))
                     for i in range(300)])
    return tmp_path / "s"


def test_a_flipped_byte_in_any_hash_block_rebuilds_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _small_block_store(tmp_path, monkeypatch)
    entry = json.loads((root / "manifest.json").read_text())["models"]["m"]
    assert entry["block_bytes"] == 4096 and len(entry["block_sha256"]) == -(-entry["bytes"] // 4096) > 3
    path = root / entry["index_file"]
    data = bytearray(path.read_bytes())
    data[3 * 4096 + 100] ^= 0x01  # a vector byte in the fourth block
    path.write_bytes(bytes(data))
    with Store.open(root, read_only=True) as store:
        hits = store.dense_search(np.ones(16), k=3)
        assert len(hits) == 3
        assert any("does not match its sha256 (block hashes)" in e for e in store.events)


def test_a_manifest_without_block_hashes_is_still_verified_by_the_whole_file_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _small_block_store(tmp_path, monkeypatch)
    manifest = json.loads((root / "manifest.json").read_text())
    for field_name in ("block_sha256", "block_bytes"):
        del manifest["models"]["m"][field_name]  # as written before block hashes existed
    (root / "manifest.json").write_text(json.dumps(manifest))
    with Store.open(root, read_only=True) as store:
        store.dense_search(np.ones(16), k=3)
        assert store.events == []  # trusted after the whole-file check
    path = root / manifest["models"]["m"]["index_file"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with Store.open(root, read_only=True) as store:
        store.dense_search(np.ones(16), k=3)
        assert any(e.endswith("does not match its sha256") for e in store.events)


def test_lexical_index_bytes_counts_the_full_text_index_pages(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", create=True) as store:
        store.ensure_model("m", 4)
        empty = store.lexical_index_bytes()
        words = " ".join(f"term{i}" for i in range(2000))
        store.write([make_record(f"d{i}", [f"{words} doc{i}"], vectors=np.ones((1, 4)))
                     for i in range(20)])
        filled = store.lexical_index_bytes()
    assert filled > empty and filled >= 4096  # at least one page more than the empty tables
