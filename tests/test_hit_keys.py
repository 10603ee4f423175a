"""Dense hits hydrated through the per-generation vector id -> chunk row map (issue 19).

A long-lived store (a server, a notebook, an evaluation) keeps one map per model from its
second dense search on; these tests hold it to the join it replaces: the same hits, field for
field, after writes, replaced chunks, deletes and erasure (in this process or another), and
never the text of an erased chunk. On PostgreSQL there is no map (hits are joined), so the
same tests check that path keeps the same promises.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.store.erasure import forget_documents
from mlflow_rag.store.hit_keys import HitKeys
from mlflow_rag.store.store import Store
from mlflow_rag.types import Hit
from tests.conftest import make_record

DIM = 16


def _store(location: str, n_docs: int = 30) -> tuple[Store, np.ndarray]:
    rng = np.random.default_rng(7)
    store = Store.open(location, create=True)
    store.ensure_model("m", DIM, embedder=None, index_type="hnsw")
    vectors = rng.normal(size=(n_docs, 3, DIM)).astype(np.float32)
    store.write([make_record(f"doc{i}", [f"doc {i} chunk {j} words{i * 3 + j}" for j in range(3)],
                             vectors=vectors[i], metadata={"n": i}) for i in range(n_docs)])
    return store, vectors


def _joined(store: Store, query: np.ndarray, k: int = 10) -> list[Hit]:
    """The same search with the map dropped: a model's first search joins (hit_keys)."""
    store._core.index_cache.hit_maps.pop("m", None)
    return store.dense_search(query, model="m", k=k)


def _mapped(store: Store, query: np.ndarray, k: int = 10) -> list[Hit]:
    for _ in range(2):  # at least a second search: the map is being built, or replayed
        store.dense_search(query, model="m", k=k)
    store._core.index_cache.wait_for_hit_maps()  # built off the request path: wait for it
    return store.dense_search(query, model="m", k=k)


def _hit_map(store: Store) -> HitKeys | None:
    return store._core.index_cache.hit_maps.get("m")


def test_mapped_hits_equal_joined_hits_through_writes_deletes_and_erasure(
    store_location: str,
) -> None:
    store, vectors = _store(store_location)
    sqlite = "://" not in store_location
    query = vectors[5][1]
    joined = _joined(store, query)
    assert _mapped(store, query) == joined and joined[0].chunk_id == "doc5#1"
    keys = _hit_map(store)
    assert (keys is not None) == sqlite  # PostgreSQL hydrates by the join
    if keys is not None:
        assert keys.generation == store.backend.generation() and len(keys.vector_ids) == 90

    # New chunks: replayed into the map (the same object, not rebuilt), found by the search.
    store.write([make_record("new", ["a brand new chunk"], vectors=query[None, :] * 2)])
    hits = _mapped(store, query)
    assert hits[0].chunk_id == "new#0" and hits[0].text == "a brand new chunk"
    if keys is not None:
        assert _hit_map(store) is keys and len(keys.vector_ids) == 91
        store.write([make_record("doc9", ["doc 9 rewritten"], vectors=vectors[9][:1])],
                    skip_unchanged=False)
        # (HNSW cannot remove: the rewrite rebuilt the index, whose scores may differ from
        # the old graph's in the last bits, so the comparison below is of this state's hits.)
        hits = _mapped(store, query)
        assert _hit_map(store) is keys and len(keys.vector_ids) == 89  # replayed the deletions
        assert not keys.stale and keys.generation == store.backend.generation()
    assert hits == _joined(store, query)

    # A document rewritten with other text: its old chunk rows are gone, the new text shows.
    store.write([make_record("doc5", ["doc 5 second version", "and more"],
                             vectors=vectors[5][1:3])], skip_unchanged=False)
    hits = _mapped(store, query)
    assert hits[0].chunk_id == "doc5#0" and hits[0].text == "doc 5 second version"
    assert "doc 5 chunk 1 words16" not in {h.text for h in hits}
    assert hits == _joined(store, query)

    # Delete (erasing) and forget: never the erased chunks' text, whatever the map held.
    erased: set[str] = set()
    for doc_id, erase in (("doc5", lambda: store.delete("doc5")),
                          ("new", lambda: forget_documents(store, ["new"]))):
        assert doc_id in {h.document_id for h in _mapped(store, query, k=30)}
        erase()
        erased.add(doc_id)
        hits = _mapped(store, query, k=30)
        assert {h.document_id for h in hits}.isdisjoint(erased)
        assert not any(h.text.startswith("doc 5") for h in hits) and (
            "new" not in erased or not any("brand new" in h.text for h in hits))
        assert hits == _joined(store, query, k=30)
    assert store.orphan_hits == 0
    store.close()


def test_a_reader_map_follows_another_processes_writes(store_location: str) -> None:
    writer, vectors = _store(store_location)
    writer.flush()
    reader = Store.open(store_location, read_only=True)
    query = vectors[3][0]
    assert _mapped(reader, query)[0].chunk_id == "doc3#0"
    writer.delete("doc3")
    writer.write([make_record("late", ["written after the reader's map"], vectors=query[None, :])])
    hits = _mapped(reader, query)
    assert hits[0].chunk_id == "late#0" and "doc3" not in {h.document_id for h in hits}
    assert hits == _joined(reader, query)
    assert reader.orphan_hits == 0
    reader.close()
    writer.close()


@pytest.mark.parametrize("table", ["chunks", "documents"])
def test_a_renumbered_row_is_caught_and_the_map_rebuilt(tmp_path: Path, table: str) -> None:
    """SQLite's VACUUM may renumber rowids without a new generation. Simulated by swapping
    two chunks' (or documents') rowids behind the store's back: the map then points a vector
    at another chunk's row (or its chunk at another document's), which the chunk id check
    (or the document id join, when a document is read again) refuses, so the search joins
    and the next rebuilds."""
    root = tmp_path / "store"
    store, vectors = _store(str(root))
    query = vectors[4][2]
    expected = _mapped(store, query)
    stale = _hit_map(store)
    assert stale is not None
    other = next(h for h in expected if h.document_id != "doc4")
    pair = ("doc4#2", other.chunk_id) if table == "chunks" else ("doc4", other.document_id)
    conn = sqlite3.connect(root / "metadata.db", isolation_level=None)
    (a,), (b,) = (conn.execute(f"SELECT rowid FROM {table} WHERE id = ?", (key,)).fetchone()
                  for key in pair)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(f"UPDATE {table} SET rowid = -1 WHERE rowid = ?", (a,))
    conn.execute(f"UPDATE {table} SET rowid = ? WHERE rowid = ?", (a, b))
    conn.execute(f"UPDATE {table} SET rowid = ? WHERE rowid = -1", (b,))
    conn.execute("COMMIT")
    conn.close()
    assert store.dense_search(query, model="m", k=10) == expected  # joined: right rows
    if table == "documents":
        # The hits' documents were remembered at this generation, keyed by the rowids they
        # were read by and checked against each chunk's document id: still the right rows,
        # read without them. A document read again by its (renumbered) key is refused.
        assert not stale.stale
        stale.documents.clear()
        assert store.dense_search(query, model="m", k=10) == expected
    assert stale.stale
    assert store.dense_search(query, model="m", k=10) == expected  # joined, a rebuild started
    store._core.index_cache.wait_for_hit_maps()
    assert store.dense_search(query, model="m", k=10) == expected
    rebuilt = _hit_map(store)
    assert rebuilt is not None and rebuilt is not stale and not rebuilt.stale
    store.close()


def test_the_map_costs_32_bytes_a_vector_and_4_an_id_of_its_span(tmp_path: Path) -> None:
    store, vectors = _store(str(tmp_path / "store"), n_docs=10)
    _mapped(store, vectors[0][0])
    keys = _hit_map(store)
    assert keys is not None and keys.slots is not None and len(keys.slots) == 30
    assert keys.nbytes == 32 * 30 + 4 * 30
    store.close()


def test_ids_are_found_by_the_table_or_by_binary_search_alike() -> None:
    """A map whose ids spread too widely for a table by id finds them by binary search; both
    refuse an id the map does not hold (the search then joins)."""
    dense = np.setdiff1d(np.arange(100, 200, dtype=np.int64), [150])  # a deleted vector: 150
    sparse = np.arange(100, dtype=np.int64) * 1_000_003 + 5
    for ids, table in ((dense, True), (sparse, False)):
        shuffled = np.random.default_rng(0).permutation(ids)
        keys = HitKeys(1, shuffled, shuffled * 2, shuffled * 3, shuffled * 5)
        assert (keys.slots is not None) == table
        wanted = [int(ids[7]), int(ids[0]), int(ids[-1])]
        assert keys.keys_of(wanted) == [(2 * i, 3 * i, 5 * i) for i in wanted]
        for missing in (int(ids[0]) - 1, int(ids[-1]) + 1, 150 if table else int(ids[3]) + 1, -5):
            assert keys.keys_of([int(ids[1]), missing]) is None


# ------------------------------------------------------------------ the CLI, on a store with data

def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _write_corpus(folder: Path, docs: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")


def test_cli_search_reflects_ingest_delete_and_forget_and_so_does_an_open_reader(
    store_location: str, tmp_path: Path,
) -> None:
    """The CLI writes (ingest, delete, forget) while a long-lived reader holds its map; CLI
    dense searches (HNSW) and the reader's both reflect each change."""
    corpus = tmp_path / "corpus"
    topics = ["tea", "coffee", "bread", "cheese", "wine", "apples", "rice", "beans"]
    _write_corpus(corpus, {t: f"All about {t}. {t} is grown, sold and eaten. " * 3 for t in topics})
    store = ["--store", store_location]
    _cli("ingest", str(corpus), *store, "--embedder", "tfidf", "--index-type", "hnsw",
         "--no-track")

    def cli_hits(text: str) -> list[dict]:
        return json.loads(_cli("search", text, *store, "--mode", "dense", "--json", "-k", "8"))

    reader = Store.open(store_location, read_only=True)
    model = reader.models()[0].name

    def reader_hits(document_id: str) -> list[Hit]:
        """The reader's top hits for the stored vector of this document's first chunk."""
        doc = reader.get_document(document_id)
        vector = reader.backend.vectors_for_chunks(model, [doc.chunks[0].id])[doc.chunks[0].id]
        reader.dense_search(vector, model=model, k=8)
        reader.dense_search(vector, model=model, k=8)
        reader._core.index_cache.wait_for_hit_maps()
        return reader.dense_search(vector, model=model, k=8)

    tea = cli_hits("tea")[0]
    assert "tea" in tea["text"]
    assert reader_hits(tea["document_id"])[0].document_id == tea["document_id"]

    _write_corpus(corpus, {"tea": "All about tea. Green tea and black tea, tea gardens. " * 3,
                           "saffron": "All about saffron. saffron is grown and sold. " * 3})
    _cli("ingest", str(corpus), *store, "--embedder", "tfidf", "--no-track")
    assert any("saffron" in h["text"] for h in cli_hits("saffron"))
    tea = cli_hits("tea")[0]
    assert "Green tea" in tea["text"]
    mine = reader_hits(tea["document_id"])
    assert mine[0].text == tea["text"] and "Green tea" in mine[0].text

    _cli("delete", tea["document_id"], *store)
    gone = cli_hits("tea")
    assert tea["document_id"] not in {h["document_id"] for h in gone}
    assert not any("Green tea" in h["text"] for h in gone)
    coffee = next(h for h in cli_hits("coffee") if "coffee" in h["text"])
    hits = reader_hits(coffee["document_id"])
    assert tea["document_id"] not in {h.document_id for h in hits}
    assert not any("Green tea" in h.text for h in hits)

    _cli("forget", coffee["document_id"], *store)
    assert not any("coffee" in h["text"] for h in cli_hits("coffee"))
    bread = next(h for h in cli_hits("bread") if "bread" in h["text"])
    hits = reader_hits(bread["document_id"])
    assert not any("coffee" in h.text or "Green tea" in h.text for h in hits)
    assert reader.orphan_hits == 0
    assert (reader._core.index_cache.hit_maps.get(model) is not None) == (
        "://" not in store_location)  # the reader searched through its map (SQLite)
    reader.close()


def test_loading_the_indexes_builds_the_map_a_server_answers_with(tmp_path: Path) -> None:
    store, vectors = _store(str(tmp_path / "store"))
    store.close()
    server = Store.open(tmp_path / "store", read_only=True)
    assert _hit_map(server) is None
    server.load_indexes()
    keys = _hit_map(server)
    assert keys is not None and len(keys.vector_ids) == 90
    hits = server.dense_search(vectors[2][2], model="m", k=5)
    assert hits[0].chunk_id == "doc2#2" and _hit_map(server) is keys
    server.close()


# ------------------------------------------------------------------ the map built off the request path

def _blocked_loads(monkeypatch: pytest.MonkeyPatch, release: threading.Event,
                   fail: bool = False) -> list[int]:
    """HitKeys.load that reads the keys in its snapshot, then waits for ``release`` (a long
    build) or raises (a failed one); returns the generations it was called at."""
    original = HitKeys.load.__func__  # type: ignore[attr-defined]
    calls: list[int] = []

    def load(cls: type[HitKeys], backend: object, model_name: str, generation: int) -> object:
        calls.append(generation)
        if fail:
            raise sqlite3.OperationalError("disk I/O error")
        keys = original(cls, backend, model_name, generation)
        release.wait(30)
        return keys

    monkeypatch.setattr(HitKeys, "load", classmethod(load))
    return calls


def test_the_map_is_built_off_the_request_path_and_replays_what_was_written_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second search starts the build and answers by the join without waiting for it
    (the build is held until the end here); writes and a delete committed while it runs are
    replayed into the map it hands over, which was read in the build's older snapshot."""
    store, vectors = _store(str(tmp_path / "store"))
    query = vectors[6][0]
    release = threading.Event()
    calls = _blocked_loads(monkeypatch, release)
    cache = store._core.index_cache
    first = store.dense_search(query, model="m", k=10)
    second = store.dense_search(query, model="m", k=10)  # returns while the build is held
    assert second == first and first[0].chunk_id == "doc6#0" and _hit_map(store) is None
    build = cache.map_builds["m"]
    assert not build.finished.is_set()
    built_at = store.backend.generation()
    store.write([make_record("late", ["written during the build"], vectors=query[None, :])])
    store.delete("doc6")
    during = store.dense_search(query, model="m", k=10)
    assert during[0].chunk_id == "late#0" and "doc6" not in {h.document_id for h in during}
    release.set()
    cache.wait_for_hit_maps()
    assert build.keys is not None and build.keys.generation == built_at and calls == [built_at]
    after = store.dense_search(query, model="m", k=10)
    keys = _hit_map(store)
    assert keys is build.keys and keys.generation == store.backend.generation()
    assert after == during == _joined(store, query)
    assert len(keys.vector_ids) == 88  # 90 + 1 written - doc6's 3
    assert store.orphan_hits == 0
    store.close()
    assert not build._thread.is_alive()


def test_a_map_newer_than_the_search_snapshot_waits_for_the_next_search(tmp_path: Path) -> None:
    store, vectors = _store(str(tmp_path / "store"))
    _mapped(store, vectors[0][0])
    keys = _hit_map(store)
    assert keys is not None
    cache = store._core.index_cache
    with store.backend.read_transaction():
        assert cache.hit_keys("m", keys.generation - 1) is None  # joins; the map is kept
        assert cache.hit_keys("m", keys.generation) is keys
    store.close()


def test_a_failed_build_is_logged_the_searches_join_and_it_is_retried_after_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    store, vectors = _store(str(tmp_path / "store"))
    query = vectors[2][1]
    release = threading.Event()
    calls = _blocked_loads(monkeypatch, release, fail=True)
    cache = store._core.index_cache
    expected = _joined(store, query)
    for _ in range(3):
        assert store.dense_search(query, model="m", k=10) == expected
        cache.wait_for_hit_maps()
    assert _hit_map(store) is None and len(calls) == 1  # not retried at the same generation
    assert "building the hit map of m failed" in caplog.text
    monkeypatch.undo()
    store.write([make_record("x", ["one more"], vectors=vectors[0][:1])])
    store.dense_search(query, model="m", k=10)  # a new generation: built again
    cache.wait_for_hit_maps()
    assert store.dense_search(query, model="m", k=10)[0].chunk_id == "doc2#1"
    assert _hit_map(store) is not None
    store.close()


def test_closing_the_store_interrupts_a_running_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A build still reading when the store closes is interrupted (its statement stops), its
    thread ends and its connection closes; a cancelled build is not logged as a failure."""
    store, vectors = _store(str(tmp_path / "store"))
    started = threading.Event()
    errors: list[str] = []

    def load(cls: type[HitKeys], backend: object, model_name: str, generation: int) -> object:
        started.set()
        try:  # a statement of many seconds, standing for the keys of a large store
            backend.conn.execute(  # type: ignore[attr-defined]
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                "WHERE i < 300000000) SELECT count(*) FROM n").fetchone()
        except sqlite3.OperationalError as exc:
            errors.append(str(exc))
            raise
        raise AssertionError("the statement ran to its end")

    monkeypatch.setattr(HitKeys, "load", classmethod(load))
    for _ in range(2):
        store.dense_search(vectors[1][1], model="m", k=5)
    build = store._core.index_cache.map_builds["m"]
    assert started.wait(30)
    time.sleep(0.3)  # the statement is running
    store.close()
    assert not build._thread.is_alive() and build.failed and errors == ["interrupted"]
    assert "building the hit map" not in caplog.text
