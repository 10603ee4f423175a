"""What every storage backend promises the store (mlflow_rag/store/backend.py): transactions
that serialise writers and bump the generation, read snapshots, a vector-id sequence that
never reuses a value, and a deletion log. Each test runs against every backend through the
``open_backend`` fixture (two connections to one store are two writers, as two processes or
hosts would be)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag import codec
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.filters import plan_filter
from mlflow_rag.store.sqlite.backend import SqliteBackend
from mlflow_rag.store.tables import new_id, utc_now

OpenBackend = Callable[[], Backend]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenBackend]:
    """Opens connections to one new store of the backend under test; closes them after."""
    opened: list[Backend] = []
    if request.param == "postgresql":
        from mlflow_rag.store.postgres.backend import PostgresBackend

        location = request.getfixturevalue("pg_database")

        def connect() -> Backend:
            return PostgresBackend.open(location, create=True, read_only=False)
    else:
        def connect() -> Backend:
            return SqliteBackend.open(tmp_path, read_only=False, immutable=False)

    def tracked() -> Backend:
        backend = connect()
        opened.append(backend)
        return backend

    yield tracked
    for backend in opened:
        backend.close()


def _add_document(backend: Backend, doc_id: str, *, model: str = "m", n_chunks: int = 2) -> list[int]:
    """One document with ``n_chunks`` chunks and a vector each; returns the vector ids."""
    with backend.write_transaction():
        backend.upsert_documents([(doc_id, f"/src/{doc_id}.txt", "text", f"h-{doc_id}",
                                   codec.metadata_json({"topic": doc_id}), "raw")], now=utc_now())
        backend.replace_document_fields([], [(doc_id, "topic", doc_id)])
        first = backend.allocate_ids(n_chunks)
        chunk_ids = [f"{doc_id}-c{i}" for i in range(n_chunks)]
        backend.insert_chunks(
            (cid, doc_id, i, "text", f"text {doc_id} number {i}", 0, 1, 3, "{}", f"t-{cid}",
             first + i)
            for i, cid in enumerate(chunk_ids)
        )
        first_vector = backend.allocate_ids(n_chunks)
        vectors = np.eye(4, dtype=np.float32)[:n_chunks]
        backend.insert_embeddings(
            (new_id(), cid, model, None, 4, codec.vector_to_blob(vectors[i]), utc_now(), "{}",
             first_vector + i)
            for i, cid in enumerate(chunk_ids)
        )
    return [first_vector + i for i in range(n_chunks)]


def _with_model(backend: Backend, name: str = "m") -> Backend:
    with backend.write_transaction():
        backend.insert_model(name=name, slug=name, dimension=4, embedder=None, model_version=None,
                             index_type="flat", index_params={})
    return backend


def test_each_write_transaction_bumps_the_generation_by_one(open_backend: OpenBackend) -> None:
    backend = open_backend()
    start = backend.generation()
    seen = []
    for _ in range(3):
        with backend.write_transaction() as generation:
            seen.append(generation)
    assert seen == [start + 1, start + 2, start + 3]
    assert backend.generation() == start + 3


def test_a_failed_write_leaves_nothing_and_keeps_the_generation(open_backend: OpenBackend) -> None:
    backend = _with_model(open_backend())
    before = backend.generation()
    with pytest.raises(RuntimeError, match="boom"), backend.write_transaction():
        backend.upsert_documents([("d1", "/d1", "text", "h", "{}", "raw")], now=utc_now())
        raise RuntimeError("boom")
    assert backend.generation() == before
    assert backend.document_row("d1") is None
    assert backend.counts()["documents"] == 0


def test_a_read_snapshot_does_not_see_a_write_committed_meanwhile(open_backend: OpenBackend) -> None:
    reader, writer = open_backend(), _with_model(open_backend())
    _add_document(writer, "before")
    with reader.read_transaction():
        generation = reader.generation()
        _add_document(writer, "during")
        assert reader.generation() == generation
        assert reader.document_row("during") is None
        assert reader.counts()["documents"] == 1
    assert reader.document_row("during") is not None
    assert reader.generation() == generation + 1


def test_concurrent_writers_lose_no_write(open_backend: OpenBackend) -> None:
    """Two connections each commit 25 read-modify-write increments: the generation and a
    counter kept in the store's meta both end at exactly 50."""
    backends = [open_backend(), open_backend()]
    start = backends[0].generation()
    with backends[0].write_transaction():
        backends[0].set_meta("counter", "0")
    errors: list[BaseException] = []

    def work(backend: Backend) -> None:
        try:
            for _ in range(25):
                with backend.write_transaction():
                    backend.set_meta("counter", str(int(backend.get_meta("counter")) + 1))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert backends[0].get_meta("counter") == "50"
    assert backends[1].generation() == start + 51


def test_the_id_sequence_never_reuses_a_value(open_backend: OpenBackend) -> None:
    a, b = _with_model(open_backend()), open_backend()
    first_ids = _add_document(a, "d1")
    with a.write_transaction():
        assert a.delete_document("d1")
    later_ids = _add_document(b, "d2")
    assert min(later_ids) > max(first_ids)
    with a.write_transaction():
        block = a.allocate_ids(10)
    with b.write_transaction():
        after = b.allocate_ids(1)
    assert after >= block + 10


def test_the_deletion_log_names_every_removed_vector_by_generation(open_backend: OpenBackend) -> None:
    backend = _with_model(open_backend())
    kept = _add_document(backend, "kept")
    gone = _add_document(backend, "gone", n_chunks=3)
    written_at = backend.generation()
    with backend.write_transaction() as deleted_at:
        backend.delete_document("gone")
    assert sorted(backend.deletions_since("m", written_at).tolist()) == sorted(gone)
    assert backend.deletions_since("m", deleted_at).tolist() == []
    with backend.write_transaction():
        backend.delete_embeddings_for("m", ["kept-c0"])
    assert backend.deletions_since("m", deleted_at).tolist() == [kept[0]]
    ids, matrix = backend.vectors_after("m", 0, 4)
    assert ids.tolist() == [kept[1]] and matrix.shape == (1, 4)


def test_reads_return_what_was_written(open_backend: OpenBackend) -> None:
    backend = _with_model(open_backend())
    vector_ids = _add_document(backend, "d1")
    _add_document(backend, "d2")
    assert backend.document_states(["d1", "nope"]) == {"d1": ("h-d1", '{"topic":"d1"}')}
    assert [r[0] for r in backend.chunk_rows("d1")] == ["d1-c0", "d1-c1"]
    assert [r[0] for r in backend.neighbour_rows("d1-c1", 1)] == ["d1-c0", "d1-c1"]
    hits = backend.hits_by_vector_ids(vector_ids)
    assert {row[0] for row in hits.values()} == {"d1-c0", "d1-c1"}
    assert backend.vectors_by_ids(vector_ids[::-1], 4).tolist() == np.eye(4)[:2][::-1].tolist()
    assert backend.counts() == {"documents": 2, "chunks": 4, "embeddings": 4, "queries": 0,
                                "retrievals": 0}


def test_filters_and_bm25_select_by_the_plan(open_backend: OpenBackend) -> None:
    backend = _with_model(open_backend())
    for doc_id in ("alpha", "beta"):
        _add_document(backend, doc_id)
    plan = plan_filter({"topic": "beta"})
    assert [r[0] for r in backend.find_document_rows(plan, 10)] == ["beta"]
    assert [r[0] for r in backend.find_document_rows(None, 10)] == ["alpha", "beta"]
    rows = backend.bm25_rows("number 1", 10, plan)
    assert {r[1] for r in rows} == {"beta-c0", "beta-c1"}
    assert rows[0][1] == "beta-c1"  # "1" matches only the second chunk's text
    assert backend.bm25_rows("!!!", 10, None) == []
