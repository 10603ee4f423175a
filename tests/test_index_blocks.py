"""Builds and ``verify`` read a model's vectors a block at a time (issue 19: reading them all
at once took 15 GB at 10M x 384): the block size changes neither the index nor the report."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from mlflow_rag.index import choose
from mlflow_rag.index.choose import choose_index
from mlflow_rag.index.vector_index import VectorIndex, sample_of_blocks, training_sample
from mlflow_rag.store import index_cache
from mlflow_rag.store.store import Store
from tests.conftest import clustered_unit_vectors, make_record

DIM = 16


_clustered = functools.partial(clustered_unit_vectors, dim=DIM, clusters=30, spread=0.4)


def _blocks(ids: np.ndarray, vectors: np.ndarray, rows: int) -> Any:
    return lambda: iter([(ids[s:s + rows], vectors[s:s + rows]) for s in range(0, len(ids), rows)])


def test_the_training_sample_is_the_same_rows_whatever_the_block_size() -> None:
    vectors = _clustered(5_000)
    ids = np.arange(1, 5_001, dtype=np.int64)
    whole = training_sample(vectors, nlist=20)
    assert len(whole) == 20 * 64 < len(vectors)
    for rows in (1, 7, 999, 5_000):
        assert np.array_equal(sample_of_blocks(_blocks(ids, vectors, rows), 5_000, 20), whole)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_an_index_built_from_blocks_is_the_index_built_at_once(kind: str) -> None:
    n = 4_000
    vectors = _clustered(n)
    ids = np.arange(1, n + 1, dtype=np.int64) * 3  # ids with gaps, as after deletions
    spec = choose_index(kind, n, DIM)
    whole = VectorIndex.build(spec, DIM, ids, vectors, generation=1)
    queries = _clustered(20, seed=5)
    want = [whole.search(q, 10).ids.tolist() for q in queries]
    for rows in (333, 1_000):
        built = VectorIndex.build_from_blocks(spec, DIM, _blocks(ids, vectors, rows), n,
                                              generation=1)
        assert built.ntotal == n and built.ids().tolist() == ids.tolist()
        got = [built.search(q, 10).ids.tolist() for q in queries]
        if kind == "hnsw":  # a graph inserted in other batches links (a little) differently
            assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)]) >= 0.95
        else:
            assert got == want and built.serialize() == whole.serialize()


def _store(location: str, vectors: np.ndarray, index_type: str) -> Store:
    store = Store.open(location, create=True)
    store.ensure_model("m", DIM, embedder=None, index_type=index_type)
    docs = [make_record(f"doc{d}", [f"document {d} chunk {j}" for j in range(10)],
                        vectors=vectors[d * 10:(d + 1) * 10]) for d in range(len(vectors) // 10)]
    for start in range(0, len(docs), 100):
        store.write(docs[start:start + 100])
    return store


def test_the_store_builds_and_verifies_in_blocks(store_location: str, monkeypatch) -> None:
    vectors = _clustered(3_000)
    store = _store(store_location, vectors, "ivfpq")
    store.delete("doc3")  # a hole in the ids
    queries = _clustered(10, seed=7)
    store.rebuild_index("m")
    want = [[h.chunk_id for h in store.dense_search(q, model="m", k=10)] for q in queries]
    report = store.verify(sample=30)["models"]["m"]
    limits: list[int] = []
    backend = store.backend
    real = backend.vectors_after

    def spy(model: str, after: int, dimension: int, *, limit: int = 0) -> Any:
        limits.append(limit)
        return real(model, after, dimension, limit=limit)

    monkeypatch.setattr(backend, "vectors_after", spy)
    monkeypatch.setattr(index_cache, "BUILD_BLOCK_BYTES", 256 * 4 * DIM)  # 256 vectors a block
    store.rebuild_index("m")
    assert [[h.chunk_id for h in store.dense_search(q, model="m", k=10)]
            for q in queries] == want
    assert store.verify(sample=30)["models"]["m"] == report
    assert report["ids_equal"] and report["vectors"] == 2_990
    assert report["self_found"] == report["sampled"] == 30
    # every read was one block: 2,990 vectors in 12 blocks, twice for the build (training
    # sample, then adding), once for the float16 side file the rebuild's flush writes, once
    # for verify
    assert set(limits) == {256} and len(limits) == 4 * 12
    store.flush()
    limits.clear()
    other = Store.open(store_location)  # another writer: this store replays its rows
    more = _clustered(600, seed=9)
    other.write([make_record(f"new{d}", [f"new {d} chunk {j}" for j in range(10)],
                             vectors=more[d * 10:(d + 1) * 10]) for d in range(60)])
    other.close()
    assert store.dense_search(more[5], model="m", k=1)[0].chunk_id == "new0#5"
    assert limits == [256, 256, 256]  # 600 new vectors replayed in blocks
    store.close()


def test_a_flat_index_that_outgrows_auto_is_dropped_not_grown(store_location: str,
                                                             monkeypatch) -> None:
    monkeypatch.setattr(choose, "EXACT_UP_TO", 150)
    vectors = _clustered(400)
    store = Store.open(store_location, create=True)
    store.ensure_model("m", DIM, embedder=None)  # auto
    store.write([make_record(f"doc{d}", [f"document {d} chunk {j}" for j in range(10)],
                             vectors=vectors[d * 10:(d + 1) * 10]) for d in range(10)])
    cache = store._core.index_cache
    assert cache.indexes["m"].spec.kind == "flat"  # the first write's, kept in memory
    store.write([make_record(f"doc{d}", [f"document {d} chunk {j}" for j in range(10)],
                             vectors=vectors[d * 10:(d + 1) * 10]) for d in range(10, 40)])
    assert "m" not in cache.indexes and not cache.pending.get("m")  # 400 > 150: not flat
    hits = store.dense_search(vectors[123], model="m", k=1)
    assert cache.indexes["m"].spec.kind == "ivf" and cache.indexes["m"].ntotal == 400
    assert hits[0].chunk_id == "doc12#3"
    store.close()
