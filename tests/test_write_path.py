"""The write path's storage settings: page size and cache of the SQLite writer, the cycle
collector around a batch write, and version rows written as one batch."""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.errors import InvalidInput
from mlflow_rag.store.sqlite import connection
from mlflow_rag.store.store import Store
from tests.conftest import make_record


def _page_size(root: Path) -> int:
    with sqlite3.connect(root / "metadata.db") as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def _write(store: Store, doc_id: str, seed: int) -> None:
    vectors = np.random.default_rng(seed).normal(size=(2, 8)).astype("float32")
    store.write([make_record(doc_id, [f"alpha {doc_id}", f"beta {doc_id}"], vectors=vectors,
                             metadata={"year": 2000 + seed})])


def test_a_new_store_gets_16_kib_pages(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", create=True) as store:
        store.ensure_model("m", 8, index_type="flat")
        _write(store, "d1", 1)
    assert _page_size(tmp_path / "s") == connection.PAGE_SIZE == 16_384


def test_a_store_made_with_4_kib_pages_keeps_them_and_takes_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store written by the release before 16 KiB pages: SQLite's default page size.
    with monkeypatch.context() as patch:
        patch.setattr(connection, "PAGE_SIZE", 4096)
        with Store.open(tmp_path / "s", create=True) as store:
            store.ensure_model("m", 8, index_type="flat")
            _write(store, "d1", 1)
    assert _page_size(tmp_path / "s") == 4096
    with Store.open(tmp_path / "s") as store:
        _write(store, "d2", 2)
        assert {view.id for view in store.find_documents('{"year": {"$gte": 2000}}')} \
            == {"d1", "d2"}
        assert len(store.governance.document_history("d2")) == 1
    assert _page_size(tmp_path / "s") == 4096
    with Store.open(tmp_path / "s") as store:
        assert store.verify()["models"]["m"]["ids_equal"]


@pytest.mark.parametrize("enabled", [True, False])
def test_a_write_leaves_the_cycle_collector_as_it_found_it(tmp_path: Path, enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with Store.open(tmp_path / "s", create=True) as store:
            store.ensure_model("m", 8, index_type="flat")
            _write(store, "d1", 1)
            assert gc.isenabled() is enabled
            with pytest.raises(InvalidInput):  # a failed write restores it too
                store.write([make_record("", ["x"])])
            assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_a_batch_of_writes_opens_one_version_per_document_after_earlier_ones(
    store_location: str,
) -> None:
    """Version numbers continue a document's history, in one batch of many documents."""
    with Store.open(store_location, create=True) as store:
        store.ensure_model("m", 8, index_type="flat")
        for doc_id in ("a", "b"):
            _write(store, doc_id, 1)
        store.delete("a")  # its history outlives it
        rng = np.random.default_rng(3)
        store.write([
            make_record(doc_id, [f"new {doc_id}"], vectors=rng.normal(size=(1, 8)),
                        metadata={"v": 2})
            for doc_id in ("a", "b", "c")
        ])
        versions = {doc_id: [v.version for v in store.governance.document_history(doc_id)]
                    for doc_id in ("a", "b", "c")}
    assert versions == {"a": [1, 2], "b": [1, 2], "c": [1]}


def test_a_flat_index_takes_the_vectors_of_many_writes_in_one_add(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes defer their vectors to the flat index's next use (FAISS copies its storage to
    grow it): one add for three writes, and a search right after a write still finds it."""
    from mlflow_rag.index.vector_index import VectorIndex

    adds: list[int] = []
    real_add = VectorIndex.add

    def counting_add(self: VectorIndex, ids: np.ndarray, vectors: np.ndarray) -> None:
        adds.append(len(ids))
        real_add(self, ids, vectors)

    monkeypatch.setattr(VectorIndex, "add", counting_add)
    with Store.open(tmp_path / "s", create=True) as store:
        store.ensure_model("m", 8, index_type="flat")
        for i in range(4):
            _write(store, f"d{i}", i)
        assert adds == [2]  # the first write built the index; the next three wait
        query = np.random.default_rng(3).normal(size=(2, 8)).astype("float32")[0]
        assert store.dense_search(query, model="m", k=1)[0].chunk_id == "d3#0"
        assert adds == [2, 6]
        _write(store, "d4", 4)
        store.flush()
        assert adds == [2, 6, 2]
    with Store.open(tmp_path / "s") as store:
        report = store.verify()
        assert report["models"]["m"]["ids_equal"] and report["models"]["m"]["vectors"] == 10
        assert not store.events


def test_a_flushed_index_file_holds_faiss_bytes_and_the_manifest_their_hashes(
    tmp_path: Path,
) -> None:
    """flush streams FAISS's bytes into the file, hashing them on the way (small blocks here,
    so the file spans several)."""
    import hashlib

    from mlflow_rag.store import files
    from mlflow_rag.store.manifest import read_manifest

    with Store.open(tmp_path / "s", create=True) as store:
        store.ensure_model("m", 8, index_type="flat")
        for i in range(3):
            _write(store, f"d{i}", i)
        store.flush()
        info = store.models()[0]
        with store.backend.read_transaction():
            index = store._core.index_cache.index_for(info, store.backend.generation())
        expected = index.serialize()
    entry = read_manifest(tmp_path / "s").models["m"]  # type: ignore[union-attr]
    data = (tmp_path / "s" / entry.index_file).read_bytes()
    assert data == expected and entry.bytes == len(data)
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert entry.block_sha256 == files.block_sha256s(data, block=entry.block_bytes)
    written = files.atomic_write_stream(tmp_path / "copy", lambda write: write(data), block=100)
    assert written.block_sha256 == files.block_sha256s(data, block=100)
    assert (tmp_path / "copy").read_bytes() == data


def test_a_failing_index_stream_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    import errno

    from mlflow_rag.store import files

    target = tmp_path / "index" / "m.faiss"
    files.atomic_write_stream(target, lambda write: write(b"old"))

    def failing(write: object) -> None:
        write(b"x" * 300)  # type: ignore[operator]
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(files.StorageError, match=r"m\.faiss"):
        files.atomic_write_stream(target, failing, block=128)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.faiss"]


def test_an_error_inside_faiss_s_write_is_raised_as_it_was() -> None:
    import errno

    from mlflow_rag.index.choose import IndexSpec
    from mlflow_rag.index.vector_index import VectorIndex

    vectors = np.random.default_rng(0).normal(size=(50, 8)).astype("float32")
    index = VectorIndex.build(IndexSpec("flat", {}), 8, np.arange(1, 51), vectors, generation=1)
    calls: list[int] = []

    def write(data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        index.write_to(write)
    assert len(calls) == 3  # FAISS stopped at the failed write
