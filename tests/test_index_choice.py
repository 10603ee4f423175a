"""choose_index: a pure, table-tested decision; VectorIndex checked against exact numpy."""

from __future__ import annotations

import itertools

import faiss
import numpy as np
import pytest

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.index import vector_index
from mlflow_rag.index.choose import (
    EXACT_UP_TO,
    MIN_PROBES,
    PROBE_SHARE,
    choose_index,
    ivf_probes,
)
from mlflow_rag.index.vector_index import (
    IVF_PARALLEL_MODE,
    TRAIN_PER_LIST,
    VectorIndex,
    top_k,
    training_sample,
)


@pytest.mark.parametrize(
    ("requested", "n", "kind"),
    [
        ("auto", 0, "flat"),
        ("auto", 10_000, "flat"),
        ("auto", EXACT_UP_TO, "flat"),
        ("auto", EXACT_UP_TO + 1, "ivf"),
        ("auto", 1_000_000, "ivf"),
        ("flat", 5_000_000, "flat"),
        ("hnsw", 10, "hnsw"),
        ("ivf", 100, "ivf"),
    ],
)
def test_choice_by_requested_type_and_size(requested: str, n: int, kind: str) -> None:
    assert choose_index(requested, n, 384).kind == kind


@pytest.mark.parametrize(
    ("n", "nlist", "nprobe"),
    [
        (100, 2, 2),  # 39 training points per list; never more probes than lists
        (10_000, 100, MIN_PROBES),
        (EXACT_UP_TO + 1, 500, MIN_PROBES),  # the smallest store auto gives IVF
        (1_000_000, 1000, 10),  # sqrt(n) lists, 1 % of them probed
        (4_000_000, 2000, 20),
    ],
)
def test_ivf_lists_are_about_sqrt_n_and_probes_about_one_percent(n: int, nlist: int, nprobe: int) -> None:
    spec = choose_index("auto" if EXACT_UP_TO < n <= 1_000_000 else "ivf", n, 384)  # 4M: ivfpq
    assert (spec.kind, spec.params["nlist"], spec.params["nprobe"]) == ("ivf", nlist, nprobe)


def test_ivf_rule_keeps_training_points_and_scan_share_at_every_size() -> None:
    sizes = [int(10 ** (e / 4)) for e in range(8, 30)]  # 100 .. ~18M, geometric
    specs = [choose_index("ivf", n, 384).params for n in sizes]
    for n, params in zip(sizes, specs, strict=True):
        assert n // params["nlist"] >= 39  # FAISS's minimum training points per list
        assert params["nprobe"] <= params["nlist"]
        assert params["nprobe"] >= min(MIN_PROBES, params["nlist"])
        assert params["nprobe"] * PROBE_SHARE >= params["nlist"]  # at least 1 % of the lists
    lists = [p["nlist"] for p in specs]
    scanned = [p["nprobe"] * n / p["nlist"] for n, p in zip(sizes, specs, strict=True)]
    assert lists == sorted(lists) and lists[-1] < sizes[-1] ** 0.6  # grows, sublinearly
    assert all(b >= a * 0.97 for a, b in itertools.pairwise(scanned))  # recall holds


def test_ivf_probes_is_bounded_by_the_list_count() -> None:
    assert [ivf_probes(n) for n in (1, 5, 8, 100, 801, 5000)] == [1, 5, 8, 8, 9, 50]


def test_ivf_trains_on_a_seeded_sample_of_the_vectors() -> None:
    vectors = np.arange(50_000, dtype=np.float32).reshape(-1, 2)
    assert len(training_sample(vectors[:100], nlist=10)) == 100  # fewer than the sample: all
    sample = training_sample(vectors, nlist=10)
    assert sample.shape == (TRAIN_PER_LIST * 10, 2)
    rows = sample[:, 0].astype(int) // 2
    assert rows.tolist() == sorted(set(rows.tolist()))  # distinct rows, in their original order
    assert np.array_equal(sample, vectors[rows])
    assert np.array_equal(sample, training_sample(vectors, nlist=10))  # a rebuild trains alike
    assert not np.array_equal(sample, training_sample(vectors, nlist=10, seed=1))


def _clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)) * 3
    points = centers[rng.integers(clusters, size=n)] + rng.normal(size=(n, dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def test_ivf_built_from_a_training_sample_finds_the_true_neighbours(monkeypatch) -> None:
    n, dim = 12_000, 24
    vectors = _clustered(n, dim, clusters=60)
    trained_on = []
    real_sample = vector_index.sample_of_blocks

    def spy(blocks: vector_index.Blocks, count: int, nlist: int, **kw: int) -> np.ndarray:
        trained_on.append(len(real_sample(blocks, count, nlist, **kw)))
        return real_sample(blocks, count, nlist, **kw)

    monkeypatch.setattr(vector_index, "sample_of_blocks", spy)
    spec = choose_index("ivf", n, dim)
    index = VectorIndex.build(spec, dim, np.arange(1, n + 1, dtype=np.int64), vectors, generation=1)
    assert trained_on == [TRAIN_PER_LIST * spec.params["nlist"]] and trained_on[0] < n
    ivf = faiss.extract_index_ivf(index.index)
    assert (ivf.nprobe, ivf.parallel_mode) == (spec.params["nprobe"], IVF_PARALLEL_MODE)
    rng = np.random.default_rng(3)
    queries = vectors[rng.choice(n, 30, replace=False)] + rng.normal(size=(30, dim)) * 0.05
    recalls = []
    for q in queries.astype(np.float32):
        want = set((top_k(vectors @ q, 10) + 1).tolist())
        recalls.append(len(want & set(index.search(q, 10).ids.tolist())) / 10)
    assert np.mean(recalls) >= 0.95
    copy = VectorIndex.deserialize(index.serialize(), index.spec, dim, generation=1,
                                   max_vector_id=n, expected_count=n)
    ivf = faiss.extract_index_ivf(copy.index)
    assert (ivf.nprobe, ivf.parallel_mode) == (spec.params["nprobe"], IVF_PARALLEL_MODE)


def test_user_parameters_override_defaults_and_are_validated() -> None:
    assert choose_index("hnsw", 10, 8, {"ef_search": 300}).params["ef_search"] == 300
    with pytest.raises(UnknownChoice, match="hnsw index parameter 'efsearch'"):
        choose_index("hnsw", 10, 8, {"efsearch": 300})
    with pytest.raises(InvalidInput, match="non-negative integer"):
        choose_index("ivf", 10, 8, {"nprobe": -1})
    with pytest.raises(UnknownChoice, match="Unknown index type 'lsh'"):
        choose_index("lsh", 10, 8)


def test_top_k_orders_best_first_and_breaks_ties_by_position() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3], dtype=np.float32)
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(scores, 10).tolist() == [1, 3, 2, 4, 0]


def _unit_vectors(n: int, dim: int, *, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_every_index_type_round_trips_and_removes(kind: str) -> None:
    vectors = _unit_vectors(300, 12, seed=0)
    ids = np.arange(10, 310, dtype=np.int64)
    index = VectorIndex.build(choose_index(kind, 300, 12), 12, ids, vectors, generation=3)
    assert index.ntotal == 300 and index.ids().tolist() == ids.tolist()
    copy = VectorIndex.deserialize(index.serialize(), index.spec, 12, generation=3,
                                   max_vector_id=309, expected_count=300)
    result = copy.search(vectors[42], 1, allowed=ids)
    assert result.ids[0] == 52
    if kind != "hnsw":
        assert copy.remove(np.array([52, 999], dtype=np.int64))
        assert copy.ntotal == 299 and 52 not in copy.ids()
    else:
        assert not copy.remove(np.array([52], dtype=np.int64))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_one_query_runs_on_one_thread_and_leaves_the_threads_setting_as_it_was(kind: str) -> None:
    vectors = _unit_vectors(400, 8, seed=1)
    ids = np.arange(1, 401, dtype=np.int64)
    index = VectorIndex.build(choose_index(kind, 400, 8), 8, ids, vectors, generation=1)
    before = faiss.omp_get_max_threads()
    seen: list[int] = []
    search = index.index.search

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(faiss.omp_get_max_threads())
        return search(*args, **kwargs)

    index.index.search = spy
    assert index.search(vectors[7], 3).ids[0] == 8
    assert index.search(vectors[9], 3, allowed=ids[5:20]).ids[0] == 10 or kind != "ivf"
    assert seen and set(seen) == {1}
    assert faiss.omp_get_max_threads() == before
    if kind == "hnsw":  # a k above ef_search raises it, and it stays exact for the next k
        assert len(index.search(vectors[7], 200).ids) == 200
        assert index.search(vectors[7], 3).ids[0] == 8


@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_an_index_finding_fewer_than_k_returns_only_what_it_found(kind: str) -> None:
    # One list probed of 4 (IVF): the lists probed hold fewer than k vectors, so FAISS pads its
    # answer with -1; the search returns the found ones, best first, and never a -1.
    vectors = _unit_vectors(200, 8, seed=2)
    ids = np.arange(1000, 1200, dtype=np.int64)
    spec = choose_index(kind, 200, 8, {"nlist": 4, "nprobe": 1} if kind == "ivf" else None)
    index = VectorIndex.build(spec, 8, ids, vectors, generation=1)
    result = index.search(vectors[3], 150)
    found = result.ids.tolist()
    if kind == "ivf":
        assert 0 < len(found) < 150
    else:
        assert len(found) == 150
    assert found[0] == 1003 and min(found) >= 1000 and len(set(found)) == len(found)
    assert len(result.scores) == len(found) and np.all(np.diff(result.scores) <= 0)
    assert -1 not in index.search(vectors[3], 200).ids.tolist()
