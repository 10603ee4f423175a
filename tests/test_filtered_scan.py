"""Filtered dense search (index/filtered.py): the choice of scan by selectivity and index kind,
the bitmap FAISS reads, and every scan exact: equal to brute force over the allowed vectors,
ties by lower id first, as ``top_k`` breaks them."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mlflow_rag.index import filtered
from mlflow_rag.index.choose import choose_index
from mlflow_rag.index.filtered import (
    FILTERED_STRATEGIES,
    GATHER_BELOW,
    bitmap,
    exact_selected,
    filtered_strategy,
)
from mlflow_rag.index.vector_index import VectorIndex


@pytest.mark.parametrize(("kind", "allowed", "total", "strategy"), [
    ("flat", 1, 100_000, "gather"),
    ("flat", 1_000, 100_000, "gather"),  # 1 %
    ("flat", 1_999, 100_000, "gather"),
    ("flat", 2_000, 100_000, "bitmap"),  # 2 %
    ("flat", 10_000, 100_000, "bitmap"),
    ("flat", 100_000, 100_000, "bitmap"),
    ("hnsw", 100, 100_000, "gather"),
    ("hnsw", 50_000, 100_000, "bitmap"),  # HNSW's storage, never its graph
    ("ivf", 1, 1_000_000, "ivf-lists"),
    ("ivf", 500_000, 1_000_000, "ivf-lists"),
    ("flat", 1, 10, "bitmap"),  # 10 %
])
def test_strategy_by_kind_and_selectivity(kind: str, allowed: int, total: int,
                                          strategy: str) -> None:
    assert filtered_strategy(kind, allowed=allowed, total=total) == strategy
    assert strategy in FILTERED_STRATEGIES


def test_strategy_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown index kind 'lsh'; choose from flat, hnsw, ivf"):
        filtered_strategy("lsh", allowed=1, total=2)


def test_bitmap_is_little_bit_order_as_faiss_reads_it() -> None:
    members = np.array([0, 3, 8, 17], dtype=np.int64)
    bits = bitmap(members, 20)
    assert bits.tolist() == [0b00001001, 0b00000001, 0b00000010]
    selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
    assert [i for i in range(24) if selector.is_member(i)] == members.tolist()


def test_the_gather_scores_in_blocks_equal_the_product(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlflow_rag.index.filtered.GATHER_BLOCK_FLOATS", 3 * 8)
    matrix = _unit(50, 8, seed=2)
    positions = np.array([0, 3, 4, 9, 17, 30, 49])  # three blocks of three rows, the last of one
    got = filtered.gathered_scores(matrix, positions, matrix[9])
    assert got == pytest.approx(matrix[positions] @ matrix[9], abs=1e-6)
    unaligned = np.frombuffer(b"\0\0" + matrix.tobytes(), dtype=np.float32, offset=2)
    assert not unaligned.flags.aligned
    assert filtered.gathered_scores(unaligned.reshape(50, 8), positions, matrix[9]) == \
        pytest.approx(got, abs=1e-6)


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _brute(vectors: np.ndarray, ids: np.ndarray, allowed: np.ndarray, query: np.ndarray,
           k: int) -> list[int]:
    """Ids of the top k allowed vectors by exact inner product, ties by lower id."""
    rows = np.flatnonzero(np.isin(ids, allowed))
    order = np.argsort(-(vectors[rows] @ query), kind="stable")[:k]
    return ids[rows[order]].tolist()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("share", [0.002, 0.01, 0.05, 0.3, 1.0])
def test_filtered_search_equals_brute_force_on_the_allowed_subset(kind: str, share: float) -> None:
    n, dim = 3_000, 16
    vectors = _unit(n, dim, seed=3)
    # duplicated rows make exact ties, some across the cut at k
    vectors[1500:1600] = vectors[100:200]
    vectors[2000:2010] = vectors[5]
    ids = np.arange(7, 7 + 2 * n, 2, dtype=np.int64)  # gaps: ids are not positions
    index = VectorIndex.build(choose_index(kind, n, dim), dim, ids, vectors, generation=1)
    rng = np.random.default_rng(int(share * 1000))
    allowed = ids[rng.random(n) < share]
    allowed = np.concatenate([allowed, ids[[5, 2000, 2003, 105, 1505]], [10**6]])  # + absent id
    strategy = filtered_strategy(kind, allowed=len(np.unique(allowed)) - 1, total=n)
    assert strategy == ("ivf-lists" if kind == "ivf" else
                        "gather" if share < GATHER_BELOW else "bitmap")
    for q, k in [(5, 1), (5, 4), (5, 11), (105, 2), (9, 10), (42, 60)]:
        query = vectors[q]
        result = index.search(query, k, allowed=allowed[::-1])  # order of ids does not matter
        assert result.ids.tolist() == _brute(vectors, ids, allowed, query, k), (q, k)
        assert np.all(np.diff(result.scores) <= 1e-6)


def test_ties_across_the_cut_widen_the_search_until_every_tied_row_is_in_hand() -> None:
    scores = np.array([0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.2], dtype=np.float32)
    calls: list[int] = []

    def search(n: int, selector: faiss.IDSelector) -> tuple[np.ndarray, np.ndarray]:
        # a heap that kept the tied rows of highest label: the worst case for the cut
        calls.append(n)
        members = [i for i in range(len(scores)) if selector.is_member(i)]
        order = sorted(members, key=lambda i: (-scores[i], -i))[:n]
        return scores[order][None, :], np.array(order, dtype=np.int64)[None, :]

    labels, best = exact_selected(search, np.arange(7), 7, 2)
    assert labels.tolist() == [1, 2] and best.tolist() == pytest.approx([0.9, 0.9])
    assert calls == [3, 6]  # six hold the five tied rows and one below them
    labels, _ = exact_selected(search, np.array([0, 4, 5, 6]), 7, 3)
    assert labels.tolist() == [4, 5, 0]


def test_the_bitmap_scan_searches_the_hnsw_storage_on_one_thread() -> None:
    vectors = _unit(2_000, 8, seed=4)
    ids = np.arange(1, 2_001, dtype=np.int64)
    index = VectorIndex.build(choose_index("hnsw", 2_000, 8), 8, ids, vectors, generation=1)
    before = faiss.omp_get_max_threads()
    storage = index._flat_storage()
    seen: list[int] = []
    search = storage.search

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(faiss.omp_get_max_threads())
        return search(*args, **kwargs)

    storage.search = spy
    result = index.search(vectors[700], 5, allowed=ids[::2])
    assert result.ids.tolist() == _brute(vectors, ids, ids[::2], vectors[700], 5)
    assert seen == [1] and faiss.omp_get_max_threads() == before
