"""What a filter selected is remembered per store generation (store/filter_cache.py): a
repeated filter skips the SQL, and after every kind of change (new matching documents, a
deletion, a metadata or access-label update, an erase) the next search still answers
exactly what brute force over the allowed chunks answers, on both backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mlflow_rag.store.access import Principal
from mlflow_rag.store.filter_cache import FilterResults
from mlflow_rag.store.filter_masks import VectorKeys, allowed_vector_ids
from mlflow_rag.store.filters import plan_filter
from mlflow_rag.store.request import Retrieval
from mlflow_rag.store.store import Store
from tests.conftest import make_record

DIM = 8


def test_results_are_read_only_and_bounded_by_bytes_and_entries() -> None:
    results = FilterResults(max_bytes=1000, max_entries=3)
    first = results.put("a", np.arange(10, dtype=np.int64))  # 80 bytes + the key
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0] = 1
    assert results.get("a") is first and results.hits == 1
    assert results.get("b") is None and results.misses == 1
    results.put("b", np.zeros(10, dtype=np.int64))
    results.put("c", np.zeros(10, dtype=np.int64))
    results.get("a")  # a is now the most recent: b goes first
    results.put("d", np.zeros(10, dtype=np.int64))
    assert results.get("b") is None and len(results) == 3
    results.put("e", np.zeros(100, dtype=np.int64))  # 802 bytes: c, the oldest, makes room
    assert results.get("c") is None and results.bytes == 82 + 82 + 802
    assert results.get("a") is not None and results.get("d") is not None
    results.put("huge", np.zeros(200, dtype=np.int64))  # larger than the bound: not kept
    assert results.get("huge") is None and results.get("e") is not None
    results.put("e", np.zeros(1, dtype=np.int64))  # replacing frees the old entry's bytes
    assert results.bytes == 82 + 82 + 10
    results.clear()
    assert len(results) == 0 and results.bytes == 0


class Corpus:
    """The store's documents as the test wrote them, for brute force."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
        self.rng = np.random.default_rng(19)

    def record(self, doc_id: str, metadata: dict[str, Any], chunks: int = 2) -> Any:
        if doc_id in self.docs:
            vectors = self.docs[doc_id][1]
        else:  # unit length, as the store keeps them
            vectors = self.rng.normal(size=(chunks, DIM))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        self.docs[doc_id] = (metadata, vectors)
        return make_record(doc_id, [f"{doc_id} part {j}" for j in range(len(vectors))],
                           vectors=vectors, metadata=metadata)

    def expected(self, query: np.ndarray, k: int,
                 keep: Callable[[dict[str, Any]], bool]) -> list[str]:
        scored = [(-float(v @ query / np.linalg.norm(query)), f"{d}#{j}")
                  for d, (meta, vectors) in self.docs.items() if keep(meta)
                  for j, v in enumerate(vectors)]
        return [chunk for _, chunk in sorted(scored)[:k]]


def sees(principal: Principal) -> Callable[[dict[str, Any]], bool]:
    return lambda meta: not meta.get("_access") or bool(
        principal.labels.intersection(meta["_access"]))


def test_a_repeated_filter_is_read_once_per_generation_and_exact_after_every_change(
    store_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = Corpus()
    store = Store.open(store_location, create=True)
    store.ensure_model("m", DIM)
    store.write([corpus.record(f"d{i:02d}", {"team": ["north", "south", "east"][i % 3],
                                             **({"_access": ["red"]} if i % 4 == 0 else {})})
                 for i in range(30)])
    calls: list[object] = []
    real = store.backend.condition_ids
    monkeypatch.setattr(store.backend, "condition_ids",
                        lambda condition: calls.append(condition) or real(condition))
    alice, bob = Principal.parse("alice", "red"), Principal.parse("bob", "blue")
    north = {"team": "north"}
    queries = corpus.rng.normal(size=(4, DIM))
    k = 6

    def check(label: str) -> None:
        for query in queries:
            for principal in (None, alice, bob):
                def keep(meta: dict[str, Any], p: Principal | None = principal) -> bool:
                    return meta["team"] == "north" and (p is None or sees(p)(meta))
                hits = store.dense(query, Retrieval.parse(k=k, filters=north,
                                                          principal=principal), model="m")
                assert [h.chunk_id for h in hits] == corpus.expected(query, k, keep), label

    check("first")
    # The first query of each plan reads the SQL: the bare filter (1); for alice the two
    # access conditions and the filter inside the $and (3); for bob only his own labels'
    # "$in" (the others are remembered conditions). Later queries of a plan read nothing.
    assert len(calls) == 1 + 3 + 1
    assert calls[-1].arg == ["blue", "bob"]
    calls.clear()
    check("repeated")
    assert calls == []

    def delete(doc_id: str, *, erase: bool) -> None:
        store.delete(doc_id, erase=erase)
        if erase:
            store.erase_deleted()
        corpus.docs.pop(doc_id)

    changes: list[tuple[str, Callable[[], object]]] = [
        ("new matching documents", lambda: store.write(
            [corpus.record(f"n{i}", {"team": "north"}) for i in range(3)])),
        ("a metadata update", lambda: store.write(
            [corpus.record("d01", {"team": "north"}), corpus.record("d00", {"team": "east"})])),
        ("an access-label update", lambda: store.write(
            [corpus.record("d03", {"team": "north", "_access": ["blue"]}),
             corpus.record("d12", {"team": "north"})])),
        ("a deletion", lambda: delete("d06", erase=False)),
        ("an erasing deletion", lambda: delete("d09", erase=True)),
    ]
    for label, change in changes:
        change()
        calls.clear()
        check(label)
        assert calls, f"{label}: the filter was not read again"
        calls.clear()
        check(f"{label}, repeated")
        assert calls == []
    store.close()


def test_different_values_of_one_filter_never_share_an_entry(store_location: str) -> None:
    """1, 1.5, "1", True and lists of them: each its own entry, each answer what an uncached
    evaluation of its plan answers (k above the chunk count: every allowed chunk is a hit)."""
    corpus = Corpus()
    store = Store.open(store_location, create=True)
    store.ensure_model("m", DIM)
    store.write([corpus.record(f"d{i}", {"n": [1, 1.5, "1", True, 2][i % 5]}) for i in range(20)])
    query = corpus.rng.normal(size=DIM)
    specs = [{"n": value} for value in (1, 1.5, "1", True, 2)] + [
        {"n": {"$in": [1]}}, {"n": {"$in": [1, "1"]}}, {"n": {"$ne": 1}}, {"n": {"$gt": 1}}]
    answers = []
    for _ in range(2):  # the second round is served from the entries of the first
        for spec in specs:
            hits = store.dense_search(query, model="m", k=100, filters=spec)
            fresh = VectorKeys(*store.backend.vector_keys("m"))
            allowed = allowed_vector_ids(plan_filter(spec), fresh, store.backend.condition_ids)
            assert sorted(h.vector_id for h in hits) == allowed.tolist(), spec
            answers.append(allowed.tolist())
    assert answers[: len(specs)] == answers[len(specs):]
    assert len({tuple(a) for a in answers}) > 3  # the values do select different chunks
    store.close()
