"""The compressed index kind (ivfpq): the auto rule's thresholds, the index and its file
layout, and the store re-scoring its candidates with the exact vectors it keeps."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.errors import IndexCorrupt, InvalidInput
from mlflow_rag.index.choose import (
    COMPRESS_ABOVE_BYTES,
    EXACT_UP_TO,
    RERANK_DEPTH,
    choose_index,
    pq_codes,
)
from mlflow_rag.index.compressed import candidates, rerank
from mlflow_rag.index.layout import check_index_file
from mlflow_rag.index.vector_index import VectorIndex, top_k
from mlflow_rag.store.manifest import read_manifest, write_manifest
from mlflow_rag.store.store import Store
from tests.conftest import clustered_unit_vectors, make_record

DIM = 32


_clustered = functools.partial(clustered_unit_vectors, clusters=40, spread=0.5)


def _queries(vectors: np.ndarray, count: int, *, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = vectors[rng.choice(len(vectors), count, replace=False)]
    q = picks + rng.normal(size=picks.shape) * 0.05
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)  # as the store does


# ------------------------------------------------------------------ the auto rule (pure)


@pytest.mark.parametrize(
    ("n", "dim", "kind"),
    [
        (EXACT_UP_TO, 384, "flat"),
        (EXACT_UP_TO + 1, 384, "ivf"),
        (COMPRESS_ABOVE_BYTES // (384 * 4), 384, "ivf"),  # 1,953,125 x 384 floats: 3.0 GB
        (COMPRESS_ABOVE_BYTES // (384 * 4) + 1, 384, "ivfpq"),
        (10_000_000, 384, "ivfpq"),
        (1_000_000, 384, "ivf"),
        (1_000_000, 1536, "ivfpq"),  # 6.1 GB of float32: the rule is bytes, not vectors
        (EXACT_UP_TO, 4096, "flat"),  # exact stays exact whatever the dimension
    ],
)
def test_auto_compresses_once_the_float_vectors_pass_the_byte_threshold(n: int, dim: int,
                                                                        kind: str) -> None:
    assert choose_index("auto", n, dim).kind == kind


def test_ivfpq_parameters_are_derived_and_validated() -> None:
    spec = choose_index("auto", 10_000_000, 384)
    assert dict(spec.params) == {"nlist": 3162, "nprobe": 32, "m": 48, "rerank": RERANK_DEPTH}
    assert choose_index("ivfpq", 100, 384, {"m": 96, "rerank": 50}).params["m"] == 96
    assert [pq_codes(d) for d in (384, 768, 100, 7, 1)] == [48, 96, 10, 1, 1]
    with pytest.raises(InvalidInput, match="ivfpq m must divide the dimension 384, got 50"):
        choose_index("ivfpq", 100, 384, {"m": 50})
    assert candidates(10, {"rerank": 200}) == 200 and candidates(500, {"rerank": 200}) == 500


def test_rerank_orders_candidates_by_exact_score_then_id() -> None:
    ids = np.array([7, 3, 9, 5], dtype=np.int64)
    vectors = np.array([[0.1], [0.9], [0.5], [0.9]], dtype=np.float32)
    got_ids, got_scores = rerank(ids, vectors, np.array([1.0], dtype=np.float32), 3)
    assert got_ids.tolist() == [3, 5, 9] and got_scores.tolist() == pytest.approx([0.9, 0.9, 0.5])
    empty = rerank(np.zeros(0, np.int64), np.zeros((0, 1), np.float32), np.ones(1, np.float32), 3)
    assert len(empty[0]) == 0


# ------------------------------------------------------------------ the index itself


def test_ivfpq_round_trips_removes_and_its_layout_is_checked() -> None:
    n = 3000
    vectors = _clustered(n, DIM)
    ids = np.arange(1, n + 1, dtype=np.int64)
    spec = choose_index("ivfpq", n, DIM)
    index = VectorIndex.build(spec, DIM, ids, vectors, generation=2)
    assert index.ntotal == n and index.ids().tolist() == ids.tolist()
    data = index.serialize()
    copy = VectorIndex.deserialize(data, index.spec, DIM, generation=2, max_vector_id=n,
                                   expected_count=n)
    assert copy.search(vectors[41], 1, allowed=np.array([42, 43])).ids.tolist() == [42]
    assert copy.remove(np.array([42, 99_999], dtype=np.int64)) and 42 not in copy.ids()
    with pytest.raises(IndexCorrupt, match="product quantizer is d=32 M=4"):
        check_index_file(lambda o, c: data[o:o + c], len(data), kind="ivfpq", dimension=DIM,
                         count=n, nlist=spec.params["nlist"], pq_m=8)
    with pytest.raises(IndexCorrupt, match="'IwPQ', expected 'IwFl'"):
        check_index_file(lambda o, c: data[o:o + c], len(data), kind="ivf", dimension=DIM,
                         count=n)


def test_a_tiny_ivfpq_index_still_trains() -> None:
    """Fewer vectors than a sub-quantizer has codes (256): the sample is repeated."""
    vectors = _clustered(50, DIM)
    index = VectorIndex.build(choose_index("ivfpq", 50, DIM), DIM,
                              np.arange(1, 51, dtype=np.int64), vectors, generation=1)
    assert index.ntotal == 50


# ------------------------------------------------------------------ through the store


def _store_with(location: str, vectors: np.ndarray, index_type: str) -> Store:
    store = Store.open(location, create=True)
    store.ensure_model("m", DIM, embedder=None, index_type=index_type)
    per_doc = 10
    store.write([make_record(f"doc{d}", [f"document {d} chunk {j}" for j in range(per_doc)],
                             vectors=vectors[d * per_doc:(d + 1) * per_doc])
                 for d in range(len(vectors) // per_doc)])
    return store


def _chunk_row(hit_chunk_id: str) -> int:
    doc, chunk = hit_chunk_id.removeprefix("doc").split("#")
    return int(doc) * 10 + int(chunk)


@pytest.mark.slow
def test_the_store_reranks_a_forced_compressed_index_to_exact_recall(store_location: str) -> None:
    n = 20_000
    vectors = _clustered(n, DIM)
    store = _store_with(store_location, vectors, "ivfpq")
    queries = _queries(vectors, 40)
    recalls, raw = [], []
    for q in queries:
        want = set(top_k(vectors @ q, 10).tolist())
        hits = store.dense_search(q, model="m", k=10)
        recalls.append(len(want & {_chunk_row(h.chunk_id) for h in hits}) / 10)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        index = store._core.index_cache.indexes["m"]
        raw_ids = index.search(q, 10).ids  # vector ids are 1-based in write order
        raw.append(len(want & set((raw_ids - 1).tolist())) / 10)
    assert index.spec.kind == "ivfpq"
    assert np.mean(recalls) >= 0.9 > np.mean(raw) + 0.05  # re-ranking is what gives recall
    best = store.dense_search(queries[0], model="m", k=1)[0]
    assert best.score == pytest.approx(float(vectors[_chunk_row(best.chunk_id)] @ queries[0]),
                                       abs=1e-5)  # exact scores, not PQ's
    filtered = store.dense_search(queries[0], model="m", k=5, filters={"document_id": "doc7"})
    assert {h.document_id for h in filtered} == {"doc7"} and len(filtered) == 5
    store.delete("doc7")
    assert "doc7" not in {h.document_id for h in store.dense_search(queries[0], model="m", k=10)}
    want_2 = [h.chunk_id for h in store.dense_search(queries[2], model="m", k=10)]
    store.close()
    again = Store.open(store_location)
    try:
        assert again.dense_search(queries[1], model="m", k=10)
        assert not [e for e in again._core.index_cache.events if "rebuilt" in e]
        report = again.verify(sample=20)["models"]["m"]
        assert report["ids_equal"] and report["self_found"] == report["sampled"] == 20
    finally:
        again.close()
    mapped = Store.open(store_location, read_only=True, mmap=True)  # serving's way to open
    try:
        assert [h.chunk_id for h in mapped.dense_search(queries[2], model="m", k=10)] == want_2
    finally:
        mapped.close()


def test_auto_settings_for_ivfpq_are_refused_by_name_when_wrong(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store", create=True)
    try:
        with pytest.raises(InvalidInput, match="ivfpq m must divide the dimension 32, got 5"):
            store.ensure_model("m", DIM, index_type="ivfpq", index_params={"m": 5})
        assert store.models() == []  # nothing stored
    finally:
        store.close()


def test_the_cli_ingests_into_a_compressed_index_and_searches_it(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):
        (folder / f"d{i}.txt").write_text(f"document {i} about topic{i % 5} and vector search {i}")
    runner = CliRunner()
    store = str(tmp_path / "s")
    done = runner.invoke(main, ["ingest", str(folder), "--store", store, "--no-track",
                                "--embedder", "tfidf", "--index-type", "ivfpq",
                                "--index-param", "rerank=50"])
    assert done.exit_code == 0, done.output
    found = runner.invoke(main, ["search", "topic3 vector search", "--store", store,
                                 "--mode", "dense", "--json", "-k", "3"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.output)) == 3
    with Store.open(store, read_only=True) as opened:
        model = opened.models()[0]
        assert (model.index_type, model.index_params["rerank"]) == ("ivfpq", 50)
    bad = runner.invoke(main, ["ingest", str(folder), "--store", str(tmp_path / "t"),
                               "--no-track", "--embedder", "tfidf", "--index-type", "ivfpq",
                               "--index-param", "m=7"])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1
    assert "ivfpq m must divide the dimension" in bad.output


def test_a_spread_out_compressed_store_reopens_without_a_rebuild_but_a_foreign_index_is_caught(
    tmp_path: Path,
) -> None:
    """PQ codes of spread-out vectors score them up to ~30 % off their length: the open's spot
    check compares a code's score with the same vector encoded and decoded by that index, so
    such a store is not rebuilt at every open (it was, as "a foreign index?"), while an index
    of other vectors under the same ids, its hash recomputed, still is."""
    spread_out = functools.partial(clustered_unit_vectors, 2_000, DIM, clusters=40, spread=5.0)
    for name, seed in (("a", 0), ("b", 9)):
        store = _store_with(str(tmp_path / name), spread_out(seed=seed), "ivfpq")
        store.flush()
        store.close()
    query = spread_out()[17]
    for _ in range(2):
        with Store.open(tmp_path / "a") as store:
            assert store.dense_search(query, model="m", k=1)[0].chunk_id == "doc1#7"
            assert not store._core.index_cache.events, store._core.index_cache.events

    # b's index file under a's name, with the hashes b's manifest vouches for it by
    ours, theirs = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    entry, other = ours.models["m"], theirs.models["m"]
    assert (entry.vector_count, entry.max_vector_id) == (other.vector_count, other.max_vector_id)
    shutil.copyfile(tmp_path / "b" / other.index_file, tmp_path / "a" / entry.index_file)
    for name in ("sha256", "bytes", "block_sha256", "block_bytes"):
        setattr(entry, name, getattr(other, name))
    write_manifest(tmp_path / "a", ours)
    with Store.open(tmp_path / "a") as store:
        assert store.dense_search(query, model="m", k=1)[0].chunk_id == "doc1#7"
        assert any("differs from SQLite (a foreign index?)" in event
                   for event in store._core.index_cache.events), store._core.index_cache.events
