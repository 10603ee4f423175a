"""A dense hit's document fields (source path, metadata) remembered per generation (issue 19).

Through the map (tests/test_hit_keys.py), a search whose documents were read before at the
same generation reads its chunk rows alone and takes each document's source path and decoded
metadata from memory. These tests hold that to the join, field for field: after a document's
metadata or source path changes with its text unchanged, a delete, a forget and a write (in
this process, another connection, or the CLI), a search never shows what a document held
before; callers changing a hit's metadata change no other hit's. On PostgreSQL hits are
joined (no map), so the same tests check that path keeps the same promises.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.store.erasure import forget_documents
from mlflow_rag.store.hit_documents import HitDocuments
from mlflow_rag.store.hit_keys import HitKeys
from mlflow_rag.store.store import Store
from mlflow_rag.types import DocumentRecord, Hit
from tests.conftest import make_record

DIM = 16


def _record(i: int, vectors: np.ndarray, **metadata: object) -> DocumentRecord:
    return make_record(f"doc{i}", [f"doc {i} chunk {j}" for j in range(3)], vectors=vectors[i],
                       metadata={"n": i, "tags": ["a", "b"], "_pii": {"email": f"p{i}@x.org"},
                                 **metadata})


def _store(location: str, n_docs: int = 20) -> tuple[Store, np.ndarray]:
    rng = np.random.default_rng(11)
    store = Store.open(location, create=True)
    store.ensure_model("m", DIM, embedder=None, index_type="hnsw")
    vectors = rng.normal(size=(n_docs, 3, DIM)).astype(np.float32)
    store.write([_record(i, vectors) for i in range(n_docs)])
    return store, vectors


def _search(store: Store, query: np.ndarray, *, k: int = 10, pii: bool = False) -> list[Hit]:
    """A search through the map once it is built (its documents remembered by the one before)."""
    for _ in range(2):
        store.dense_search(query, model="m", k=k, include_pii=pii)
    store._core.index_cache.wait_for_hit_maps()
    store.dense_search(query, model="m", k=k, include_pii=pii)
    return store.dense_search(query, model="m", k=k, include_pii=pii)


def _joined(store: Store, query: np.ndarray, *, k: int = 10, pii: bool = False) -> list[Hit]:
    keys = store._core.index_cache.hit_maps.pop("m", None)
    try:
        return store.dense_search(query, model="m", k=k, include_pii=pii)
    finally:
        if keys is not None:
            store._core.index_cache.hit_maps["m"] = keys


def _remembered(store: Store) -> int:
    keys: HitKeys | None = store._core.index_cache.hit_maps.get("m")
    return len(keys.documents) if keys is not None else 0


def test_document_fields_follow_every_write_and_never_show_stale(store_location: str) -> None:
    store, vectors = _store(store_location)
    sqlite = "://" not in store_location
    query = vectors[4][0]
    hits = _search(store, query)
    assert hits[0].chunk_id == "doc4#0" and hits[0].source_path == "/data/doc4.txt"
    assert hits[0].document_metadata == {"n": 4, "tags": ["a", "b"]}  # PII hidden
    assert hits == _joined(store, query)
    assert (_remembered(store) > 0) == sqlite  # SQLite: read through the remembered fields

    # Metadata and source path changed, text and vectors unchanged (the same chunk ids).
    changed = dataclasses.replace(_record(4, vectors, n=40, stage="second"),
                                  source_path="/moved/doc4.txt")
    store.write([changed], skip_unchanged=False)
    hits = _search(store, query)
    assert hits[0].chunk_id == "doc4#0" and hits[0].source_path == "/moved/doc4.txt"
    assert hits[0].document_metadata == {"n": 40, "tags": ["a", "b"], "stage": "second"}
    assert all(h.document_metadata.get("n") != 4 for h in hits)
    assert hits == _joined(store, query)

    # PII shown when asked, through the same remembered document.
    assert _search(store, query, pii=True)[0].document_metadata["_pii"] == {
        "email": "p4@x.org"}
    assert _search(store, query)[0].document_metadata.get("_pii") is None

    # A new document, then a delete and a forget: never the old rows' fields.
    store.write([make_record("late", ["written later"], vectors=query[None, :] * 3,
                             metadata={"n": 99})])
    hits = _search(store, query)
    assert hits[0].document_id == "late" and hits[0].document_metadata == {"n": 99}
    store.delete("doc4")
    forget_documents(store, ["late"])
    hits = _search(store, query, k=30)
    assert {h.document_id for h in hits}.isdisjoint({"doc4", "late"})
    assert not any(h.source_path == "/moved/doc4.txt" for h in hits)
    assert hits == _joined(store, query, k=30)
    assert store.orphan_hits == 0
    store.close()


def test_a_callers_change_to_a_hits_metadata_reaches_no_other_hit(tmp_path: Path) -> None:
    store, vectors = _store(str(tmp_path / "store"))
    query = vectors[2][0]
    first = _search(store, query)
    assert _remembered(store) > 0
    top = first[0]
    top.document_metadata["n"] = "changed"  # type: ignore[index]
    top.document_metadata["tags"].append("mine")  # type: ignore[index]
    again = _search(store, query)
    assert again[0].document_metadata == {"n": 2, "tags": ["a", "b"]}
    assert again[0].document_metadata is not top.document_metadata
    store.close()


def test_another_connections_change_of_metadata_reaches_a_reader(store_location: str) -> None:
    writer, vectors = _store(store_location)
    writer.flush()
    reader = Store.open(store_location, read_only=True)
    query = vectors[7][1]
    assert _search(reader, query)[0].document_metadata["n"] == 7
    writer.write([dataclasses.replace(_record(7, vectors, n=70), source_path="/v2/doc7.txt")],
                 skip_unchanged=False)
    hits = _search(reader, query)
    assert hits[0].chunk_id == "doc7#1" and hits[0].document_metadata["n"] == 70
    assert hits[0].source_path == "/v2/doc7.txt" and hits == _joined(reader, query)
    reader.close()
    writer.close()


def test_the_remembered_documents_are_bounded_oldest_first() -> None:
    documents = HitDocuments(max_bytes=3 * (2 * (2 + 3 + 8) + 600))
    for key in range(5):
        documents.put(key, f"d{key}", "/p1", '{"n": 1}')
    assert len(documents) == 3 and documents.all_of([2, 3, 4]) is not None
    assert documents.all_of([0]) is None and documents.bytes <= documents.max_bytes
    moved = documents.put(3, "other", "/p2", "{}")  # a key read as another document
    assert moved.document_id == "other" and documents.all_of([3]) == [moved]
    documents.clear()
    assert len(documents) == 0 and documents.bytes == 0


# ------------------------------------------------------------------ the CLI, on a store with data

def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_reingest_with_new_metadata_reaches_cli_search_and_an_open_reader(
    store_location: str, tmp_path: Path,
) -> None:
    """A JSON Lines corpus ingested by the CLI; a long-lived reader (a notebook, a server on a
    live store) searches through its map; the same texts re-ingested with another ``topic``
    show the new topic in CLI searches and in the reader's, and a deleted document in
    neither."""
    corpus = tmp_path / "docs.jsonl"
    texts = {f"d{i}": f"All about {w}. {w} is grown, sold and eaten. " * 3
             for i, w in enumerate(["tea", "coffee", "bread", "cheese", "wine", "rice"])}

    def write(topic: str) -> None:
        corpus.write_text("".join(json.dumps({"_id": i, "text": t, "topic": f"{topic}-{i}"}) + "\n"
                                  for i, t in texts.items()), encoding="utf-8")

    store = ["--store", store_location]
    write("first")
    _cli("ingest", str(corpus), *store, "--embedder", "tfidf", "--index-type", "hnsw",
         "--no-track")

    def cli_top(text: str) -> dict:
        return json.loads(_cli("search", text, *store, "--mode", "dense", "--json", "-k", "3"))[0]

    reader = Store.open(store_location, read_only=True)
    model = reader.models()[0].name

    def reader_top(document_id: str) -> Hit:
        doc = reader.get_document(document_id)
        vector = reader.backend.vectors_for_chunks(model, [doc.chunks[0].id])[doc.chunks[0].id]
        for _ in range(3):
            reader.dense_search(vector, model=model, k=3)
            reader._core.index_cache.wait_for_hit_maps()
        return reader.dense_search(vector, model=model, k=3)[0]

    tea = cli_top("tea")
    assert tea["document_metadata"]["topic"] == "first-d0"
    assert reader_top(tea["document_id"]).document_metadata["topic"] == "first-d0"

    write("second")
    _cli("ingest", str(corpus), *store, "--embedder", "tfidf", "--no-track")
    tea = cli_top("tea")
    assert tea["document_metadata"]["topic"] == "second-d0"
    mine = reader_top(tea["document_id"])
    assert mine.document_metadata["topic"] == "second-d0" and mine.text == tea["text"]

    _cli("delete", tea["document_id"], *store)
    after = json.loads(_cli("search", "tea", *store, "--mode", "dense", "--json", "-k", "6"))
    assert tea["document_id"] not in {h["document_id"] for h in after}
    coffee = cli_top("coffee")
    mine = reader_top(coffee["document_id"])
    assert mine.document_metadata["topic"] == "second-d1"
    vector = reader.backend.vectors_for_chunks(model, [mine.chunk_id])[mine.chunk_id]
    hits = reader.dense_search(vector, model=model, k=6)
    assert tea["document_id"] not in {h.document_id for h in hits}
    assert all(h.document_metadata["topic"].startswith("second-") for h in hits)
    assert reader.orphan_hits == 0
    reader.close()
