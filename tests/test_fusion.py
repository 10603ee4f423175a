"""Hybrid fusion: pure functions (normalisation, convex combination, dispatch) and the Searcher."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.search import (
    FUSIONS,
    Searcher,
    convex_fusion,
    fuse,
    normalize_scores,
    reciprocal_rank_fusion,
)


@pytest.mark.parametrize(
    ("scores", "method", "expected"),
    [
        ([3.0, 2.0, 1.0], "minmax", [1.0, 0.5, 0.0]),
        ([-0.2, -0.4], "minmax", [1.0, 0.0]),
        ([5.0, 5.0], "minmax", [1.0, 1.0]),  # no spread: all as good as the list's best
        ([7.0], "minmax", [1.0]),
        ([], "minmax", []),
        ([3.0, 2.0, 1.0], "zscore", [math.sqrt(1.5), 0.0, -math.sqrt(1.5)]),
        ([5.0, 5.0], "zscore", [0.0, 0.0]),
    ],
)
def test_normalize_scores(scores: list[float], method: str, expected: list[float]) -> None:
    assert normalize_scores(scores, method=method) == pytest.approx(expected)


def test_normalize_scores_refuses_unknown_methods_and_non_finite_scores() -> None:
    with pytest.raises(UnknownChoice, match="minmax"):
        normalize_scores([1.0], method="softmax")
    with pytest.raises(InvalidInput, match="finite"):
        normalize_scores([1.0, float("nan")])


def test_convex_fusion_adds_normalised_scores_with_weights() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.1)]  # minmax: a 1, b 0.875, c 0
    lexical = [("c", 12.0), ("a", 6.0), ("d", 0.0)]  # minmax: c 1, a 0.5, d 0
    fused = dict(convex_fusion([dense, lexical]))
    assert fused == pytest.approx({"a": 1.5, "b": 0.875, "c": 1.0, "d": 0.0})
    weighted = dict(convex_fusion([dense, lexical], weights=[0.0, 1.0]))
    assert weighted == pytest.approx({"a": 0.5, "b": 0.0, "c": 1.0, "d": 0.0})


def test_convex_fusion_keeps_score_gaps_that_rrf_discards() -> None:
    # The dense list barely prefers x over y; the lexical list strongly prefers y.
    dense = [("x", 0.51), ("y", 0.50), ("z", 0.10)]
    lexical = [("y", 20.0), ("x", 1.0), ("z", 0.5)]
    assert reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in lexical]])[0][1] == \
        reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in lexical]])[1][1]  # a tie
    assert convex_fusion([dense, lexical])[0][0] == "y"


def test_an_id_missing_from_a_list_scores_that_lists_floor() -> None:
    fused = dict(convex_fusion([[("a", 2.0), ("b", 1.0)], [("c", 4.0), ("d", 3.0)]],
                               normalization="zscore"))
    # a and c top their lists (+1), the absentees get the other list's floor (-1)
    assert fused == pytest.approx({"a": 0.0, "b": -2.0, "c": 0.0, "d": -2.0})


def test_convex_fusion_is_best_first_and_ties_keep_first_appearance() -> None:
    fused = convex_fusion([[("a", 1.0), ("b", 1.0)], [("b", 1.0), ("a", 1.0)]])
    assert [i for i, _ in fused] == ["a", "b"]
    scores = [s for _, s in convex_fusion([[("a", 3.0), ("b", 1.0)], [("c", 2.0)]])]
    assert scores == sorted(scores, reverse=True)


def test_convex_fusion_refuses_mismatched_weights() -> None:
    with pytest.raises(InvalidInput, match="2 weights for 1"):
        convex_fusion([[("a", 1.0)]], weights=[1.0, 1.0])


def test_fuse_dispatches_and_rrf_matches_reciprocal_rank_fusion() -> None:
    lists = [[("a", 0.9), ("b", 0.5)], [("b", 3.0), ("c", 1.0)]]
    assert fuse(lists, method="rrf") == reciprocal_rank_fusion([["a", "b"], ["b", "c"]])
    assert fuse(lists, method="convex-minmax") == convex_fusion(lists)
    assert fuse(lists, method="convex-zscore") == convex_fusion(lists, normalization="zscore")
    with pytest.raises(UnknownChoice, match="rrf"):
        fuse(lists, method="borda")
    assert set(FUSIONS) == {"rrf", "convex-minmax", "convex-zscore"}


def test_searcher_hybrid_uses_the_fusion_asked_for(random_store: Any) -> None:
    store, vectors = random_store(n_docs=20, per_doc=1, dim=8)
    try:
        query = "document 3 chunk 0 topic3"
        default = Searcher(store, model="m").hybrid(query, vectors[3], k=5)
        zscore = Searcher(store, model="m").hybrid(query, vectors[3], k=5, fusion="convex-zscore")
        assert [h.chunk_id for h in default] == [h.chunk_id for h in zscore]
        rrf = Searcher(store, model="m").hybrid(query, vectors[3], k=5, fusion="rrf")
        assert rrf[0].score == pytest.approx(2 / 61)  # rank 1 in both lists
        convex = Searcher(store, model="m", fusion="convex-minmax").hybrid(query, vectors[3], k=5)
        assert convex[0].chunk_id == "doc3#0"  # best in both lists
        assert convex[0].score == pytest.approx(2.0)  # 1 (dense max) + 1 (lexical max)
        assert all(np.isfinite(h.score) for h in convex)
        with pytest.raises(UnknownChoice):
            Searcher(store, fusion="max")
    finally:
        store.close()


def test_a_hybrid_k_above_half_the_limit_fuses_the_largest_depth_allowed(
    random_store: Any, tmp_path: Any
) -> None:
    """The default depth (2k candidates per list) is the searcher's number, not the user's: a
    valid k above MAX_K / 2 fuses MAX_K candidates instead of failing on a depth of 2k."""
    import subprocess
    import sys
    from pathlib import Path

    from mlflow_rag.ingest import IngestOptions, ingest
    from mlflow_rag.store.checks import MAX_K
    from mlflow_rag.store.store import Store

    store, vectors = random_store(n_docs=20, per_doc=1, dim=8)
    try:
        hits = Searcher(store, model="m").hybrid("document 3 chunk 0 topic3", vectors[3],
                                                 k=MAX_K // 2 + 1)
        assert len(hits) == 20 and hits[0].chunk_id == "doc3#0"
    finally:
        store.close()
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(["bees make honey", "whales sing songs", "comets have tails"]):
        (docs / f"{i}.txt").write_text(text, encoding="utf-8")
    with Store.open(tmp_path / "s", create=True) as built:
        ingest([str(docs)], built, options=IngestOptions(embedder="tfidf"), progress=False)
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "mlflow_rag.cli", "search", "honey", "--store", str(tmp_path / "s"),
         "--mode", "hybrid", "-k", str(MAX_K)],
        capture_output=True, text=True, timeout=300, cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "0.txt" in done.stdout
